"""MLflow in one place: runs, params, metrics, artefacts, the logged model, registry and aliases.

Only the driver and rank 0 call this module. The embedded default is a SQLite store under the
workspace; a tracking server is a config change (``mlflow.tracking_uri: http://...``).

A tracking server that stops answering does not stop training (docs/RELIABILITY.md): metrics,
artefacts and dicts go to a local outbox (``tracking_outbox``) and are sent, with their original
timestamps, by the next call that reaches the server. Calls that cannot be deferred (log the model,
register, alias, finish the run) retry with backoff for ``mlflow.outage_timeout_s`` and then fail with
a ``TrainingError`` that says where the outbox is and that a re-run resumes.

Retrying is done by libraries, not by hand: each HTTP request uses MLflow's own settings
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 0 and ``MLFLOW_HTTP_REQUEST_TIMEOUT``, see ``client``), and the wait
through an outage (exponential backoff to a deadline, over several requests) is a tenacity ``Retrying``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from typing import Any, Callable, TypeVar

from sparkzoo import __version__

from . import paths
from .config import Experiment
from .errors import RegistryError, TrainingError
from .secrets import mask_secrets, mask_text, secret_key
from .tracking_outbox import Outbox

log = logging.getLogger("sparkzoo.track")
T = TypeVar("T")
CONFIG_HASH_TAG = "sparkzoo.config_hash"
# What a request to a server that is down, restarting or overloaded fails with (requests/urllib3 text
# inside MlflowException): those are waited out; any other error is a real error and raised at once.
_UNREACHABLE = ("Connection refused", "Max retries exceeded", "Failed to establish a new connection",
                "Connection aborted", "Connection reset", "Read timed out", "RemoteDisconnected",
                "Bad Gateway", "Service Unavailable", "Gateway Timeout", "too many 503 error responses",
                "too many 502 error responses")
_OPERATIONAL = {"outage_timeout_s", "retry_backoff_s", "retry_max_interval_s", "request_timeout_s", "outbox"}
# How a run survives failures, not what it trains: a re-run with another budget or --fresh/require must
# still find (or deliberately skip) the same run.
_RECOVERY = {"max_failures", "checkpoint_every_steps", "checkpoint_every_seconds", "keep_checkpoints", "resume",
             "min_ranks", "max_ranks", "rank_wait_seconds"}


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
    if _remote(exp):
        # MLflow's own per-request retries (7 by default, backing off to minutes per call) would freeze rank 0
        # at the first request to a stopped server: each request fails fast (MLflow's settings), and what
        # waits is decided here (_deferred keeps it in the outbox, _required waits with tenacity).
        from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

        os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"
        os.environ[MLFLOW_HTTP_REQUEST_TIMEOUT.name] = str(int(exp.mlflow.request_timeout_s))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri(exp))
    return MlflowClient(tracking_uri=uri, registry_uri=registry_uri(exp))


# ---- an unreachable tracking server -----------------------------------------------------------------

def _remote(exp: Experiment) -> bool:
    return tracking_uri(exp).startswith(("http://", "https://"))


def unreachable(exc: BaseException) -> bool:
    """The server is down or not answering (as opposed to refusing what we sent)."""
    import requests

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                        TimeoutError)):
        return True
    return any(text in str(exc) for text in _UNREACHABLE)


def outbox_root(exp: Experiment) -> str:
    root = exp.mlflow.outbox.replace("{workspace}", paths.workspace(exp))
    return root if not paths.is_uri(root) else os.path.join(tempfile.gettempdir(), "sparkzoo-mlflow-outbox")


def outbox(exp: Experiment, run_id: str) -> Outbox:
    return Outbox(outbox_root(exp), run_id)


def _flush(exp: Experiment, run_id: str | None) -> None:
    """Send what earlier calls kept (this run's, or every run's when none is named)."""
    root = outbox_root(exp)
    if not os.path.isdir(root):
        return
    ids = [run_id] if run_id else sorted(os.listdir(root))
    for rid in ids:
        box = Outbox(root, rid)
        if not box.pending():
            continue
        try:
            n = box.flush(client(exp))
        except Exception as exc:
            if run_id or unreachable(exc):
                raise
            # another run's items that this server refuses (say, it lives on another server): they stay
            log.warning("could not send the kept items of run %s to %s (%s); they stay in %s", rid,
                        tracking_uri(exp), _short(exc), box.dir)
            continue
        log.info("MLflow tracking server %s is back: sent %d kept item(s) of run %s", tracking_uri(exp), n, rid)


def _deferred(exp: Experiment, run_id: str, send: Callable[[], None], keep: Callable[[Outbox], None],
              what: str) -> None:
    """Send now; if the server is unreachable, keep it in the outbox and let training go on."""
    if not _remote(exp):
        send()
        return
    try:
        _flush(exp, run_id)
        send()
    except Exception as exc:
        if not unreachable(exc):
            raise
        box = outbox(exp, run_id)
        keep(box)
        log.warning("MLflow tracking server %s is unreachable (%s); %s kept in %s (%d item(s) waiting), sent when "
                    "it answers again", tracking_uri(exp), _short(exc), what, box.dir, box.pending())


def _required(exp: Experiment, what: str, call: Callable[[], T], run_id: str | None = None) -> T:
    """A call that cannot be deferred: wait out an unreachable server with backoff, then fail clearly.

    tenacity retries while the error says the server is unreachable (any other error is raised at once):
    waits of ``retry_backoff_s`` doubling to ``retry_max_interval_s``, never past ``outage_timeout_s``.
    """
    if not _remote(exp):
        return call()
    import tenacity

    cfg = exp.mlflow
    deadline = time.monotonic() + cfg.outage_timeout_s
    backoff = tenacity.wait_exponential(multiplier=cfg.retry_backoff_s, max=cfg.retry_max_interval_s)

    def wait(state: tenacity.RetryCallState) -> float:       # the last try lands on the deadline
        return max(min(backoff(state), deadline - time.monotonic()), 0.0)

    def warn_once(state: tenacity.RetryCallState) -> None:
        if state.attempt_number == 1:
            log.warning("MLflow tracking server %s is unreachable while %s (%s); retrying for up to %gs",
                        tracking_uri(exp), what, _short(state.outcome.exception()), cfg.outage_timeout_s)

    def attempt() -> T:
        _flush(exp, run_id)
        return call()

    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(unreachable), wait=wait,
                                 stop=lambda state: time.monotonic() >= deadline, before_sleep=warn_once,
                                 reraise=True)
    try:
        return retrying(attempt)
    except Exception as exc:
        if not unreachable(exc):
            raise
        kept = f"; what it could not take yet is kept in {outbox(exp, run_id).dir}" if run_id else ""
        raise TrainingError(
            f"MLflow tracking server {tracking_uri(exp)} did not answer for mlflow.outage_timeout_s="
            f"{cfg.outage_timeout_s:g}s while {what} ({_short(exc)}){kept}. Start the server (or fix "
            f"mlflow.tracking_uri) and re-run the same command: it resumes from the last checkpoint and "
            f"sends the kept metrics") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    m = re.search(r"(Connection refused|Max retries exceeded|Read timed out|RemoteDisconnected|[0-9]{3} error)", text)
    return m.group(1) if m else text[:160]


def experiment_artifact_location(exp: Experiment) -> str | None:
    """Where a NEW experiment keeps its artefacts; None lets the tracking server choose.

    With an http(s) tracking URI and the shipped default (``{workspace}/mlartifacts``) the server's own
    artifact root is used (``mlflow server --artifacts-destination s3://...`` proxies uploads as
    ``mlflow-artifacts:/``): forcing a path of the submitting machine would write checkpoints and models
    to that machine's disk, out of the server's bucket and out of reach of the other hosts, and every
    client would need the store's credentials. A location the user set explicitly is kept as given."""
    location = artifact_location(exp)
    if _remote(exp) and exp.mlflow.artifact_location == type(exp.mlflow).model_fields["artifact_location"].default:
        return None
    if not paths.is_uri(location):
        os.makedirs(location, exist_ok=True)
        location = "file://" + os.path.abspath(location)
    return location


