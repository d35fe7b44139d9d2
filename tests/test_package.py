"""sparkzoo as a user gets it, away from this checkout.

The wheel is built from this tree and installed into a fresh virtualenv; the ``sparkzoo`` command runs
from an empty folder with only the packaged defaults. Then the same environment, with Horovod added, is
packed with venv-pack and shipped with ``spark-submit --archives`` to a standalone cluster (master + two
workers on 127.0.0.1) whose workers have a working directory, HOME and PATH of their own and a Spark
installation taken from the packed environment, not from this checkout's venv. A ``sitecustomize`` probe
on every Python process records where each ``sparkzoo`` and ``torch`` module was loaded from, so the test
checks from inside the executors and the ranks that nothing came from the checkout or its venv.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import ROOT, SUBSAMPLE
from .cluster import standalone_cluster

CHECKOUT_VENV = Path(sys.prefix)
# Environment variables that would point a subprocess back at this checkout or its venv.
LEAKY = ("VIRTUAL_ENV", "PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_HOME", "PYTHONHOME",
         "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")

# Written as sitecustomize.py into a folder on PYTHONPATH: every process that imports sparkzoo or torch
# appends one line per module it found (pid, interpreter, prefix, module, file) to records.jsonl.
PROBE = r'''
import importlib.abc, json, os, sys

_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "records.jsonl")


class _Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if not (name == "torch" or name == "sparkzoo" or name.startswith("sparkzoo.")):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                with open(_OUT, "a") as fh:
                    fh.write(json.dumps({"pid": os.getpid(), "executable": sys.executable, "prefix": sys.prefix,
                                         "cwd": os.getcwd(), "module": name, "origin": spec.origin}) + "\n")
                return spec
        return None


sys.meta_path.insert(0, _Probe())
'''


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    env.update(extra)
    return env


def _run(cmd: list, timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, ROOT])
    (built,) = dist.glob("sparkzoo-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheel) -> Path:
    """A new virtualenv with the pinned torch and the wheel (its declared dependencies), nothing else."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    # --copies: the interpreter is copied, not linked; Spark refuses an archive with a link pointing outside it
    _run([base, "-m", "venv", "--copies", venv], env=_clean_env())
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, "torch==2.13.0"], env=_clean_env())    # the CPU wheel first and alone (see README "Pins")
    _run([*pip, wheel], env=_clean_env())
    return venv


