"""Maintainer tool: train every family of a zoo spec to its bar and rewrite the table in docs/MODEL_ZOO.md.

Why not a ``sparkzoo`` command: it writes into this repository's docs/ and takes about an hour, which is
nothing a user of the package wants; ``make zoo-vision`` / ``make zoo-sequence`` run it from a checkout.

    .venv/bin/python scripts/zoo.py --family vision [--only lenet,mlp] [--no-table] [--set train.progress=false]

Exit 0 when every entry clears its bars, 3 when one does not, 2 on a user mistake (one line).
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from sparkzoo.jobs.cli import _setup_logging
    from sparkzoo.pipelines import zoo
    from sparkzoo.pipelines.errors import SparkzooError

    parser = argparse.ArgumentParser(prog="scripts/zoo.py", description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="vision", help="zoo spec under conf/zoo/ (default: vision)")
    parser.add_argument("--only", help="comma-separated entry ids to run (default: all)")
    parser.add_argument("--no-table", action="store_true", help="do not rewrite docs/MODEL_ZOO.md")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every entry (repeatable)")
    args = parser.parse_args(argv)
    _setup_logging(logging.INFO)
    try:
        results = zoo.run(args.family, args.set, args.only.split(",") if args.only else None,
                          write_table=not args.no_table)
    except SparkzooError as exc:
        print(f"zoo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(zoo.table(zoo.load_spec(args.family), results))
    failed = [r.id for r in results if not r.passed]
    print(f"zoo {args.family}: {len(results) - len(failed)}/{len(results)} entries clear their bars"
          + (f"; below: {', '.join(failed)}" if failed else ""))
    return 0 if not failed else 3


if __name__ == "__main__":
    sys.exit(main())
