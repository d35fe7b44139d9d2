"""spark-submit entry point: `spark-submit jobs/lineage.py -c conf/<experiment>.yaml --id <prediction id> [--json]`."""

import sys

from sparkzoo.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], only="lineage"))
