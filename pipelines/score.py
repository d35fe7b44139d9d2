"""Batch scoring with a registered model: Spark ``mapInPandas`` over Arrow batches.

The model version is pinned on the driver at job start (an alias that moves mid-job cannot mix
versions), its files are shipped once as a zip with ``addFile``, and each Python worker loads it once,
on the executor's GPU when it has one. Input is a prepared split, any Parquet path or glob, or a catalog table;
a column of the wrong type stops the job before any work, while rows that cannot fit the model (null id
or image, wrong size, a declared shape that is not the model's) are routed by a native Spark filter to a
reject table with a reason and the job goes on. Output is Parquet partitioned by model version and run
date; a rerun overwrites only its own partitions (Spark's dynamic partition overwrite stages the files
and renames whole partitions at job commit), and each committed partition then gets a ``_manifest.json``
and a ``_SUCCESS`` marker, written last; incremental mode skips ids this version already scored on
earlier dates (an anti-join in Spark) and refuses to read a partition without its marker. ``promote`` evaluates models through the same
``ship_model`` / ``score_frame`` pair.
"""

from __future__ import annotations

import datetime as dt
import glob as _glob
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import pandas as pd

from . import inference_path, lineage, monitoring, paths, track
from .config import Experiment
from .dataset import open_prepared
from .errors import DriftError, ScoringError

log = logging.getLogger("sparkzoo.score")

REJECT_SCHEMA = "id string, reason string, model_name string, model_version int, run_date string"
_LOADED: dict[tuple, Any] = {}   # per Python worker: (model key, device, optimisation) -> Predictor
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


@dataclass(frozen=True)
class ShippedModel:
    """A pinned model version whose files were sent to every executor (``SparkFiles``) once."""

    name: str
    version: int
    file: str                      # the name SparkFiles knows the model's zip by
    spec: dict[str, Any] = field(hash=False)
    local_dir: str = ""            # the driver's copy (for driver-side checks)
    key: str = ""                  # registry URI + name + version: what a worker caches the model under

    @property
    def pixels_per_row(self) -> int:
        shape = self.spec["shape"]
        return shape["height"] * shape["width"] * shape["channels"]

    @property
    def is_classifier(self) -> bool:
        from sparkzoo.models.tasks import task_class

        return task_class(self.spec["task"]).classifier


def model_input_columns(spec: dict[str, Any], columns: list[str]) -> list[str]:
    """The input columns a model scores from: pixels, log-mel frames, token ids, or (for a text model
    whose table has no ``token_ids``) raw ``text`` that the model tokenises itself."""
    from sparkzoo.models.tasks import task_class

    wanted = list(task_class(spec["task"]).input_columns)
    if wanted == ["token_ids"] and "token_ids" not in columns and "text" in columns:
        return ["text"]
    return wanted


def worker_options(exp: Experiment, choice: "inference_path.PathChoice | None" = None, spark=None) -> dict[str, Any]:
    """Plain values the shipped function closes over (never the Experiment itself); eager unless given the
    inference path the driver chose (``inference_path.choose``)."""
    options = {"device": exp.score.device, "threads": exp.score.threads_per_worker, "optimize": "none",
               "chunk": exp.score.sequence_chunk, "image_chunk": exp.score.image_chunk}
    return {**options, **choice.worker_options(spark)} if choice is not None else options


def _device(choice: str, seen=None) -> str:
    """This task's device (pipelines/devices.py): the GPU Spark assigned it, else the executor's CUDA
    device, else CPU; logged once per worker and device, added to ``seen`` (an accumulator the driver
    reads for its one line) and reported where SPARKZOO_DEVICE_REPORT asks."""
    from . import devices

    picked = devices.for_score_task(choice)
    devices.report("score", picked, stage=devices.task_stage())
    if seen is not None:
        seen.add({devices.seen_as(picked)})
    said = picked.note.split(": ", 1)[-1]   # without "score task N"
    if said not in _SAID:
        _SAID.add(said)
        log.info("%s", picked.note)
    return picked.device


_SAID: set[str] = set()   # per Python worker: device lines already logged