def experiment_id(exp: Experiment) -> str:
    c = client(exp)
    found = c.get_experiment_by_name(exp.mlflow.experiment)
    if found is not None:
        return found.experiment_id
    location = experiment_artifact_location(exp)
    try:
        return c.create_experiment(exp.mlflow.experiment, artifact_location=location)
    except Exception:  # created concurrently by another job
        return c.get_experiment_by_name(exp.mlflow.experiment).experiment_id


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.lr": "0.001"}; secret-named keys and URI passwords are masked."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = "***" if secret_key(name) else mask_text(json.dumps(value) if not isinstance(value, str) else value)
    return out


def config_hash(exp: Experiment) -> str:
    """What identifies "the same training job" for resume: everything but scoring and UI settings."""
    tree = exp.model_dump(mode="json", exclude={"score": True, "ui": True, "source_file": True, "spark": True,
                                                "mlflow": _OPERATIONAL, "train": _RECOVERY})
    return hashlib.sha1(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def find_unfinished_run(exp: Experiment) -> str | None:
    """A run of the same config that did not finish: the one a re-run resumes."""
    return _required(exp, "looking for a run to resume", lambda: _find_unfinished_run(exp))


def _find_unfinished_run(exp: Experiment) -> str | None:
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
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    rows = [{"key": k, "value": float(v), "timestamp": now, "step": step} for k, v in metrics.items()]
    _deferred(exp, run_id, lambda: client(exp).log_batch(run_id, metrics=[Metric(**m) for m in rows]),
              lambda box: box.add_metrics(rows), f"metrics of step {step}")


def log_artifact(exp: Experiment, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
    _deferred(exp, run_id, lambda: client(exp).log_artifact(run_id, local_path, artifact_path),
              lambda box: box.add_artifact(local_path, artifact_path), f"artefact {os.path.basename(local_path)}")


def log_dict(exp: Experiment, run_id: str, data: Any, name: str) -> None:
    data = mask_secrets(data)

    def keep(box: Outbox) -> None:
        import yaml

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(name))
            with open(path, "w") as fh:
                if name.endswith((".yaml", ".yml")):
                    yaml.safe_dump(data, fh, default_flow_style=False)
                else:
                    json.dump(data, fh, indent=2)
            box.add_artifact(path, os.path.dirname(name) or None)

    _deferred(exp, run_id, lambda: client(exp).log_dict(run_id, data, name), keep, f"artefact {name}")


def end_run(exp: Experiment, run_id: str, status: str = "FINISHED") -> None:
    """FINISHED must reach the server (it waits); FAILED is kept for later if the server is away, so
    the job's own error, not a second one about the tracking server, is what the user sees."""
    if status == "FINISHED":
        _required(exp, f"marking run {run_id} {status}", lambda: client(exp).set_terminated(run_id, status), run_id)
    else:
        _deferred(exp, run_id, lambda: client(exp).set_terminated(run_id, status), lambda box: box.set_status(status),
                  f"run status {status}")


def log_model(exp: Experiment, run_id: str, spec: dict[str, Any], state_dict: dict[str, Any], example) -> str:
    """Log the sparkzoo pyfunc (spec + weights) with a signature and an input example; returns its URI."""
    return _required(exp, "logging the model", lambda: _log_model(exp, run_id, spec, state_dict, example), run_id)


def _log_model(exp: Experiment, run_id: str, spec: dict[str, Any], state_dict: dict[str, Any], example) -> str:
    """Models-from-code with the code it runs in ``code_paths`` (``model_bundle``): the registered model
    loads with plain MLflow where sparkzoo is not installed. spec.json and weights.pt are its artifacts,
    which ``download_model_files`` hands to sparkzoo's own scorer."""
    import mlflow

    from . import model_bundle
    from .modelpack import Predictor, build_module, save_local

    client(exp)
    module = build_module(spec)
    module.load_state_dict(state_dict)
    signature = model_bundle.signature(spec, example, Predictor(spec, module).predict_frame(example))
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = save_local(os.path.join(tmp, "files"), spec, state_dict)
        with model_bundle.bundle(tmp) as (code_paths, model_file), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=model_file, code_paths=code_paths, artifacts=artifacts,
                signature=signature, input_example=example, pip_requirements=model_bundle.pip_requirements())
    return info.model_uri


