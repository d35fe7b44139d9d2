"""Reliability, faults: a Python worker SIGKILLed in the middle of prepare, a full disk under prepare and
under score, outputs whose commit never finished, and the MLflow tracking server stopped in the middle
of training. All real: a fresh local[2,3] Spark job, a real tmpfs of a few hundred kB, a real
`sparkzoo ui` server process killed and started again. The training-rank kill is
tests/test_engine.py::test_killed_rank_restarts_in_the_same_run_and_matches
(and a lost worker, tests/test_recovery.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest

from sparkzoo.pipelines import paths, prepare, score, track
from sparkzoo.pipelines.dataset import SPLITS, open_prepared, open_prepared_at
from sparkzoo.pipelines.errors import DataError, OutputError, ScoringError

from .conftest import CONF, ROOT, free_port, run_cli
from .reliability_ledger import record
from .tracking_outage import train_through_outage

STAMPS = Path("/usr/share/tuxpaint/stamps")
THIS = "tests/test_reliability_faults.py::"


def _ids(dataset_dir: str, splits=SPLITS) -> list[str]:
    return [i for s in splits if paths.exists(paths.join(dataset_dir, s))
            for i in pq.read_table(paths.join(dataset_dir, s), columns=["id"]).column("id").to_pylist()]


@contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (tmpfs; needs root). Without root the test is skipped, not faked."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); the disk-full test needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# ---- an executor's Python worker, or the executor itself, killed during prepare --------------------

def _stamp_tree(tmp_path: Path) -> tuple[Path, set[str]]:
    """36 real stamps in 3 class folders and one empty file: the ids a complete output must hold."""
    src = tmp_path / "stamps"
    expected = set()
    for cat in ("food", "sports", "vehicles"):
        (src / cat).mkdir(parents=True)
        for p in sorted((STAMPS / cat).rglob("*.png"))[:12]:
            shutil.copy(p, src / cat / p.name)
            expected.add(f"stamps_fault/{cat}/{p.name}")
    (src / "food" / "zero.png").write_bytes(b"")
    return src, expected


def _prepare_sets(tmp_path: Path, src: Path) -> list[str]:
    return [f"workspace={tmp_path / 'ws'}", "data.dataset=stamps_fault", "data.max_records=null",
            "data.source={kind: image_folder, path: " + str(src) + ", extensions: [png], label_level: 0}",
            "data.image={height: 16, width: 16, channels: 3}", "prepare.max_bad_fraction=0.5",
            "spark.conf.spark.ui.enabled=false"]


def _complete_once(stdout: str, expected: set[str]) -> tuple[int, int, int]:
    """The committed dataset holds every expected id exactly once: (input, written, quarantined)."""
    dataset = stdout.split("path: ")[1].split()[0].strip()
    ds = open_prepared_at(dataset)
    ids = _ids(dataset)
    assert len(ids) == len(set(ids)), "the retried task duplicated rows"
    assert set(ids) == expected
    quarantined = pq.read_table(paths.join(dataset, "quarantine")).column("reason").to_pylist()
    assert quarantined == ["empty_file"]
    assert ds.manifest["input_records"] == len(ids) + len(quarantined) == len(expected) + 1
    return ds.manifest["input_records"], len(ids), len(quarantined)


def test_python_worker_killed_during_prepare_is_retried_without_duplicates(tmp_path):
    src, expected = _stamp_tree(tmp_path)
    marker = tmp_path / "killed-once"
    sets = [*_prepare_sets(tmp_path, src), "spark.master=local[2,3]"]   # 3 attempts per task in local mode
    proc = run_cli("prepare", "-v", "--conf", str(CONF), *[a for s in sets for a in ("--set", s)],
                   env={"SPARKZOO_FAULT": f"prepare.decode:{marker}", "PYSPARK_PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists(), "the fault was never injected"
    killed_pid = int(marker.read_text().split()[1])
    assert "Lost task" in proc.stderr and "Python worker exited unexpectedly" in proc.stderr   # Spark saw it die
    rows_in, rows_out, quarantined = _complete_once(proc.stdout, expected)
    record("Python worker SIGKILLed in the middle of a prepare task", kind="fault",
           expected="Spark retries the task; output complete, no duplicates",
           outcome=f"worker pid {killed_pid} killed after sending its rows; task retried; every id once",
           test=THIS + "test_python_worker_killed_during_prepare_is_retried_without_duplicates",
           rows_in=rows_in, rows_out=rows_out, quarantined=quarantined)


def test_executor_jvm_killed_during_prepare_on_a_standalone_cluster(tmp_path):
    from .cluster import VENV_BIN, standalone_cluster

    src, expected = _stamp_tree(tmp_path)
    marker = tmp_path / "executor-killed-once"
    with standalone_cluster(tmp_path) as (master, env):
        proc = subprocess.run(
            [str(VENV_BIN / "spark-submit"), "--master", master, "--conf", f"spark.pyspark.python={sys.executable}",
             "--conf", "spark.executor.memory=1g", "--conf", f"spark.executorEnv.SPARKZOO_FAULT=prepare.decode:"
             f"{marker}:executor", str(ROOT / "jobs" / "prepare.py"), "--conf", str(CONF),
             *[a for s in _prepare_sets(tmp_path, src) for a in ("--set", s)]],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert marker.exists() and marker.read_text().startswith("executor "), "the executor was never killed"
    assert "Lost executor" in proc.stderr or "ExecutorLostFailure" in proc.stderr     # Spark saw it go
    rows_in, rows_out, quarantined = _complete_once(proc.stdout, expected)
    record("executor JVM SIGKILLed in the middle of prepare (standalone cluster, 2 workers)", kind="fault",
           expected="Spark reruns its tasks on the other executor; output complete, no duplicates",
           outcome="executor lost; tasks rerun; every id once",
           test=THIS + "test_executor_jvm_killed_during_prepare_on_a_standalone_cluster",
           rows_in=rows_in, rows_out=rows_out, quarantined=quarantined)


# ---- full disk ------------------------------------------------------------------------------------------

def test_disk_full_during_prepare_leaves_nothing_that_looks_complete(make_exp, spark, tmp_path):
    with small_disk(tmp_path / "small", "1m") as disk:
        exp = make_exp(f"workspace={tmp_path}", f"data.root={disk}")
        with pytest.raises(OutputError) as err:
            prepare.run(exp, spark)
        msg = str(err.value)
        assert "the disk is full (No space left on device)" in msg and str(disk) in msg
        assert "Traceback" not in msg
        left = [p for p in disk.rglob("*") if p.is_file()]
        assert left == [], left                                     # the staging folder went with the error
        with pytest.raises(DataError, match="run the prepare stage first"):
            open_prepared(exp)
    record("disk full under the prepare output", kind="fault", expected="OutputError naming the path; no output "
           "that looks complete", outcome="OutputError 'the disk is full'; staging removed, nothing committed",
           test=THIS + "test_disk_full_during_prepare_leaves_nothing_that_looks_complete")


def test_incomplete_prepared_dataset_is_refused_and_replaced(make_exp, spark, tmp_path):
    exp = make_exp(f"workspace={tmp_path}", "data.max_records=500")
    first = prepare.run(exp, spark)
    marker = Path(first.path) / paths.SUCCESS
    assert json.loads(marker.read_text())["rows"] == first.rows
    marker.unlink()                                  # the job died between writing files and committing
    with pytest.raises(DataError, match=r"not a complete prepared dataset: _SUCCESS is missing.*re-run `sparkzoo "
                                        r"prepare --conf"):
        open_prepared(exp)
    again = prepare.run(exp, spark)
    assert not again.skipped and again.path == first.path and again.rows == first.rows
    assert len(set(_ids(again.path))) == sum(again.rows.values()) == len(_ids(again.path))
    victim = sorted((Path(again.path) / "train").glob("*.parquet"))[0]
    victim.unlink()                                  # someone deleted a file of a committed dataset
    with pytest.raises(DataError, match=r"is damaged: 1 Parquet file\(s\) of split train"):
        open_prepared(exp)
    test = THIS + "test_incomplete_prepared_dataset_is_refused_and_replaced"
    record("prepared dataset without its _SUCCESS marker", kind="fault", expected="readers refuse it; prepare "
           "replaces it", outcome="DataError 're-run sparkzoo prepare'; re-run rebuilt it with the same rows",
           test=test, rows_in=again.input_records, rows_out=sum(again.rows.values()), quarantined=again.quarantined)
    record("prepared dataset with a Parquet file deleted", kind="fault", expected="readers refuse it",
           outcome="DataError 'is damaged' naming the split", test=test)


def test_disk_full_during_score_and_incomplete_partitions(trained, make_exp, spark, tmp_path):
    n = 300                                          # a slice of the real test split keeps three runs quick
    pq.write_table(pq.read_table(open_prepared(make_exp()).split_dir("test")).slice(0, n), tmp_path / "in.parquet")
    scoring = (f"score.input_path={tmp_path / 'in.parquet'}",)
    with small_disk(tmp_path / "small", "8k") as disk:
        with pytest.raises(OutputError, match=r"cannot write scoring output .*the disk is full"):
            score.run(make_exp(*scoring, f"score.output={disk / 'pred'}", "score.run_date=2026-06-01"), spark)
        # what a reader would see as scored: a task still running when the job aborted may leave its file
        # under Spark's hidden staging folder (.spark-staging-*/_temporary), which readers skip
        committed = [p for p in disk.rglob("*") if p.is_file() and (p.name == paths.SUCCESS or p.suffix == ".parquet")
                     and "model_version=" in str(p)
                     and not any(paths.is_hidden(part) for part in p.relative_to(disk).parent.parts)]
        assert committed == [], committed
    out = tmp_path / "pred"
    day1 = score.run(make_exp(*scoring, f"score.output={out}", "score.run_date=2026-06-01"), spark)
    part = Path(score.partition_dir(str(out), day1.model_version, "2026-06-01"))
    info = json.loads((part / "_manifest.json").read_text())
    assert (part / paths.SUCCESS).exists() and info["rows"] == day1.scored_rows == n
    assert sorted(info["files"]) == sorted(p.name for p in part.glob("*.parquet"))
    assert (Path(score.partition_dir(day1.rejects, day1.model_version, "2026-06-01")) / paths.SUCCESS).exists()
    (part / paths.SUCCESS).unlink()                 # as if the job died right after Spark's commit
    with pytest.raises(ScoringError, match=r"run_date=2026-06-01 has no _SUCCESS marker"):
        score.run(make_exp(*scoring, f"score.output={out}", "score.run_date=2026-06-02", "score.incremental=true"),
                  spark)
    again = score.run(make_exp(*scoring, f"score.output={out}", "score.run_date=2026-06-01"), spark)   # the fix it names
    assert (part / paths.SUCCESS).exists() and again.scored_rows == n
    ids = pq.read_table(part, columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == n
    test = THIS + "test_disk_full_during_score_and_incomplete_partitions"
    record("disk full under the score output", kind="fault", expected="OutputError; no partition that looks complete",
           outcome="OutputError 'the disk is full'; Spark's staging aborted, no partition written", test=test)
    record("predictions partition without its _SUCCESS marker", kind="fault", expected="incremental scoring refuses "
           "it; a rerun of that date repairs it", outcome="ScoringError naming the partition; rerun commits it again",
           test=test, rows_in=n, rows_out=len(ids), quarantined=again.rejected_rows)


# ---- the MLflow tracking server stopped during training ---------------------------------------------

class UiServer:
    """`sparkzoo ui` as a user starts it (its own process group), which can be killed and started again."""

    def __init__(self, workspace: Path, port: int) -> None:
        self.workspace, self.port, self.proc = workspace, port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        log = open(self.workspace / "server.log", "a")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "sparkzoo"), "ui", "--conf", str(CONF),
                                      "--set", f"workspace={self.workspace}", "--port", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"sparkzoo ui did not come up:\n{(self.workspace / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)

    def listening_hosts(self) -> set[str]:
        import psutil

        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        return {c.laddr.ip for p in procs for c in p.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == self.port}

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # a crash, not a polite shutdown
        except ProcessLookupError:
            pass
        self.proc.wait(15)
        self.proc = None


@pytest.fixture
def ui_server(tmp_path) -> Iterator[UiServer]:
    server = UiServer(tmp_path / "server", free_port())
    server.workspace.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.kill()


SECRET = "s3cr3t-value-never-logged"


def test_tracking_server_stopped_during_training(ui_server, prepared, make_exp, spark):
    from mlflow.tracking import MlflowClient

    assert ui_server.listening_hosts() == {"127.0.0.1"}          # `sparkzoo ui` binds to loopback by default
    exp = make_exp(f"mlflow.tracking_uri={ui_server.url}", "mlflow.model_name=outage_cnn", "name=outage",
                   "train.epochs=4", "train.max_steps_per_epoch=40", "mlflow.outage_timeout_s=180",
                   f"spark.conf.spark.hadoop.fs.s3a.secret.key={SECRET}")
    viewer = MlflowClient(tracking_uri=ui_server.url, registry_uri=ui_server.url)
    result, run_id, steps_kept = train_through_outage(exp, spark, viewer, ui_server.kill, ui_server.start, down_s=3)
    box = track.outbox(exp, run_id)
    assert result.run_id == run_id and steps_kept and min(steps_kept) >= 2     # epoch 2 on went to the outbox
    got = viewer.get_run(run_id)
    assert got.info.status == "FINISHED"
    history = viewer.get_metric_history(run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]                       # each epoch once, none lost
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [h["val_accuracy"] for h in result.history])
    assert "test_accuracy" in got.data.metrics
    names = {a.path for a in viewer.list_artifacts(run_id)} | {a.path for a in viewer.list_artifacts(run_id, "plots")}
    assert {"report.html", "config.yaml", "history.json", "plots/curves.png"} <= names
    assert not Path(box.dir).exists()                                           # everything kept was sent
    assert viewer.get_model_version("outage_cnn", str(result.model_version)).run_id == run_id
    record("MLflow tracking server killed during training and restarted", kind="fault",
           expected="training goes on; kept metrics/artefacts sent when it is back",
           outcome=f"epochs {steps_kept} kept in the outbox while it was down; run FINISHED with 4/4 epochs of "
                   f"metrics, all artefacts, model registered",
           test=THIS + "test_tracking_server_stopped_during_training")

    # security defaults, checked on the same real run: no secret in params, artefacts or the outbox
    params = got.data.params
    assert params["spark.conf.spark.hadoop.fs.s3a.secret.key"] == "***"
    assert all(SECRET not in v for v in params.values())
    local = Path(viewer.download_artifacts(run_id, "", dst_path=str(ui_server.workspace / "download")))
    leaked = [p for p in local.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
    assert f"{ui_server.url}" in params["mlflow.tracking_uri"]
    record("a secret in the config (spark.conf ...secret.key)", kind="safety", expected="masked in params, "
           "config.yaml, report.html and every artefact", outcome="params show ***; no artefact holds the value",
           test=THIS + "test_tracking_server_stopped_during_training")
    record("`sparkzoo ui` bind address", kind="safety", expected="127.0.0.1 unless ui.host / --host says otherwise",
           outcome="listens on 127.0.0.1 only", test=THIS + "test_tracking_server_stopped_during_training")


def test_tracking_server_still_down_fails_clearly_and_nothing_is_lost(ui_server, make_exp, tmp_path):
    """The other branch of the same policy, at the track level (no training needed): what can wait is
    kept, what cannot fails after mlflow.outage_timeout_s with a message, and the next command sends it."""
    exp = make_exp(f"workspace={tmp_path / 'ws'}", f"mlflow.tracking_uri={ui_server.url}", "name=down",
                   "mlflow.outage_timeout_s=3", "mlflow.retry_backoff_s=0.5")
    run_id = track.start_run(exp, dataset_version="v0", world_size=2)
    ui_server.kill()
    started = time.monotonic()
    for step in (1, 2):
        track.log_metrics(exp, run_id, {"val_accuracy": 0.5 + step / 10}, step=step)   # kept, returns at once
    assert time.monotonic() - started < 5
    with pytest.raises(Exception) as err:          # a call that cannot be deferred: waits 3 s, then gives up
        track.end_run(exp, run_id, "FINISHED")
    msg = str(err.value)
    assert type(err.value).__name__ == "TrainingError" and 3 <= time.monotonic() - started < 30
    assert f"MLflow tracking server {ui_server.url} did not answer for mlflow.outage_timeout_s=3s" in msg
    assert track.outbox(exp, run_id).dir in msg and "re-run the same command" in msg
    track.end_run(exp, run_id, "FAILED")          # what train.run does next: kept too, no second error
    assert track.outbox(exp, run_id).pending() == 3
    ui_server.start()
    assert track.find_unfinished_run(exp) == run_id   # the re-run's first call sends what was kept
    from mlflow.tracking import MlflowClient

    viewer = MlflowClient(tracking_uri=ui_server.url, registry_uri=ui_server.url)
    history = viewer.get_metric_history(run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.6), (2, 0.7)]
    assert viewer.get_run(run_id).info.status == "FAILED"
    assert not Path(track.outbox(exp, run_id).dir).exists()
    record("MLflow tracking server still down when the run must finish", kind="fault",
           expected="TrainingError after mlflow.outage_timeout_s naming the server and the outbox; kept metrics "
                    "sent by the next command", outcome="failed after 3 s with that message; both kept epochs and "
                    "the FAILED status arrived once the server was back",
           test=THIS + "test_tracking_server_still_down_fails_clearly_and_nothing_is_lost")
