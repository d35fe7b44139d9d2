"""The few collective operations the training loop needs, over Horovod or torch.distributed.

The loop is written once against ``Comm``; Horovod (horovod.spark.run, horovodrun) wraps the
optimizer, torch.distributed (Spark's TorchDistributor) wraps the model in DDP. Both give the same
answers: parameters start equal on every rank, gradients are averaged, metric sums are added.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger("sparkzoo.train")

ONE_BUCKET_MB = 1 << 16   # larger than any model's gradient: DDP then makes a single bucket
# How long DDP ranks wait for each other in a collective before failing: a rank that died closes its
# sockets and fails the others at once; this bounds a rank that hangs without dying.
COLLECTIVE_TIMEOUT_S = 600


class HorovodComm:
    name = "horovod"
    exchange = "horovod"

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def prepare(self, model, optimizer, *, fp16_compression: bool, backward_passes_per_step: int):
        hvd = self.hvd
        compression = hvd.Compression.fp16 if fp16_compression else hvd.Compression.none
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                             compression=compression, backward_passes_per_step=backward_passes_per_step)
        return model, optimizer

    def sync_state(self, model, optimizer) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def broadcast_object(self, obj: Any, name: str) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=0, name=name)

    def gather_object(self, obj: Any, name: str) -> list[Any]:
        """Every rank's ``obj`` in rank order, on every rank (a step checkpoint's per-rank state)."""
        return self.hvd.allgather_object(obj, name=name)

    def allreduce_sum(self, values: np.ndarray, name: str) -> np.ndarray:
        import torch

        out = self.hvd.allreduce(torch.from_numpy(np.asarray(values, dtype=np.float64)), op=self.hvd.Sum, name=name)
        return out.numpy()

    def accumulation_context(self, model, step: int, every: int):
        import contextlib

        return contextlib.nullcontext()   # DistributedOptimizer counts backward passes itself

    def reduce_gradients(self, optimizer) -> None:
        """Wait for the averaged gradients (so they can be measured or clipped before the step)."""
        optimizer.synchronize()

    def step(self, optimizer) -> None:
        with optimizer.skip_synchronize():   # reduce_gradients already waited for them
            optimizer.step()

    def unwrap(self, model):
        return model

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Horovod's launchers collect every rank's result and end the rank processes themselves."""
        return result


class TorchDistComm:
    """torch.distributed over gloo, as set up by TorchDistributor (env:// rendezvous)."""

    name = "torch_distributed"
    exchange = "gloo"

    def __init__(self) -> None:
        import os

        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        self.dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))

    def prepare(self, model, optimizer, *, fp16_compression: bool, backward_passes_per_step: int):
        import warnings

        from torch.nn.parallel import DistributedDataParallel as DDP

        on_cpu = next(model.parameters()).device.type == "cpu"
        shared = self._shared_memory() if on_cpu and self.size > 1 and not fp16_compression else None
        # Through shared memory, one bucket for the whole gradient: on CPU nothing overlaps the exchange
        # (each rank's core is computing) and every bucket costs two barriers; 2x1 LeNet 4,271 samples/s
        # vs 3,942 with DDP's default 1 MB first bucket (bench/scaling.py probes, 2026-11-30). Gradients
        # live in the bucket; a conv weight whose gradient comes back in another memory layout is copied
        # instead, which DDP warns about once per rank: nothing for a user to act on.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        buckets = {"bucket_cap_mb_list": [ONE_BUCKET_MB]} if shared is not None else {}
        ddp = DDP(model, gradient_as_bucket_view=True, **buckets)   # broadcasts rank 0's parameters
        if fp16_compression:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        elif shared is not None:
            from .shm_allreduce import average_bucket

            ddp.register_comm_hook(shared, average_bucket)
            self.exchange = "shared_memory"
        return ddp, optimizer

    def _shared_memory(self):
        """The shared-memory exchange when every rank is on this host (shm_allreduce.py), else None."""
        from .shm_allreduce import SharedMemoryAllreduce, all_on_one_host

        if not all_on_one_host(self.dist):
            return None
        try:
            return SharedMemoryAllreduce(self.dist, self.rank, self.size)
        except OSError as exc:   # the same on every rank: rank 0's answer was broadcast
            if self.rank == 0:
                log.warning("gradients go through gloo's allreduce: %s", exc)
            return None

    def sync_state(self, model, optimizer) -> None:
        state = self.broadcast_object(optimizer.state_dict(), "optimizer")
        optimizer.load_state_dict(state)
        for tensor in model.state_dict().values():
            self.dist.broadcast(tensor, src=0)

    def broadcast_object(self, obj: Any, name: str) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj: Any, name: str) -> list[Any]:
        """Every rank's ``obj`` in rank order, on every rank (a step checkpoint's per-rank state)."""
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, obj)
        return out

    def allreduce_sum(self, values: np.ndarray, name: str) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.array(values, dtype=np.float64))
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return t.numpy()

    def accumulation_context(self, model, step: int, every: int):
        import contextlib

        # skip the gradient allreduce on all but the last of `every` backward passes
        return model.no_sync() if every > 1 and (step + 1) % every else contextlib.nullcontext()

    def reduce_gradients(self, optimizer) -> None:
        """DDP averaged the gradients during backward already."""

    def step(self, optimizer) -> None:
        optimizer.step()

    def unwrap(self, model):
        return getattr(model, "module", model)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Every rank returns rank 0's result, after rank 0 has finished logging; then the group is torn
        down on all ranks together.

        Two failures this prevents (bench/scaling.py, 2026-11-30): a rank that exited while rank 0 was
        still registering the model died in the gloo group's teardown ("terminate called without an
        active exception") and torchrun then killed rank 0; and TorchDistributor's local mode has every
        rank write its return value to the same file, the last writer winning, so a rank other than 0
        could replace the run summary with its own.
        """
        shared = self.broadcast_object(result if self.rank == 0 else None, name="result")
        self.dist.barrier()
        self.dist.destroy_process_group()
        return shared


class HorovodLaunchedDDPComm(TorchDistComm):
    """Ranks started by Horovod (on Spark, or horovodrun) that exchange gradients with DDP.

    Horovod launches the ranks; DDP averages the gradients. Why (bench/scaling.py, 2026-11-30, 2x1 on two
    cores, LeNet-like CNN): Horovod's gloo allreduce 3,150 samples/s, DDP over gloo 3,860, DDP through
    shared memory in one bucket 4,200-4,480; with nothing exchanged at all 4,860. Horovod itself is never
    initialised here: rank 0 leaves its address in the key-value store of the rendezvous server Horovod
    started for this launch, the others read it there. ``hvd.init()`` (a gloo context of its own and a
    background loop, only to pass one address and shut down again) is not paid before the first step.
    """

    name = "horovod+ddp"

    def __init__(self) -> None:
        import datetime
        import os

        import torch.distributed as dist

        try:
            rank, size = int(os.environ["HOROVOD_RANK"]), int(os.environ["HOROVOD_SIZE"])
            local_rank = int(os.environ["HOROVOD_LOCAL_RANK"])
            store = (os.environ["HOROVOD_GLOO_RENDEZVOUS_ADDR"], os.environ["HOROVOD_GLOO_RENDEZVOUS_PORT"])
        except KeyError as missing:
            from ..errors import TrainingError

            raise TrainingError(f"this rank was not started by a Horovod gloo launch (no {missing} in its "
                                f"environment); train.gradient_exchange=ddp needs train.backend horovod_spark "
                                f"or horovodrun") from None
        if rank == 0:
            host, port = _routable_address(), _free_port()
            _put(store, f"{host}:{port}")
        else:
            host, port = _wait_for(store, COLLECTIVE_TIMEOUT_S).rsplit(":", 1)
        iface = os.environ.get("HOROVOD_GLOO_IFACE")
        if iface and "GLOO_SOCKET_IFACE" not in os.environ:
            os.environ["GLOO_SOCKET_IFACE"] = iface
        dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        self.dist = dist
        self.rank, self.size, self.local_rank = rank, size, local_rank

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Horovod's launchers collect every rank's own result; the group ends on all ranks together."""
        self.dist.barrier()
        self.dist.destroy_process_group()
        return result