def register(exp: Experiment, model_uri: str, run_id: str, description: str) -> int:
    """A new version of the experiment's registered model, tagged with where it came from."""
    return _required(exp, "registering the model", lambda: _register(exp, model_uri, run_id, description), run_id)


def _register(exp: Experiment, model_uri: str, run_id: str, description: str) -> int:
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
    _required(exp, f"setting alias {alias}",
              lambda: client(exp).set_registered_model_alias(exp.model_name, alias, str(version)))


def version_metric(exp: Experiment, version: int, metric: str) -> float | None:
    c = client(exp)
    mv = c.get_model_version(exp.model_name, str(version))
    run = c.get_run(mv.run_id)
    value = run.data.metrics.get(metric)
    return float(value) if value is not None else None


def promote_first(exp: Experiment, version: int) -> tuple[bool, str]:
    """Training makes the first version champion; later ones stay candidates until ``sparkzoo promote``."""
    return _required(exp, "setting the first champion", lambda: _promote_first(exp, version))


def _promote_first(exp: Experiment, version: int) -> tuple[bool, str]:
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


def log_dataset_inputs(exp: Experiment, run_id: str, manifest: dict[str, Any], dataset_path: str) -> None:
    """``mlflow.log_input`` for the prepared dataset, one input per split, so the run page lists them.

    Why: the MLflow UI shows a run's datasets (source URI, digest, row counts) only when they are logged
    as inputs; tags alone leave the run page blank. The digest is the source file index's (content
    hashes of every source file) with the dataset version, so two runs on the same bytes show the same
    digest. Metadata only: no row is read.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = manifest.get("source", {})
    index = source.get("index") or {}
    base = hashlib.sha256(f"{manifest.get('version')}|{index.get('digest', '')}".encode()).hexdigest()[:16]
    inputs = []
    for split, info in manifest.get("splits", {}).items():
        profile = {"rows": int(info.get("rows", 0)), "source_files": int(index.get("files", 0)),
                   "source_bytes": int(index.get("bytes", 0)), "source_uri": source.get("path", "")}
        entity = Dataset(name=f"{manifest.get('dataset')}-{split}", digest=f"{base}-{split}"[:36],
                         source_type="local" if "://" not in dataset_path else dataset_path.split("://")[0],
                         source=json.dumps({"uri": f"{dataset_path.rstrip('/')}/{split}"}),
                         schema=json.dumps({"columns": manifest.get("schema", [])}), profile=json.dumps(profile))
        inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", split),
                                                 InputTag("sparkzoo.dataset_version", str(manifest.get("version")))]))
    _required(exp, "logging the dataset inputs", lambda: client(exp).log_inputs(run_id, datasets=inputs), run_id)
