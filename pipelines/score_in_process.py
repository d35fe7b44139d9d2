"""``sparkzoo score`` on a small input in this Python process, with no JVM (``score.engine``).

Why: on a local master a small job is nearly all fixed cost. 3,000 raw-text rows took 25 s from the
command to its exit (bench/latency.py), of which the model's work was about a second: the rest was the
JVM and Spark session (4.4 s), listing the input (2.7 s), Python workers' start, the drift profile's
extra Spark jobs (5.7 s) and the JVM's shutdown (2.3 s). None of that buys anything for rows that one
process scores in a second. ``auto`` (the default) runs a job here only when Spark would add nothing:
the master is local, spark-submit did not start the job, the input is a Parquet path or a prepared split
of at most ``score.in_process_max_bytes``, and no feature that needs Spark is on (a catalog table,
incremental mode, an optimised path, GPU shares). Anything else runs in Spark, unchanged.

What runs is the Spark job's own code, not a copy: the column checks (``scoring.check_columns``), the
Arrow scoring body and its model cache (``scoring_worker.score_arrow_batches``), the output layout, the
manifest, the marker and the drift report. What differs is the loop and the three things Spark did
natively, mirrored here and checked against Spark by tests/test_score_in_process.py: the per-row reject
reasons (``scoring.reject_reason``), the partition replacement (Spark's dynamic overwrite: staged, then
renamed into place) and the drift counts (pipelines/drift_stream.py). It streams: one Arrow batch of
``score.batch_size`` rows is read, scored and written at a time, so memory holds a batch, whatever the
input's size (and the embedding sample of the drift profile, about 2,000-4,000 rows).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
from typing import Any

import pyarrow as pa

from . import monitoring, paths, track
from .arrow_pass import BatchFile, stream
from .config import Experiment
from .display import Display
from .errors import ScoringError
from .phases import Phases

log = logging.getLogger("sparkzoo.score")

_SPARK_TYPES = {"int8": "tinyint", "int16": "smallint", "int32": "int", "int64": "bigint", "float": "float",
                "double": "double", "bool": "boolean", "string": "string", "large_string": "string",
                "binary": "binary", "large_binary": "binary"}

# ---- which engine ------------------------------------------------------------------------------------

def choose_engine(exp: Experiment) -> tuple[str, str]:
    """``("in_process" | "spark", why)`` for this job, decided before any JVM starts."""
    from .session import launched_by_spark_submit

    s = exp.score
    if s.engine != "auto":
        return s.engine, f"score.engine={s.engine}"
    if launched_by_spark_submit():
        return "spark", "spark-submit started the job"
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:   # `sparkzoo run`: prepare's session is paid for
        return "spark", "a Spark session is already running in this process"
    if not exp.spark.master.startswith("local"):
        return "spark", f"the master is {exp.spark.master}"
    needs = [why for why, on in (("a catalog table", s.input_table), ("incremental mode", s.incremental),
                                 (f"score.optimize={s.optimize}", s.optimize != "none"),
                                 ("score.tasks_per_gpu", s.tasks_per_gpu is not None)) if on]
    if needs:
        return "spark", f"{needs[0]} needs Spark"
    files, where = input_files(exp)
    if paths.is_uri(where) or paths.is_uri(paths.predictions_dir(exp)):
        # an object store has no rename of a folder: the partition swap is Spark's committer's job there
        return "spark", "the input or output is on an object store"
    size = _total_bytes(files)
    if size > s.in_process_max_bytes:
        return "spark", f"the input is {size:,} bytes, over score.in_process_max_bytes={s.in_process_max_bytes:,}"
    return "in_process", f"{len(files)} file(s), {size:,} bytes, on a local master"


def input_files(exp: Experiment) -> tuple[list[str], str]:
    """The Parquet files Spark would read for this input (hidden ``_``/``.`` names skipped, folders walked)
    and the input's name for messages."""
    from .score_job import input_location, is_glob, local_glob

    where = input_location(exp)
    found = local_glob(where) if is_glob(where) and not paths.is_uri(where) else [where]
    files: list[str] = []
    for path in found:
        files += _walk(path)
    return sorted(files), where


