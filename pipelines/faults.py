"""Fault injection for the reliability suite: kill the process running a Spark task, once.

Why it lives in the package: the fault has to happen inside a real Python worker that Spark started,
in the middle of real work, and the retry must then succeed. A test sets ``SPARKZOO_FAULT`` to
``<point>:<marker file>[:executor]`` (the worker inherits it from the driver, or from
``spark.executorEnv``); the first task to reach ``<point>`` creates the marker (atomically, so exactly
one process wins) and SIGKILLs its own Python worker, or with ``:executor`` the executor JVM that runs
it, as the kernel's OOM killer or a lost node would. Every later attempt sees the marker and carries
on. Unset, this is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SPARKZOO_FAULT"


def maybe_kill(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    marker, _, target = rest.partition(":")
    if name != point or not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    victim = _ancestor("java") if target == "executor" else os.getpid()
    os.write(fd, f"{target or 'worker'} {victim}".encode())
    os.close(fd)
    os.kill(victim or os.getpid(), signal.SIGKILL)


def _ancestor(command: str) -> int | None:
    """The nearest parent process whose command is ``command`` (Linux /proc): the executor JVM."""
    pid = os.getppid()
    while pid > 1:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        comm, after = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if comm == command:
            return pid
        pid = int(after[1])   # the field after the state is the parent's id
    return None