def _device_failure(exc: Exception) -> ScoringError | None:
    """A task's ``score.device=cuda`` refusal, out of the Spark and Py4J layers around it: one line."""
    import re

    found = re.search(r"ScoringError: (score\.device=cuda[^\n]*)", str(exc))
    return ScoringError(found.group(1).strip()) if found else None


def under_profile(spark, frame, profile):
    """``frame`` whose scoring stage runs under ``profile`` (a GPU share per task), or ``frame`` itself.

    Spark 3.5's ``mapInPandas`` takes no profile (4.0's does), so the profile goes on the stage's RDD: a
    profile on any RDD of a stage applies to the whole stage (shuffle read, model, write), and stages
    before the shuffle (reading, prepare) keep the default, CPU-only profile. The cost is one pass of the
    scored rows (id, outputs; never the images) through Python pickling."""
    if profile is None:
        return frame
    return spark.createDataFrame(frame.rdd.withResources(profile), frame.schema)


def _unpacked(model_file: str) -> str:
    """The shipped zip, unpacked once per executor next to it; concurrent workers race safely by rename."""
    import shutil
    import zipfile

    from pyspark import SparkFiles

    archive = SparkFiles.get(model_file)
    target = archive[: -len(".zip")] + ".unpacked"
    if not os.path.isdir(target):
        tmp = tempfile.mkdtemp(dir=os.path.dirname(archive), prefix=".unpacking-")
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        try:
            os.rename(tmp, target)
        except OSError:   # another worker of this executor got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(target, "artifacts")


def _predictor(model_file: str, options: dict[str, Any]):
    device = _device(options["device"], options.get("device_seen"))
    # Registered versions are immutable, so (registry, name, version) names the weights; a worker reused
    # by the next job keeps its loaded (and, with optimize=compile, compiled) model.
    from .modelpack import IMAGE_CHUNK, SEQUENCE_CHUNK

    chunk = int(options.get("chunk") or SEQUENCE_CHUNK)
    image_chunk = int(options.get("image_chunk") or IMAGE_CHUNK)
    key = (options.get("model_key") or model_file, device, options["optimize"], chunk, image_chunk,
           options.get("calibration_key"))
    pred = _LOADED.get(key)
    if pred is None:
        import torch

        from .modelpack import Predictor

        torch.set_num_threads(int(options["threads"]))
        calibration = options["calibration"].value if options.get("calibration") is not None else None
        pred = _LOADED[key] = Predictor.from_dir(_unpacked(model_file), device=device, optimize=options["optimize"],
                                                 chunk=chunk, image_chunk=image_chunk, calibration=calibration)
    return pred


def score_batches(batches: Iterator[pd.DataFrame], model_file: str, keep: list[str],
                  options: dict[str, Any] | None = None) -> Iterator[pd.DataFrame]:
    """mapInPandas body: one model per worker, whole-batch inference, numpy outputs."""
    from .modelpack import outputs_frame

    options = options or {"device": "auto", "threads": 1, "optimize": "none"}
    predictor = _predictor(model_file, options)
    rejects = options.get("reject_counter")
    for frame in batches:
        if "_reject" in frame.columns:   # rows the native filter flagged: counted for the driver, not scored
            bad = frame["_reject"].notna().to_numpy()
            if bad.any():
                rejects.add(int(bad.sum()))
                frame = frame[~bad]
        if frame.empty:
            continue
        result = outputs_frame(predictor.predict_batch(predictor.batch(frame)))
        result.insert(0, "id", frame["id"].to_numpy())
        for col in keep:
            result[col] = frame[col].to_numpy()
        yield result


def ship_model(spark, exp: Experiment, name: str, version: int) -> ShippedModel:
    """Download one pinned version on the driver and ship its folder to the executors once."""
    import json

    from .modelpack import SPEC_FILE

    local = tempfile.mkdtemp(prefix=f"sparkzoo-{name}-v{version}-")
    files = track.download_model_files(exp, name, version, local)
    model_dir = os.path.dirname(files)
    with open(os.path.join(files, SPEC_FILE)) as fh:
        spec = json.load(fh)
    # One zip, not a folder: Spark ships local folders only on a local master.
    import shutil

    archive = shutil.make_archive(os.path.join(tempfile.mkdtemp(prefix="sparkzoo-ship-"),
                                               os.path.basename(local.rstrip("/"))), "zip", model_dir)
    spark.sparkContext.addFile(archive)
    return ShippedModel(name, version, os.path.basename(archive), spec,
                        os.path.join(model_dir, "artifacts"), f"{track.registry_uri(exp)}|{name}|{version}")


