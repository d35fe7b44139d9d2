"""Shared fixtures: one real local[2] SparkSession, a temporary workspace with a real SQLite MLflow
store, and the expensive pipeline steps (prepare, train) run once per session on a real subsample."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "fashion_mnist_cnn.yaml"
FASHION = Path("/usr/share/datasets/fashion-mnist")
SUBSAMPLE = 4000   # records per source split in CI


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workspace")


def exp_overrides(workspace: Path, *extra: str) -> list[str]:
    return [f"workspace={workspace}", "spark.master=local[2]", f"data.max_records={SUBSAMPLE}",
            "train.epochs=2", "train.progress=false", "spark.conf.spark.ui.enabled=false", *extra]


@pytest.fixture(scope="session")
def make_exp(workspace):
    from sparkzoo.pipelines import config

    def make(*extra: str, conf: Path = CONF, ws: Path | None = None):
        return config.load(conf, exp_overrides(ws or workspace, *extra))

    return make


@pytest.fixture(scope="session")
def spark(make_exp):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from sparkzoo.pipelines.session import get_spark

    session = get_spark(make_exp())
    yield session
    session.stop()


@pytest.fixture(scope="session")
def prepared(spark, make_exp):
    from sparkzoo.pipelines import prepare

    return prepare.run(make_exp(), spark)


@pytest.fixture(scope="session")
def trained(spark, make_exp, prepared):
    from sparkzoo.pipelines import train

    return train.run(make_exp(), spark)


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    """The real console script in a subprocess, as a user or a scheduler runs it."""
    import subprocess

    exe = Path(sys.executable).parent / "sparkzoo"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def weak_trained(spark, make_exp, trained):
    """A second, much weaker model, cheaply (2 steps of 1 epoch), registered as its own model 'weak_cnn'
    so the registry state of fashion_mnist_cnn that other tests check is left alone."""
    from sparkzoo.pipelines import train

    return train.run(make_exp("train.max_steps_per_epoch=2", "train.epochs=1", "mlflow.model_name=weak_cnn"), spark)


def copy_version(exp, source: str) -> int:
    """Register an existing model version (``models:/name/N``) again under ``exp.model_name``: a real
    registry version built in milliseconds instead of a training run."""
    from sparkzoo.pipelines import track

    return int(track.client(exp).copy_model_version(source, exp.model_name).version)


def free_port() -> int:
    """A localhost port free at this moment, for a server a test starts (MLflow, Spark master, UI)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
