"""Production MLflow, really run: `scripts/mlflow_stack.py start` brings up PostgreSQL (runs, registry),
SeaweedFS S3 (artefacts) and `mlflow server` proxying the artefacts, all on 127.0.0.1; the pipeline
(prepare -> train -> register -> promote -> score) runs against nothing but its http URI. The server is
SIGKILLed in the middle of training and started again: the outbox sends what it kept. Then the test
reads the bucket with boto3, resolves the champion alias over plain HTTP, checks that only the server's
processes ever connected to the MLflow database, and `stop` leaves no process behind.

Nothing is mocked or skipped: PostgreSQL's binaries are on the image, and a missing one fails the test
with StackError's message (docs/MLFLOW_SERVER.md)."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import CONF, ROOT, exp_overrides, run_cli
from .reliability_ledger import record
from .tracking_outage import train_through_outage

STACK_SCRIPT = ROOT / "scripts" / "mlflow_stack.py"
THIS = "tests/test_production_mlflow.py::"
MODEL = "prod_cnn"


def _stack_module():
    """scripts/ is not a package: load the script as the module ``mlflow_stack``."""
    spec = importlib.util.spec_from_file_location("mlflow_stack", STACK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlflow_stack"] = module
    spec.loader.exec_module(module)
    return module


ms = _stack_module()


@pytest.fixture
def stack(tmp_path, monkeypatch) -> Iterator:
    """The stack as a user starts it (the script, in its own process); stopped even if the test fails."""
    # the clients get no S3 credentials: every artefact must go through the server's proxy
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    ms.pg_bindir()   # fails with a clear StackError when PostgreSQL is not installed
    root = tmp_path / "stack"
    done = subprocess.run([sys.executable, str(STACK_SCRIPT), "start", "--root", str(root)], capture_output=True,
                          text=True, timeout=400)
    try:
        assert done.returncode == 0, f"mlflow_stack.py start failed:\n{done.stdout}\n{done.stderr[-4000:]}"
        assert "MLflow tracking URI http://127.0.0.1:" in done.stdout
        yield ms.MlflowStack.load(root)
    finally:
        if (root / ms.STATE).exists():
            ms.MlflowStack.load(root).stop()


def _listening_hosts(pids: set[int]) -> set[str]:
    import psutil

    return {c.laddr.ip for pid in pids for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def _bucket_prefix(artifact_uri: str) -> str:
    """mlflow-artifacts:/1/abc/artifacts -> the object key prefix under --artifacts-destination."""
    assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri
    return "mlartifacts/" + artifact_uri[len("mlflow-artifacts:/"):].strip("/") + "/"


def test_pipeline_on_postgres_and_s3_survives_a_server_crash(stack, prepared, make_exp, spark, workspace):
    import psutil
    import torch
    from mlflow.tracking import MlflowClient

    from sparkzoo.pipelines import promote, track

    url = stack.tracking_uri
    services = stack.pids()
    assert all(services.values()), services
    for name, pids in services.items():                      # nothing reachable from outside the machine
        assert _listening_hosts(pids) == {"127.0.0.1"}, name

    overrides = [f"mlflow.tracking_uri={url}", f"mlflow.model_name={MODEL}", "mlflow.experiment=production",
                 "name=prod", "train.epochs=3", "train.max_steps_per_epoch=30", "mlflow.outage_timeout_s=240"]
    exp = make_exp(*overrides)
    viewer = MlflowClient(tracking_uri=url, registry_uri=url)
    result, run_id, steps_kept = train_through_outage(exp, spark, viewer, stack.server.kill, stack.server.start)
    assert result.run_id == run_id and steps_kept and min(steps_kept) >= 2      # epoch 2 on waited in the outbox
    got = viewer.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert sorted(m.step for m in viewer.get_metric_history(run_id, "val_accuracy")) == [1, 2, 3]
    assert not Path(track.outbox(exp, run_id).dir).exists()                    # everything kept was sent
    assert got.data.params["mlflow.tracking_uri"] == url
    assert all("postgresql" not in v for v in got.data.params.values())        # clients never see the database

    # the experiment took the server's artifact root (track.experiment_artifact_location), so the
    # checkpoints and the model are objects in the bucket, not files on this machine
    experiment = viewer.get_experiment_by_name("production")
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"
    run_prefix = _bucket_prefix(got.info.artifact_uri)
    run_keys = set(stack.s3.keys(run_prefix))
    assert {run_prefix + k for k in ("checkpoints/last.pt", "config.yaml", "report.html", "history.json")} <= run_keys
    body = stack.s3.client().get_object(Bucket=stack.s3.bucket, Key=run_prefix + "checkpoints/last.pt")["Body"].read()
    assert torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)["epoch"] == 2   # the last epoch's
    version = viewer.get_model_version(MODEL, str(result.model_version))
    assert version.run_id == run_id
    model_prefix = _bucket_prefix(viewer.get_model_version_download_uri(MODEL, version.version))
    model_keys = [k[len(model_prefix):] for k in stack.s3.keys(model_prefix)]
    assert "MLmodel" in model_keys and any(k.endswith("weights.pt") for k in model_keys), model_keys

    # promote: a second version as candidate (a registry copy of the first, cheaper than a second
    # training); the gate downloads both through the server and scores them in Spark: equal, so it keeps
    # the champion (a tie never moves it) and records the decision as a run and as version tags
    copy = int(track.client(exp).copy_model_version(f"models:/{MODEL}/{result.model_version}", MODEL).version)
    track.set_alias(exp, "candidate", copy)
    decision = promote.run(exp, spark)
    assert (decision.decision, decision.candidate, decision.champion_after) == ("kept", copy, result.model_version)
    assert decision.candidate_value == decision.champion_value is not None
    assert viewer.get_model_version(MODEL, str(copy)).tags[track.DECISION_TAG] == "kept"
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias=champion",
                                timeout=30) as resp:                       # the alias, resolved over plain HTTP
        assert json.load(resp)["model_version"]["version"] == str(result.model_version)

    # score: a separate process with nothing but the URI pins models:/prod_cnn@champion and downloads it
    # through the server
    scored = run_cli("score", "-c", str(CONF), *[a for o in exp_overrides(workspace, *overrides,
                                                                                "score.output=predictions_prod")
                                                      for a in ("--set", o)])
    assert scored.returncode == 0, scored.stderr[-4000:]
    assert f"with {MODEL} v{result.model_version}" in scored.stdout and "scored " in scored.stdout, scored.stdout

    # no process but the server touched the MLflow database: every connection since initdb carried the
    # server's application_name (only in its environment), and each live one is a socket of the server
    authorized = stack.postgres.authorized()
    assert len(authorized) >= 2 and all(f"application_name={ms.SERVER_APP}" in ln for ln in authorized), authorized
    server_pids = stack.server.pids()
    owners = {c.laddr.port: c.pid for c in psutil.net_connections(kind="tcp")
              if c.raddr and c.raddr.port == stack.postgres.port}
    sessions = stack.postgres.sessions()
    assert sessions and all(owners.get(s["client_port"]) in server_pids for s in sessions), (sessions, owners)

    # stop: all three services end, nothing left running or listening, the logs stay for a post-mortem
    before = {pid for pids in stack.pids().values() for pid in pids}
    pg_dir = stack.postgres.dir
    done = subprocess.run([sys.executable, str(STACK_SCRIPT), "stop", "--root", str(stack.root)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    leftover = [pid for pid in before if ms.alive(pid)]
    assert not leftover, [" ".join(psutil.Process(pid).cmdline()) for pid in leftover]
    assert not (stack.root / ms.STATE).exists() and not pg_dir.exists()
    assert all((stack.root / log).stat().st_size > 0 for log in ("postgres.log", "seaweedfs.log", "mlflow-server.log"))
    record("MLflow tracking server killed during training, on PostgreSQL + S3 (scripts/mlflow_stack.py)",
           kind="fault", expected="training goes on; the outbox sends kept metrics and checkpoints when it is back",
           outcome=f"epochs {steps_kept} kept while it was down; run FINISHED with 3/3 epochs, last checkpoint and "
                   f"model in the bucket, champion v{result.model_version} resolved over HTTP, only the server used the database",
           test=THIS + "test_pipeline_on_postgres_and_s3_survives_a_server_crash")
