"""The promotion gate: candidate vs champion on the same held-out rows, evaluated in Spark.

Training registers every run as a new version with alias ``candidate``. ``sparkzoo promote`` pins both
aliases to versions, scores the configured split of the prepared dataset with each model through the
scoring library the score stage runs on (``scoring.shipped_model`` / ``scoring.score_frame``:
mapInPandas, one model per Python worker), reduces the predictions to accuracy and log loss with Spark
aggregations (one row reaches the driver), and moves ``champion`` only when the candidate wins on
``mlflow.promote_metric`` by more than ``mlflow.promote_margin``. The metric is recomputed here rather
than read from the training runs so both models are judged on the same rows by the same code, whatever
data each run was tested on.

Every decision, including "kept" and rollbacks, is written twice: as tags on the candidate's version and
as a finished MLflow run in the experiment holding both models' metrics and the decision.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from . import scoring, track
from .config import Experiment
from .dataset import open_prepared
from .errors import RegistryError

log = logging.getLogger("sparkzoo.promote")


@dataclass
class PromoteResult:
    decision: str                  # promoted | kept | first | noop | rollback
    promoted: bool
    candidate: int | None
    champion_before: int | None
    champion_after: int
    metric: str
    candidate_value: float | None
    champion_value: float | None
    reason: str
    run_id: str
    seconds: float


def evaluate(spark, exp: Experiment, version: int, split: str) -> dict[str, float]:
    """Accuracy, log loss and row count of one model version on one prepared split, in Spark."""
    from pyspark.sql import functions as F

    ds = open_prepared(exp)
    df = spark.read.parquet(ds.split_dir(split))
    with scoring.shipped_model(spark, exp, exp.model_name, version) as shipped:
        if not shipped.is_classifier:
            raise RegistryError(f"sparkzoo promote compares classifiers (accuracy, log loss); {exp.model_name} is a "
                                f"{shipped.spec['task']} model: compare its runs' test metrics in MLflow and move the "
                                f"champion alias with --rollback-to <version>")
        good = scoring.fitting_rows(df, ds.split_dir(split), shipped.spec).filter(F.col("label").isNotNull())
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(exp.score.batch_size))
        scored = scoring.score_frame(good, shipped, scoring.worker_options(exp), ["label"])
        p_true = F.element_at("probability", F.col("label").cast("int") + 1)
        row = scored.agg(F.count("*").alias("rows"),
                         F.avg((F.col("prediction") == F.col("label")).cast("double")).alias("accuracy"),
                         F.avg(-F.log(F.greatest(p_true, F.lit(1e-12)))).alias("loss")).collect()[0]  # small: one row
    if not row["rows"]:
        raise RegistryError(f"the {split} split of {ds.path} has no labelled rows to compare models on; "
                            f"set mlflow.promote_metric to another split")
    return {"rows": float(row["rows"]), "accuracy": float(row["accuracy"]), "loss": float(row["loss"])}


def _record(exp: Experiment, *, decision: str, candidate: int | None, champion_before: int | None,
            champion_after: int, reason: str, metrics: dict[str, float], started: float,
            metric: str, value_c: float | None = None, value_ch: float | None = None) -> PromoteResult:
    promoted = champion_after != champion_before
    run_id = track.log_decision(
        exp, run_name=f"{decision}-v{candidate if candidate is not None else champion_after}",
        params={"candidate_version": candidate, "champion_version_before": champion_before,
                "champion_version_after": champion_after, "promote_metric": metric,
                "promote_margin": exp.mlflow.promote_margin},
        metrics=metrics, tags={"sparkzoo.decision": decision, track.PROMOTION_TAG: reason})
    tagged = candidate if candidate is not None else champion_after
    track.tag_version(exp, tagged, {track.PROMOTION_TAG: reason, track.DECISION_TAG: decision,
                                    "sparkzoo.promotion_run_id": run_id})
    if promoted and champion_before is not None:
        track.tag_version(exp, champion_before, {"sparkzoo.replaced_by": f"v{champion_after} ({decision}, run {run_id})"})
    log.info("%s: %s", decision, reason)
    return PromoteResult(decision, promoted, candidate, champion_before, champion_after, metric, value_c, value_ch,
                         reason, run_id, time.time() - started)


def run(exp: Experiment, spark=None) -> PromoteResult:
    """Compare candidate and champion in Spark and move ``champion`` only if the candidate wins."""
    started = time.time()
    metric = exp.mlflow.promote_metric
    split, measure = metric.split("_", 1)
    candidate = track.alias_version(exp, "candidate")
    champion = track.alias_version(exp, "champion")
    if candidate is None:
        raise RegistryError(f"registered model '{exp.model_name}' has no 'candidate' version in "
                            f"{track.registry_uri(exp)}; train one first (sparkzoo train --conf ...)")
    if champion is None:
        track.set_alias(exp, "champion", candidate)
        return _record(exp, decision="first", candidate=candidate, champion_before=None, champion_after=candidate,
                       reason=f"no champion yet: v{candidate} becomes champion", metrics={}, started=started,
                       metric=metric)
    if candidate == champion:
        return _record(exp, decision="noop", candidate=candidate, champion_before=champion, champion_after=champion,
                       reason=f"candidate v{candidate} is already champion", metrics={}, started=started,
                       metric=metric)
    if spark is None:
        from .session import get_spark
        spark = get_spark(exp)
    cand = evaluate(spark, exp, candidate, split)
    champ = evaluate(spark, exp, champion, split)
    wins, why = track.decide(metric, cand[measure], champ[measure], exp.mlflow.promote_margin)
    metrics = {**{f"candidate_{split}_{k}": v for k, v in cand.items()},
               **{f"champion_{split}_{k}": v for k, v in champ.items()}}
    now = track.alias_version(exp, "champion")
    if now != champion:
        raise RegistryError(f"champion of '{exp.model_name}' moved from v{champion} to v{now} while promote was "
                            f"evaluating; nothing changed, run sparkzoo promote again")
    if wins:
        track.set_alias(exp, "champion", candidate)
        reason = f"v{candidate} promoted over v{champion}: {why}"
    else:
        reason = f"v{candidate} not promoted, champion stays v{champion}: {why}"
    return _record(exp, decision="promoted" if wins else "kept", candidate=candidate, champion_before=champion,
                   champion_after=candidate if wins else champion, reason=reason, metrics=metrics,
                   started=started, metric=metric, value_c=cand[measure], value_ch=champ[measure])


def rollback(exp: Experiment, version: int) -> PromoteResult:
    """Point ``champion`` back at an earlier (or any existing) version; logged like a promotion."""
    started = time.time()
    track.require_version(exp, version)
    before = track.alias_version(exp, "champion")
    track.set_alias(exp, "champion", version)
    reason = f"rollback: champion v{before} -> v{version}" if before is not None else f"rollback: champion -> v{version}"
    result = _record(exp, decision="rollback", candidate=None, champion_before=before, champion_after=version,
                     reason=reason, metrics={}, started=started, metric=exp.mlflow.promote_metric)
    return result