# Where rank 0's address lies in the rendezvous server's key-value store (a fresh server per launch).
DDP_ADDRESS_KEY = "sparkzoo_ddp/rank0"


def _put(store: tuple[str, str], value: str) -> None:
    from urllib.request import Request, urlopen

    req = Request(f"http://{store[0]}:{store[1]}/{DDP_ADDRESS_KEY}", data=value.encode(), method="PUT")
    urlopen(req, timeout=30).close()


def _wait_for(store: tuple[str, str], timeout_s: float) -> str:
    """Rank 0's address, once it is there (the server answers 404 until then)."""
    import time
    from urllib.error import HTTPError
    from urllib.request import urlopen

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urlopen(f"http://{store[0]}:{store[1]}/{DDP_ADDRESS_KEY}", timeout=30) as resp:
                return resp.read().decode()
        except HTTPError as exc:
            if exc.code != 404 or time.monotonic() > deadline:
                from ..errors import TrainingError

                raise TrainingError(f"rank 0 did not publish its address within {timeout_s:.0f} s "
                                    f"(rendezvous server {store[0]}:{store[1]}: {exc})") from None
        time.sleep(0.01)


def _routable_address() -> str:
    """This host's address on the route to Horovod's rendezvous server, which every rank already reached:
    on a cluster the one the other executors can reach too (not 127.0.1.1 from /etc/hosts)."""
    import os
    import socket

    target = os.environ.get("HOROVOD_GLOO_RENDEZVOUS_ADDR") or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((target, 9))
        return s.getsockname()[0]


def _free_port() -> int:
    """A port the OS says is free now, for rank 0's rendezvous (as torchrun picks its own)."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def make_comm(kind: str, exchange: str = "auto", on_gpu: bool | None = None):
    """``kind``: who launched the ranks; ``exchange`` (train.gradient_exchange): who averages gradients;
    ``on_gpu``: whether this rank computes on a GPU (None: whether CUDA is visible).

    auto: DDP on CPU (faster here, see HorovodLaunchedDDPComm), Horovod's own allreduce next to a GPU
    (NCCL, where Horovod is built with it). A rank that Spark gave no GPU computes on CPU even where CUDA
    is visible (pipelines/devices.py), so the rank's device decides, not the machine.
    """
    if kind == "torch_distributed":
        return TorchDistComm()
    if exchange == "auto":
        if on_gpu is None:
            import torch

            on_gpu = torch.cuda.is_available()
        exchange = "horovod" if on_gpu else "ddp"
    return HorovodLaunchedDDPComm() if exchange == "ddp" else HorovodComm()
