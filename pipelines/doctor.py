"""``sparkzoo doctor``: is this machine ready to run the pipeline, and if not, what to do about it.

Each check is a small function returning a ``Check``: what it found, whether the pipeline needs it
with this config (``required``), and the fix to print when it failed. Checks run the real thing where
that is cheap (``java -version``, ``spark-submit --version``, importing ``horovod.torch``, an HTTP
``/health`` call) because "installed" and "works" differ; nothing here starts a cluster or a job.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import Experiment

SETUP = "bash scripts/setup.sh (or: make setup)"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("MISSING" if self.required else "warn")


def _run(cmd: list[str], timeout: float = 60) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_python(exp: Experiment) -> Check:
    v = sys.version_info
    ok = (3, 10) <= (v.major, v.minor) <= (3, 12)
    return Check("python", ok, f"{v.major}.{v.minor}.{v.micro} ({sys.executable})",
                 "use Python 3.10-3.12 (Debian 12: python3.11) and re-run " + SETUP)


def check_java(exp: Experiment) -> Check:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    fix = "apt-get install openjdk-17-jre-headless (Spark 3.5 runs on Java 8, 11 or 17), or set JAVA_HOME"
    if not java or not os.path.exists(java):
        return Check("java", False, f"no java on PATH{' or in JAVA_HOME=' + home if home else ''}", fix)
    rc, out = _run([java, "-version"], timeout=30)
    m = re.search(r'version "([^"]+)"', out)
    if rc != 0 or not m:
        return Check("java", False, f"{java} -version failed: {out.splitlines()[-1] if out else rc}", fix)
    major = int(m.group(1).split(".")[1] if m.group(1).startswith("1.") else m.group(1).split(".")[0])
    ok = major in (8, 11, 17)
    return Check("java", ok, f"Java {m.group(1)} ({java})", fix + f"; Java {major} is not supported by Spark 3.5")


def check_spark(exp: Experiment) -> Check:
    try:
        import pyspark
    except ImportError:
        return Check("spark", False, "pyspark is not installed", SETUP)
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    rc, out = _run([str(submit), "--version"], timeout=120)
    if rc != 0:
        return Check("spark", False, f"pyspark {pyspark.__version__} installed but {submit} --version failed: "
                     f"{out.splitlines()[-1] if out else rc}", "check the java line above; then " + SETUP)
    return Check("spark", True, f"pyspark {pyspark.__version__}, spark-submit starts a JVM; master {exp.spark.master}")


def check_torch(exp: Experiment) -> Check:
    try:
        import torch
    except ImportError:
        return Check("torch", False, "torch is not installed", SETUP)
    gpu = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "CPU only"
    return Check("torch", True, f"torch {torch.__version__}, {gpu}")


def check_gpu(exp: Experiment) -> Check:
    """The GPUs this machine shows torch and what reduces gradients between them (NCCL): on a CPU machine one
    line saying training and scoring run there, never a failure; a GPU without NCCL in Horovod is a warning."""
    from .devices import NO_CUDA, cuda_summary

    try:
        import torch
    except ImportError:
        return Check("gpu", False, "torch is not installed", SETUP, required=False)
    if not torch.cuda.is_available():
        return Check("gpu", True, NO_CUDA, required=False)
    nccl = None
    if torch.distributed.is_available() and torch.distributed.is_nccl_available():
        found = torch.cuda.nccl.version()   # (2, 21, 5); an int in older torch
        nccl = ".".join(map(str, found)) if isinstance(found, tuple) else str(found)
    try:
        import horovod.torch as hvd

        hvd_nccl = hvd.nccl_built()
    except Exception:   # no Horovod (torch_distributor): the horovod line says why
        hvd_nccl = False
    detail = (f"{cuda_summary()}; torch CUDA {torch.version.cuda}, NCCL {nccl or 'absent'}; "
              f"Horovod {'built with' if hvd_nccl else 'WITHOUT'} NCCL")
    return Check("gpu", bool(nccl) and bool(hvd_nccl), detail,
                 "SPARKZOO_CUDA=12.x " + SETUP + " installs the CUDA torch wheel and builds Horovod with "
                 "HOROVOD_GPU_OPERATIONS=NCCL (docs/GPU.md)", required=False)


def check_horovod(exp: Experiment) -> Check:
    """What ``horovodrun --check-build`` shows: the torch extension, the Gloo controller and tensor ops."""
    needed = exp.train.backend in ("horovod_spark", "horovodrun")
    why = "" if needed else f" (not needed by train.backend={exp.train.backend})"
    try:
        import horovod
        import horovod.torch as hvd
        from horovod.common.util import extension_available
    except Exception as exc:   # ImportError, or an OSError from a wheel built against another torch
        return Check("horovod", False, f"horovod.torch does not import: {str(exc).splitlines()[0]}{why}",
                     SETUP + " builds Horovod 0.28.1 with PyTorch and Gloo; or set train.backend=torch_distributor",
                     required=needed)
    built = {"torch extension": extension_available("torch"), "gloo": hvd.gloo_built(), "mpi": hvd.mpi_built(),
             "nccl": hvd.nccl_built()}
    have = ", ".join(k for k, v in built.items() if v) or "nothing"
    ok = built["torch extension"] and built["gloo"]
    return Check("horovod", ok, f"horovod {horovod.__version__}: built with {have}{why}",
                 "rebuild with HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1: remove ~/.cache/sparkzoo/wheels/horovod-* "
                 "and run " + SETUP, required=needed)


def check_petastorm(exp: Experiment) -> Check:
    needed = exp.train.reader == "petastorm"
    why = "" if needed else " (optional: train.reader=pyarrow)"
    try:
        import petastorm
        from petastorm import make_batch_reader  # noqa: F401
    except Exception as exc:
        return Check("petastorm", False, f"petastorm does not import: {str(exc).splitlines()[0]}{why}",
                     SETUP + " installs petastorm 0.13.1 with --no-deps", required=needed)
    return Check("petastorm", True, f"petastorm {petastorm.__version__}{why}", required=needed)


def _store_check(name: str, uri: str, timeout: float) -> Check:
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = resp.read(100).decode("utf-8", "replace").strip()
            return Check(name, resp.status == 200, f"{url} answered {resp.status} {body}",
                         "start the tracking server or fix mlflow.tracking_uri")
        except (urllib.error.URLError, OSError) as exc:
            return Check(name, False, f"{url} unreachable: {getattr(exc, 'reason', exc)}",
                         f"start the server (sparkzoo ui, or mlflow server on that host) or point "
                         f"mlflow.tracking_uri at a reachable store")
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.exists():
            try:
                with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout)) as conn:
                    n = conn.execute("select count(*) from experiments").fetchone()[0]
            except sqlite3.Error as exc:
                return Check(name, False, f"{db} is not a readable MLflow store: {exc}",
                             "move the file away (a new store is created on the next run) or fix mlflow.tracking_uri")
            return Check(name, True, f"{uri}: {n} experiment(s)")
        parent = next(p for p in [db.parent, *db.parents] if p.exists())
        ok = os.access(parent, os.W_OK)
        return Check(name, ok, f"{uri}: not created yet; {parent} is {'writable' if ok else 'NOT writable'}",
                     f"make {parent} writable or set workspace / mlflow.tracking_uri elsewhere")
    try:   # any other store MLflow knows (postgres, databricks, ...): ask it
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout)))
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return Check(name, True, f"{uri} answers")
    except Exception as exc:
        return Check(name, False, f"{uri}: {str(exc).splitlines()[0]}", "check mlflow.tracking_uri and credentials")


def check_mlflow(exp: Experiment, timeout: float = 5.0) -> list[Check]:
    from . import track

    try:
        import mlflow
    except ImportError:
        return [Check("mlflow", False, "mlflow is not installed", SETUP)]
    out = [Check("mlflow", True, f"mlflow {mlflow.__version__}"),
           _store_check("tracking store", track.tracking_uri(exp), timeout)]
    if track.registry_uri(exp) != track.tracking_uri(exp):
        out.append(_store_check("registry store", track.registry_uri(exp), timeout))
    return out


def check_disk(exp: Experiment, min_free_gb: float) -> Check:
    from . import paths

    ws = paths.workspace(exp)
    if paths.is_uri(ws):
        return Check("disk", True, f"workspace {ws} is remote; local free space not checked", required=False)
    where = next(p for p in [Path(ws), *Path(ws).parents] if p.exists())
    free = shutil.disk_usage(where).free / 2 ** 30
    return Check("disk", free >= min_free_gb, f"{free:.1f} GiB free at {where} (workspace {ws}; need {min_free_gb:g})",
                 "free some space, or set workspace to a bigger disk (--set workspace=/big/disk/sparkzoo)")


def check_source(exp: Experiment) -> Check:
    from . import paths

    path = exp.data.source.path
    ok = paths.exists(path) if paths.is_uri(path) else os.path.isdir(path)
    return Check("data source", ok, f"{path} {'exists' if ok else 'does not exist'} (needed by prepare)",
                 "apt-get install dataset-fashion-mnist, or set data.source.path", required=False)


def run_checks(exp: Experiment, min_free_gb: float = 2.0,
               progress: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check, in the order a fix usually goes; ``progress`` sees each as soon as it is known."""
    steps: list[Callable[[], Check | list[Check]]] = [
        lambda: check_python(exp), lambda: check_java(exp), lambda: check_spark(exp), lambda: check_torch(exp),
        lambda: check_gpu(exp), lambda: check_horovod(exp), lambda: check_petastorm(exp), lambda: check_mlflow(exp),
        lambda: check_disk(exp, min_free_gb), lambda: check_source(exp)]
    results: list[Check] = []
    for step in steps:
        found = step()
        for check in found if isinstance(found, list) else [found]:
            results.append(check)
            if progress is not None:
                progress(check)
    return results


def format_check(check: Check) -> str:
    line = f"  {check.status:<8} {check.name:<15} {check.detail}"
    if not check.ok and check.fix:
        line += f"\n  {'':<8} {'':<15} fix: {check.fix}"
    return line
