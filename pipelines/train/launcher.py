"""Start the ranks: Horovod on Spark (default) or horovodrun, both running ``loop.train_rank``.

Everything a user can get wrong is checked here on the driver, before any rank starts. A rank's
failure comes back as one ``TrainingError`` naming the rank and the cause; a SparkzooError raised in a
rank (bad data, say) is re-raised as itself.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

from ..config import Experiment
from .. import devices
from ..errors import SparkzooError, TrainingError

log = logging.getLogger("sparkzoo.train")


def check_slots(spark, exp: Experiment, num_proc: int | None = None) -> None:
    """horovod.spark.run needs one task slot per rank at once, or it waits until its start timeout."""
    slots = spark.sparkContext.defaultParallelism
    num_proc = num_proc or exp.train.num_proc
    if num_proc > slots:
        raise TrainingError(
            f"train.num_proc={num_proc} ranks need {num_proc} Spark task slots at once, but this "
            f"Spark application has {slots}; lower train.num_proc or give Spark more cores "
            f"(spark.master local[{exp.train.num_proc}], or more executors)")


def executor_python(spark) -> str:
    """The interpreter the ranks start with: the executors' own (``spark.pyspark.python``), not the driver's.

    Why: Horovod starts each rank from its Spark task with the driver's ``sys.executable`` by default. On a
    cluster whose executors run a packed environment (``--archives env.tar.gz#environment`` with
    ``spark.pyspark.python=./environment/bin/python``) that path does not exist there, or names another
    installation; the relative path resolves in the task's working directory, where the archive lies.
    """
    return spark.conf.get("spark.pyspark.python", None) or os.environ.get("PYSPARK_PYTHON") or sys.executable


def rank_environment(spark, executable: str) -> dict[str, str] | None:
    """What the rank processes' environment changes from their Spark task's (None: nothing).

    Why: a Spark Python worker has Spark's own ``pyspark.zip`` and py4j zip first on its PYTHONPATH, and
    the rank processes Horovod starts from it inherit that; Python caches no bytecode for a zip, so every
    rank compiled pyspark's sources again before its first line (Horovod's rank code imports pyspark):
    0.6 s a rank on this 2-core machine (bench/RESULTS.md). On a local master the executors are this
    machine running this interpreter; where it has pyspark and py4j installed, the ranks get this
    process's PYTHONPATH without those zips and import the installed, compiled packages. A cluster's
    executors may have pyspark only from the zip: left as they are.
    """
    import importlib.metadata

    from ..session import is_this_interpreter

    if not spark.sparkContext.master.startswith("local") or not is_this_interpreter(executable):
        return None
    try:
        importlib.metadata.version("pyspark"), importlib.metadata.version("py4j")
    except importlib.metadata.PackageNotFoundError:
        return None
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and not re.search(r"(pyspark|py4j-[^/\\]*)\.zip$", p)]
    return {"PYTHONPATH": os.pathsep.join(kept)}


def launch(exp: Experiment, ctx: dict[str, Any], spark=None, num_proc: int | None = None,
           start_timeout: int = 600) -> list[dict[str, Any]]:
    """Run ``num_proc`` ranks (default ``train.num_proc``; a relaunch may use fewer); ``start_timeout``:
    how long Horovod waits for every rank's Spark task to start."""
    from .loop import train_rank

    from .recovery import clear_rank_errors, rank_error

    num_proc = num_proc or exp.train.num_proc
    args = (exp.to_dict(), ctx)
    clear_rank_errors(ctx["checkpoint_dir"])
    try:
        if exp.train.backend == "horovod_spark":
            import horovod.spark

            check_slots(spark, exp, num_proc)
            with devices.ranks_hold_gpus(spark, exp.train.gpus_per_rank, exp.train.backend):
                executable = executor_python(spark)
                results = horovod.spark.run(train_rank, args=args, num_proc=num_proc, use_gloo=True,
                                            start_timeout=start_timeout, verbose=1, executable=executable,
                                            env=rank_environment(spark, executable))
        elif exp.train.backend == "torch_distributor":
            from pyspark.ml.torch.distributor import TorchDistributor

            check_slots(spark, exp, num_proc)
            local = spark.sparkContext.master.startswith("local")
            use_gpu = devices.torch_distributor_gpus(spark, exp.train.gpus_per_rank)
            distributor = TorchDistributor(num_processes=num_proc, local_mode=local, use_gpu=use_gpu)
            results = [distributor.run(_torch_rank, *args)]   # TorchDistributor returns rank 0's result only
        else:
            from horovod.runner import run as horovod_run

            results = horovod_run(train_rank, args=args, np=num_proc, hosts=f"localhost:{num_proc}", use_gloo=True,
                                  verbose=1)
    except SparkzooError:
        raise
    except Exception as exc:
        raise (rank_error(ctx["checkpoint_dir"]) or _explain(exc)) from exc
    results = sorted(results, key=lambda r: r["rank"])
    if all("seen_as" in r for r in results):   # TorchDistributor returns rank 0's result only
        log.info("training ran on %s", devices.summarise({r["seen_as"] for r in results}) + "; " + ", ".join(
            f"rank {r['rank']} {r['device']}" + (f" (Spark gpu {','.join(r['gpus'])})" if r["gpus"] else "")
            for r in results))
    return results


def _torch_rank(exp_dict: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    from sparkzoo.pipelines.train.loop import train_rank

    return train_rank(exp_dict, ctx, comm_kind="torch_distributed")


def _explain(exc: Exception) -> SparkzooError:
    """Find the root cause in a rank's traceback text (Spark and Horovod wrap it several times).

    A sparkzoo error a rank raised on purpose comes back as itself (not retried); anything else is a
    crash, a ``RankFailure`` that names the rank and exit code (``recovery`` retries it).
    """
    from .recovery import RankFailure, describe

    text = str(exc)
    for cls_name in ("DataError", "ConfigError", "TrainingError"):
        m = re.search(rf"sparkzoo\.pipelines\.errors\.{cls_name}: (.+)", text) or re.search(rf"{cls_name}: (.+)", text)
        if m:
            from .. import errors

            return getattr(errors, cls_name)(m.group(1).strip())
    why = describe(exc)
    return RankFailure(f"training failed: {why}; re-run the same command to resume from the last checkpoint", why)
