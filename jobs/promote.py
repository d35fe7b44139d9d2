"""spark-submit entry point: `spark-submit jobs/promote.py --conf conf/<experiment>.yaml [--rollback-to N]`."""

import sys

from sparkzoo.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], only="promote"))
