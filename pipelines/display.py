"""The one progress display per stage: a redrawn bar on a terminal, a plain line every N seconds in a pipe.

Why one class for every stage: prepare and score count Spark tasks, training counts steps that rank 0
reports over a socket, and all three must behave the same in a terminal (tqdm, redrawn in place, ends
at 100%), in a pipe or a log (a plain line every ``SPARKZOO_PROGRESS_SECONDS``, 10 by default, never a
carriage return), and under ``-q`` (nothing). The display always writes to the real terminal that
``console`` kept, never to the captured file descriptors.
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO, Optional

from . import console


def interval_seconds() -> float:
    """Seconds between plain progress lines when the terminal is a pipe."""
    try:
        return max(0.1, float(os.environ.get("SPARKZOO_PROGRESS_SECONDS", "10")))
    except ValueError:
        return 10.0


class Display:
    """Progress of one stage; ``update`` takes the absolute position (thread-safe)."""

    def __init__(self, label: str, unit: str = "step", stream: Optional[IO[str]] = None) -> None:
        self.label, self.unit = label, unit
        self.stream = stream or console.err()
        self.enabled = console.verbosity() >= 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval_seconds()
        self.start = time.time()
        self.last_line = 0.0
        self.n, self.total, self.status = 0, 0, ""
        self.first: tuple[float, int] | None = None   # (time, position) of the first update: the ETA's origin
        self.printed: tuple[int, int] | None = None     # the position of the last plain line
        self.bar = None
        self.lock = threading.Lock()

    def _ensure_bar(self) -> None:
        if self.bar is None and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total or None, desc=self.label, unit=self.unit, file=self.stream,
                            dynamic_ncols=True, mininterval=0.2, disable=False, leave=True)

    def update(self, n: int, total: int, status: str = "") -> None:
        if not self.enabled:
            return
        with self.lock:
            self.n, self.total, self.status = n, total, status
            if self.first is None:
                self.first = (time.time(), n)
            if self.tty:
                self._ensure_bar()
                if self.bar.total != total:
                    self.bar.total = total
                self.bar.n = n
                self.bar.set_postfix_str(status, refresh=False)
                self.bar.refresh()
                return
            now = time.time()
            if now - self.last_line >= self.interval:
                self.last_line = now
                self._line()

    def _line(self, final: bool = False) -> None:
        elapsed = time.time() - self.start
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = ""
        if not final and self.first and self.first[1] < self.n < self.total:
            # from the rate since the first update: start-up (JVM, rank launch) is not work per step
            rate = (self.n - self.first[1]) / max(time.time() - self.first[0], 1e-9)
            eta = f" ETA {(self.total - self.n) / rate:.0f}s"
        status = f" {self.status}" if self.status else ""
        self.printed = (self.n, self.total)
        print(f"{self.label}: {self.n}/{self.total} {self.unit}s{pct}{status}{eta} [{elapsed:.0f}s]",
              file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line that stays (an epoch's figures): above the bar on a terminal, as it is in a pipe."""
        if not self.enabled:
            return
        with self.lock:
            if self.bar is not None:
                self.bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        with self.lock:
            if self.bar is not None:
                self.bar.refresh()
                self.bar.close()
                self.bar = None
            elif not self.tty and self.total and self.printed != (self.n, self.total):
                self._line(final=True)


class SparkProgress:
    """Counts the tasks of every Spark stage that runs while it is open (prepare, score, promote).

    Polls the driver's status tracker from a thread, so the stage code needs no hook: Spark's own
    console bar (``spark.ui.showConsoleProgress``) writes carriage returns into whatever stderr is.
    """

    def __init__(self, label: str, poll: float = 0.5) -> None:
        self.display = Display(label, unit="task")
        self.poll = poll
        self.stages: dict[int, tuple[int, int]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sparkzoo-progress", daemon=True)

    def __enter__(self) -> "SparkProgress":
        if self.display.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.thread.is_alive():
            self.stop.set()
            self.thread.join(timeout=5)
            if exc[0] is None:
                self._sample(final=True)
        self.display.close()

    def _run(self) -> None:
        while not self.stop.wait(self.poll):
            try:
                self._sample()
            except Exception:   # a stopping context mid-poll: the next sample or the stage says more
                continue

    def _sample(self, final: bool = False) -> None:
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        if sc is None:
            return
        tracker = sc.statusTracker()
        active = set(tracker.getActiveStageIds())
        for sid in active:
            info = tracker.getStageInfo(sid)
            if info is not None:
                self.stages[sid] = (info.numCompletedTasks, info.numTasks)
        for sid, (_, total) in list(self.stages.items()):
            if sid not in active or final:
                self.stages[sid] = (total, total)
        if not self.stages:
            return
        done = sum(d for d, _ in self.stages.values())
        total = sum(t for _, t in self.stages.values())
        self.display.update(done, total, f"{len(active)} stage(s) running" if active else "")