def _walk(path: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, inner = paths.filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.File:
        return [path]
    out = []
    for item in fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True)):
        rel = os.path.relpath(item.path, inner)
        if item.type == pafs.FileType.File and not any(paths.is_hidden(p) for p in rel.split(os.sep)):
            out.append(paths.join(path, rel))
    return out


def _total_bytes(files: list[str]) -> int:
    if not files:
        return 0
    fs, _ = paths.filesystem(files[0])
    return sum(int(i.size or 0) for i in fs.get_file_info([paths.filesystem(f)[1] for f in files]))


def _local_cores(master: str) -> int:
    """The cores a ``local[N]``/``local[*]``/``local`` master would use: the threads this process scores with."""
    inside = master[len("local["):-1] if master.startswith("local[") else "1"
    inside = inside.split(",")[0]
    return (os.cpu_count() or 1) if inside == "*" else max(1, int(inside))


# ---- the input contract, on Arrow ---------------------------------------------------------------------

def spark_types(schema: pa.Schema) -> dict[str, str]:
    """Column -> the Spark type name Spark would read it as (for ``scoring.check_columns``)."""
    def name(t: pa.DataType) -> str:
        if pa.types.is_dictionary(t):
            return name(t.value_type)
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return f"array<{name(t.value_type)}>"
        if pa.types.is_timestamp(t):
            return "timestamp"
        return _SPARK_TYPES.get(str(t), str(t))

    return {f.name: name(f.type) for f in schema}


# ---- the job ------------------------------------------------------------------------------------------

class _PartitionWriter(BatchFile):
    """One partition's Parquet file, written into a staging folder beside the table and renamed into
    place by ``commit`` (Spark's dynamic overwrite: tonight's partition replaced, the others untouched)."""

    def __init__(self, table: str, version: int, run_date: str, schema: pa.Schema) -> None:
        from .scoring import partition_dir

        self.target = partition_dir(table, version, run_date)
        self.staging = paths.join(table, f".in-process-{uuid.uuid4().hex}")
        super().__init__(*paths.filesystem(self.staging), schema)

    def commit(self) -> None:
        """Tonight's partition becomes what was written (no rows: no folder, as Spark leaves it)."""
        wrote = self.close()
        paths.delete_dir(self.target)
        if wrote is not None:
            fs, inner = paths.filesystem(self.target)
            fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
            paths.move(self.staging, self.target)

    def abandon(self) -> None:
        self.close()
        paths.delete_dir(self.staging)


def run(exp: Experiment, name: str, version: int, download, run_date: str, started: float, phase: Phases):
    """The score stage's job in this process; returns the same ``ScoreResult`` as the Spark engine."""
    import pyarrow.dataset as pads

    from .inference_path import PathChoice
    from .modelpack import SPEC_FILE
    from .arrow_pass import output_schemas, task_columns
    from .score_job import ScoreResult, mark_partition, naming_unreadable_input
    from .scoring import check_columns, files_snapshot, model_input_columns, partition_dir, \
        scoring_record, worker_options

    with phase("open input"):
        files, where = input_files(exp)
        if not files:
            raise ScoringError(f"scoring input {where} holds no Parquet file (names starting with _ or . are "
                               f"skipped, as Spark skips them)")
        fs = paths.filesystem(files[0])[0]
        with naming_unreadable_input():   # every file's footer: an unreadable file stops the job here
            dataset = pads.dataset([paths.filesystem(f)[1] for f in files], filesystem=fs, format="parquet")
            n_in = dataset.count_rows()
    with phase("ship model"):   # what the download has left to do
        _, model_dir = download.result()
        spec = paths.read_json(paths.join(model_dir, SPEC_FILE))
    from ..models.tasks import task_class

    classifier = task_class(spec["task"]).classifier
    with phase("check input"):
        types = spark_types(dataset.schema)
        check_columns(types, where, spec)
        types["id"] = "string"
        record = scoring_record(exp, files_snapshot(files, where, exp), name, version)
        keep = ["label"] if "label" in types and classifier else []
        inputs = model_input_columns(spec, list(types))
        out_schema, scored_schema, rejects_schema, stamp = output_schemas(spec, types, keep)
    out = paths.predictions_dir(exp)
    rejects_path = out.rstrip("/") + "_rejects"
    key = f"{track.registry_uri(exp)}|{name}|{version}"
    options = {**worker_options(exp), "model_dir": model_dir, "model_key": key,
               "threads": _local_cores(exp.spark.master)}
    profile, plan, ref = _drift_start(exp, spec, record, classifier, list(types), inputs, n_in, options, phase)
    writers = [_PartitionWriter(out, version, run_date, scored_schema),
               _PartitionWriter(rejects_path, version, run_date, rejects_schema)]
    correct = (0, 0)
    progress = Display("score", unit="row")
    try:
        with phase("score and write"):
            batches = dataset.to_batches(columns=task_columns(types, inputs, keep), batch_size=exp.score.batch_size)
            correct = stream(batches, spec, inputs, keep, out_schema, options, writers, name, stamp, profile,
                             lambda done: progress.update(done, n_in))
            for w in writers:
                w.commit()
    except BaseException:
        for w in writers:
            w.abandon()
        raise
    finally:
        progress.close()
    scored, rejected = writers[0].rows, writers[1].rows
    result = ScoreResult(name, version, n_in, scored, rejected, out, rejects_path,
                         correct[0] / correct[1] if keep and correct[1] else None, time.time() - started, run_date,
                         0, "none")
    if scored + rejected != n_in:
        raise ScoringError(f"scored {scored} + rejected {rejected} rows != {n_in} input rows; output at {out} is "
                           f"not trusted")
    drift_block = None
    if profile is not None and scored:
        with phase("drift"):
            drift_block = _drift_finish(exp, ref, profile, plan, record, name, version,
                                        run_date, partition_dir(out, version, run_date), where)
        result.drift = drift_block
    info = {"model_name": name, "model_version": version, "run_date": run_date, "input_rows": n_in,
            "scored_rows": scored, "rejected_rows": rejected, "skipped_rows": 0, "engine": "in_process", "file_io": "pyarrow",
            "inference_path": PathChoice("none").summary(), **record, **({"drift": drift_block} if drift_block else {}),
            "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    with phase("commit"):
        for table, rows in ((rejects_path, rejected), (out, scored)):   # predictions last
            mark_partition(partition_dir(table, version, run_date), {**info, "rows": rows})
    return result


def _drift_start(exp: Experiment, spec: dict[str, Any], record: dict[str, Any], classifier: bool,
                 columns: list[str], inputs: list[str], n_in: int, options: dict[str, Any], phase: Phases):
    """The reference (its edges are needed before the first batch) and tonight's profile to fill as the
    batches go; ``(None, None, None)`` when drift is off or the version has no reference."""
    if not exp.score.drift:
        return None, None, None
    from .drift_stream import PartitionProfile, tap

    with phase("drift"):
        ref = monitoring.load_reference(exp, record["model"]["run_id"])
    if ref is None:
        log.info("drift: %s has no reference profile (trained before drift profiles); not compared",
                 record["model"]["resolved_uri"])
        return None, None, None
    plan = tap(spec, ref, columns, inputs, n_in, classifier, "", options["model_key"],
               {k: options[k] for k in ("model_dir", "threads", "device")})
    return PartitionProfile(plan), plan, ref


def _drift_finish(exp: Experiment, ref: dict[str, Any], profile, plan: dict[str, Any], record: dict[str, Any],
                  name: str, version: int, run_date: str, partition: str, where: str) -> dict[str, Any]:
    """The embedding sample through the model's head, then the comparison, report and monitoring run."""
    from .drift_stream import merged

    started = time.perf_counter()
    current = merged(plan, [profile.finish()])
    return monitoring.report(exp, ref, current, run_id=record["model"]["run_id"], name=name, version=version,
                             run_date=run_date, partition=partition, where=where,
                             seconds=time.perf_counter() - started)
