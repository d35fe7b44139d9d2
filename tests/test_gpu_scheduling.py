"""GPU scheduling without a GPU: a real standalone cluster whose workers advertise fake GPUs.

Spark schedules the fake addresses exactly as real ones (a discovery script per worker), so the test sees
what a GPU cluster would do: which address each training rank and each scoring task was given, the
``CUDA_VISIBLE_DEVICES`` and device that address became, and (from Spark's own event log) that only the
rank and scoring stages asked for GPUs. torch has no CUDA here, so everything still computes on CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from sparkzoo.pipelines import config, devices
from sparkzoo.pipelines.errors import ConfigError, ScoringError, TrainingError

from .conftest import CONF, ROOT, run_cli
from .cluster import VENV_BIN, standalone_cluster

ROWS = 1000   # records per source split: the test is about placement, not accuracy


def _reports(folder: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{kind}-*.json"))]


def _stage_profiles(events: Path) -> tuple[dict[int, dict[str, float]], list[tuple[str, int, int]]]:
    """From Spark's event log: each resource profile's task requests, and (stage name, profile id, stage id)
    per stage."""
    profiles: dict[int, dict[str, float]] = {}
    stages: list[tuple[str, int, int]] = []
    for log in events.iterdir():
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["Event"] == "SparkListenerResourceProfileAdded":
                profiles[event["Resource Profile Id"]] = {
                    name: req["Amount"] for name, req in event["Task Resource Requests"].items()}
            elif event["Event"] == "SparkListenerStageSubmitted":
                info = event["Stage Info"]
                stages.append((info["Stage Name"], info["Resource Profile Id"], info["Stage ID"]))
    return profiles, stages


@pytest.mark.slow   # a standalone cluster, 4 Horovod ranks, scoring
def test_ranks_and_scoring_tasks_use_the_gpus_spark_assigns(tmp_path):
    ws, report, events = tmp_path / "ws", tmp_path / "devices", tmp_path / "events"
    events.mkdir()
    data = ["--set", f"workspace={ws}", "--set", f"data.max_records={ROWS}",
            "--set", "prepare.row_group_bytes=131072"]   # a row group for each of the 4 ranks
    with standalone_cluster(tmp_path, workers=2, cores=2, gpus=2) as (master, env):
        def submit(job: str, *args: str, log_events: bool = False) -> subprocess.CompletedProcess:
            logged = ["--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events}"]
            return subprocess.run(
                [str(VENV_BIN / "spark-submit"), "--master", master, "--conf", f"spark.pyspark.python={sys.executable}",
                 "--conf", "spark.executor.memory=1g", "--conf", "spark.executor.cores=2",
                 "--conf", "spark.executor.resource.gpu.amount=2", "--conf", "spark.task.maxFailures=1",
                 "--conf", f"spark.executorEnv.{devices.REPORT_ENV}={report}",
                 *(logged if log_events else []), str(ROOT / "jobs" / job), "-c", str(CONF), *data, *args],
                cwd=ROOT, env={**env, devices.REPORT_ENV: str(report)}, capture_output=True, text=True, timeout=900)

        proc = submit("run.py", "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=4",
                      "--set", "train.num_proc=4", "--set", "train.progress=false",
                      "--set", "train.gpus_per_rank=1", "--set", "score.tasks_per_gpu=2", log_events=True)
        (tmp_path / "job.out").write_text(proc.stdout + "\n---- stderr ----\n" + proc.stderr)
        assert proc.returncode == 0, proc.stdout[-3000:]
        # the same scoring, now requiring CUDA: the tasks refuse, and the job ends in one line
        required = submit("score.py", "--set", "score.device=cuda", "--set", "score.tasks_per_gpu=2",
                          "--set", f"score.output={tmp_path / 'required'}")
        (tmp_path / "required.out").write_text(required.stdout + "\n---- stderr ----\n" + required.stderr)
    said = required.stdout + required.stderr
    assert required.returncode == 2, said[-3000:]
    assert "sparkzoo: error: score.device=cuda but this executor has no CUDA device" in said, said[-3000:]
    assert "Py4JJavaError" not in said   # the executors' tracebacks stay in Spark's log, not in the error
    out = proc.stdout + proc.stderr
    assert f"scored {ROWS} rows" in proc.stdout
    # one line each on the driver: no CUDA here, so the assigned GPUs were not used
    assert f"training ran on cpu: {devices.NO_CUDA} (Spark assigned gpu 0, 1)" in out, out[-3000:]
    assert f"scoring ran on cpu: {devices.NO_CUDA} (Spark assigned gpu 0, 1)" in out, out[-3000:]

    ranks = _reports(report, "rank")
    assert sorted(r["rank"] for r in ranks) == [0, 1, 2, 3]   # 4 ranks fill both workers' 2 GPUs
    by_executor = defaultdict(list)
    for r in ranks:
        assert len(r["addresses"]) == 1 and r["addresses"][0] in ("0", "1"), r
        assert r["visible"] == r["addresses"][0], r      # the assignment became CUDA_VISIBLE_DEVICES
        assert r["intended"] == "cuda:0" and r["device"] == "cpu", r
        by_executor[r["cwd"]].append(r["addresses"][0])  # a Python worker runs in its executor's folder
    assert sorted(sorted(got) for got in by_executor.values()) == [["0", "1"], ["0", "1"]], dict(by_executor)

    profiles, stages = _stage_profiles(events)
    gpu_of = {pid: req.get("gpu", 0.0) for pid, req in profiles.items()}
    used = defaultdict(list)
    for name, pid, _ in stages:
        used[gpu_of.get(pid, 0.0)].append(name)

    # the scoring stage's tasks each got one address; a model run in any other stage (the drift reference
    # while training, say) asked for none and got none
    scoring_stages = {sid for _, pid, sid in stages if gpu_of.get(pid) == 0.5}
    scored = [t for t in _reports(report, "score") if t["stage"] in scoring_stages]
    assert scored, "no task of the scoring stage reported its device"
    for t in scored:
        assert len(t["addresses"]) == 1 and t["addresses"][0] in ("0", "1"), t
        assert t["intended"] == f"cuda:{t['addresses'][0]}" and t["device"] == "cpu", t
    for t in _reports(report, "score"):
        if t["stage"] not in scoring_stages:
            assert t["addresses"] == [] and t["device"] == "cpu", t
    assert set(used) == {0.0, 1.0, 0.5}, dict(used)   # default (no GPU), one per rank, half per scoring task
    assert len(used[1.0]) == 1 and "horovod/spark/runner.py" in used[1.0][0], dict(used)   # the ranks' stage
    assert len(used[0.5]) >= 1, dict(used)                                             # the scoring stage
    prepare = [name for name, _, _ in stages if "pipelines/prepare" in name]
    assert prepare and all(name in used[0.0] for name in prepare), dict(used)          # prepare: CPU only


def test_gpu_requests_need_a_cluster_master_with_gpus(spark, make_exp):
    """A request Spark could never satisfy fails at once with one line, instead of waiting for a slot."""
    with pytest.raises(ConfigError, match="local mode schedules no GPUs"):
        devices.score_profile(spark, 2)
    with pytest.raises(ConfigError, match="local mode schedules no GPUs"):
        with devices.ranks_hold_gpus(spark, 1, "horovod_spark"):
            pass
    assert "range" not in vars(spark.sparkContext)   # nothing left patched
    assert devices.score_profile(spark, None) is None
    # a local job's executors are this process: a required GPU that is not there fails before any work
    with pytest.raises(ScoringError, match="score.device=cuda but this machine has no CUDA device"):
        devices.score_plan(spark, "cuda", None)
    assert devices.score_plan(spark, "auto", None) == devices.NO_CUDA


def test_required_cuda_without_cuda_fails_clearly():
    with pytest.raises(TrainingError, match="train.device=cuda but rank 0 cannot have a GPU: no CUDA"):
        devices.for_rank("cuda", "horovodrun", 0, 0, 0, ([], "none"))
    with pytest.raises(ScoringError, match="score.device=cuda but this executor has no CUDA device"):
        devices.for_score_task("cuda")
    auto = devices.for_rank("auto", "horovod_spark", 1, 1, 1, (["1"], "spark task"))
    assert (auto.device, auto.intended, auto.addresses) == ("cpu", "cuda:0", ["1"])
    assert devices.NO_CUDA in auto.note


@pytest.mark.parametrize("override, message", [
    ("train.gpus_per_rank=2", "less than or equal to 1"),
    ("train.device=gpu", "'auto', 'cpu' or 'cuda'"),
    ("score.tasks_per_gpu=0", "greater than or equal to 1"),
])
def test_bad_gpu_settings_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        config.load(CONF, [override])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["train.gpus_per_rank=1", "train.backend=horovodrun"], "horovodrun has no Spark to assign GPUs"),
    (["score.tasks_per_gpu=2", "score.device=cpu"], "score.device=cpu never uses them"),
])
def test_contradicting_gpu_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.load(CONF, overrides)


def test_doctor_on_a_cpu_machine_says_where_training_runs(tmp_path):
    proc = run_cli("doctor", "-c", str(CONF), "--set", f"workspace={tmp_path}")
    assert devices.NO_CUDA in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_address_indexes_the_executors_own_cuda_visible_devices(monkeypatch):
    """Spark's rule (pyspark's TorchDistributor): under a container's CUDA_VISIBLE_DEVICES an address is an index."""
    monkeypatch.setenv(devices.VISIBLE, "4,5")
    assert devices.physical_ids(["1"]) == ["5"]
    monkeypatch.delenv(devices.VISIBLE)
    assert devices.physical_ids(["1"]) == ["1"]


def test_the_driver_line_names_cpu_only_when_no_task_had_cuda():
    assert devices.summarise({"cpu (no CUDA; Spark gpu 1)", "cpu (no CUDA; Spark gpu 0)"}) == \
        f"cpu: {devices.NO_CUDA} (Spark assigned gpu 0, 1)"
    assert devices.summarise({"cuda:1", "cuda:0"}) == "cuda:0, cuda:1"
