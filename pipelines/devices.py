"""Which device a training rank or a scoring task computes on, and the Spark GPU requests behind it.

Spark owns the GPUs of a cluster: an executor holds ``spark.executor.resource.gpu.amount`` of them and
hands each task that asks for some the addresses it may use (``TaskContext.resources()["gpu"]``). A rank
or scoring task uses exactly those, never a guess from its local rank, because two executors on one host
can hold different GPUs and a guess would put two ranks on one GPU. Only the stages that need a GPU ask
for one, through a stage-level ``TaskResourceProfile`` (training ranks, the scoring stage), so prepare and
the rest of the job keep every core.

Every decision is one ``DeviceChoice``: the addresses Spark gave, the ``CUDA_VISIBLE_DEVICES`` they became,
the device the code would use with CUDA (``intended``) and the one it uses (``device``). On a machine
without CUDA ``device`` is ``cpu`` and one line says so; with ``device: cuda`` required it is an error.
When ``SPARKZOO_DEVICE_REPORT`` names a folder, each choice is also written there as a small JSON file,
so a test (or an operator) sees what each rank and task got.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

GPU = "gpu"
REPORT_ENV = "SPARKZOO_DEVICE_REPORT"
VISIBLE = "CUDA_VISIBLE_DEVICES"
EXECUTOR_GPUS = "spark.executor.resource.gpu.amount"
TASK_GPUS = "spark.task.resource.gpu.amount"
NO_CUDA = "no CUDA: training and scoring run on CPU"


@dataclass(frozen=True)
class DeviceChoice:
    """One rank's or task's device, and why."""

    who: str                                   # "rank 1", "score task 3"
    device: str                                # what the code uses: "cpu", "cuda:0"
    intended: str                              # what it would use with CUDA: "cuda:0" for an assigned GPU
    addresses: list[str] = field(default_factory=list)   # what Spark assigned (empty: nothing asked or given)
    visible: str | None = None                 # CUDA_VISIBLE_DEVICES after the choice
    note: str = ""                             # the one line a user reads about it

    def record(self, **extra: Any) -> dict[str, Any]:
        return {**asdict(self), "host": socket.gethostname(), "pid": os.getpid(), "cwd": os.getcwd(), **extra}


def physical_ids(addresses: list[str]) -> list[str]:
    """Spark's addresses as CUDA device ids, for a rank's ``CUDA_VISIBLE_DEVICES``.

    Spark's own rule (pyspark.ml.torch.distributor._get_gpus_owned): where the executor already runs under a
    ``CUDA_VISIBLE_DEVICES`` (a YARN or Kubernetes container), an address indexes that list."""
    outer = os.environ.get(VISIBLE)
    if outer is None or outer == "":
        return list(addresses)
    ids = outer.split(",")
    try:
        return [ids[int(a)] for a in addresses]
    except (ValueError, IndexError):
        return list(addresses)


def task_gpus() -> list[str]:
    """The GPU addresses Spark gave the running task (empty outside a task or when it asked for none)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    info = ctx.resources().get(GPU) if ctx is not None else None
    return list(info.addresses) if info is not None else []


