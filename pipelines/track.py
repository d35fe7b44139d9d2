"""MLflow in one place: runs, params, metrics, artefacts, the logged model, registry and aliases.

Only the driver and rank 0 call this module. The embedded default is a SQLite store under the
workspace; a tracking server is a config change (``mlflow.tracking_uri: http://...``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from typing import Any

from sparkzoo import __version__

from . import paths
from .config import Experiment
from .errors import RegistryError

CONFIG_HASH_TAG = "sparkzoo.config_hash"
_SECRET = re.compile(r"(password|secret|token|access_key|api_key|credential)", re.I)


def tracking_uri(exp: Experiment) -> str:
    return exp.mlflow.tracking_uri.replace("{workspace}", paths.workspace(exp))


def registry_uri(exp: Experiment) -> str:
    return (exp.mlflow.registry_uri or exp.mlflow.tracking_uri).replace("{workspace}", paths.workspace(exp))


def artifact_location(exp: Experiment) -> str:
    return paths.resolve(exp, exp.mlflow.artifact_location)


def client(exp: Experiment):
    """A client bound to this experiment's stores (also sets the process-wide URIs for log_model)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(exp)
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///"):]) or ".", exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri(exp))
    return MlflowClient(tracking_uri=uri, registry_uri=registry_uri(exp))


def experiment_id(exp: Experiment) -> str:
    c = client(exp)
    found = c.get_experiment_by_name(exp.mlflow.experiment)
    if found is not None:
        return found.experiment_id
    location = artifact_location(exp)
    if not paths.is_uri(location):
        os.makedirs(location, exist_ok=True)
        location = "file://" + os.path.abspath(location)
    try:
        return c.create_experiment(exp.mlflow.experiment, artifact_location=location)
    except Exception:  # created concurrently by another job
        return c.get_experiment_by_name(exp.mlflow.experiment).experiment_id


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.lr": "0.001"}; values that look like secrets are masked."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = "***" if _SECRET.search(name) else json.dumps(value) if not isinstance(value, str) else value
    return out


def config_hash(exp: Experiment) -> str:
    """What identifies "the same training job" for resume: everything but scoring and UI settings."""
    tree = exp.model_dump(mode="json", exclude={"score", "ui", "source_file", "spark"})
    return hashlib.sha1(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def find_unfinished_run(exp: Experiment) -> str | None:
    """A run of the same config that did not finish: the one a re-run resumes."""
    c = client(exp)
    runs = c.search_runs([experiment_id(exp)], filter_string=f"tags.`{CONFIG_HASH_TAG}` = '{config_hash(exp)}'",
                         order_by=["attributes.start_time DESC"], max_results=5)
    for run in runs:
        if run.info.status in ("RUNNING", "FAILED", "KILLED"):
            return run.info.run_id
    return None


def start_run(exp: Experiment, *, dataset_version: str, world_size: int, extra_params: dict[str, str] | None = None) -> str:
    import datetime as dt

    c = client(exp)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = c.create_run(experiment_id(exp), run_name=f"{exp.name}-{stamp}", tags={
        CONFIG_HASH_TAG: config_hash(exp),
        "sparkzoo.version": __version__,
        "sparkzoo.git_commit": git_commit(),
        "sparkzoo.dataset": exp.data.dataset,
        "sparkzoo.dataset_version": dataset_version,
        "sparkzoo.model_family": exp.model.name,
        "sparkzoo.world_size": str(world_size),
        "sparkzoo.backend": exp.train.backend,
        "mlflow.note.content": f"{exp.model.name} on {exp.data.dataset} v{dataset_version}, {world_size} ranks",
    })
    run_id = run.info.run_id
    params = {**flatten(exp.model_dump(mode="json", exclude={"source_file"})), **(extra_params or {})}
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])
    return run_id


