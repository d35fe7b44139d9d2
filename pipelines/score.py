"""Batch scoring with a registered model: Spark ``mapInPandas`` over Arrow batches.

The model version is pinned on the driver at job start (an alias that moves mid-job cannot mix
versions), its files are shipped once with ``addFile``, and each Python worker loads it once. Rows that
cannot fit the model (null or wrong-size input) are routed by a native Spark filter to a reject table
with a reason; the job goes on. Output is Parquet partitioned by model version and run date, and a
rerun overwrites only its own partitions.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pandas as pd

from . import paths, track
from .config import Experiment
from .dataset import open_prepared
from .errors import ScoringError

log = logging.getLogger("sparkzoo.score")

OUTPUT_SCHEMA_BASE = "id string, prediction long, confidence float, probability array<float>"
REJECT_SCHEMA = "id string, reason string, model_name string, model_version int, run_date string"
_LOADED: dict[str, Any] = {}   # per Python worker: model dir -> Predictor


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


def _predictor(local_dir: str):
    pred = _LOADED.get(local_dir)
    if pred is None:
        import torch

        from .modelpack import Predictor

        torch.set_num_threads(int(os.environ.get("SPARKZOO_SCORE_THREADS", "1")))
        pred = _LOADED[local_dir] = Predictor.from_dir(local_dir)
    return pred


def score_batches(batches: Iterator[pd.DataFrame], model_file: str, keep: list[str]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: one model per worker, whole-batch inference."""
    from pyspark import SparkFiles

    predictor = _predictor(os.path.join(SparkFiles.get(model_file), "artifacts"))
    for frame in batches:
        if frame.empty:
            continue
        out = predictor.predict_arrays(predictor.decode(frame["image"]))
        result = pd.DataFrame({"id": frame["id"].to_numpy(), "prediction": out["prediction"],
                               "confidence": out["confidence"], "probability": list(out["probability"])})
        for col in keep:
            result[col] = frame[col].to_numpy()
        yield result


def input_frame(spark, exp: Experiment):
    if exp.score.input_path:
        path = paths.resolve(exp, exp.score.input_path)
        if not paths.exists(path):
            raise ScoringError(f"score.input_path {path} does not exist; point it at a Parquet table or folder")
        return spark.read.parquet(path), path
    ds = open_prepared(exp)
    return spark.read.parquet(ds.split_dir(exp.score.input_split)), ds.split_dir(exp.score.input_split)


def run(exp: Experiment, spark=None) -> ScoreResult:
    from pyspark.sql import functions as F

    started = time.time()
    name, version = track.resolve_model_version(exp, exp.score.model_uri)
    run_date = exp.score.run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    if spark is None:
        from .session import get_spark
        spark = get_spark(exp)
    df, where = input_frame(spark, exp)
    missing = [c for c in ("id", "image") if c not in df.columns]
    if missing:
        raise ScoringError(f"scoring input {where} lacks column(s) {', '.join(missing)}; it needs the prepared image "
                           f"schema (id, image, ...): score a prepared split or a table written by sparkzoo prepare")

    import mlflow

    track.client(exp)
    local = tempfile.mkdtemp(prefix="sparkzoo-model-")
    model_dir = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=local)
    from .modelpack import Predictor

    spec = Predictor.from_dir(os.path.join(model_dir, "artifacts")).spec
    per = spec["shape"]["height"] * spec["shape"]["width"] * spec["shape"]["channels"]
    # One archive, unpacked once per executor: addFile of a directory only works on a local master.
    import shutil

    archive = shutil.make_archive(os.path.join(tempfile.mkdtemp(prefix="sparkzoo-ship-"), f"sparkzoo-{name}-v{version}"),
                                  "zip", model_dir)
    spark.sparkContext.addArchive(archive)
    model_file = os.path.basename(archive)

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(exp.score.batch_size))
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    reason = (F.when(F.col("id").isNull(), F.lit("null_id"))
              .when(F.col("image").isNull(), F.lit("null_image"))
              .when(F.length("image") != per, F.concat(F.lit("wrong_size: "), F.length("image").cast("string"),
                                                        F.lit(f" bytes, model expects {per}"))))
    tagged = df.withColumn("_reject", reason)
    keep = [c for c in ("label",) if c in df.columns]
    good = tagged.filter(F.col("_reject").isNull()).select("id", "image", *keep)
    schema = OUTPUT_SCHEMA_BASE + "".join(f", {c} {dict(df.dtypes)[c]}" for c in keep)
    scored = (good.mapInPandas(lambda it: score_batches(it, model_file, keep), schema)
              .withColumn("model_name", F.lit(name))
              .withColumn("scored_at", F.current_timestamp())
              .withColumn("model_version", F.lit(version))
              .withColumn("run_date", F.lit(run_date)))
    out = paths.predictions_dir(exp)
    scored.write.mode("overwrite").partitionBy("model_version", "run_date").parquet(out)
    rejects_path = out.rstrip("/") + "_rejects"
    (tagged.filter(F.col("_reject").isNotNull())
     .select("id", F.col("_reject").alias("reason"), F.lit(name).alias("model_name"),
             F.lit(version).alias("model_version"), F.lit(run_date).alias("run_date"))
     .write.mode("overwrite").partitionBy("model_version", "run_date").parquet(rejects_path))

    written = spark.read.parquet(out).filter((F.col("model_version") == version) & (F.col("run_date") == run_date))
    agg = written.agg(F.count("*").alias("n"),
                      *([F.avg((F.col("prediction") == F.col("label")).cast("double")).alias("acc")] if keep else [])
                      ).collect()[0]  # small: one row
    rejected = spark.read.schema(REJECT_SCHEMA).parquet(rejects_path).filter(
        (F.col("model_version") == version) & (F.col("run_date") == run_date)).count()
    n_in = df.count()
    result = ScoreResult(name, version, n_in, int(agg["n"]), rejected, out, rejects_path,
                         float(agg["acc"]) if keep and agg["acc"] is not None else None, time.time() - started, run_date)
    if result.scored_rows + result.rejected_rows != n_in:
        raise ScoringError(f"scored {result.scored_rows} + rejected {rejected} rows != {n_in} input rows; output at "
                           f"{out} is not trusted")
    log.info("scored %d rows with %s v%d in %.1fs (%.0f rows/s), %d rejected", result.scored_rows, name, version,
             result.seconds, n_in / max(result.seconds, 1e-9), rejected)
    return result
