"""Scoring as a library: everything a stage needs to run a registered model over a Spark DataFrame.

The score, promote and baseline stages and the drift check (pipelines/monitoring.py) all score rows with
a registered version the same way, so that way lives here and the stages import it, never each other:

- ``shipped_model``: one pinned version downloaded on the driver and sent to every executor once, as a
  context manager that removes the driver's copy when the stage is done with it;
- the input contract: which columns a model scores from (``model_input_columns``), the column checks
  that stop a job before any work (``check_input``) and the per-row reason a row cannot fit the model,
  as a native Spark column (``reject_reason``);
- ``score_frame``: rows -> the task's output columns through ``mapInArrow`` (Arrow buffers as numpy views,
  pipelines/arrow_rows.py), one model per Python worker (pipelines/scoring_worker.py: the worker side,
  which keeps the model loaded for the next batch and the next job);
- what a scoring job writes down about itself: the predictions layout (``partition_dir``) and the
  partition manifest's lineage block (``scoring_record``), which ``sparkzoo lineage`` reads back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterator

import pandas as pd

from . import paths, track
from .config import Experiment
from .dataset import MANIFEST
from .errors import ScoringError
from .scoring_worker import score_arrow_batches, score_batches, worker_predictor  # noqa: F401  (the worker side)

log = logging.getLogger("sparkzoo.score")

_INT_TYPES = ("tinyint", "smallint", "int", "bigint")


# ---- the shipped model -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShippedModel:
    """A pinned model version whose files were sent to every executor (``SparkFiles``) once."""

    name: str
    version: int
    file: str                      # the name SparkFiles knows the model's zip by
    spec: dict[str, Any] = field(hash=False)
    local_dir: str = ""            # the driver's copy (for driver-side checks), gone when the context exits
    key: str = ""                  # registry URI + name + version: what a worker caches the model under

    @property
    def pixels_per_row(self) -> int:
        shape = self.spec["shape"]
        return shape["height"] * shape["width"] * shape["channels"]

    @property
    def is_classifier(self) -> bool:
        from ..models.tasks import task_class

        return task_class(self.spec["task"]).classifier


@contextlib.contextmanager
def model_download(exp: Experiment, name: str, version: int) -> Iterator[Future]:
    """Start downloading one pinned version now, in a thread, and hand back its future.

    Why: on a small job the download (about 1.5 s for a local store) is pure waiting, and so is the
    Spark session's JVM start that comes next; started first, the download runs while the JVM starts.
    The future gives ``(folder, model files)``. The folder is removed when the block exits, after the
    download has ended (an early error elsewhere still waits for it, so nothing writes into a removed
    folder).
    """
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory(prefix=f"sparkzoo-{name}-v{version}-") as local:
        with ThreadPoolExecutor(1, thread_name_prefix="sparkzoo-model-download") as pool:
            yield pool.submit(lambda: (local, track.download_model_files(exp, name, version, local)))


def stored_zip(folder: str, archive: str) -> str:
    """``folder``'s files in a zip without compression. Weights barely deflate (a LeNet's 5.2 MB to
    4.7 MB), and deflating them took 0.16 s of the driver's time in every job, with the cores idle."""
    import zipfile

    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for root, _, names in os.walk(folder):
            for name in sorted(names):
                full = os.path.join(root, name)
                zf.write(full, os.path.relpath(full, folder))
    return archive


@contextlib.contextmanager
def shipped_model(spark, exp: Experiment, name: str, version: int,
                  download: Future | None = None) -> Iterator[ShippedModel]:
    """Download one pinned version on the driver and ship its folder to the executors once.

    ``download``: a ``model_download`` already under way (the caller started it before the Spark
    session); without it the download happens here. The driver's download is removed when its block
    exits. The zip handed to Spark is written into Spark's own file folder
    (``SparkFiles.getRootDirectory()``), which Spark deletes when the context stops: it cannot go with
    the block, because Spark sends every file added to a context to each executor that runs its first
    task later (a new or idle executor, in any later job), and a file gone from the driver fails that task.
    """
    from pyspark import SparkFiles

    from .modelpack import SPEC_FILE

    with contextlib.ExitStack() as stack:
        local, files = (download or stack.enter_context(model_download(exp, name, version))).result()
        spec = paths.read_json(paths.join(files, SPEC_FILE))
        # One zip, not a folder: Spark ships local folders only on a local master. Already in the folder
        # ``addFile`` copies to, so Spark finds the same bytes there and keeps the one copy.
        archive = stored_zip(os.path.dirname(files),
                             paths.join(SparkFiles.getRootDirectory(), os.path.basename(local) + ".zip"))
        spark.sparkContext.addFile(archive)
        yield ShippedModel(name, version, os.path.basename(archive), spec, files,
                           f"{track.registry_uri(exp)}|{name}|{version}")