def score_frame(df, shipped: ShippedModel, options: dict[str, Any], keep: list[str]):
    """Rows (id, model inputs, *keep) that fit the model -> id, the task's output columns, *keep."""
    from sparkzoo.models.tasks import task_class

    schema = f"id string, {task_class(shipped.spec['task']).output_schema}" + "".join(
        f", {c} {dict(df.dtypes)[c]}" for c in keep)
    model_file = shipped.file
    options = {**options, "model_key": shipped.key}
    # rows tagged by ``reject_reason`` ride along and are dropped (and counted) in the worker; see ``run``
    flag = ["_reject"] if "_reject" in df.columns and options.get("reject_counter") is not None else []
    return df.select("id", *model_input_columns(shipped.spec, df.columns), *keep, *flag).mapInPandas(
        lambda it: score_batches(it, model_file, keep, options), schema)


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in _GLOB)


def input_frame(spark, exp: Experiment):
    """The DataFrame to score and a name for it in messages: a catalog table, a path/glob, or a split."""
    if exp.score.input_table:
        name = exp.score.input_table
        if not spark.catalog.tableExists(name):
            raise ScoringError(f"score.input_table '{name}' is not in the Spark catalog "
                               f"(current database '{spark.catalog.currentDatabase()}'); create it, qualify it as "
                               f"database.table, or use score.input_path for a Parquet folder")
        return spark.table(name), f"table {name}"
    if exp.score.input_path:
        path = paths.resolve(exp, exp.score.input_path)
        if _is_glob(path):
            if not paths.is_uri(path) and not _glob.glob(path):
                raise ScoringError(f"score.input_path glob {path} matches nothing; check the pattern")
        elif not paths.exists(path):
            raise ScoringError(f"score.input_path {path} does not exist; point it at a Parquet table, folder or glob")
        return spark.read.parquet(path), path
    ds = open_prepared(exp)
    return spark.read.parquet(ds.split_dir(exp.score.input_split)), ds.split_dir(exp.score.input_split)


_INT_TYPES = ("tinyint", "smallint", "int", "bigint")


def check_input(df, where: str, spec: dict[str, Any]):
    """Column presence and types, on the driver before any work; returns ``df`` with id as string.

    A wrong column type is the user's table, not a bad row, so it stops the job with a message; per-row
    problems are left to ``reject_reason``.
    """
    from pyspark.sql import functions as F

    types = dict(df.dtypes)
    if "id" not in types:
        raise ScoringError(f"scoring input {where} lacks column id; it needs the prepared schema (id, ...): score a "
                           f"prepared split or a table written by sparkzoo prepare")
    cols = model_input_columns(spec, df.columns)
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
    return df.withColumn("id", F.col("id").cast("string")) if types["id"] != "string" else df


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


def spread_over_cores(spark, df):
    """Small input (under one ``maxPartitionBytes`` split per core) is repartitioned to one split per core.

    Spark splits Parquet by row group, so a small table (one file, one row group) scores on one core
    while the rest idle, and scoring is compute-bound (measured: a 4 MB, 100,000-row token-id file ran on
    one of two workers). A shuffle of a small table costs little; a large one keeps its own splits. The
    size is Spark's plan estimate from file sizes (no job runs)."""
    cores = spark.sparkContext.defaultParallelism
    try:   # Spark's own parse of the split size ("128MB", "256m", bytes) and its plan's size estimate
        split = int(spark._jsparkSession.sessionState().conf().filesMaxPartitionBytes())
        size = int(str(df._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))
    except Exception:   # no estimate (an unusual source): leave the input as it is
        return df
    if cores > 1 and size < cores * split:
        log.info("scoring input of %d bytes is under one split per core: repartitioning to %d", size, cores)
        return df.repartition(cores)
    return df


