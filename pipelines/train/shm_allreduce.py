"""Gradient averaging through shared memory, for DDP ranks that all run on one host.

Why: on a 2-core machine both cores are busy computing, so gloo's allreduce over TCP loopback cannot
overlap with anything; its kernel copies of the whole gradient cost a fifth of every LeNet step
(bench/scaling.py, 2026-11-30). Ranks on one host can instead each write their gradient into a shared
buffer, sum their own slice of everyone's and copy the averaged whole back: three memory copies and two
small barriers, the way NCCL and MPI move data between processes of one machine.

The sum runs in rank order on every slice, so the result is the same bits on every rank and in every run
(the determinism tests rely on it). Buffers larger than the window are averaged window by window, so the
shared segment stays small (Docker gives /dev/shm 64 MB by default).
"""

from __future__ import annotations

import mmap
import os
import socket
import tempfile
from typing import Any

# Elements averaged per round: 2M float32 = 8 MB per rank's slot, so the LeNet-like CNN's 1.26M-element
# gradient is one round (2 barriers; 1M elements took 2.1 ms a step against 1.3 ms, standalone). (ranks + 1)
# windows must fit in /dev/shm next to whatever else the host keeps there.
WINDOW_ELEMENTS = 1 << 21
SHM = "/dev/shm"


def all_on_one_host(dist) -> bool:
    """Whether every rank runs on this machine (same host name and boot), the only case shared memory can serve."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    here = (socket.gethostname(), boot)
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, here)
    return all(h == here for h in everyone)


class SharedMemoryAllreduce:
    """The state of a DDP communication hook: ``ddp.register_comm_hook(state, average_bucket)``."""

    def __init__(self, dist, rank: int, size: int, window: int = WINDOW_ELEMENTS) -> None:
        import torch

        self.dist, self.rank, self.size, self.window = dist, rank, size, window
        nbytes = (size + 1) * window * 4
        path = None
        if rank == 0:
            if os.path.isdir(SHM) and _free_bytes(SHM) > 2 * nbytes:
                fd, path = tempfile.mkstemp(prefix="sparkzoo-grad-", dir=SHM)
                os.ftruncate(fd, nbytes)
                os.close(fd)
        box = [path]
        dist.broadcast_object_list(box, src=0)
        path = box[0]
        if path is None:
            raise OSError(f"{SHM} is missing or has no room for {nbytes} bytes of gradient exchange")
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), nbytes)
        dist.barrier()      # everyone has it mapped: the name can go, the memory stays until the last unmap
        if rank == 0:
            os.unlink(path)
        flat = torch.frombuffer(self._map, dtype=torch.float32)
        self.slots = flat[: size * window].view(size, window)
        self.mean = flat[size * window:]

    def average(self, part) -> None:
        n, size = part.numel(), self.size
        self.slots[self.rank, :n].copy_(part)
        self.dist.barrier()                      # every rank's gradient is in its slot
        share = -(-n // size)
        lo, hi = min(n, self.rank * share), min(n, (self.rank + 1) * share)
        if hi > lo:
            mean = self.mean[lo:hi]
            mean.copy_(self.slots[0, lo:hi])
            for r in range(1, size):             # rank order: the same bits everywhere, every run
                mean.add_(self.slots[r, lo:hi])
            mean.div_(size)
        self.dist.barrier()                      # every slice of the mean is written
        part.copy_(self.mean[:n])
        # the next window's first barrier keeps anyone from overwriting the mean before all have read it


def average_bucket(state, bucket):   # no annotations: DDP rejects any but its own GradBucket
    """Average one bucket of gradients in place; CPU float32 through shared memory, others through gloo."""
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    grad = bucket.buffer()
    if grad.dtype != torch.float32 or grad.device.type != "cpu":
        return default_hooks.allreduce_hook(None, bucket)
    for lo in range(0, grad.numel(), state.window):
        state.average(grad[lo: lo + state.window])
    done = torch.futures.Future()
    done.set_result(grad)
    return done


def _free_bytes(folder: str) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize
