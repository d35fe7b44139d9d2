"""A real multi-process Spark standalone cluster on 127.0.0.1 for the tests that submit to one: a master and
workers started with the pyspark distribution's ``spark-class``.

The plain "pipeline runs unchanged with ``--master spark://...``" check lives in
``tests/test_package.py::test_packed_environment_on_a_cluster_that_shares_nothing``, which submits the same
``jobs/run.py`` (``sparkzoo job-file run``) to such a cluster from an installed wheel and checks more; a second
whole pipeline on a cluster from the checkout cost two minutes of every ``make test`` and caught nothing more.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .conftest import free_port

VENV_BIN = Path(sys.executable).parent


def _wait_until(ready: Callable[[], bool], timeout: float, what: str, every: float) -> None:
    """Poll ``ready`` until it says yes; TimeoutError naming ``what`` when ``timeout`` runs out."""
    end = time.time() + timeout
    while time.time() < end:
        if ready():
            return
        time.sleep(every)
    raise TimeoutError(what)


def _listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive_workers(ui_port: int) -> int:
    """ALIVE workers on the master's JSON page; 0 while the page does not answer yet (or answers with
    something that is not JSON)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as page:
            return sum(w.get("state") == "ALIVE" for w in json.load(page).get("workers", []))
    except (OSError, ValueError):
        return 0


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
    # Local dirs under ``workdir``: an executor a test SIGKILLs runs no shutdown hook, and under /tmp its
    # scratch (a copy of a shipped archive: 0.9 GB for a packed venv) outlived the test run.
    env = {**base, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(workdir / "work"),
           "SPARK_LOCAL_DIRS": str(workdir / "local")}
    if gpus:
        env["SPARK_WORKER_OPTS"] = (f"-Dspark.worker.resource.gpu.amount={gpus} "
                                    f"-Dspark.worker.resource.gpu.discoveryScript={fake_gpu_script(workdir, gpus)}")
    # every daemon's ports picked up front and distinct: a port is free until its daemon binds it, and a
    # worker whose UI port was picked after the master's, before the master bound it, once took it
    # (the master's JSON page then answered with the worker's HTML)
    taken: set[int] = set()
    while len(taken) < 2 + workers:
        taken.add(free_port())
    port, ui, *worker_uis = sorted(taken)
    cls = str(spark_home / "bin" / "spark-class")
    procs = [subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                               "--webui-port", str(ui)], env=env, stdout=open(workdir / "master.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        _wait_until(lambda: _listens(port), 60.0, f"nothing listens on 127.0.0.1:{port}", every=0.5)
        for i in range(workers):
            worker_env, cwd = env, None
            if isolate_workers:
                cwd = workdir / "work" / f"w{i}"
                (cwd / "home").mkdir(parents=True)
                worker_env = {**env, "HOME": str(cwd / "home"), "SPARK_WORKER_DIR": str(cwd)}
            procs.append(subprocess.Popen(
                [cls, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host", "127.0.0.1",
                 "--cores", str(cores), "--memory", "2g", "--webui-port", str(worker_uis[i])],
                env=worker_env, cwd=cwd, stdout=open(workdir / f"worker{i}.log", "w"), stderr=subprocess.STDOUT,
                start_new_session=True))
        # until the workers have registered (a fixed sleep was slow or too short)
        _wait_until(lambda: _alive_workers(ui) >= workers, 90.0,
                    f"{workers} workers did not register with the master within 90 s", every=0.3)
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