def task_stage() -> int | None:
    """The running task's Spark stage id (None outside a task): which stage a report came from."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.stageId() if ctx is not None else None


def rank_gpus(launcher: str, asked: int) -> tuple[list[str], str]:
    """The GPUs Spark assigned this rank's task, and where that came from.

    horovod.spark.run starts a rank from its Spark task and passes that task's
    ``TaskContext.resources()`` into the rank (``horovod.spark.task.get_available_devices``);
    TorchDistributor writes them to the rank's ``CUDA_VISIBLE_DEVICES``; horovodrun has no Spark.
    """
    if launcher == "horovod_spark":
        try:
            from horovod.spark.task import get_available_devices
        except ImportError:
            return [], "none"
        return [str(a) for a in get_available_devices()], "spark task"
    if launcher == "torch_distributor" and asked:   # with use_gpu, TorchDistributor sets it from the task
        visible = os.environ.get(VISIBLE, "")
        return [a for a in visible.split(",") if a], "spark task (TorchDistributor)"
    return [], "none"


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def claim_rank_gpus(want: str, launcher: str, asked: int) -> tuple[list[str], str]:
    """The GPUs Spark gave this rank, made its ``CUDA_VISIBLE_DEVICES``; call before anything touches CUDA
    (the CUDA runtime reads that variable once per process)."""
    if want == "cpu":
        return [], "none"
    addresses, source = rank_gpus(launcher, asked)
    if addresses and launcher == "horovod_spark":
        os.environ[VISIBLE] = ",".join(physical_ids(addresses))
    return addresses, source


def would_use_gpu(want: str, launcher: str, claimed: tuple[list[str], str]) -> bool:
    """Whether ``for_rank`` will pick a GPU (known before the rank's communicator exists)."""
    return want != "cpu" and bool(claimed[0] or launcher == "horovodrun") and _cuda_count() > 0


def for_rank(want: str, launcher: str, rank: int, local_rank: int, asked: int,
             claimed: tuple[list[str], str]) -> DeviceChoice:
    """A training rank's device, from what ``claim_rank_gpus`` found (``asked``: train.gpus_per_rank).

    Spark-launched ranks use only what Spark assigned; horovodrun ranks (one host, no Spark scheduler)
    take the GPU of their local rank, the only assignment there is."""
    from .errors import TrainingError

    who = f"rank {rank}"
    if want == "cpu":
        return DeviceChoice(who, "cpu", "cpu", note=f"{who}: train.device=cpu")
    addresses, source = claimed
    if asked and not addresses:
        raise TrainingError(f"train.gpus_per_rank={asked} but Spark assigned {who} no GPU; give the executors GPUs "
                            f"({EXECUTOR_GPUS} and a discovery script) on a standalone, YARN or Kubernetes master")
    visible = os.environ.get(VISIBLE)
    count = _cuda_count()
    if addresses:
        intended = "cuda:0"    # the assigned GPUs are all this process sees
    elif launcher == "horovodrun":
        intended = f"cuda:{local_rank}"
    else:
        intended = "cpu"
    if count and intended != "cpu":
        device, note = intended, f"{who}: {intended} ({source} gpu {','.join(addresses) or local_rank})"
    elif want == "cuda":
        why = "no CUDA device is visible" if not count else "Spark assigned it no GPU (train.gpus_per_rank=0)"
        raise TrainingError(f"train.device=cuda but {who} cannot have a GPU: {why}; set train.device=auto to train "
                            f"on CPU, or give the executors GPUs and set train.gpus_per_rank=1 (docs/GPU.md)")
    elif count:
        device, note = "cpu", (f"{who}: CUDA is visible but Spark assigned this rank no GPU: training runs on CPU; "
                               f"set train.gpus_per_rank=1 and {EXECUTOR_GPUS} (docs/GPU.md)")
    else:
        device = "cpu"
        note = f"{who}: " + (f"{NO_CUDA} (Spark assigned gpu {','.join(addresses)})" if addresses else NO_CUDA)
    return DeviceChoice(who, device, intended, addresses, visible, note)


def for_score_task(want: str) -> DeviceChoice:
    """A scoring task's device: the GPU Spark assigned this task, else the executor's CUDA device, else CPU.

    Python workers are reused across tasks that hold different GPUs, so the choice is ``cuda:<address>``
    (an index into the worker's visible devices, Spark's rule), never a change of ``CUDA_VISIBLE_DEVICES``."""
    from pyspark import TaskContext

    from .errors import ScoringError

    ctx = TaskContext.get()
    who = f"score task {ctx.partitionId()}" if ctx is not None else "score"
    if want == "cpu":
        return DeviceChoice(who, "cpu", "cpu", note=f"{who}: score.device=cpu")
    addresses = task_gpus()
    intended = f"cuda:{addresses[0]}" if addresses else "cuda"
    if _cuda_count():
        return DeviceChoice(who, intended, intended, addresses, os.environ.get(VISIBLE), f"{who}: {intended}")
    if want == "cuda":
        raise ScoringError("score.device=cuda but this executor has no CUDA device; use score.device=auto or cpu, "
                           f"or give the executors GPUs ({EXECUTOR_GPUS}) and set score.tasks_per_gpu")
    note = f"{who}: " + (f"{NO_CUDA} (Spark assigned gpu {','.join(addresses)})" if addresses else NO_CUDA)
    return DeviceChoice(who, "cpu", intended if addresses else "cpu", addresses, os.environ.get(VISIBLE), note)


def seen_as(choice: DeviceChoice) -> str:
    """How the driver's summary names a choice: ``cuda:1``, ``cpu``, ``cpu (no CUDA; Spark gpu 0)``."""
    if choice.device != "cpu" or NO_CUDA not in choice.note:
        return choice.device
    return "cpu (no CUDA" + (f"; Spark gpu {','.join(choice.addresses)})" if choice.addresses else ")")


def summarise(seen: set[str]) -> str:
    """The driver's one line over every rank's or task's choice: leads with NO_CUDA when none had CUDA."""
    if all(s.startswith("cpu (no CUDA") for s in seen):
        gpus = sorted({g for s in seen for g in s.partition("Spark gpu ")[2].rstrip(")").split(",") if g})
        return f"cpu: {NO_CUDA}" + (f" (Spark assigned gpu {', '.join(gpus)})" if gpus else "")
    return ", ".join(sorted(seen))


class SetUnion:
    """An accumulator of sets (pyspark's AccumulatorParam protocol): what the tasks chose, for the driver."""

    def zero(self, value: set[str]) -> set[str]:
        return set()

    def addInPlace(self, a: set[str], b: set[str]) -> set[str]:
        a |= b
        return a


def report(kind: str, choice: DeviceChoice, **extra: Any) -> None:
    """Write the choice to ``$SPARKZOO_DEVICE_REPORT/<kind>-<pid>-<n>.json`` when that is set (tests, ops)."""
    folder = os.environ.get(REPORT_ENV)
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    record = choice.record(kind=kind, **extra)
    n = 0
    while True:   # one file per decision; never overwrite another task's (exclusive create)
        path = os.path.join(folder, f"{kind}-{os.getpid()}-{n}.json")
        try:
            with open(path, "x") as fh:
                json.dump(record, fh)
            return
        except FileExistsError:
            n += 1


# ---- driver side: the requests ------------------------------------------------------------------

def _conf(spark, key: str) -> str | None:
    return spark.sparkContext.getConf().get(key, None)


def check_gpu_requests(spark, what: str, key: str) -> None:
    """Before a stage asks for GPUs: the master can schedule them and the executors hold some.

    Without this a stage asking for a GPU the executors lack waits forever for a slot."""
    from .errors import ConfigError

    master = spark.sparkContext.master
    if master.startswith("local"):
        raise ConfigError(f"{key} asks Spark for GPUs but spark.master is {master}: local mode schedules no GPUs; "
                          f"use a standalone, YARN or Kubernetes master (docs/GPU.md), or unset {key}")
    amount = _conf(spark, EXECUTOR_GPUS)
    try:
        held = float(amount) if amount is not None else 0.0
    except ValueError:
        held = 0.0
    if held <= 0:
        raise ConfigError(f"{key} asks Spark for GPUs for {what}, but the executors hold none: set "
                          f"spark.conf {EXECUTOR_GPUS} (and spark.executor.resource.gpu.discoveryScript off "
                          f"standalone) (docs/GPU.md)")
    if (_conf(spark, "spark.dynamicAllocation.enabled") or "false").lower() == "true":
        raise ConfigError(f"{key}: Spark 3.5 runs a stage with its own task GPU request only when "
                          f"spark.dynamicAllocation.enabled=false; turn it off or unset {key}")


def task_profile(gpus: float, cpus: int = 1):
    """A stage-level profile: this many CPUs and GPUs per task, on the executors the job already has."""
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(cpus).resource(GPU, gpus)).build


