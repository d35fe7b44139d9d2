"""Fault injection for the reliability suite: kill the process running a Spark task, once.

Why it lives in the package: the fault has to happen inside a real Python worker that Spark started,
in the middle of real work, and the retry must then succeed. A test sets ``SPARKZOO_FAULT`` to
``<point>:<marker file>`` (the worker inherits it from the driver, or from ``spark.executorEnv``);
the first task to reach ``<point>`` creates the marker (atomically, so exactly one process wins) and
SIGKILLs its own process, as the kernel's OOM killer or a lost node would. Every later attempt sees the
marker and carries on. Unset, this is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SPARKZOO_FAULT"


def maybe_kill(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, marker = spec.partition(":")
    if name != point or not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