# ---- the input contract ------------------------------------------------------------------------------

def model_input_columns(spec: dict[str, Any], columns: list[str]) -> list[str]:
    """The input columns a model scores from: pixels, log-mel frames, token ids, or (for a text model
    whose table has no ``token_ids``) raw ``text`` that the model tokenises itself."""
    from ..models.tasks import task_class

    wanted = list(task_class(spec["task"]).input_columns)
    if wanted == ["token_ids"] and "token_ids" not in columns and "text" in columns:
        return ["text"]
    return wanted


def check_input(df, where: str, spec: dict[str, Any]):
    """Column presence and types, on the driver before any work; returns ``df`` with id as string.

    A wrong column type is the user's table, not a bad row, so it stops the job with a message; per-row
    problems are left to ``reject_reason``.
    """
    from pyspark.sql import functions as F

    types = dict(df.dtypes)
    check_columns(types, where, spec)
    return df.withColumn("id", F.col("id").cast("string")) if types["id"] != "string" else df


def check_columns(types: dict[str, str], where: str, spec: dict[str, Any]) -> None:
    """``check_input``'s checks on a column -> Spark type name mapping: the Spark engine passes the
    DataFrame's ``dtypes``, the in-process engine the Parquet schema's (``score_in_process.spark_types``), so
    both stop a wrong table with the same message."""
    columns = list(types)
    if "id" not in types:
        raise ScoringError(f"scoring input {where} lacks column id; it needs the prepared schema (id, ...): score a "
                           f"prepared split or a table written by sparkzoo prepare")
    cols = model_input_columns(spec, columns)
    missing = [c for c in cols if c not in types]
    if missing:
        want = " or ".join(["token_ids", "text"]) if cols == ["token_ids"] else ", ".join(missing)
        raise ScoringError(f"scoring input {where} lacks column(s) {want}; a {spec['task']} model needs the prepared "
                           f"schema (id, {', '.join(cols)}, ...): score a prepared split or a table written by "
                           f"sparkzoo prepare")
    expected = {"image": ("binary",), "features": ("binary",), "text": ("string",),
                "token_ids": ("array<int>", "array<bigint>", "array<smallint>")}
    for col in cols:
        if types[col] not in expected[col]:
            hint = {"image": f"{_pixels_text(spec)} per row", "features": "float32 log-mel frames per row",
                    "text": "one string per row", "token_ids": "integer token ids per row"}[col]
            raise ScoringError(f"scoring input {where}: column '{col}' is {types[col]}, the model expects "
                               f"{expected[col][0]} ({hint}, as sparkzoo prepare writes them); convert the column")
    if types["id"] not in ("string", *_INT_TYPES):
        raise ScoringError(f"scoring input {where}: column 'id' is {types['id']}; use a string or integer key")
    for col in ("height", "width", "channels", "label"):
        if col in types and types[col] not in _INT_TYPES:
            raise ScoringError(f"scoring input {where}: column '{col}' is {types[col]}, expected an integer; "
                               f"cast it or drop the column")


def _pixels_text(spec: dict[str, Any]) -> str:
    shape = spec["shape"]
    return f"{shape['height']}x{shape['width']}x{shape['channels']} raw uint8 pixels"


def reject_reason(df, spec: dict[str, Any]):
    """A Spark column: null when the row fits the model, else why not (evaluated natively, no Python)."""
    from pyspark.sql import functions as F

    cols = model_input_columns(spec, df.columns)
    reason = F.when(F.col("id").isNull(), F.lit("null_id"))
    if cols == ["token_ids"]:
        return (reason.when(F.col("token_ids").isNull(), F.lit("null_token_ids"))
                .when(F.size("token_ids") == 0, F.lit("empty_sequence: no tokens"))
                .when(F.exists("token_ids", lambda t: t.isNull()), F.lit("null_token: a token id is null")))
    if cols == ["text"]:
        return (reason.when(F.col("text").isNull(), F.lit("null_text"))
                .when(F.length(F.trim("text")) == 0, F.lit("empty_text")))
    if cols == ["features"]:
        per = 4 * int(spec["shape"]["n_mels"])
        return (reason.when(F.col("features").isNull(), F.lit("null_features"))
                .when(F.length("features") == 0, F.lit("empty_features: no frames"))
                .when(F.length("features") % per != 0,
                      F.concat(F.lit("wrong_size: "), F.length("features").cast("string"),
                               F.lit(f" bytes are not whole frames of {per // 4} float32 values"))))
    shape = spec["shape"]
    per = shape["height"] * shape["width"] * shape["channels"]
    reason = (reason.when(F.col("image").isNull(), F.lit("null_image"))
              .when(F.length("image") != per, F.concat(F.lit("wrong_size: "), F.length("image").cast("string"),
                                                        F.lit(f" bytes, model expects {per}"))))
    dims = [c for c in ("height", "width", "channels") if c in df.columns]
    if dims:
        declared = F.concat_ws("x", *[F.coalesce(F.col(c).cast("string"), F.lit("null")) for c in dims])
        expected = "x".join(str(shape[c]) for c in dims)
        wrong = None
        for c in dims:
            cond = F.col(c).isNull() | (F.col(c) != shape[c])
            wrong = cond if wrong is None else wrong | cond
        reason = reason.when(wrong, F.concat(F.lit("wrong_shape: "), declared, F.lit(f", model expects {expected}")))
    return reason


def fitting_rows(df, where: str, spec: dict[str, Any]):
    """``check_input`` then only the rows that fit the model: what promote and the drift reference score
    (the score stage keeps the others, to write them to its reject table)."""
    df = check_input(df, where, spec)
    return df.filter(reject_reason(df, spec).isNull())


# ---- the Python workers ------------------------------------------------------------------------------

def worker_options(exp: Experiment) -> dict[str, Any]:
    """Plain values the shipped function closes over (never the Experiment itself), for the eager path;
    the score stage adds the inference path it chose (``inference_path.PathChoice.worker_options``)."""
    return {"device": exp.score.device, "threads": exp.score.threads_per_worker, "optimize": "none",
            "chunk": exp.score.sequence_chunk, "image_chunk": exp.score.image_chunk, "plugins": list(exp.plugins),
            "batch_format": exp.score.batch_format}


def output_schema(spec: dict[str, Any], types: dict[str, str], keep: list[str]) -> str:
    """Spark DDL of what scoring returns: id, the task's output columns, then the kept input columns
    (``types``: the input's column -> Spark type name)."""
    from ..models.tasks import task_class

    return f"id string, {task_class(spec['task']).output_schema}" + "".join(
        f", {c} {types[c]}" for c in keep)


def score_frame(df, shipped: ShippedModel, options: dict[str, Any], keep: list[str]):
    """Rows (id, model inputs, *keep) that fit the model -> id, the task's output columns, *keep.

    Rows tagged by ``reject_reason`` in a ``_reject`` column ride along and are dropped (and counted in
    ``options["reject_counter"]``) in the worker: one scan when every row fits (see the score stage).
    A ``_sample`` column (the drift profile's embedding sample, computed by Spark) rides along the same
    way. ``options["batch_format"]`` picks the worker's batches: ``arrow`` (``mapInArrow``, the default) or
    ``pandas`` (``mapInPandas``, the former path, kept as a fallback and for bench/scoring.py)."""
    schema = output_schema(shipped.spec, dict(df.dtypes), keep)
    model_file = shipped.file
    options = {**options, "model_key": shipped.key}
    flag = ["_reject"] if "_reject" in df.columns and options.get("reject_counter") is not None else []
    flag += ["_sample"] if "_sample" in df.columns and options.get("observer") is not None else []
    rows = df.select("id", *model_input_columns(shipped.spec, df.columns), *keep, *flag)
    if options.get("batch_format", "arrow") == "pandas":
        return rows.mapInPandas(lambda it: score_batches(it, model_file, keep, options), schema)
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import _parse_datatype_string

    arrow_schema = to_arrow_schema(_parse_datatype_string(schema))
    return rows.mapInArrow(lambda it: score_arrow_batches(it, model_file, keep, arrow_schema, options), schema)


# ---- what a scoring job writes down ------------------------------------------------------------------

def partition_dir(output: str, version: int, run_date: str) -> str:
    """One scoring job's partition of a predictions (or rejects) table."""
    return paths.join(output, f"model_version={version}", f"run_date={run_date}")


def run_config_hash(exp: Experiment) -> str:
    """The whole scoring config (not the training identity ``track.config_hash``): two nights with the
    same hash ran the same settings."""
    tree = exp.model_dump(mode="json", exclude={"source_file"})
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def local_path(path: str) -> str:
    """Spark's ``file:/x`` or ``file:///x`` -> ``/x``; other URIs stay."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return path[len("file:"):] if path.startswith("file:") else path


def input_snapshot(df, where: str, exp: Experiment) -> dict[str, Any]:
    """What exactly a Spark job read: ``files_snapshot`` of the plan's file list (``inputFiles``, no
    job runs), and a catalog table's version."""
    snap = files_snapshot([local_path(f) for f in df.inputFiles()], where, exp)
    if snap["kind"] == "table":
        snap["table_version"] = _table_version(df.sparkSession, exp.score.input_table)
    return snap


def files_snapshot(files: list[str], where: str, exp: Experiment) -> dict[str, Any]:
    """What exactly was read: the kind of input, its URI or table, and a digest of its file list.

    Sizes and mtimes come from one metadata call, so a file rewritten in place changes the digest. A
    prepared split also names its dataset version.
    """
    kind = "table" if exp.score.input_table else "path" if exp.score.input_path else "split"
    files = sorted(files)
    stamped = []
    if files:
        fs, _ = paths.filesystem(files[0])
        inner = [paths.filesystem(f)[1] for f in files]
        for f, info in zip(files, fs.get_file_info(inner)):
            stamped.append(f"{f} {info.size} {int(info.mtime_ns or 0)}")
    snap: dict[str, Any] = {"kind": kind, "uri": exp.score.input_table or where, "files": len(files),
                            "digest": hashlib.sha256("\n".join(stamped).encode()).hexdigest()}
    dataset_dir = _dataset_of(where) if kind != "table" else None
    if dataset_dir:
        m = paths.read_json(paths.join(dataset_dir, MANIFEST))
        snap["dataset"] = {"name": m.get("dataset"), "version": m.get("version"), "path": dataset_dir}
    return snap


def _table_version(spark, table: str) -> int | None:
    """A Delta table's version (``DESCRIBE HISTORY``); plain Parquet/Hive tables have none (the file
    digest stands for their snapshot)."""
    try:
        row = spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").collect()   # small: one row
        return int(row[0]["version"]) if row else None
    except Exception:   # not a Delta table, or Delta is not installed
        return None


def _dataset_of(where: str) -> str | None:
    """The prepared dataset folder an input path belongs to (a split folder's parent), if it is one."""
    parent = where.rstrip("/").rsplit("/", 1)[0]
    return parent if parent and paths.exists(paths.join(parent, MANIFEST)) else None


def scoring_record(exp: Experiment, snapshot: dict[str, Any], name: str, version: int) -> dict[str, Any]:
    """The partition manifest's lineage block: the input ``snapshot`` (``input_snapshot``), the model URI
    resolved and the aliases it held at that moment, its MLflow run, and the config hash."""
    c = track.client(exp)
    mv = c.get_model_version(name, str(version))
    return {
        "input": snapshot,
        "model": {"requested_uri": exp.score.model_uri or f"models:/{name}@champion",
                  "resolved_uri": f"models:/{name}/{version}", "run_id": mv.run_id,
                  "aliases": sorted(getattr(mv, "aliases", []) or []), "registry": track.registry_uri(exp)},
        "config_hash": run_config_hash(exp),
    }
