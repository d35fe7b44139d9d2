"""Where a job's seconds go: named phases timed with a wall clock, reported as one line.

Why: a small scoring job is nearly all fixed cost (JVM start, imports, shipping the model, worker
start), and a user who wants it faster needs to see which part; bench/latency.py reads the same line.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Phases:
    """Seconds per named phase, in the order they first ran; a phase entered twice adds up."""

    def __init__(self, before: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = dict(before or {})

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def line(self) -> str:
        """``session 3.1s, ship 0.4s, ...``: what the job log and bench/latency.py show."""
        return ", ".join(f"{name} {secs:.2f}s" for name, secs in self.seconds.items())


def since_process_start() -> float:
    """Seconds from this process's start to now: interpreter, imports, config loading.

    Linux's ``/proc`` gives the start in clock ticks since boot; elsewhere psutil, when installed; else 0
    (the phase is then left out of nothing but its own figure)."""
    import os

    try:
        with open("/proc/self/stat") as fh:
            after_name = fh.read().rsplit(")", 1)[1].split()   # the name may hold spaces and parentheses
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - int(after_name[19]) / os.sysconf("SC_CLK_TCK"))   # field 22: starttime
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return 0.0
    return max(0.0, time.time() - psutil.Process().create_time())