def partition_dir(output: str, version: int, run_date: str) -> str:
    return paths.join(output, f"model_version={version}", f"run_date={run_date}")


def _mark_partition(folder: str, info: dict[str, Any]) -> None:
    """Manifest (files, rows) then the marker, after Spark committed the partition (an empty rejects
    partition has no folder; it gets one with only the marker, so "0 rejects" is a stated fact)."""
    info = {**info, "files": [os.path.basename(f) for f in paths.list_files(folder, ".parquet")]}
    paths.write_json(paths.join(folder, "_manifest.json"), info)
    paths.mark_complete(folder, {"rows": info["rows"], "committed_at": info["committed_at"]})


def require_complete(output: str, version: int, exclude_date: str | None = None) -> None:
    """Refuse to build on a predictions partition that lacks its marker: its job died while committing."""
    base = paths.join(output, f"model_version={version}")
    for folder in paths.list_dirs(base):
        if exclude_date and folder.rstrip("/").endswith(f"run_date={exclude_date}"):
            continue
        if not paths.is_complete(folder):
            raise ScoringError(f"predictions partition {folder} has no {paths.SUCCESS} marker: the scoring job that "
                               f"wrote it did not finish, so its ids cannot count as scored; re-run score for that "
                               f"date (--set score.run_date=...) or delete the partition")