def score_profile(spark, tasks_per_gpu: int | None):
    """The scoring stage's profile (1/n GPU per task), or None when scoring asks for no GPU."""
    if tasks_per_gpu is None:
        return None
    check_gpu_requests(spark, "the scoring stage", "score.tasks_per_gpu")
    return task_profile(1.0 / tasks_per_gpu)


def score_plan(spark, want: str, tasks_per_gpu: int | None) -> str:
    """The driver's one line about where scoring runs; a local job that requires CUDA and has none fails.

    On a cluster the executors decide (each task logs its own choice); a local master's executors are
    this process, so its answer is final here."""
    from .errors import ScoringError

    if want == "cpu":
        return "score.device=cpu: scoring runs on CPU"
    if spark.sparkContext.master.startswith("local"):
        if _cuda_count():
            return cuda_summary() + ": scoring runs on cuda"
        if want == "cuda":
            raise ScoringError("score.device=cuda but this machine has no CUDA device; use score.device=auto or cpu")
        return NO_CUDA
    if tasks_per_gpu is None:
        return ("scoring tasks ask Spark for no GPU (score.tasks_per_gpu unset): each uses its executor's CUDA device "
                "if it has one, else CPU")
    share = "a whole GPU" if tasks_per_gpu == 1 else f"1/{tasks_per_gpu} of a GPU"
    return (f"each scoring task holds {share} (stage-level profile) and uses the GPU Spark assigns it; "
            + ("a task without CUDA fails the job (score.device=cuda)" if want == "cuda"
               else "a task on an executor without CUDA runs on CPU and says so"))


