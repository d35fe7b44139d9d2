"""Training that heals itself: relaunch the ranks from the newest checkpoint after a crash.

One ``sparkzoo train`` command owns its MLflow run until it ends. When a rank process, an executor or
the gloo group fails, the driver relaunches every rank in the same run from the newest checkpoint (a
step checkpoint continues mid-epoch on the very batches it would have seen), up to
``train.max_failures`` times. Every restart is logged on the run (tags ``sparkzoo.restarts``,
``sparkzoo.restart.<n>``; the ranks add ``restart_lost_seconds`` once they train again).

What is never retried: a ``SparkzooError`` other than ``RankFailure``, i.e. a message sparkzoo raised on
purpose (ConfigError, DataError, a deliberate TrainingError such as "too few rows for N ranks"). The
same input fails the same way again; a retry would only hide the message behind minutes of relaunches.

Elastic ranks (``train.min_ranks`` / ``max_ranks``): each relaunch takes as many ranks as Spark has free
task slots, between those bounds, waiting up to ``train.rank_wait_seconds`` for ``min_ranks``. The world
size changes only at a relaunch; see docs/TRAIN.md for why this is not Horovod Elastic.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..config import Experiment
from ..errors import SparkzooError, TrainingError

log = logging.getLogger("sparkzoo.train")

SIGNALS = {9: "SIGKILL", 15: "SIGTERM", 6: "SIGABRT", 11: "SIGSEGV", 7: "SIGBUS"}


class RankFailure(TrainingError):
    """A rank, executor or gloo group crashed (not a message sparkzoo raised on purpose): retried.

    ``reason`` is the short cause ("rank 1 exited with code 137 (SIGKILL)") the restart log shows."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass
class Restart:
    number: int          # 1 for the first relaunch
    reason: str          # which rank and why, as far as the launcher's error says
    failed_at: float     # when the driver saw the failure (epoch seconds)
    world_size: int = 0  # ranks of the relaunch (set once known)
    resumed_from: str | None = None


ERROR_PREFIX = "rank-error-"   # <checkpoint dir>/rank-error-<rank>.json: a rank's own SparkzooError


def report_rank_error(directory: str, rank: int, exc: BaseException) -> None:
    """A rank that raises a SparkzooError leaves it beside the checkpoints before it exits.

    Why: horovod.spark.run tells the driver only "process N exited with code 1"; the message a user
    needs (and whether the failure is theirs, so not worth retrying) is in the rank's stderr alone.
    """
    from .. import paths

    paths.write_json(paths.join(directory, f"{ERROR_PREFIX}{rank}.json"),
                     {"class": type(exc).__name__, "message": str(exc)})


def rank_error(directory: str) -> SparkzooError | None:
    """The SparkzooError a rank of the last launch reported (the lowest rank's), rebuilt, or None."""
    from .. import errors, paths

    for path in _rank_error_files(directory):
        found = paths.read_json(path)
        cls = getattr(errors, found["class"], None)
        if isinstance(cls, type) and issubclass(cls, SparkzooError):
            return cls(found["message"])
    return None


def clear_rank_errors(directory: str) -> None:
    from .. import paths

    for path in _rank_error_files(directory):
        paths.delete_file(path)


def _rank_error_files(directory: str) -> list[str]:
    from .. import paths

    if not paths.exists(directory):
        return []
    return [p for p in paths.list_files(directory, ".json") if p.rsplit("/", 1)[-1].startswith(ERROR_PREFIX)]


def retried(exc: BaseException) -> bool:
    """Crashes are retried; the user's mistakes and deliberate messages are not."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return False
    return isinstance(exc, RankFailure) or not isinstance(exc, SparkzooError)


def describe(exc: BaseException) -> str:
    """One line: which rank failed and how, from Horovod's "Process name / Exit code" report if present."""
    if isinstance(exc, RankFailure):
        return exc.reason
    text = str(exc)
    m = re.search(r"Process name:\s*(\S+)\s*Exit code:\s*(\S+)", text)
    if m and not re.fullmatch(r"-?\d+", m.group(2)):   # Horovod lost the process with its executor or host
        return f"rank {m.group(1)} was lost without an exit code (its executor or host went away)"
    if m:
        code = int(m.group(2))
        sig = SIGNALS.get(-code if code < 0 else code - 128 if code > 128 else 0)
        return f"rank {m.group(1)} exited with code {code}" + (f" ({sig})" if sig else "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def available_slots(spark) -> int:
    """Task slots Spark can run at once now: what a relaunch may use (lost executors no longer count).

    ``defaultParallelism`` is a floor of 2 on a cluster, so the scheduler's own count is asked for;
    ``local[N]`` has N.
    """
    sc = spark.sparkContext
    if sc.master.startswith("local"):
        return sc.defaultParallelism
    jsc = sc._jsc.sc()
    return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))


def relaunch_size(exp: Experiment, spark, sleep: Callable[[float], None] = time.sleep) -> int:
    """Ranks for a relaunch: Spark's free slots within [min_ranks, max_ranks]; fixed size without Spark.

    Without min/max_ranks the size is fixed, and a lost executor still fails here after
    ``rank_wait_seconds`` with the slot count, not after Horovod's start timeout with a generic message.
    """
    tc = exp.train
    low, high = tc.min_ranks or tc.num_proc, tc.max_ranks or tc.num_proc
    if spark is None or tc.backend == "horovodrun":
        return tc.num_proc
    deadline = time.time() + tc.rank_wait_seconds
    while True:
        slots = available_slots(spark)
        if slots >= low:
            return min(high, slots)
        if time.time() >= deadline:
            raise RankFailure(f"Spark has {slots} task slot{'s' if slots != 1 else ''} left and train.min_ranks={low} "
                              f"needs {low} (waited {tc.rank_wait_seconds:g}s, train.rank_wait_seconds)")
        sleep(1.0)


def run_with_restarts(exp: Experiment, spark, launch_once: Callable[[int, Restart | None], Any],
                      on_restart: Callable[[Restart], None]) -> tuple[Any, list[Restart]]:
    """Call ``launch_once(world_size, restart)`` until it returns or the failure budget is spent.

    ``on_restart`` records each restart (MLflow tags) before the relaunch. The first launch uses
    ``train.num_proc``; relaunches use ``relaunch_size``, and finding too few slots counts as a failure.
    """
    tc = exp.train
    restarts: list[Restart] = []
    while True:
        restart = restarts[-1] if restarts else None
        try:
            size = tc.num_proc if restart is None else relaunch_size(exp, spark)
            if restart is not None:
                restart.world_size = size
                if size != tc.num_proc:
                    log.warning("restart %d continues with %d rank%s (train.num_proc=%d, train.min_ranks=%s): Spark "
                                "has no more task slots now", restart.number, size, "s" if size != 1 else "",
                                tc.num_proc, tc.min_ranks)
                on_restart(restart)
            return launch_once(size, restart), restarts
        except BaseException as exc:
            if not retried(exc):
                raise
            why = describe(exc)
            if len(restarts) >= tc.max_failures:
                raise TrainingError(
                    f"training failed {len(restarts) + 1} time{'s' if restarts else ''} and train.max_failures="
                    f"{tc.max_failures} allows {tc.max_failures} restart{'s' if tc.max_failures != 1 else ''}; "
                    f"last failure: {why}; re-run the same command to resume from the last checkpoint") from exc
            restarts.append(Restart(len(restarts) + 1, why, time.time()))
            log.warning("training failed: %s; restart %d of at most %d from the newest checkpoint",
                        why, len(restarts), tc.max_failures)