def log_metrics(exp: Experiment, run_id: str, metrics: dict[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client(exp).log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def log_artifact(exp: Experiment, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
    client(exp).log_artifact(run_id, local_path, artifact_path)


def log_dict(exp: Experiment, run_id: str, data: Any, name: str) -> None:
    client(exp).log_dict(run_id, data, name)


def end_run(exp: Experiment, run_id: str, status: str = "FINISHED") -> None:
    client(exp).set_terminated(run_id, status)


def log_model(exp: Experiment, run_id: str, spec: dict[str, Any], state_dict: dict[str, Any], example) -> str:
    """Log the sparkzoo pyfunc (spec + weights) with a signature and an input example; returns its URI."""
    import mlflow
    from mlflow.models import infer_signature

    from .modelpack import Predictor, SparkzooPyfunc, build_module, save_local

    client(exp)
    module = build_module(spec)
    module.load_state_dict(state_dict)
    predictor = Predictor(spec, module)
    output = predictor.predict_frame(example)
    signature = infer_signature(example, output)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = save_local(tmp, spec, state_dict)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=SparkzooPyfunc(), artifacts=artifacts, signature=signature,
                input_example=example, pip_requirements=_pip_requirements())
    return info.model_uri


def _pip_requirements() -> list[str]:
    import mlflow
    import numpy
    import pandas
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
            f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}", f"sparkzoo=={__version__}"]


def register(exp: Experiment, model_uri: str, run_id: str, description: str) -> int:
    """A new version of the experiment's registered model, tagged with where it came from."""
    import mlflow

    client(exp)
    mv = mlflow.register_model(model_uri, exp.model_name, tags={"sparkzoo.run_id": run_id})
    c = client(exp)
    c.update_model_version(exp.model_name, mv.version, description=description)
    return int(mv.version)


def alias_version(exp: Experiment, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client(exp).get_model_version_by_alias(exp.model_name, alias).version)
    except MlflowException:
        return None


def set_alias(exp: Experiment, alias: str, version: int) -> None:
    client(exp).set_registered_model_alias(exp.model_name, alias, str(version))


def version_metric(exp: Experiment, version: int, metric: str) -> float | None:
    c = client(exp)
    mv = c.get_model_version(exp.model_name, str(version))
    run = c.get_run(mv.run_id)
    value = run.data.metrics.get(metric)
    return float(value) if value is not None else None


def promote_first(exp: Experiment, version: int) -> tuple[bool, str]:
    """Training makes the first version champion; later ones stay candidates until ``sparkzoo promote``."""
    champion = alias_version(exp, "champion")
    if champion is None:
        set_alias(exp, "champion", version)
        reason = f"first version: v{version} becomes champion"
        promoted = True
    else:
        reason = f"v{version} is candidate; champion stays v{champion} until `sparkzoo promote` decides"
        promoted = False
    client(exp).set_model_version_tag(exp.model_name, str(version), "sparkzoo.promotion", reason)
    return promoted, reason


PROMOTION_TAG = "sparkzoo.promotion"
DECISION_TAG = "sparkzoo.promotion_decision"


def model_versions(exp: Experiment) -> list[int]:
    """Every version of the experiment's registered model, oldest first."""
    found = client(exp).search_model_versions(f"name = '{exp.model_name}'")
    return sorted(int(mv.version) for mv in found)


def require_version(exp: Experiment, version: int) -> None:
    versions = model_versions(exp)
    if version not in versions:
        listing = ", ".join(f"v{v}" for v in versions) or "none"
        raise RegistryError(f"registered model '{exp.model_name}' has no version {version} in {registry_uri(exp)}; "
                            f"versions: {listing}")


def metric_direction(metric: str) -> int:
    """+1 when a larger value is better (accuracy), -1 when smaller is (loss)."""
    return -1 if metric.endswith("loss") else 1


def decide(metric: str, candidate: float, champion: float, margin: float) -> tuple[bool, str]:
    """The promotion gate: the candidate must beat the champion by MORE than the margin; a tie keeps
    the champion, so re-running promote on equal models never flips the alias back and forth."""
    sign = metric_direction(metric)
    gain = sign * (candidate - champion)
    better = "higher" if sign > 0 else "lower"
    if gain > margin:
        return True, f"{metric} {candidate:.4f} vs champion {champion:.4f}: {better} by {gain:.4f} > margin {margin}"
    return False, (f"{metric} {candidate:.4f} vs champion {champion:.4f}: improvement {gain:.4f} is not more than "
                   f"margin {margin}")


def tag_version(exp: Experiment, version: int, tags: dict[str, str]) -> None:
    c = client(exp)
    for key, value in tags.items():
        c.set_model_version_tag(exp.model_name, str(version), key, str(value))


def log_decision(exp: Experiment, *, run_name: str, params: dict[str, Any], metrics: dict[str, float],
                 tags: dict[str, str]) -> str:
    """One finished MLflow run in the experiment that records a registry decision; returns its id."""
    return log_finished_run(exp, run_name=run_name, params=params, metrics=metrics,
                            tags={"sparkzoo.kind": "registry_decision", **tags}, note=tags.get(PROMOTION_TAG, ""))


def log_finished_run(exp: Experiment, *, run_name: str, params: dict[str, Any], metrics: dict[str, float],
                     tags: dict[str, str], note: str = "") -> str:
    """A complete run in one call (registry decisions, classical baselines); returns its id."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    c = client(exp)
    run = c.create_run(experiment_id(exp), run_name=run_name,
                       tags={"sparkzoo.model_name": exp.model_name, "sparkzoo.version": __version__, **tags})
    now = int(time.time() * 1000)
    c.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                params=[Param(k, str(v)[:6000]) for k, v in params.items()], tags=[RunTag("mlflow.note.content", note)])
    c.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def resolve_model_version(exp: Experiment, uri: str | None, setting: str = "score.model_uri") -> tuple[str, int]:
    """``models:/name@alias`` or ``models:/name/3`` -> (name, version), pinned once at job start."""
    uri = uri or f"models:/{exp.model_name}@champion"
    m = re.match(r"^models:/([^/@]+)(?:@([^/]+)|/(\d+))$", uri)
    if not m:
        raise RegistryError(f"{setting} {uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, number = m.groups()
    if number:
        return name, int(number)
    from mlflow.exceptions import MlflowException

    try:
        return name, int(client(exp).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        raise RegistryError(f"registered model '{name}' has no version with alias '{alias}' in {registry_uri(exp)}; "
                            f"train it first (sparkzoo train --conf ...) or set score.model_uri") from None


def download_model_files(exp: Experiment, name: str, version: int, dst: str) -> str:
    """One registered version's files into ``dst``; returns the folder holding spec.json and weights.pt."""
    import mlflow

    client(exp)   # sets the tracking and registry URIs for mlflow's module-level download
    model_dir = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=dst)
    return os.path.join(model_dir, "artifacts")