def run(exp: Experiment, spark=None) -> ScoreResult:
    from pyspark.sql import functions as F

    started = time.time()
    name, version = track.resolve_model_version(exp, exp.score.model_uri)   # pinned: aliases may move now
    run_date = exp.score.run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    if spark is None:
        from .session import get_spark
        spark = get_spark(exp)
    from . import devices

    profile = devices.score_profile(spark, exp.score.tasks_per_gpu)   # before any work: a bad request fails now
    log.info("scoring: %s", devices.score_plan(spark, exp.score.device, exp.score.tasks_per_gpu))
    df, where = input_frame(spark, exp)
    shipped = ship_model(spark, exp, name, version)
    df = check_input(df, where, shipped.spec)
    choice = inference_path.choose(spark, exp, shipped, df, where)
    record = lineage.scoring_record(exp, df, where, name, version)   # input snapshot, model URI, config hash
    where_in = where

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(exp.score.batch_size))
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    # spread for the scoring passes only: ``df.count()`` below stays a Parquet metadata count, no shuffle
    tagged = spread_over_cores(spark, df).withColumn("_reject", reject_reason(df, shipped.spec))
    keep = [c for c in ("label",) if c in df.columns and shipped.is_classifier]
    good = tagged.filter(F.col("_reject").isNull())
    out = paths.predictions_dir(exp)
    skipped = 0
    # One scan when every row fits: the scoring pass sees the tagged rows, drops and counts the bad ones,
    # and only a nonzero count costs the second scan that writes the reject table (0.9 s of a 30 s job
    # at 1,000,000 rows). Incremental runs drop already-scored ids first, so they keep both passes.
    counter = None
    if exp.score.incremental and paths.exists(out):
        # Ids this version scored on EARLIER dates; today's partition is about to be replaced, so a
        # rerun for the same date scores the same rows again and stays idempotent.
        require_complete(out, version, exclude_date=run_date)
        done = (spark.read.parquet(out)
                .filter((F.col("model_version") == version) & (F.col("run_date").cast("string") != run_date))
                .select("id"))
        skipped = good.join(done, "id", "left_semi").count()
        good = good.join(done, "id", "left_anti")
    else:
        counter = spark.sparkContext.accumulator(0)
        good = tagged
    seen = spark.sparkContext.accumulator(set(), devices.SetUnion())
    options = {**worker_options(exp, choice, spark), "reject_counter": counter, "device_seen": seen}
    scored = (under_profile(spark, score_frame(good, shipped, options, keep), profile)
              .withColumn("model_name", F.lit(name))
              .withColumn("scored_at", F.current_timestamp())
              .withColumn("model_version", F.lit(version))
              .withColumn("run_date", F.lit(run_date)))
    rejects_path = out.rstrip("/") + "_rejects"
    rejects = (tagged.filter(F.col("_reject").isNotNull())
               .select("id", F.col("_reject").alias("reason"), F.lit(name).alias("model_name"),
                       F.lit(version).alias("model_version"), F.lit(run_date).alias("run_date")))
    for frame, where in ((scored, out), (rejects, rejects_path)):
        # a marker left from an earlier run of this date must not vouch for files being replaced now
        paths.delete_file(paths.join(partition_dir(where, version, run_date), paths.SUCCESS))
        if where == rejects_path and counter is not None and counter.value == 0:
            # no row was flagged: this date's rejects are empty, so reject files of an earlier run of the
            # same date (a dynamic overwrite with no rows would leave them) go, without a second scan
            paths.delete_dir(partition_dir(where, version, run_date))
            continue
        try:
            frame.write.mode("overwrite").partitionBy("model_version", "run_date").parquet(where)
        except Exception as exc:
            failure = paths.write_failure(exc, f"scoring output {where}") or _device_failure(exc)
            if failure is not None:
                raise failure from None
            raise

    if seen.value:
        log.info("scoring ran on %s", devices.summarise(seen.value))
    mine = (F.col("model_version") == version) & (F.col("run_date").cast("string") == run_date)
    if paths.list_files(partition_dir(out, version, run_date), ".parquet"):
        written = spark.read.parquet(out).filter(mine)
        agg = written.agg(F.count("*").alias("n"),
                          *([F.avg((F.col("prediction") == F.col("label")).cast("double")).alias("acc")] if keep else [])
                          ).collect()[0]  # small: one row
    else:   # every row was rejected (or the input was empty): Spark wrote no file to read back
        agg = {"n": 0, "acc": None}
    rejected = (0 if counter is not None and counter.value == 0 else
                spark.read.schema(REJECT_SCHEMA).parquet(rejects_path).filter(mine).count())
    n_in = df.count()
    result = ScoreResult(name, version, n_in, int(agg["n"]), rejected, out, rejects_path,
                         float(agg["acc"]) if keep and agg["acc"] is not None else None, time.time() - started,
                         run_date, skipped, choice.path)
    if result.scored_rows + result.rejected_rows + skipped != n_in:
        raise ScoringError(f"scored {result.scored_rows} + rejected {rejected} + already scored {skipped} rows != "
                           f"{n_in} input rows; output at {out} is not trusted (duplicate ids in the input?)")
    drift_block = None
    if exp.score.drift and agg["n"]:   # tonight's rows that fit the model + their predictions, vs the reference
        drift_block = monitoring.check(
            exp, inputs=df.filter(reject_reason(df, shipped.spec).isNull()), predictions=written,
            spec=shipped.spec, run_id=record["model"]["run_id"],
            name=name, version=version, run_date=run_date, partition=partition_dir(out, version, run_date), where=where_in,
            model=(shipped.file, shipped.key), rows=n_in)
        result.drift = drift_block
    info = {"model_name": name, "model_version": version, "run_date": run_date, "input_rows": n_in,
            "scored_rows": result.scored_rows, "rejected_rows": rejected, "skipped_rows": skipped,
            "inference_path": choice.summary(), **record, **({"drift": drift_block} if drift_block else {}),
            "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    for where, rows in ((rejects_path, rejected), (out, result.scored_rows)):   # predictions last
        _mark_partition(partition_dir(where, version, run_date), {**info, "rows": rows})
    log.info("scored %d rows with %s v%d in %.1fs (%.0f rows/s), %d rejected%s", result.scored_rows, name, version,
             result.seconds, n_in / max(result.seconds, 1e-9), rejected,
             f", {skipped} already scored (incremental)" if exp.score.incremental else "")
    limit = exp.score.drift_fail_above
    failing = [n for n, f in (drift_block or {}).get("features", {}).items()
               if limit is not None and f["psi"] is not None and f["psi"] > limit]
    if failing:   # the output is written and marked: the job reports the move, it does not hide the scores
        moved = ", ".join(f"{n} (PSI {drift_block['features'][n]['psi']:.2f})" for n in failing)
        raise DriftError(f"drift: {moved} above score.drift_fail_above={limit:g}; see {drift_block['report']}")
    return result
