"""Shared fixtures: one real local[2] SparkSession, a temporary workspace with a real SQLite MLflow
store, and the one cached ``pipeline`` fixture that runs prepare -> train (-> register) once per distinct
configuration on a real subsample.

Two tiers (docs/DEVELOPMENT.md "Tests"): ``make test-fast`` runs ``-m "not slow and not gpu"``, ``make
test`` everything but ``gpu``. A test is ``slow`` when it asks for a heavy fixture (directly or through
another fixture), lives in a module of ``SLOW_MODULES``, is named in ``SLOW_TESTS`` or carries
``@pytest.mark.slow`` itself; ``pytest_collection_modifyitems`` below adds the marker.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "fashion_mnist_cnn.yaml"
FASHION = Path("/usr/share/datasets/fashion-mnist")
SUBSAMPLE = 4000   # records per source split in CI

# A test that needs any of these starts Spark, prepares data, trains with Horovod or serves MLflow: slow.
SLOW_FIXTURES = {"spark", "prepared", "trained", "weak_trained", "pipeline"}
# Modules whose every test launches Spark, Horovod, a standalone cluster, a server or a browser in
# subprocesses (no fixture tells): slow as a whole.
SLOW_MODULES = {"test_console", "test_ui", "test_recovery", "test_package",
                "test_reliability_faults", "test_production_mlflow"}
# Single tests of that kind in modules that are otherwise fast ("module.py::name", parameters ignored).
# In a module of your own, prefer ``@pytest.mark.slow`` on the test.
SLOW_TESTS = {"test_prepare_modalities.py::test_cli_exit_codes_around_threshold"}


# ``make test`` runs two pytest-xdist workers that take whole modules (``--dist loadfile``) in collection order.
# The longest modules go first so that neither worker is left with a long one at the end while the other
# idles (measured: 3 minutes of one idle core in xdist's default order, by number of tests). Longest first, from
# ``--durations`` of a two-worker run on 2 cores; a module missing here keeps its place after these.
LONGEST_FIRST = ("test_package", "test_engine", "test_vision_families", "test_scoring", "test_reliability_faults",
                 "test_drift", "test_gpu_scheduling", "test_recovery", "test_console", "test_production_mlflow",
                 "test_model_anywhere", "test_ui", "test_ctc_pipeline", "test_lineage", "test_registry")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))   # stable: order within a module kept
    for item in items:
        module = item.path.stem
        name = f"{item.path.name}::{item.originalname}" if hasattr(item, "originalname") else item.nodeid
        if (SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))) or module in SLOW_MODULES or name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


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


@dataclass
class Pipeline:
    """One configuration taken through prepare -> train (-> register), as the ``pipeline`` fixture gives it.

    ``exp(*extra)`` loads the same configuration (conf, overrides, workspace) with more overrides, for the
    stages a test runs itself (score, baselines, promote) or a variant it trains."""

    conf: Path
    overrides: tuple[str, ...]
    ws: Path
    prepared: Any                      # pipelines.prepare.PrepareResult: .path, .version, .rows, .manifest
    trained: Any = None                # pipelines.train.TrainResult (.run_id, .model_version, .test, .history);
                                       # None when asked with train=False
    _make: Callable[..., Any] = field(default=None, repr=False)

    def exp(self, *extra: str):
        return self._make(*self.overrides, *extra, conf=self.conf, ws=self.ws)

    @property
    def manifest(self) -> dict:
        return self.prepared.manifest

    @property
    def run_id(self) -> str:
        return self.trained.run_id


def _link_dataset(src: str, target: str) -> None:
    """A prepared dataset folder again under another workspace: hard links (files are never rewritten in
    place), a copy where the filesystem refuses links."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, target, copy_function=link)


@pytest.fixture(scope="session")
def pipeline(spark, make_exp, workspace, tmp_path_factory):
    """``pipeline(conf=CONF, *overrides, ws=None, train=True) -> Pipeline``, cached for the session.

    Runs ``prepare.run`` and then (``train=True``) ``train.run`` -- which registers and aliases the
    model -- once per distinct (conf, overrides, ws); a second call with the same arguments returns the
    same object. ``ws=None`` is the session workspace (its MLflow store and registry are shared with the
    ``prepared``/``trained`` fixtures); ``ws="name"`` is a workspace of that name of its own, made once
    per session, for runs that must not touch the shared registry. Datasets are prepared once per
    version (same source and data/prepare config): another workspace gets the prepared folder linked in,
    so its ``prepare.run`` finds it complete and does no work.
    """
    from sparkzoo.pipelines import paths, prepare
    from sparkzoo.pipelines import train as train_stage
    from sparkzoo.pipelines.dataset import dataset_version

    spaces: dict[str, Path] = {}
    prepared: dict[tuple, Any] = {}
    trained: dict[tuple, Any] = {}
    datasets: dict[str, str] = {}       # version -> folder of a complete prepared dataset

    def run(conf: Path | str = CONF, *overrides: str, ws: str | None = None, train: bool = True) -> Pipeline:
        if ws is None:
            where = workspace
        else:
            if ws not in spaces:
                spaces[ws] = tmp_path_factory.mktemp(ws)
            where = spaces[ws]
        key = (str(conf), tuple(overrides), str(where))
        exp = make_exp(*overrides, conf=Path(conf), ws=where)
        if key not in prepared:
            version = dataset_version(exp)
            target = paths.dataset_dir(exp, version)
            if version in datasets and not paths.is_complete(target):
                _link_dataset(datasets[version], target)
            prepared[key] = prepare.run(exp, spark)
            datasets.setdefault(prepared[key].version, prepared[key].path)
        if train and key not in trained:
            trained[key] = train_stage.run(exp, spark)
        return Pipeline(Path(conf), tuple(overrides), where, prepared[key], trained.get(key) if train else None,
                        make_exp)

    return run


@pytest.fixture(scope="session")
def prepared(pipeline):
    """The session's Fashion-MNIST subsample, prepared in the session workspace."""
    return pipeline(CONF, train=False).prepared


@pytest.fixture(scope="session")
def trained(pipeline):
    """LeNet on that subsample, 2 epochs on 2 ranks, registered as fashion_mnist_cnn version 1 (champion)."""
    return pipeline(CONF).trained


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    """The real console script in a subprocess, as a user or a scheduler runs it."""
    import subprocess

    exe = Path(sys.executable).parent / "sparkzoo"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def weak_trained(pipeline, trained):
    """A second, much weaker model, cheaply (2 steps of 1 epoch), registered as its own model 'weak_cnn'
    so the registry state of fashion_mnist_cnn that other tests check is left alone."""
    return pipeline(CONF, "train.max_steps_per_epoch=2", "train.epochs=1", "mlflow.model_name=weak_cnn").trained


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
