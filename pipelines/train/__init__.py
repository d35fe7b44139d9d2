"""The train stage, driver side: find the data and the run, launch the ranks, register the model.

A crash of a rank, an executor or the gloo group is healed inside the same command: the ranks are
relaunched from the newest checkpoint in the same MLflow run (``recovery.py``, ``train.max_failures``).
A re-run of the same config after the command itself died finds the unfinished MLflow run of that
config and resumes from its last checkpoint (``train.resume: auto``; ``never`` = ``--fresh``,
``require`` = fail if there is none); a finished run is never touched, so every completed run is a new
version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .. import paths, track
from ..config import Experiment
from ..dataset import open_prepared
from ..errors import ConfigError, TrainingError
from . import checkpoint, progress, recovery
from .launcher import launch

log = logging.getLogger("sparkzoo.train")


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    model_version: int
    aliases: list[str]
    test: dict[str, float]
    history: list[dict[str, float]]
    parameters: int
    train_seconds: float
    samples_per_second: float
    wall_seconds: float
    resumed_from: str | None
    promotion: str
    first_step_seconds: float = 0.0
    ranks: list[dict[str, Any]] = field(default_factory=list)
    restarts: list[recovery.Restart] = field(default_factory=list)


def run(exp: Experiment, spark=None, *, fault: tuple[int, int, int] | None = None) -> TrainResult:
    """Train, register and alias. ``fault`` = (rank, epoch, step) kills that rank there (tests only)."""
    started = time.time()
    check_model_params(exp)   # before Spark starts: a typo costs a second, not a cluster launch
    ds = open_prepared(exp)
    if exp.train.backend != "horovodrun" and spark is None:
        from ..session import get_spark
        spark = get_spark(exp)
    check_task(exp, ds.manifest)
    init_from = None
    if exp.model.init_from:   # pinned once: an alias that moves during the job cannot change the start point
        src_name, src_version = track.resolve_model_version(exp, exp.model.init_from, "model.init_from")
        init_from = {"uri": exp.model.init_from, "name": src_name, "version": src_version}
    run_id = track.find_unfinished_run(exp) if exp.train.resume != "never" else None
    if run_id is None and exp.train.resume == "require":
        raise ConfigError(f"train.resume=require but there is no unfinished run of this config ({exp.name}, config hash "
                          f"{track.config_hash(exp)}) in MLflow experiment {exp.mlflow.experiment} to resume; run "
                          f"without it (train.resume=auto) to start one")
    resume_from = None
    if run_id is not None:
        resume_from = checkpoint.latest(paths.checkpoint_dir(exp, run_id))
        track.client(exp).update_run(run_id, status="RUNNING")
        log.info("resuming MLflow run %s from %s", run_id, resume_from or "the start (no checkpoint yet)")
    else:
        source = ({"model.init_from_name": init_from["name"], "model.init_from_version": str(init_from["version"])}
                  if init_from else None)
        run_id = track.start_run(exp, dataset_version=ds.version, world_size=exp.train.num_proc, extra_params=source)
        track.log_dataset_inputs(exp, run_id, ds.manifest, ds.path)   # the run page lists its datasets
    ctx = {"run_id": run_id, "dataset_path": ds.path, "manifest": ds.manifest,
           "checkpoint_dir": paths.checkpoint_dir(exp, run_id), "resume_from": resume_from,
           "fault": fault, "launched_at": time.time(), "first_launched_at": time.time(), "init_from": init_from}

    def launch_once(size: int, restart: recovery.Restart | None) -> list[dict[str, Any]]:
        if restart is not None:   # the newest checkpoint now, and what the ranks log about this restart
            ctx["resume_from"] = restart.resumed_from
            ctx["restart"] = {"number": restart.number, "failed_at": restart.failed_at}
            ctx["launched_at"] = time.time()
        timeout = START_TIMEOUT_S if restart is None else max(RELAUNCH_START_TIMEOUT_S, int(exp.train.rank_wait_seconds))
        return launch(exp, ctx, spark, num_proc=size, start_timeout=timeout)

    def on_restart(restart: recovery.Restart) -> None:
        restart.resumed_from = checkpoint.latest(ctx["checkpoint_dir"])
        _log_restart(exp, run_id, restart)

    try:
        with progress.driver_display(spark) as display:   # rank 0 reports here; the driver owns the terminal
            ctx["progress"] = display.address if exp.train.progress else None
            ranks, restarts = recovery.run_with_restarts(exp, spark, launch_once, on_restart)
    except BaseException:
        track.end_run(exp, run_id, "FAILED")
        raise
    summary = ranks[0]
    log.info("%d ranks averaged gradients through %s", len(ranks), summary.get("gradient_exchange", "?"))
    if "model_uri" not in summary:
        raise TrainingError("rank 0 finished without a model; see the rank logs above")
    metric = summary["metric"]
    description = (f"{exp.model.name} trained on {ds.manifest['dataset']} v{ds.version} "
                   f"({ds.rows('train')} train rows), {summary['size']} ranks, run {run_id}; "
                   f"test_{metric}={summary['test'].get(metric, float('nan')):.4f}"
                   + (f"; initialised from {init_from['name']} v{init_from['version']}" if init_from else ""))
    version = track.register(exp, summary["model_uri"], run_id, description)
    track.set_alias(exp, "candidate", version)
    promoted, reason = track.promote_first(exp, version)
    track.end_run(exp, run_id, "FINISHED")
    if exp.score.drift:   # the reference later scoring runs are compared with (pipelines/monitoring.py)
        from .. import monitoring
        if spark is None:
            from ..session import get_spark
            spark = get_spark(exp)
        monitoring.log_reference(exp, spark, run_id, exp.model_name, version, ds)
    aliases = ["candidate"] + (["champion"] if promoted else [])
    return TrainResult(run_id, exp.model_name, version, aliases, summary["test"], summary["history"],
                       summary["parameters"], summary["train_seconds"], summary["train_samples_per_second"],
                       time.time() - started, resume_from, reason, summary["first_step_seconds"], ranks, restarts)


START_TIMEOUT_S = 600          # first launch: executors may still be starting (a cluster, a packed env)
RELAUNCH_START_TIMEOUT_S = 60  # a relaunch: the slots were counted just before; do not wait 10 minutes


def _log_restart(exp: Experiment, run_id: str, restart: recovery.Restart) -> None:
    """On the run: how many restarts so far, and for each which rank failed, why, and from where it went on."""
    where = restart.resumed_from.rsplit("/", 1)[-1] if restart.resumed_from else "the start (no checkpoint yet)"
    try:
        c = track.client(exp)
        c.set_tag(run_id, "sparkzoo.restarts", str(restart.number))
        c.set_tag(run_id, f"sparkzoo.restart.{restart.number}",
                  f"{restart.reason}; resumed from {where} with {restart.world_size} rank(s)")
    except Exception as exc:   # a tracking outage must not turn a healable failure into a fatal one
        log.warning("could not tag restart %d on MLflow run %s: %s", restart.number, run_id, exc)
    track.log_metrics(exp, run_id, {"restarts": restart.number, "restart_world_size": restart.world_size},
                      step=restart.number)   # kept in the outbox while the server is away


def check_model_params(exp: Experiment) -> None:
    """model.params must fit the family: known keywords, values of its config's types and choices. A typo
    fails here, before any rank starts, as one ConfigError naming the key, the file and what fits (not as N
    rank tracebacks, and not as a quietly different model)."""
    from ...models.registry import ParamsError, check_params

    try:
        check_params(exp.model.name, exp.model.params)
    except ParamsError as exc:
        raise ConfigError(f"{exc} (in {exp.source_file})") from None


def check_task(exp: Experiment, manifest: dict[str, Any]) -> None:
    """The family's task must fit the prepared data; say what to change before any rank starts."""
    from ...models import model_task
    from ...models.tasks import task_class

    task = model_task(exp.model.name)
    spec = task_class(task)
    columns = {c["name"] for c in manifest.get("schema", [])}
    modality = manifest.get("modality", "image")
    if modality != spec.modality:
        raise TrainingError(f"model {exp.model.name} ({task}) trains on {spec.modality} data but {manifest['dataset']} "
                            f"holds {modality} data; pick a family for {modality} (docs/MODEL_ZOO.md) or prepare "
                            f"{spec.data_hint}")
    missing = [c for c in spec.required_columns() if c not in columns]
    if missing:
        raise TrainingError(f"model {exp.model.name} ({task}) cannot train on {manifest['dataset']}: it has no "
                            f"{', '.join(missing)} column; prepare {spec.data_hint}")
    if spec.classifier and manifest.get("num_classes", 0) < 2:
        raise TrainingError(f"model {exp.model.name} classifies but {manifest['dataset']} has "
                            f"{manifest.get('num_classes', 0)} classes; set data.source.label_level or label_names, "
                            f"or pick a reconstruction family (autoencoder) for unlabelled images")