def test_wheel_carries_defaults_examples_and_license(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "sparkzoo/conf/defaults.yaml" in names and "sparkzoo/conf/fashion_mnist_cnn.yaml" in names
    assert "sparkzoo/conf/zoo/vision.yaml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for dep in ("soundfile", "scipy", "scikit-learn", "torch==2.13.0", "mlflow==3.17.2"):
        assert f"Requires-Dist: {dep}" in metadata, dep
    assert "Provides-Extra: horovod" in metadata and "Provides-Extra: petastorm" in metadata
    # Horovod and petastorm are extras, never hard requirements
    assert not any(line.startswith("Requires-Dist: horovod") and "extra ==" not in line for line in metadata.splitlines())


def test_installed_wheel_runs_from_an_empty_folder(fresh_venv, tmp_path):
    """doctor, init and a whole run with the packaged defaults, in a folder with nothing of ours in it."""
    bin_dir = fresh_venv / "bin"
    env = _clean_env(PATH=f"{bin_dir}:/usr/bin:/bin", PYSPARK_PYTHON=str(bin_dir / "python"))
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run([bin_dir / "python", "-c", "import sparkzoo, sparkzoo.pipelines.config as c; "
                  "print(sparkzoo.__file__); print(c.DEFAULTS_FILE)"], cwd=empty, env=env).stdout.split()
    assert all(Path(p).is_relative_to(fresh_venv) for p in where), where
    no_horovod = subprocess.run([bin_dir / "python", "-c", "import horovod"], cwd=empty, env=env, capture_output=True)
    assert no_horovod.returncode != 0, "horovod is an extra: the plain wheel must not pull it in"

    version = _run([bin_dir / "sparkzoo", "--version"], cwd=empty, env=env).stdout.strip()
    from sparkzoo import __version__

    assert version == f"sparkzoo {__version__}"
    listed = _run([bin_dir / "sparkzoo", "init", "--list"], cwd=empty, env=env).stdout
    assert "fashion_mnist_cnn" in listed and "defaults" not in listed

    # the torch_distributor backend needs neither Horovod nor petastorm
    backend = ["--set", "train.backend=torch_distributor", "--set", "train.reader=pyarrow"]
    doctor = _run([bin_dir / "sparkzoo", "doctor", *backend], cwd=empty, env=env)
    assert "sparkzoo doctor: ready" in doctor.stdout, doctor.stdout

    # an experiment file the user copied out and edited overrides the packaged defaults
    _run([bin_dir / "sparkzoo", "init", "fashion_mnist_cnn", "--output", "mine.yaml"], cwd=empty, env=env)
    mine = empty / "mine.yaml"
    mine.write_text(mine.read_text().replace("model_name: fashion_mnist_cnn", "model_name: my_fashion", 1))
    assert sorted(p.name for p in empty.iterdir()) == ["mine.yaml"]
    run = _run([bin_dir / "sparkzoo", "run", "-c", "mine.yaml", *backend, "--set", f"data.max_records={SUBSAMPLE // 2}",
                "--set", "train.epochs=1", "--set", "train.num_proc=2", "--set", "spark.master=local[2]",
                "--set", "train.progress=false"], cwd=empty, env=env, timeout=1200)
    assert "sparkzoo run: done" in run.stdout and f"scored {SUBSAMPLE // 2} rows" in run.stdout, run.stdout
    assert (empty / "workspace" / "mlflow.db").is_file()          # relative paths resolve in the user's folder
    assert "registered model my_fashion version 1" in run.stdout, run.stdout

    # docs/SCHEDULING.md's nightly job and promotion, as written there, against what the run left
    small = ["--set", "mlflow.model_name=my_fashion", "--set", f"data.max_records={SUBSAMPLE // 2}",
             "--set", "spark.master=local[2]"]
    job_file = _run([bin_dir / "sparkzoo", "job-file", "score"], cwd=empty, env=env).stdout.strip()
    nightly = _run([bin_dir / "spark-submit", job_file, "-c", "nightly_scoring",
                    "--set", "score.run_date=2026-11-25", *small], cwd=empty, env=env)
    assert f"scored {SUBSAMPLE // 2} rows with my_fashion v1" in nightly.stdout, nightly.stdout
    assert (empty / "workspace" / "predictions" / "nightly" / "model_version=1" / "run_date=2026-11-25").is_dir()
    promote = _run([bin_dir / "spark-submit", _run([bin_dir / "sparkzoo", "job-file", "promote"], cwd=empty,
                                                    env=env).stdout.strip(), "-c", "mine.yaml", *small],
                   cwd=empty, env=env)
    assert "champion is v1" in promote.stdout, promote.stdout
    rollback = _run([bin_dir / "sparkzoo", "promote", "-c", "mine.yaml", "--rollback-to", "1", *small],
                    cwd=empty, env=env)
    assert "champion is v1" in rollback.stdout, rollback.stdout


def _records(probe: Path) -> list[dict]:
    path = probe / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _executor_jvm(pid: int) -> int | None:
    """The executor JVM (CoarseGrainedExecutorBackend) a Python worker descends from."""
    while pid > 1:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        if "CoarseGrainedExecutorBackend" in cmdline:
            return pid
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return None


def test_packed_environment_on_a_cluster_that_shares_nothing(fresh_venv, tmp_path):
    """spark-submit --archives of the packed venv: 2 ranks on 2 executors, register, score; one executor
    JVM is killed while scoring runs, and every row is still scored exactly once."""
    bin_dir = fresh_venv / "bin"
    # Horovod from the cached patched build (scripts/build_horovod.sh), then pack what the executors get.
    _run(["bash", ROOT / "scripts" / "build_horovod.sh", bin_dir / "python"], env=_clean_env(), timeout=1200)
    # .tar.gz, not .tar: Spark unpacks a plain .tar with Java code that drops the executable bits
    archive = tmp_path / "sparkzoo-env.tar.gz"
    _run([CHECKOUT_VENV / "bin" / "venv-pack", "-p", fresh_venv, "-o", archive, "--compress-level", "1", "-q"], env=_clean_env())

    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    job = tmp_path / "job"      # the driver's folder: the experiment YAML and nothing else
    job.mkdir()
    _run([bin_dir / "sparkzoo", "init", "fashion_mnist_cnn", "--output", job / "experiment.yaml"],
         env=_clean_env(PATH=f"{bin_dir}:/usr/bin:/bin"))
    executor_tmp = tmp_path / "executor-tmp"
    executor_tmp.mkdir()
    ws = tmp_path / "ws"         # data, checkpoints, store: a path every node sees (HDFS/S3 on a real cluster)
    spark_home = next((fresh_venv / "lib").glob("python3*/site-packages/pyspark"))
    cluster_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

    with standalone_cluster(tmp_path, spark_home=spark_home, env=cluster_env, isolate_workers=True) as (master, _):
        driver_env = _clean_env(PATH=f"{bin_dir}:/usr/bin:/bin", SPARK_HOME=str(spark_home),
                                PYTHONPATH=str(probe), SPARK_LOCAL_IP="127.0.0.1")
        job_file = _run([bin_dir / "sparkzoo", "job-file", "run"], env=driver_env).stdout.strip()
        assert Path(job_file).is_relative_to(fresh_venv)
        cmd = [bin_dir / "spark-submit", "--master", master,
               "--archives", f"{archive}#environment",
               "--conf", "spark.pyspark.python=./environment/bin/python",
               "--conf", f"spark.pyspark.driver.python={bin_dir / 'python'}",
               "--conf", f"spark.executorEnv.PYTHONPATH={probe}",
               "--conf", "spark.executor.memory=1g", "--conf", "spark.task.maxFailures=4",
               # executors fetch the archive into java.io.tmpdir; the one this test SIGKILLs never deletes it
               "--conf", f"spark.executor.extraJavaOptions=-Djava.io.tmpdir={executor_tmp}",
               job_file, "-c", "experiment.yaml",
               "--set", f"workspace={ws}", "--set", f"data.max_records={SUBSAMPLE}", "--set", "train.epochs=1",
               "--set", "train.num_proc=2", "--set", "train.progress=false",
               "--set", "spark.conf.spark.sql.shuffle.partitions=4"]
        proc = subprocess.Popen([str(c) for c in cmd], cwd=job, env=driver_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        killed: dict[str, int] = {}

        def kill_an_executor_once_scoring_starts() -> None:
            """Watch the probe for a scoring task in an executor's Python worker; SIGKILL that executor."""
            end = time.time() + 1500
            while time.time() < end and proc.poll() is None:
                for rec in _records(probe):
                    if rec["module"] == "sparkzoo.pipelines.scoring_worker" and "environment" in rec["executable"]:
                        jvm = _executor_jvm(rec["pid"])
                        if jvm:
                            os.kill(jvm, signal.SIGKILL)
                            killed.update(jvm=jvm, worker_pid=rec["pid"])
                            return
                time.sleep(0.2)

        watcher = threading.Thread(target=kill_an_executor_once_scoring_starts, daemon=True)
        watcher.start()
        out, err = proc.communicate(timeout=1800)
        watcher.join(timeout=5)
        assert proc.returncode == 0, out[-3000:] + err[-6000:]

    assert "sparkzoo run: done" in out and "registered model fashion_mnist_cnn version 1" in out, out
    assert killed, "no scoring task was seen in an executor, so nothing was killed"
    assert "ExecutorLostFailure" in err or "Lost executor" in err or "lost worker" in err.lower(), err[-4000:]

    # every input row scored exactly once, after the lost executor's tasks were re-run elsewhere
    import pyarrow.dataset as ds

    preds = ds.dataset(ws / "predictions", format="parquet", partitioning="hive").to_table(columns=["id"])
    ids = preds.column("id").to_pylist()
    scored = int(out.split("scored ", 1)[1].split(" rows", 1)[0])
    assert len(ids) == len(set(ids)) == scored == SUBSAMPLE
    # the executors' Python workers read and wrote the files themselves (score.file_io: auto -> pyarrow)
    manifests = list((ws / "predictions").rglob("_manifest.json"))
    assert manifests and {json.loads(m.read_text())["file_io"] for m in manifests} == {"pyarrow"}

    # from inside the processes: what each one imported, and from where
    records = _records(probe)
    driver = [r for r in records if Path(r["executable"]).is_relative_to(fresh_venv)]
    remote = [r for r in records if r not in driver]
    assert driver and remote
    for rec in records:   # nobody imported anything from the checkout or its venv
        assert not Path(rec["executable"]).is_relative_to(ROOT), rec
        assert not Path(rec["origin"] or "/").is_relative_to(ROOT) and not Path(rec["origin"] or "/").is_relative_to(CHECKOUT_VENV), rec
    for rec in remote:    # executors and ranks: the interpreter and every module inside the unpacked archive
        env_dir = Path(rec["executable"]).parent.parent
        assert env_dir.name == "environment" and env_dir.is_relative_to(tmp_path), rec
        assert Path(rec["prefix"]) == env_dir and Path(rec["origin"]).is_relative_to(env_dir), rec
    ranks = {r["pid"] for r in remote if r["module"] == "sparkzoo.pipelines.train.loop"}
    rank_dirs = {Path(r["executable"]).parent.parent.parent for r in remote if r["pid"] in ranks}
    assert len(ranks) >= 2 and len(rank_dirs) == 2, (ranks, rank_dirs)    # 2 ranks, on the 2 executors
    assert {r["module"] for r in remote} >= {"torch", "sparkzoo.pipelines.scoring_worker", "sparkzoo.pipelines.train.loop"}
