"""The terminal belongs to sparkzoo; everything else a stage's libraries print goes to a log file.

Why: a stage starts a JVM (Spark's log4j, Hadoop), Horovod ranks whose lines come back prefixed
``[0]<stderr>:``, MLflow (table creation, registration notes, artefact bars) and Python warnings. None of
that is for the user of a finished pipeline, but none of it may be lost either. ``capture`` points the
process's file descriptors 1 and 2 at ``<workspace>/logs/<command>-<time>.log`` *before* any of those
start (child processes inherit the descriptors, so the JVM and the ranks write there too) and keeps a
duplicate of the real terminal for sparkzoo's own summaries, progress displays and warnings.

``-v`` (verbosity > 0) captures nothing: every line reaches the terminal as before. ``-q`` hides the
progress displays. What is fixed at its cause rather than hidden lives in ``quiet_env`` and
``conf/log4j2.properties``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional

log = logging.getLogger("sparkzoo.console")

_state: dict[str, object] = {"out": None, "err": None, "log_path": None, "verbosity": 0, "saved": None}


def quiet_env(local_master: bool) -> None:
    """Environment that silences warnings at their cause, set before any JVM or MLflow call.

    ``SPARK_LOCAL_IP``: without it a machine whose hostname resolves to 127.0.1.1 gets Spark's loopback
    warnings on every start; a local master never needs another address. MLflow draws a tqdm bar per
    artefact download (three per run) unless told not to.
    """
    if local_master:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def verbosity() -> int:
    return int(_state["verbosity"])   # type: ignore[arg-type]


def set_verbosity(value: int) -> None:
    _state["verbosity"] = value


def out() -> IO[str]:
    """The real standard output (summaries), even while fd 1 points at the log file."""
    return _state["out"] or sys.stdout   # type: ignore[return-value]


def err() -> IO[str]:
    """The real standard error (progress displays, warnings, errors)."""
    return _state["err"] or sys.stderr   # type: ignore[return-value]


def log_path() -> Optional[Path]:
    return _state["log_path"]   # type: ignore[return-value]


def say(text: str) -> None:
    """A result for the user: on the terminal, and in the log file so the log tells the whole story."""
    print(text, file=out(), flush=True)
    if _state["saved"] is not None:
        print(text, file=sys.stdout, flush=True)


def log_dir(workspace: str) -> Path:
    """``<workspace>/logs`` for a local workspace; an HDFS/S3 workspace logs next to the user instead."""
    override = os.environ.get("SPARKZOO_LOG_DIR")
    if override:
        return Path(override)
    if "://" in workspace:
        return Path.home() / ".cache" / "sparkzoo" / "logs"
    return Path(workspace).resolve() / "logs"


def capture(directory: Path, command: str) -> Optional[Path]:
    """Send fds 1 and 2 to a new log file (once per process); returns its path, None under ``-v``."""
    if verbosity() > 0 or _state["saved"] is not None:
        return log_path()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    _state["out"] = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    _state["err"] = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _state["saved"], _state["log_path"] = saved, path
    _retarget_console_handlers()
    logging.captureWarnings(True)   # Python warnings become log records: into the file, not dropped
    log.debug("sparkzoo %s: console output to the terminal, everything else to %s", command, path)
    return path


def release() -> None:
    """Give fds 1 and 2 back to the terminal (before an error line or a traceback is printed)."""
    saved = _state["saved"]
    if saved is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)   # type: ignore[index]
    os.dup2(saved[1], 2)   # type: ignore[index]
    for fd in saved:   # type: ignore[union-attr]
        os.close(fd)
    _state["saved"] = None


@contextmanager
def session(level: int) -> Iterator[None]:
    """One command's console: whatever ``capture`` redirects is given back on the way out."""
    set_verbosity(level)
    try:
        yield
    finally:
        release()


class ConsoleHandler(logging.StreamHandler):
    """A handler that always writes to the real terminal, whichever it is at emit time."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._fixed: Optional[IO[str]] = None

    def setStream(self, stream):   # noqa: N802 (logging's name) - a test points it at a buffer
        self._fixed = stream
        return super().setStream(stream)

    def emit(self, record: logging.LogRecord) -> None:
        if self._fixed is None:
            self.stream = err()
        super().emit(record)


def _retarget_console_handlers() -> None:
    """sparkzoo's records: the console handler keeps its level; a handler into the log file takes all."""
    ours = logging.getLogger("sparkzoo")
    file_handler = logging.StreamHandler(sys.stderr)   # fd 2 is the log file now
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for f in (f for h in ours.handlers for f in h.filters):
        file_handler.addFilter(f)
        break
    file_handler.setLevel(logging.DEBUG)
    ours.addHandler(file_handler)
    ours.setLevel(logging.DEBUG)
