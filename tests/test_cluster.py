"""A real multi-process Spark standalone cluster on 127.0.0.1: a master and two workers started with the
pyspark distribution's ``spark-class``, the pipeline submitted with ``spark-submit --master spark://...``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import CONF, ROOT, SUBSAMPLE, free_port

VENV_BIN = Path(sys.executable).parent


def _wait_port(port: int, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def fake_gpu_script(workdir: Path, gpus: int) -> Path:
    """A discovery script that reports GPU addresses "0".."gpus-1": Spark schedules them like real ones."""
    import json

    script = workdir / "fake_gpus.sh"
    found = json.dumps({"name": "gpu", "addresses": [str(i) for i in range(gpus)]})
    script.write_text(f"#!/bin/sh\necho '{found}'\n")
    script.chmod(0o755)
    return script


@contextmanager
def standalone_cluster(workdir: Path, workers: int = 2, cores: int = 1, gpus: int = 0, *,
                       spark_home: Path | None = None, env: dict[str, str] | None = None, isolate_workers: bool = False):
    """``gpus``: each worker advertises that many fake GPUs (``spark.worker.resource.gpu.*``).

    ``spark_home``/``env``: the Spark installation and the whole environment the daemons start with (default:
    this venv's pyspark and this process's environment, with executors on this interpreter).
    ``isolate_workers``: each worker gets a working directory, HOME and SPARK_WORKER_DIR of its own, as
    separate nodes would (``workdir/work/w<i>``).
    """
    import pyspark

    spark_home = spark_home or Path(pyspark.__file__).parent
    base = dict(env) if env is not None else {**os.environ, "PYSPARK_PYTHON": sys.executable}
    env = {**base, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(workdir / "work")}
    if gpus:
        env["SPARK_WORKER_OPTS"] = (f"-Dspark.worker.resource.gpu.amount={gpus} "
                                    f"-Dspark.worker.resource.gpu.discoveryScript={fake_gpu_script(workdir, gpus)}")
    port, ui = free_port(), free_port()
    cls = str(spark_home / "bin" / "spark-class")
    procs = [subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                               "--webui-port", str(ui)], env=env, stdout=open(workdir / "master.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        _wait_port(port)
        for i in range(workers):
            worker_env, cwd = env, None
            if isolate_workers:
                cwd = workdir / "work" / f"w{i}"
                (cwd / "home").mkdir(parents=True)
                worker_env = {**env, "HOME": str(cwd / "home"), "SPARK_WORKER_DIR": str(cwd)}
            procs.append(subprocess.Popen(
                [cls, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host", "127.0.0.1",
                 "--cores", str(cores), "--memory", "2g", "--webui-port", str(free_port())],
                env=worker_env, cwd=cwd, stdout=open(workdir / f"worker{i}.log", "w"), stderr=subprocess.STDOUT,
                start_new_session=True))
        time.sleep(8)   # workers register with the master
        yield f"spark://127.0.0.1:{port}", env
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def test_pipeline_runs_unchanged_on_a_standalone_cluster(tmp_path):
    ws = tmp_path / "ws"
    with standalone_cluster(tmp_path) as (master, env):
        proc = subprocess.run(
            [str(VENV_BIN / "spark-submit"), "--master", master, "--conf", f"spark.pyspark.python={sys.executable}",
             "--conf", "spark.executor.memory=1g", str(ROOT / "jobs" / "run.py"), "--conf", str(CONF),
             "--set", f"workspace={ws}", "--set", f"data.max_records={SUBSAMPLE // 2}", "--set", "train.epochs=1",
             "--set", "train.num_proc=2", "--set", "train.progress=false"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    assert "sparkzoo run: done" in out and "registered model fashion_mnist_cnn version 1" in out
    assert f"scored {SUBSAMPLE // 2} rows" in out
    # the two ranks ran in executor processes on the workers, not in the driver
    logs = list((tmp_path / "work").rglob("stderr"))
    assert len({p.parent.name for p in logs}) >= 2
