"""Write the last real ``sparkzoo run`` (``make demo``) into the README, between its markers.

Why: figures typed into a README go stale the first time the code gets faster (issue 22 found 35 s /
194 s / 12.6 s in the README against 18 s / 78 s / 6.3 s measured). ``sparkzoo run`` leaves
``<workspace>/logs/run-summary.json``; this script copies its summary block and stage timings, with the
date and the machine they were measured on, between ``<!-- readme-figures:start -->`` and
``<!-- readme-figures:end -->``. ``make readme-figures`` runs ``make demo`` and then this.

    .venv/bin/python scripts/readme_figures.py [--summary workspace/logs/run-summary.json] [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- readme-figures:start -->", "<!-- readme-figures:end -->"


def machine() -> str:
    """CPU model, cores and OS of this machine, in words."""
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    distro = ""
    try:
        fields = dict(ln.split("=", 1) for ln in Path("/etc/os-release").read_text().splitlines() if "=" in ln)
        distro = fields.get("PRETTY_NAME", "").strip('"')
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ", ".join(x for x in (f"{cores} CPU cores", model, distro or platform.system(),
                                 f"Python {platform.python_version()}") if x)


def block(figures: dict, where: str, note: str = "") -> str:
    """The README text between the markers."""
    if "load_average" in figures:
        where += f"; load average {figures['load_average']} at the end"
    if note:
        where += f"; {note}"
    prepare = "reused" if figures["prepare_reused"] else f"{figures['prepare_seconds']:.0f} s"
    timings = (f"prepare {prepare}, training {figures['train_seconds']:.0f} s ({figures['epochs']} epochs; "
               f"{figures['train_wall_seconds']:.0f} s with start-up and registration), scoring "
               f"{figures['score_seconds']:.0f} s; `sparkzoo run` {figures['wall_seconds']:.0f} s in all")
    return (f"A real run on {figures['finished_utc']} UTC ({where}): {timings}.\n\n"
            f"```\n{figures['summary'].strip()}\n```")


def rewrite(readme: Path, text: str) -> None:
    content = readme.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"readme_figures: no {START} ... {END} markers in {readme}")
    readme.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", content, count=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/readme_figures.py", description=__doc__.splitlines()[0])
    parser.add_argument("--summary", default=str(ROOT / "workspace" / "logs" / "run-summary.json"),
                        help="what sparkzoo run left (default: workspace/logs/run-summary.json)")
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--note", default="", help="a word on the conditions, e.g. 'machine shared with test runs'")
    args = parser.parse_args(argv)
    summary = Path(args.summary)
    if not summary.is_file():
        print(f"readme_figures: error: {summary} does not exist; run `make demo` first", file=sys.stderr)
        return 2
    rewrite(Path(args.readme), block(json.loads(summary.read_text()), machine(), args.note))
    print(f"readme_figures: {args.readme} now shows the run of {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
