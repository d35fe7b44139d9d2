"""What both scoring engines share (pipelines/score.py on Spark, pipelines/score_in_process.py without it):
the job's result, where its input is, the reject table's schema and the partition manifest and marker.

Why a module of its own: the score stage picks an engine, so the in-process engine cannot import the
stage back (an import circle); both import this instead.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

from . import paths
from .config import Experiment
from .dataset import open_prepared
from .errors import ScoringError

REJECT_SCHEMA = "id string, reason string, model_name string, model_version int, run_date string"
_GLOB = set("*?[{")


@dataclass
class ScoreResult:
    model_name: str
    model_version: int
    input_rows: int
    scored_rows: int
    rejected_rows: int
    output: str
    rejects: str
    accuracy: float | None
    seconds: float
    run_date: str
    skipped_rows: int = 0          # incremental: ids this version had already scored on earlier dates
    optimize: str = "none"
    drift: dict[str, Any] | None = None   # the partition manifest's drift block (pipelines/monitoring.py)
    phases: dict[str, float] | None = None   # seconds per phase of the job (pipelines/phases.py)


def is_glob(path: str) -> bool:
    return any(ch in path for ch in _GLOB)


def expand_braces(pattern: str) -> list[str]:
    """``a/{x,y}/b`` -> ``a/x/b``, ``a/y/b`` (nested too). Why: Spark reads Hadoop globs, whose ``{a,b}``
    Python's glob does not know, so a pattern Spark accepts must not be called "matches nothing" here."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, parts, last = 0, [], start + 1
    for i in range(start, len(pattern)):
        ch = pattern[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                parts.append(pattern[last:i])
                head, tail = pattern[:start], pattern[i + 1:]
                return [x for part in parts for x in expand_braces(head + part + tail)]
        elif ch == "," and depth == 1:
            parts.append(pattern[last:i])
            last = i + 1
    return [pattern]   # an unclosed brace is a literal, as in Hadoop


def local_glob(pattern: str) -> list[str]:
    """What a local Hadoop glob matches, sorted and each path once."""
    return sorted({hit for alt in expand_braces(pattern) for hit in _glob.glob(alt)})


def input_location(exp: Experiment) -> str:
    """``score.input_path`` (checked: it exists, a glob matches) or the prepared split's folder."""
    if exp.score.input_path:
        path = paths.resolve(exp, exp.score.input_path)
        if is_glob(path):
            if not paths.is_uri(path) and not local_glob(path):
                raise ScoringError(f"score.input_path glob {path} matches nothing; check the pattern")
        elif not paths.exists(path):
            raise ScoringError(f"score.input_path {path} does not exist; point it at a Parquet table, folder or glob")
        return path
    return open_prepared(exp).split_dir(exp.score.input_split)


def mark_partition(folder: str, info: dict[str, Any]) -> None:
    """Manifest (files, rows) then the marker, after Spark committed the partition (an empty rejects
    partition has no folder; it gets one with only the marker, so "0 rejects" is a stated fact)."""
    info = {**info, "files": [os.path.basename(f) for f in paths.list_files(folder, ".parquet")]}
    paths.write_json(paths.join(folder, "_manifest.json"), info)
    paths.mark_complete(folder, {"rows": info["rows"], "committed_at": info["committed_at"]})


# how Spark (parquet-mr) and pyarrow say that a file of the input is not Parquet: the file is group 1
_UNREADABLE = (re.compile(r"(\S+) is not a Parquet file\W*([^\n)]*)"),
               re.compile(r"Could not open Parquet input source '([^']+)': ([^\n]*)"))


def unreadable_input(exc: BaseException) -> ScoringError | None:
    """A ``ScoringError`` naming the input file that is not Parquet (either engine's words for it), else
    None. Such a file has no rows to quarantine: the job stops before committing anything."""
    text = str(exc)
    for pattern in _UNREADABLE:
        found = pattern.search(text)
        if found:
            return unreadable_file(found.group(1), found.group(2))
    return None


def unreadable_file(file: str, why: str) -> ScoringError:
    """The one line for an input file that is not Parquet (``why``: the reader's words)."""
    why = str(why).strip().rstrip(".") or "unreadable footer"
    file = re.sub(r"^file:(//)?", "", file)
    return ScoringError(f"scoring input file {file} is not a readable Parquet file ({why}); repair it or move it "
                        f"out of the input, then re-run the same command (nothing was committed)")


@contextlib.contextmanager
def naming_unreadable_input() -> Iterator[None]:
    """Whatever in the block first reads a file of the input that is not Parquet (Spark's schema read,
    any Spark job, pyarrow's footer scan) ends the job with ``unreadable_input``'s one line."""
    try:
        yield
    except Exception as exc:
        failure = unreadable_input(exc)
        if failure is not None:
            raise failure from None
        raise
