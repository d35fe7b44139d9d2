"""Training that heals itself (docs/TRAIN.md "Restarts"): exact mid-epoch resume of the loader, config
errors that are never retried, and a whole worker lost for good on a real standalone cluster.

The single-host kill of one rank (same run, one restart, the uninterrupted run's metrics to 1e-6) is
``tests/test_engine.py::test_killed_rank_restarts_in_the_same_run_and_matches``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from sparkzoo.pipelines import config, track
from sparkzoo.pipelines.dataset import open_prepared
from sparkzoo.pipelines.train.data import ShardReader, steps_per_epoch

from .conftest import CONF, ROOT, exp_overrides, run_cli
from .cluster import VENV_BIN, standalone_cluster

CLUSTER_RUN = ["name=recovery", "train.epochs=2", "train.max_steps_per_epoch=30",
               "train.batch_size=16", "train.checkpoint_every_steps=10"]


def test_resumed_epoch_yields_the_same_batches_reading_fewer_pieces(prepared, make_exp):
    """A resume at batch k of an epoch gets exactly batches k.. of the uninterrupted epoch; the pieces
    before the resume point are not read (only those whose rows the shuffle buffer still held)."""
    ds = open_prepared(make_exp())
    files = [{"path": ds.path + "/" + f["path"], "row_groups": f["row_groups"]} for f in ds.manifest["splits"]["train"]["files"]]
    steps = steps_per_epoch(files, 1, 16)   # one rank: the whole split's row groups, so there are some to skip
    reader = ShardReader(files, 0, 1, shape=ds.manifest["shape"], batch_size=16, seed=7, shuffle_buffer=200)
    full = list(reader.epoch(2, steps=steps))
    read_all = reader.pieces_read
    for skip in (1, steps // 2, steps - 2):
        rest = list(reader.epoch(2, steps=steps, skip=skip))
        assert len(rest) == steps - skip
        for want, got in zip(full[skip:], rest):
            assert np.array_equal(want["image"], got["image"]) and np.array_equal(want["label"], got["label"])
    assert read_all >= 3 and reader.pieces_read < read_all   # the last resume skipped row groups unread


def test_config_errors_are_caught_before_launch_and_never_retried(prepared, workspace):
    """A typo in model.params fails on the driver in one line; a bad value that only the family's
    constructor rejects (inside the ranks) is a ConfigError too: not retried, exit 2."""
    base = [a for o in exp_overrides(workspace) for a in ("--set", o)]
    typo = run_cli("train", "-c", str(CONF), *base, "--set", "model.params.hiden=100")
    assert typo.returncode == 2, typo.stderr[-2000:]
    assert "unknown key 'model.params.hiden' for model lenet" in typo.stderr and "did you mean 'hidden'" in typo.stderr
    assert "Traceback" not in typo.stderr
    assert "[0]<" not in Path(typo.stderr.split("full log: ")[1].split()[0]).read_text()   # no rank started

    bad = run_cli("train", "-c", str(CONF), *base, "--set", "model.params.hidden=[1, 2]", "--set", "train.epochs=1")
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("sparkzoo: error:")]
    assert bad.returncode == 2 and len(errors) == 1, bad.stderr[-3000:]
    assert "model.params" in errors[0] and "Traceback" not in bad.stderr
    log = Path(bad.stderr.split("full log: ")[1].split()[0]).read_text()
    assert "restart 1" not in log   # failed once, never relaunched


def _kill_worker(master: str, index: int) -> int:
    """SIGKILL a whole worker as a lost machine: its Worker JVM and everything under it (executor JVM,
    Python workers, the Horovod rank). Returns how many processes died."""
    workers = sorted((p for p in psutil.process_iter(["cmdline"])
                      if "org.apache.spark.deploy.worker.Worker" in " ".join(p.info["cmdline"] or [])
                      and master in " ".join(p.info["cmdline"] or [])), key=lambda p: p.create_time())
    victims = [workers[index], *workers[index].children(recursive=True)]
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return len(victims)


@pytest.fixture(scope="module")
def cluster_ws(pipeline) -> Path:
    """One prepared subsample (the session's, linked in) and MLflow store for both lost-worker runs."""
    return pipeline(CONF, *CLUSTER_RUN, ws="recovery", train=False).ws


def _train_and_lose_a_worker(tmp_path: Path, ws: Path, *extra: str) -> tuple[subprocess.CompletedProcess, object]:
    """`spark-submit jobs/train.py --fresh` on a 2-worker cluster (one rank per worker); worker 1 is killed
    for good as soon as a step checkpoint of epoch 2 exists (so in the middle of epoch 2)."""
    overrides = [*exp_overrides(ws), *CLUSTER_RUN, *extra]
    exp = config.load(CONF, overrides)
    before = set((ws / "checkpoints").rglob("step-0001-*.pt"))
    with standalone_cluster(tmp_path) as (master, env):
        cmd = [str(VENV_BIN / "spark-submit"), "--master", master, "--conf", f"spark.pyspark.python={sys.executable}",
               "--conf", "spark.executor.memory=1g", str(ROOT / "jobs" / "train.py"), "-c", str(CONF), "--fresh"]
        cmd += [a for o in overrides if not o.startswith("spark.master") for a in ("--set", o)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while set((ws / "checkpoints").rglob("step-0001-*.pt")) <= before and proc.poll() is None \
                and time.time() < deadline:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise AssertionError("training ended before the worker could be killed: " + proc.stderr.read()[-3000:])
        assert _kill_worker(master, 1) >= 3   # worker, executor, Python worker(s) and the rank
        out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), exp


def test_lost_worker_with_min_ranks_1_finishes_on_the_other(tmp_path, cluster_ws):
    done, exp = _train_and_lose_a_worker(tmp_path, cluster_ws, "train.min_ranks=1", "train.rank_wait_seconds=30")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "restart 1:" in done.stdout and "went on with 1 rank" in done.stdout, done.stdout
    run = track.client(exp).get_run(done.stdout.split("MLflow run ")[1].split(";")[0])
    assert run.info.status == "FINISHED" and run.data.tags["sparkzoo.restarts"] == "1"
    assert run.data.metrics["restart_world_size"] == 1 and "1 rank(s)" in run.data.tags["sparkzoo.restart.1"]
    steps = [m.step for m in track.client(exp).get_metric_history(run.info.run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2]   # epoch 2 logged once, by the single rank left


def test_lost_worker_with_min_ranks_2_fails_clearly_after_the_budget(tmp_path, cluster_ws):
    done, exp = _train_and_lose_a_worker(tmp_path, cluster_ws, "train.min_ranks=2", "train.max_failures=1",
                                         "train.rank_wait_seconds=5")
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-5000:]
    said = done.stdout + done.stderr   # spark-submit merges the driver's stderr into its stdout
    errors = [ln for ln in said.splitlines() if ln.startswith("sparkzoo: error:")]
    assert len(errors) == 1 and "train.max_failures=1" in errors[0], said[-3000:]
    assert "restart 1 of at most 1" in said and "was lost without an exit code" in said
    assert "train.min_ranks=2 needs 2" in errors[0]
    failed = track.find_unfinished_run(exp)
    assert failed is not None and track.client(exp).get_run(failed).info.status == "FAILED"
