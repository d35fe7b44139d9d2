"""Spark's scoring pass with the Python workers reading and writing the Parquet files (``score.file_io``).

Why: on the Spark engine the JVM decodes the input's Parquet into column vectors, turns them into rows
and the rows into Arrow for the Python workers, then does the same backwards to write the predictions.
On 2 cores that work shares the cores with the model and cost the scoring pass 15-18% of its rows/s
(bench/scoring.py, bench/RESULTS.md). With ``pyarrow`` the Python worker reads its row groups straight
into Arrow buffers and writes its output file with the same library; the JVM only plans and schedules.

Spark still runs the pass: one task per split of row groups (``spark.sql.files.maxPartitionBytes`` of
data, at least one task per core), over every executor, retried where a task fails. Each task attempt
writes into a staging folder of its own under the table (a ``.`` name, which readers skip). The driver
moves the files of the attempts Spark accepted into tonight's partition, so a failed or speculative
attempt adds nothing, and deletes the staging folder. The rows go through the same loop as the
in-process engine (pipelines/arrow_pass.py): the same reject reasons, model, output schema and drift
profile.
"""

from __future__ import annotations

import logging
import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from . import paths
from .config import Experiment
from .errors import ScoringError

log = logging.getLogger("sparkzoo.score")

_LOCAL_SCHEMES = ("file://",)


def choose(exp: Experiment) -> tuple[str, str]:
    """``("pyarrow" | "spark", why)``: who reads and writes the files of a Spark scoring job."""
    s = exp.score
    if s.file_io != "auto":
        return s.file_io, f"score.file_io={s.file_io}"
    needs = s.needs_spark_reader()
    if needs:
        return "spark", f"{needs[0]} needs Spark's reader"
    from .score_job import input_location

    for path in (input_location(exp), paths.predictions_dir(exp)):
        if paths.is_uri(path) and not path.startswith(_LOCAL_SCHEMES):
            # HDFS needs libhdfs beside every worker, and an object store has no rename: Spark's own
            # readers and committers handle those
            return "spark", f"{path} is not on a local or mounted filesystem"
    return "pyarrow", "the input and output are on a local or mounted filesystem"


@dataclass
class Split:
    """One task's share of the input: (file inside its filesystem, row group, first row, end row) of the
    group, read in this order."""
    row_groups: list[tuple[str, int, int, int]]


def plan(files: list[str], split_bytes: int, cores: int) -> tuple[list[Split], int, Any]:
    """The input cut into tasks of equal bytes, a multiple of ``cores`` of them (at least one per core,
    about ``split_bytes`` each), each a run of consecutive row groups and parts of them; the input's row
    count, from the footers; and the files' pyarrow filesystem (the tasks open the files through it).

    Equal tasks in a multiple of the cores keep every core busy to the end: 8 row groups as 7 tasks (one
    holding two groups) left a core idle for the last eighth of a 1M-row job. A row group shared by two
    tasks is read by both, each keeping its own rows; reading costs a few us a row against a model's
    tens, so the cut pays. The driver reads footers only (a few KB a file, 8 at a time), never rows:
    Spark's own reader reads the same footers to split a scan."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .score_job import unreadable_file

    fs = paths.filesystem(files[0])[0] if files else None

    def footer(path: str):
        inner = paths.filesystem(path)[1]
        try:
            return inner, pq.read_metadata(inner, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as exc:   # not Parquet: named, before any task runs
            raise unreadable_file(path, str(exc).split("\n")[0]) from None

    units: list[tuple[str, int, int, int]] = []   # (file, row group, rows, bytes), in file order
    with ThreadPoolExecutor(8) as pool:
        for path, meta in pool.map(footer, files):
            for i in range(meta.num_row_groups):
                group = meta.row_group(i)
                if group.num_rows:
                    units.append((path, i, group.num_rows, max(1, group.total_byte_size)))
    rows = sum(u[2] for u in units)
    total = sum(u[3] for u in units)
    cores = max(1, cores)
    n = min(rows, cores * math.ceil(max(1, math.ceil(total / max(1, split_bytes))) / cores))
    splits = [Split([]) for _ in range(n)]
    k, room = 0, total / max(1, n)
    for path, i, count, size in units:
        per, at = size / count, 0
        while at < count:
            take = count - at if k == n - 1 else max(1, min(count - at, round(room / per)))
            splits[k].row_groups.append((path, i, at, at + take))
            at += take
            room -= take * per
            if room <= per / 2 and k < n - 1:
                k, room = k + 1, room + total / n
    return [s for s in splits if s.row_groups], rows, fs


@dataclass
class Passed:
    """What the tasks Spark accepted did: rows read, scored and rejected, and the label matches."""
    rows: int
    scored: int
    rejected: int
    right: int
    labelled: int


def run(spark, splits: list[Split], job: dict[str, Any], out: str, rejects_path: str, version: int,
        run_date: str, accept: Callable[[list[dict[str, Any]]], None] | None = None) -> Passed:
    """The scoring pass over ``splits``, then tonight's partitions of both tables replaced by its files.

    ``job``: what every task needs (``arrow_pass.score_files_task``): the columns to read, the batch
    size, the model's spec, file and input columns, the output schemas, the name, the time stamp and the
    worker options. ``accept``: sees the tasks' summaries before any file moves; raising there leaves
    both tables as they were (the optimised path's accuracy check)."""
    from .arrow_pass import score_files_task
    from .scoring import partition_dir

    staging = paths.join(out, f".scoring-{uuid.uuid4().hex}")
    job = {**job, "staging": paths.filesystem(staging)}
    try:
        tasks = spark.sparkContext.parallelize([s.row_groups for s in splits], max(1, len(splits)))
        done = tasks.mapPartitions(lambda parts: score_files_task(parts, job)).collect()   # small: a summary per task
        if accept is not None:
            accept(done)
        for table, key in ((out, "scored"), (rejects_path, "rejects")):
            target = partition_dir(table, version, run_date)
            paths.delete_dir(target)
            wrote = [(task["folder"], name) for task in done for name in [task[f"{key}_file"]] if name]
            if wrote:
                fs, inner = paths.filesystem(target)
                fs.create_dir(inner, recursive=True)
                for folder, name in wrote:
                    fs.move(f"{folder}/{key}/{name}", f"{inner}/{name}")
    finally:
        paths.delete_dir(staging)
    if done:
        first = min(task["began"] for task in done)
        log.info("scoring tasks: %d, each from %s", len(done), ", ".join(
            f"{task['began'] - first:.1f}s to {task['ended'] - first:.1f}s ({task['rows']:,} rows)" for task in done))
    passed = Passed(*(sum(task[k] for task in done) for k in ("rows", "scored", "rejected", "right", "labelled")))
    expected = sum(hi - lo for s in splits for _, _, lo, hi in s.row_groups)
    if passed.rows != expected:
        raise ScoringError(f"the scoring tasks read {passed.rows} rows where the input's footers count {expected}; "
                           f"output at {out} is not trusted")
    return passed