@contextmanager
def ranks_hold_gpus(spark, gpus_per_rank: int, backend: str) -> Iterator[None]:
    """While Horovod starts the ranks, their Spark tasks ask for ``gpus_per_rank`` GPUs each.

    Why here: horovod.spark.run (0.28.1) builds the ranks' RDD itself with ``spark_context.range(...)`` and
    takes no resource profile, and the alternative, ``spark.task.resource.gpu.amount`` for the whole app,
    makes every prepare task wait for a GPU too. So for the length of the launch this SparkContext's
    ``range`` returns RDDs carrying the profile; nothing else in the job calls ``range`` meanwhile."""
    if not gpus_per_rank or backend != "horovod_spark":
        yield
        return
    check_gpu_requests(spark, "the training ranks", "train.gpus_per_rank")
    sc = spark.sparkContext
    profile = task_profile(float(gpus_per_rank))
    original = sc.range

    def with_gpus(*args: Any, **kwargs: Any):
        return original(*args, **kwargs).withResources(profile)

    sc.range = with_gpus
    try:
        yield
    finally:
        del sc.range   # the class's method again


def torch_distributor_gpus(spark, gpus_per_rank: int) -> bool:
    """TorchDistributor hands its tasks' GPUs to the ranks only with the app-wide task GPU amount set."""
    if not gpus_per_rank:
        return False
    from .errors import ConfigError

    check_gpu_requests(spark, "the training ranks", "train.gpus_per_rank")
    amount = _conf(spark, TASK_GPUS)
    if amount is None or float(amount) < 1:
        raise ConfigError(f"train.backend=torch_distributor with train.gpus_per_rank=1 needs spark.conf {TASK_GPUS}=1 "
                          f"(TorchDistributor reads the app-wide amount; every task then holds a GPU); or use "
                          f"train.backend=horovod_spark, whose ranks alone ask for GPUs")
    return True


def cuda_summary() -> str:
    """One line for ``sparkzoo doctor`` and the logs: the GPUs this process sees, or that there are none."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return NO_CUDA
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} CUDA device(s): " + ", ".join(f"cuda:{i} {n}" for i, n in enumerate(names))
