"""spark-submit entry point: `spark-submit jobs/lineage.py -c conf/<experiment>.yaml --id <prediction id> [--json]`,
or `--row <predictions Parquet file or partition folder>[#N]` instead of `--id`."""

import sys

from sparkzoo.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], only="lineage"))
