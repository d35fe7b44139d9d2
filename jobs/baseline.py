"""spark-submit entry point: `spark-submit jobs/baseline.py --conf conf/<experiment>.yaml [--set key=value]`."""

import sys

from sparkzoo.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], only="baseline"))
