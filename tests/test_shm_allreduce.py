"""Shared-memory gradient averaging (pipelines/train/shm_allreduce.py) against gloo's own allreduce.

Real processes and a real gloo group on 127.0.0.1: the averaged gradient must equal gloo's average, be the
same bits on every rank, and survive a buffer that is not a whole number of windows.
"""

from __future__ import annotations

import multiprocessing as mp

import pytest

from .conftest import free_port


def _rank(rank: int, size: int, port: int, n: int, window: int, out) -> None:
    import torch
    import torch.distributed as dist

    from sparkzoo.pipelines.train.shm_allreduce import SharedMemoryAllreduce, all_on_one_host

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        on_one_host = all_on_one_host(dist)
        mine = torch.randn(n, generator=torch.Generator().manual_seed(rank))
        shared = SharedMemoryAllreduce(dist, rank, size, window=window)
        averaged = mine.clone()
        for lo in range(0, n, window):
            shared.average(averaged[lo: lo + window])
        again = mine.clone()          # a second round reuses the same segment
        for lo in range(0, n, window):
            shared.average(again[lo: lo + window])
        reference = mine.clone()
        dist.all_reduce(reference)
        reference /= size
        out.put((rank, on_one_host, averaged.numpy().tobytes(), again.numpy().tobytes(),
                 float((averaged - reference).abs().max())))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("size,n,window", [(2, 2_500, 1_000), (3, 1_001, 4_096)])
def test_shared_memory_average_matches_gloo_on_every_rank(size, n, window):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, size, port, n, window, out)) for r in range(size)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(on_one_host for _, on_one_host, *_ in results)
    first = results[0][2]
    for _, _, averaged, again, error in results:
        assert averaged == first and again == first     # the same bits on every rank and every round
        assert error < 1e-6                             # and gloo's average, up to summation order
