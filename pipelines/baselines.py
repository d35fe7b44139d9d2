"""Classical baselines on the same prepared Parquet as the nets, logged to the same MLflow experiment.

The talk's lesson is that a net must show what it buys over something simple, on the same split. Each
task class names its baseline (``baseline`` in models/tasks/) and this module registers the baselines by
name (``@register_baseline``), so a new task picks one by name and a new baseline is one function here:

- ``logistic_regression`` (classification): multinomial logistic regression (Spark ML) on the raw
  pixels.
- ``pca`` (reconstruction): PCA with as many components as the autoencoder's code (Spark ML):
  reconstruction MSE on the 0..1 pixel scale, and a linear probe (the same logistic regression) on the
  PCA code. When the experiment's autoencoder is registered (``models:/<model_name>@champion``), the
  same probe runs on its code, computed by the scorer, and is logged to that model's training run too.
- ``tfidf_logistic_regression`` (text classification): TF-IDF over the prepared token ids (Spark ML
  CountVectorizer + IDF, words seen at least twice in train) and the same logistic regression.
- ``colour_threshold`` (segmentation): the background colour is the median of each image's border, a
  pixel is foreground when it is farther from it than a threshold chosen on the train split.

Everything runs in Spark; only model coefficients and per-threshold sums reach the driver. The
autoencoder's probe is scored with the scoring library (pipelines/scoring.py), not the score stage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from . import scoring, track
from .config import Experiment
from .dataset import open_prepared
from .errors import ConfigError, TrainingError

log = logging.getLogger("sparkzoo.baselines")


@dataclass
class BaselineResult:
    kind: str
    run_id: str
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    model_probe: dict[str, Any] | None = None   # reconstruction: the autoencoder's own probe, when registered


Metrics = tuple[dict[str, float], dict[str, Any]]   # (metrics, params) as logged on the baseline's run
Fit = Callable[[Any, Experiment, Any], Metrics]     # (spark, exp, prepared dataset) -> Metrics
Probe = Callable[[Any, Experiment, Any], dict[str, Any] | None]   # the same -> the model's own figures


@dataclass(frozen=True)
class Baseline:
    """A registered baseline: ``fit(spark, exp, ds)`` -> (metrics, params) on the prepared splits, and
    optionally a probe of the experiment's own registered model that goes beside it (``model_probe``)."""

    fit: Fit
    model_probe: Probe | None = None


BASELINES: dict[str, Baseline] = {}


def register_baseline(name: str, *, model_probe: Probe | None = None) -> Callable[[Fit], Fit]:
    """Decorator: make ``fit`` the baseline a task class names by ``name`` (its ``baseline``)."""
    def add(fit: Fit) -> Fit:
        if name in BASELINES:
            raise ValueError(f"baseline '{name}' is registered twice")
        BASELINES[name] = Baseline(fit, model_probe)
        return fit
    return add


def baseline_of(model_name: str) -> tuple[str, Baseline]:
    """The baseline a family is compared with: its task class names it, this module registers it."""
    from ..models import model_task
    from ..models.tasks import task_class

    task = model_task(model_name)
    kind = task_class(task).baseline
    if kind is None:
        raise ConfigError(f"sparkzoo baseline: {model_name} is a {task} model and {task} declares no baseline; "
                          f"the baselines are {', '.join(sorted(BASELINES))}, for the tasks that name one")
    if kind not in BASELINES:
        raise TrainingError(f"task {task} names baseline '{kind}', which pipelines/baselines.py does not register "
                            f"(registered: {', '.join(sorted(BASELINES))})")
    return kind, BASELINES[kind]


def run(exp: Experiment, spark=None) -> BaselineResult:
    """``sparkzoo baseline``: the family's baseline on the prepared splits, logged as a finished run."""
    started = time.time()
    kind, baseline = baseline_of(exp.model.name)   # before any work: a family without one fails now
    ds = open_prepared(exp)
    if spark is None:
        from .session import get_spark
        spark = get_spark(exp)
    metrics, params = baseline.fit(spark, exp, ds)
    model_probe = baseline.model_probe(spark, exp, ds) if baseline.model_probe is not None else None
    seconds = time.time() - started
    metrics["train_seconds"] = seconds
    run_id = track.log_finished_run(
        exp, run_name=f"{exp.name}-baseline-{kind}", params={"baseline": kind, **params}, metrics=metrics,
        tags={"sparkzoo.kind": "baseline", "sparkzoo.baseline": kind, "sparkzoo.dataset": ds.manifest["dataset"],
              "sparkzoo.dataset_version": ds.version, "sparkzoo.baseline_for": exp.model.name},
        note=f"{kind} baseline for {exp.model.name} on {ds.manifest['dataset']} v{ds.version}")
    log.info("%s baseline on %s: %s (%.1fs, run %s)", kind, ds.manifest["dataset"],
             ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), seconds, run_id)
    return BaselineResult(kind, run_id, metrics, params, seconds, model_probe)


# ---- features --------------------------------------------------------------------------------------

def _pixels(pdf: pd.DataFrame, per: int) -> np.ndarray:
    return np.frombuffer(b"".join(pdf["image"].tolist()), dtype=np.uint8).reshape(len(pdf), per)


def pixel_vectors(df, shape: dict[str, int]):
    """(image, label) rows -> (label, features) with pixels on the 0..1 scale as an ML vector."""
    from pyspark.ml.functions import array_to_vector

    per = shape["height"] * shape["width"] * shape["channels"]

    def to_arrays(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            x = _pixels(pdf, per).astype(np.float32) / 255.0
            yield pd.DataFrame({"label": pdf["label"].to_numpy(), "pixels": list(x)})

    return (df.select("image", "label").mapInPandas(to_arrays, "label long, pixels array<float>")
            .select("label", array_to_vector("pixels").alias("features")))


def _probe(exp: Experiment, train, test, features: str = "features") -> float:
    """Multinomial logistic regression fit on train, accuracy on test: the linear probe of every baseline."""
    from pyspark.ml.classification import LogisticRegression
    from pyspark.sql import functions as F

    b = exp.baseline
    model = LogisticRegression(featuresCol=features, labelCol="label", family="multinomial", maxIter=b.max_iter,
                               regParam=b.reg_param).fit(train)
    row = (model.transform(test).agg(F.avg((F.col("prediction") == F.col("label")).cast("double")).alias("acc"))
           .collect()[0])  # small: one row
    return float(row["acc"])


def _split(spark, ds, split: str):
    return spark.read.parquet(ds.split_dir(split))


# ---- classification ----------------------------------------------------------------------------------

@register_baseline("logistic_regression")
def logistic_regression(spark, exp: Experiment, ds) -> tuple[dict[str, float], dict[str, Any]]:
    shape = ds.manifest["shape"]
    train = pixel_vectors(_split(spark, ds, "train"), shape).cache()
    try:
        acc = _probe(exp, train, pixel_vectors(_split(spark, ds, "test"), shape))
    finally:
        train.unpersist()
    return {"test_accuracy": acc}, {"max_iter": exp.baseline.max_iter, "reg_param": exp.baseline.reg_param,
                                    "features": "raw pixels (0..1)"}


@register_baseline("tfidf_logistic_regression")
def tfidf_logistic_regression(spark, exp: Experiment, ds) -> tuple[dict[str, float], dict[str, Any]]:
    """Bag of words with TF-IDF weights, fit on train only (vocabulary and IDF), then the linear probe."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import IDF, CountVectorizer
    from pyspark.sql import functions as F

    def words(split: str):
        return _split(spark, ds, split).select("label", F.transform("token_ids", lambda t: t.cast("string")).alias("words"))

    train = words("train").cache()
    try:
        features = Pipeline(stages=[CountVectorizer(inputCol="words", outputCol="tf", minDF=2.0),
                                    IDF(inputCol="tf", outputCol="features")]).fit(train)
        acc = _probe(exp, features.transform(train), features.transform(words("test")))
        vocab = len(features.stages[0].vocabulary)
    finally:
        train.unpersist()
    return {"test_accuracy": acc}, {"max_iter": exp.baseline.max_iter, "reg_param": exp.baseline.reg_param,
                                    "features": f"TF-IDF over {vocab} prepared word ids (minDF 2)"}


# ---- reconstruction ----------------------------------------------------------------------------------

def _code_size(exp: Experiment) -> int:
    return int(exp.baseline.pca_components or exp.model.params.get("code", 10))


def autoencoder_probe(spark, exp: Experiment, ds) -> dict[str, Any] | None:
    """The same probe on the registered autoencoder's code (scored in Spark); logged to its training run."""
    from pyspark.ml.functions import array_to_vector

    try:
        name, version = track.resolve_model_version(exp, None)
    except Exception as exc:   # not trained yet: the PCA half still stands on its own
        log.info("no registered %s@champion to probe (%s); run sparkzoo train first for the comparison",
                 exp.model_name, exc)
        return None
    options = scoring.worker_options(exp)
    with scoring.shipped_model(spark, exp, name, version) as shipped:
        def codes(split: str):
            df = _split(spark, ds, split).select("id", "image", "label")
            return (scoring.score_frame(df, shipped, options, ["label"])
                    .select("label", array_to_vector("code").alias("features")))

        train = codes("train").cache()
        try:
            acc = _probe(exp, train, codes("test"))
        finally:
            train.unpersist()
    mv = track.client(exp).get_model_version(name, str(version))
    track.log_metrics(exp, mv.run_id, {"test_probe_accuracy": acc}, step=0)
    return {"model": name, "version": version, "run_id": mv.run_id, "test_probe_accuracy": acc}


@register_baseline("pca", model_probe=autoencoder_probe)
def pca(spark, exp: Experiment, ds) -> tuple[dict[str, float], dict[str, Any]]:
    """PCA fit on train (Spark ML, centred covariance); test MSE of the rank-k reconstruction; code probe."""
    from pyspark.ml.feature import PCA
    from pyspark.ml.stat import Summarizer
    from pyspark.sql import functions as F

    shape, k = ds.manifest["shape"], _code_size(exp)
    per = shape["height"] * shape["width"] * shape["channels"]
    train = pixel_vectors(_split(spark, ds, "train"), shape).cache()
    try:
        model = PCA(k=k, inputCol="features", outputCol="code").fit(train)
        mean = np.asarray(train.select(Summarizer.mean(F.col("features")).alias("m")).collect()[0]["m"].toArray())  # small: one vector
        components = model.pc.toArray()   # (pixels, k)

        def sq_errors(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for pdf in batches:
                x = _pixels(pdf, per).astype(np.float64) / 255.0 - mean
                rec = (x @ components) @ components.T
                yield pd.DataFrame({"sq": [float(((x - rec) ** 2).sum())], "n": [len(pdf)]})

        row = (_split(spark, ds, "test").select("image").mapInPandas(sq_errors, "sq double, n long")
               .agg(F.sum("sq").alias("sq"), F.sum("n").alias("n")).collect()[0])  # small: one row
        mse = float(row["sq"]) / max(int(row["n"]) * per, 1)
        test = model.transform(pixel_vectors(_split(spark, ds, "test"), shape))
        probe = _probe(exp, model.transform(train), test, "code")
        explained = float(np.sum(model.explainedVariance.toArray()))
    finally:
        train.unpersist()
    return ({"test_mse": mse, "test_probe_accuracy": probe, "explained_variance": explained},
            {"components": k, "probe": "multinomial logistic regression on the code"})


# ---- segmentation ----------------------------------------------------------------------------------

def _threshold_sums(df, shape: dict[str, int], thresholds: list[float]):
    """Per threshold: foreground intersection, union, summed per-image IoU and rows, over a split."""
    from pyspark.sql import functions as F

    h, w, c = shape["height"], shape["width"], shape["channels"]
    grid = np.asarray(thresholds, dtype=np.float64)

    def sums(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            img = _pixels(pdf, h * w * c).reshape(-1, h, w, c).astype(np.float64)
            truth = np.frombuffer(b"".join(pdf["mask"].tolist()), np.uint8).reshape(-1, h, w).astype(bool)
            border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], axis=1)  # (n, 2h+2w, c)
            background = np.median(border, axis=1)                                                # (n, c)
            dist = np.sqrt(((img - background[:, None, None, :]) ** 2).sum(-1))                   # (n, h, w)
            rows = []
            for i, t in enumerate(grid):
                pred = dist > t
                inter = (pred & truth).sum(axis=(1, 2))
                union = (pred | truth).sum(axis=(1, 2))
                per_image = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
                rows.append((i, float(inter.sum()), float(union.sum()), float(per_image.sum()), len(pdf)))
            yield pd.DataFrame(rows, columns=["t", "inter", "union", "image_iou", "n"])

    out = (df.select("image", "mask").mapInPandas(sums, "t int, inter double, union double, image_iou double, n long")
           .groupBy("t").agg(*[F.sum(c).alias(c) for c in ("inter", "union", "image_iou", "n")])
           .collect())  # small: one row per threshold
    return {int(r["t"]): r for r in out}


@register_baseline("colour_threshold")
def colour_threshold(spark, exp: Experiment, ds) -> tuple[dict[str, float], dict[str, Any]]:
    shape = ds.manifest["shape"]
    top = 255.0 * np.sqrt(shape["channels"])
    grid = [float(t) for t in np.linspace(0.0, top, exp.baseline.thresholds + 1)[1:]]
    train = _threshold_sums(_split(spark, ds, "train"), shape, grid)
    best = max(train, key=lambda i: train[i]["inter"] / max(train[i]["union"], 1.0))
    test = _threshold_sums(_split(spark, ds, "test"), shape, [grid[best]])[0]
    return ({"test_iou": test["inter"] / max(test["union"], 1.0), "test_mean_image_iou": test["image_iou"] / max(test["n"], 1),
             "train_iou": train[best]["inter"] / max(train[best]["union"], 1.0)},
            {"threshold": round(grid[best], 2), "background": "median of the image border",
             "thresholds_tried": len(grid)})
