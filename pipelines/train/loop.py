"""What each Horovod rank runs: the same code under horovod.spark.run and horovodrun.

Driver code ships plain values (the config as a dict, a context dict of paths and ids); everything
heavy is imported here, inside the rank. Only rank 0 talks to MLflow and writes checkpoints.

``RankRun`` holds one rank's training in four steps, each its own method: build (device, model,
transfer, readers, optimizer), ``resume`` (from the newest checkpoint, any world size), ``epochs`` (the
lock-step loop with step checkpoints) and ``test`` (best epoch back, test metrics, other beams);
evaluation lives in ``evaluate``, transfer learning in ``transfer``, and what rank 0 writes to MLflow
(epoch metrics, checkpoints, plots, report, the logged model) in ``finish``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from typing import Any

import numpy as np

from ..errors import ConfigError, TrainingError
from .evaluate import Evaluator, add, allreduce_sums
from .finish import build_model_spec, example_frame, finish, log_checkpoint, log_epoch, log_restart  # noqa: F401

log = logging.getLogger("sparkzoo.train")


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_logging() -> None:
    """A rank is a fresh Python (a Spark task or a horovodrun child) with no logging set up: its
    ``sparkzoo`` lines go to its stdout, which Horovod forwards to the driver's log, prefixed as the CLI's."""
    ours = logging.getLogger("sparkzoo")
    if not ours.hasHandlers():
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[sparkzoo] %(message)s"))
        ours.addHandler(handler)
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)


def train_rank(exp_dict: dict[str, Any], ctx: dict[str, Any], comm_kind: str = "horovod") -> dict[str, Any]:
    """Train on this rank's shard; rank 0 returns the run summary, others a small status dict.

    A SparkzooError (the user's config or data, a deliberate message) is also left in the checkpoint
    folder for the driver, which otherwise learns only an exit code and would retry it.
    """
    from sparkzoo.pipelines.errors import SparkzooError

    rank_logging()
    try:
        run = RankRun(exp_dict, ctx, comm_kind)
        run.resume()
        run.epochs()
        return run.test()
    except SparkzooError as exc:
        from sparkzoo.pipelines.train.recovery import report_rank_error

        report_rank_error(ctx["checkpoint_dir"], int(os.environ.get("HOROVOD_RANK", os.environ.get("RANK", 0))), exc)
        raise


class RankRun:
    """One rank's training run; attributes are what the steps hand each other (see the module docstring)."""

    def __init__(self, exp_dict: dict[str, Any], ctx: dict[str, Any], comm_kind: str) -> None:
        # when this rank reached each point of its start (epoch seconds): the launch's cost, phase by phase
        self.marks = {"entered": time.time()}
        import torch

        from sparkzoo.models import get_model, model_task
        from sparkzoo.pipelines import devices
        from sparkzoo.pipelines.config import from_dict
        from sparkzoo.pipelines.modelspec import input_spec, make_spec_task

        from .comm import make_comm
        from .transfer import freeze, init_from

        self.exp = exp = from_dict(exp_dict)
        self.ctx = ctx
        self.tc = tc = exp.train
        claimed = devices.claim_rank_gpus(tc.device, tc.backend, tc.gpus_per_rank)   # before CUDA initialises
        self.comm = comm = make_comm(comm_kind, tc.gradient_exchange,
                                     on_gpu=devices.would_use_gpu(tc.device, tc.backend, claimed))
        self.marks["group_ready"] = time.time()
        self.rank, self.size = comm.rank, comm.size
        self.choice = devices.for_rank(tc.device, tc.backend, self.rank, comm.local_rank, tc.gpus_per_rank, claimed)
        devices.report("rank", self.choice, rank=self.rank, local_rank=comm.local_rank, size=self.size)
        if self.rank == 0:
            log.info("%s", self.choice.note)
        torch.set_num_threads(tc.threads_per_rank)
        _seed_everything(exp.seed)
        self.device = torch.device(self.choice.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

        self.manifest = manifest = ctx["manifest"]
        model_spec = build_model_spec(exp, manifest, model_task(exp.model.name))
        try:
            model = get_model(exp.model.name, input_spec({**model_spec, "lengths": manifest.get("lengths")}),
                              **exp.model.params).to(self.device)
        except (TypeError, ValueError) as exc:   # the user's params: a ConfigError is never retried
            raise ConfigError(f"model.params {exp.model.params} do not fit model {exp.model.name}: {exc}; "
                              f"see docs/MODEL_ZOO.md for its parameters") from None
        self.task = make_spec_task(model_spec)
        if self.rank == 0 and exp.model.init_from:   # other ranks get these weights from the first broadcast
            init_from(exp, model, ctx["init_from"], exp.model.init_exclude, (manifest.get("vocab") or {}).get("text") or [])
        freeze(model, exp.model.freeze)

        self.train_reader = self.reader("train")
        self.every = every = tc.backward_passes_per_step
        steps = self._steps()
        self.steps = steps
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        opt = self._optimizer()
        self.model, self.opt = comm.prepare(model, opt, fp16_compression=tc.fp16_compression,
                                            backward_passes_per_step=every)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: self.lr_factor(step))   # wrapped: steps count
        self.evaluate = Evaluator(comm, self.model, self.reader, self.device, self.autocast, tc.test_slices,
                                  tc.batch_size)
        self.marks["built"] = time.time()

    # ---- build ---------------------------------------------------------------------------------------

    def files(self, split: str) -> list[dict[str, Any]]:
        from sparkzoo.pipelines import paths

        return [{"path": paths.join(self.ctx["dataset_path"], f["path"]), "row_groups": f["row_groups"]}
                for f in self.manifest["splits"][split]["files"]]

    def reader(self, split: str, extra: tuple[str, ...] = ()):
        from sparkzoo.pipelines import paths

        from .data import ShardReader

        tc, task = self.tc, self.task
        return ShardReader(self.files(split), self.rank, self.size, shape=self.manifest["shape"],
                           batch_size=tc.batch_size, seed=self.exp.seed, columns=task.columns + extra,
                           shuffle_buffer=tc.shuffle_buffer, prefetch_batches=tc.prefetch_batches, reader=tc.reader,
                           dataset_dir=paths.join(self.ctx["dataset_path"], split),
                           sort_key=task.sort_key if tc.bucket_by_length else None)

    def _steps(self) -> int:
        """Batches per epoch on this world size, whole optimizer steps only."""
        from .data import steps_per_epoch

        tc = self.tc
        steps = steps_per_epoch(self.files("train"), self.size, tc.batch_size, tc.max_steps_per_epoch)
        steps -= steps % self.every
        if steps == 0:
            raise TrainingError(f"the train split has too few rows for {self.size} ranks x batch_size {tc.batch_size}; "
                                f"lower train.batch_size or train.num_proc, or prepare more data")
        return steps

    def _optimizer(self):
        import torch

        tc = self.tc
        lr = tc.lr * (self.size if tc.scale_lr_by_world_size else 1)
        if tc.optimizer == "adam":
            return torch.optim.Adam(self.trainable, lr=lr, weight_decay=tc.weight_decay)
        return torch.optim.SGD(self.trainable, lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay)

    def lr_factor(self, step: int) -> float:
        """Horovod's recipe: warm up from the single-process rate to lr * size; then flat or cosine to 0."""
        tc = self.tc
        warmup_steps = int(tc.warmup_epochs * self.steps / self.every)
        total_steps = max(1, tc.epochs * self.steps // self.every)
        if warmup_steps > 0 and step < warmup_steps:
            start = 1.0 / self.size if tc.scale_lr_by_world_size else 0.0
            return start + (1.0 - start) * step / warmup_steps
        if tc.lr_schedule == "cosine":   # decay to 0 over the remaining steps: better final weights, no tuning
            done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
        return 1.0

    def autocast(self):
        import contextlib

        import torch

        if self.device.type == "cuda" and self.tc.amp:   # bf16 needs no loss scaling: any optimizer wrapper
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- resume --------------------------------------------------------------------------------------

    def state(self, epoch: int, step: int | None = None, ranks: list[Any] | None = None) -> dict[str, Any]:
        """The checkpoint: an epoch end (``step`` None) or mid-epoch, with every rank's own share (``ranks``)."""
        from . import checkpoint

        state = {"model": self.comm.unwrap(self.model).state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": epoch, "step": step, "size": self.size,
                 "history": self.history, "best": self.best, "stale": self.stale, "rng": checkpoint.rng_state(),
                 "saved_at": time.time()}
        if ranks is not None:
            state["ranks"] = ranks
        return state

    def resume(self) -> None:
        """Rank 0 loads the newest checkpoint (if the driver named one) and every rank takes its position;
        after an elastic relaunch with another world size the epoch continues at the same share."""
        from . import checkpoint

        comm, rank, size, every, steps = self.comm, self.rank, self.size, self.every, self.steps
        base_lrs = list(self.scheduler.base_lrs)   # this world size's rates, whatever a checkpoint used
        start_epoch, start_step, history, best, stale, partial = 0, 0, [], None, 0, None
        saved_at = self.ctx.get("first_launched_at")   # a restart before any checkpoint lost all since launch
        if rank == 0 and self.ctx.get("resume_from"):
            state = checkpoint.load(self.ctx["resume_from"])
            comm.unwrap(self.model).load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            history, best, stale = state["history"], state.get("best"), state.get("stale", 0)
            saved_at = state.get("saved_at", saved_at)
            if state.get("step") is None:   # an epoch end
                start_epoch = state["epoch"] + 1
                checkpoint.set_rng_state(state["rng"])
            else:                           # mid-epoch: every rank's RNG and partial sums come back too
                start_epoch, start_step = state["epoch"], state["step"]
                partial = {"size": state["size"], "ranks": state["ranks"]}
        comm.sync_state(self.model, self.opt)
        start_epoch, start_step, history, last, best, stale, partial, saved_at = comm.broadcast_object(
            (start_epoch, start_step, history, self.scheduler.last_epoch, best, stale, partial, saved_at), name="resume")
        own = None   # this rank's share of a mid-epoch checkpoint: torch RNG state and partial epoch sums
        if partial is not None and partial["size"] == size:
            own = partial["ranks"][rank]
        elif partial is not None:
            # Another world size (an elastic relaunch): other shards, so not the same batches. The epoch
            # continues at the same share of its samples; the old ranks' sums go to rank 0 (metrics are sums).
            start_step = min(steps, start_step * partial["size"] // size) // every * every
            last = (start_epoch * steps + start_step) // every
            own = _merged_partial(partial["ranks"], self.task) if rank == 0 else None
            if rank == 0:
                log.info("world size %d -> %d: epoch %d continues at step %d/%d on new shards, lr %g", partial["size"],
                         size, start_epoch + 1, start_step, steps,
                         self.tc.lr * (size if self.tc.scale_lr_by_world_size else 1))
        self.scheduler.base_lrs = base_lrs
        self.scheduler.last_epoch = last
        for group, base in zip(self.opt.param_groups, base_lrs):   # the rate the schedule gives at this step
            group["initial_lr"], group["lr"] = base, base * self.lr_factor(last)
        self.start_epoch, self.start_step, self.own, self.saved_at = start_epoch, start_step, own, saved_at
        self.history, self.best, self.stale = history, best, stale

    # ---- the epochs ----------------------------------------------------------------------------------

    def epochs(self) -> None:
        """The lock-step loop: every rank trains its shard, sums go through one allreduce per epoch, rank 0
        validates, logs and checkpoints; step checkpoints on the ``StepCheckpoints`` cadence."""
        from .progress import EpochProgress
        from .progress import note as progress_note

        tc, ctx = self.tc, self.ctx
        self.cadence = StepCheckpoints(tc.checkpoint_every_steps, tc.checkpoint_every_seconds)
        self.first_step_at = None
        self.started = time.time()
        self.samples_seen, self.train_seconds = 0, 0.0
        global_batch = tc.batch_size * self.size
        for epoch in range(self.start_epoch, tc.epochs):
            first = self.start_step if epoch == self.start_epoch else 0
            bar = EpochProgress(epoch, tc.epochs, self.steps, global_batch, enabled=self.rank == 0 and tc.progress,
                                address=ctx.get("progress"))
            t0 = time.time()
            sums, norms, measured = self._train_epoch(epoch, first, bar)
            bar.close()
            epoch_seconds = time.time() - t0
            self.train_seconds += epoch_seconds
            self.samples_seen += (self.steps - first) * global_batch
            record = self._record(epoch, sums, norms, measured, epoch_seconds, (self.steps - first) * global_batch)
            if self.rank == 0:
                line = self._end_epoch(epoch, record)
                if tc.progress:
                    progress_note(ctx.get("progress"), line)   # the driver's terminal
            self.cadence.since = 0   # an epoch end checkpointed too: the interval counts from here (every rank)
            if tc.early_stopping_patience and self.stale >= tc.early_stopping_patience:
                break

    def _train_epoch(self, epoch: int, first: int, bar) -> tuple[dict[str, float], dict[str, float], int]:
        import torch

        from . import checkpoint

        tc, task, comm, rank, every = self.tc, self.task, self.comm, self.rank, self.every
        mine = self.own if epoch == self.start_epoch else None
        if mine is not None and mine.get("rng") is not None:
            torch.set_rng_state(mine["rng"])   # this rank's dropout continues where it stopped
        else:
            torch.manual_seed(self.exp.seed + 1000 * epoch + rank + first)  # differs per rank; same after a resume
        self.model.train()
        sums = dict(mine["sums"]) if mine else task.empty_sums()
        norms: dict[str, float] = dict(mine["norms"]) if mine else {}
        measured = mine["measured"] if mine else 0
        ckpt_dir = self.ctx["checkpoint_dir"]
        fault = tuple(self.ctx["fault"]) if self.ctx.get("fault") else None   # (rank, epoch, step): tests only
        self.opt.zero_grad()
        for step, batch in enumerate(self.train_reader.epoch(epoch, steps=self.steps, skip=first), start=first):
            if fault is not None and fault == (rank, epoch + 1, step) and _fault_fires(
                    ckpt_dir, epoch, step, self.steps, tc.batch_size * self.size):
                os.kill(os.getpid(), 9)   # fault injection for the restart tests: this rank dies, no goodbye
            if self.first_step_at is None:
                self.first_step_at = time.time()
            x, y = task.tensors(batch, self.device)
            with comm.accumulation_context(self.model, step, every), self.autocast():
                out = task.as_float(self.model(x))
                loss = task.loss(out, y)
                (loss / every).backward()
            if (step + 1) % every == 0:
                comm.reduce_gradients(self.opt)
                if step % GRAD_NORM_EVERY < every:
                    _add_norms(norms, grad_norms(comm.unwrap(self.model)))
                    measured += 1
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.trainable, tc.grad_clip)
                comm.step(self.opt)
                self.scheduler.step()
                self.opt.zero_grad()
            with torch.no_grad():
                add(sums, task.metric_sums(task.as_float(out, detach=True), y))
            bar.update(float(loss.detach()))
            if (step + 1) % every == 0 and self.cadence.due(comm) and step + 1 < self.steps:
                ckpt_t0 = time.time()
                share = {"rng": torch.get_rng_state(), "sums": sums, "norms": norms, "measured": measured}
                ranks_state = comm.gather_object(share, name="step_checkpoint")
                if rank == 0:
                    checkpoint.save(ckpt_dir, epoch, self.state(epoch, step + 1, ranks_state), step=step + 1)
                    checkpoint.prune(ckpt_dir, tc.keep_checkpoints, keep_epochs=tc.restore_best)
                self.cadence.spent += time.time() - ckpt_t0   # the others wait this long at the next allreduce
                self.cadence.written += 1
        return sums, norms, measured

    def _record(self, epoch: int, sums: dict[str, float], norms: dict[str, float], measured: int,
                epoch_seconds: float, samples: int) -> dict[str, float]:
        """The epoch's history row (train metrics over all ranks, val metrics) and the early-stopping count."""
        from .metrics import GRAD_NORM_PREFIX

        task = self.task
        train_metrics = task.finish(allreduce_sums(self.comm, sums))
        val_metrics, _ = self.evaluate("val", task) if self.manifest["splits"]["val"]["rows"] else ({}, None)
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train_metrics.items()},
                  **{f"val_{k}": v for k, v in val_metrics.items()},
                  "epoch_seconds": epoch_seconds, "samples_per_second": samples / epoch_seconds,
                  "lr": self.scheduler.get_last_lr()[0],
                  **{f"{GRAD_NORM_PREFIX}{k}": v / max(measured, 1) for k, v in sorted(norms.items())}}
        self.history.append(record)
        watch = val_metrics.get(task.metric)
        if watch is not None and task.higher_is_better is False:
            watch = -watch   # best/stale compare "higher is better"
        if watch is not None and (self.best is None or watch > self.best):
            self.best, self.stale = watch, 0
        else:
            self.stale += 1
        return record

    def _end_epoch(self, epoch: int, record: dict[str, float]) -> str:
        """Rank 0: the epoch's metrics and checkpoint to MLflow and disk; returns the one-line summary."""
        from . import checkpoint

        exp, ctx, tc = self.exp, self.ctx, self.tc
        log_epoch(exp, ctx, record, epoch)
        if ctx.get("restart") and epoch == self.start_epoch:   # what the restart cost, once the ranks train again
            log_restart(exp, ctx, self.first_step_at, self.saved_at)
        state = self.state(epoch)
        path = checkpoint.save(ctx["checkpoint_dir"], epoch, state)
        checkpoint.prune(ctx["checkpoint_dir"], tc.keep_checkpoints, keep_epochs=tc.restore_best)
        log_checkpoint(exp, ctx, state)
        m = self.task.metric
        line = (f"epoch {epoch + 1}/{tc.epochs}: train_loss={record['train_loss']:.4f} "
                f"train_{m}={record.get(f'train_{m}', float('nan')):.4f} "
                f"val_{m}={record.get(f'val_{m}', float('nan')):.4f} {record['samples_per_second']:.0f} samples/s")
        log.info("%s; checkpoint %s", line, os.path.basename(path))   # the rank's log
        return line

    # ---- test and finish -----------------------------------------------------------------------------

    def test(self) -> dict[str, Any]:
        """The best epoch's weights back (``restore_best``), test metrics (and other beam widths), and
        rank 0's finish; returns the run summary on rank 0, a small status dict on the others."""
        import dataclasses

        from sparkzoo.models import count_parameters
        from sparkzoo.pipelines import devices, paths

        from . import checkpoint

        tc, task, comm, rank, slices = self.tc, self.task, self.comm, self.rank, self.tc.test_slices
        best_epoch = _best_epoch(self.history, task) if tc.restore_best else None
        if best_epoch is not None and best_epoch != self.history[-1]["epoch"]:
            # every rank loads rank 0's copy: the checkpoint folder need not be shared between hosts
            best_state = (checkpoint.load(paths.join(self.ctx["checkpoint_dir"], f"epoch-{best_epoch - 1:04d}.pt"))["model"]
                          if rank == 0 else None)
            comm.unwrap(self.model).load_state_dict(comm.broadcast_object(best_state, name="best_state"))
            if rank == 0:
                log.info("restore_best: testing and registering epoch %d (best val_%s)", best_epoch, task.metric)
        test_metrics, test_detail = (self.evaluate("test", task, sliced=slices is not None)
                                     if self.manifest["splits"]["test"]["rows"] else ({}, None))
        if test_metrics and hasattr(task, "beam"):
            for width in self.exp.model.eval_beams:   # the same weights decoded greedily and with wider beams
                if width != task.beam:
                    other, _ = self.evaluate("test", dataclasses.replace(task, beam=width), sliced=slices is not None)
                    test_metrics.update({f"{k}_beam{width}": v for k, v in other.items()
                                         if k == task.metric or (slices and k.startswith(f"{task.metric}_"))})
        reader, cadence = self.train_reader, self.cadence
        result = {"rank": rank, "size": self.size, "rows_read": reader.expected_rows, "steps_per_epoch": self.steps,
                  "gradient_exchange": comm.exchange, "device": self.choice.device, "gpus": self.choice.addresses,
                  "seen_as": devices.seen_as(self.choice),
                  "first_step_seconds": (self.first_step_at or time.time()) - self.ctx.get("launched_at", self.started),
                  "first_step_at": self.first_step_at, "resumed_at": (self.start_epoch, self.start_step),
                  "startup_seconds": {k: round(t - self.ctx.get("launched_at", self.started), 3)
                                      for k, t in {**self.marks, "first_step": self.first_step_at or time.time()}.items()},
                  "step_checkpoints": cadence.written, "step_checkpoint_seconds": cadence.spent,
                  "pieces": [(p.path, p.row_group) for p in reader.pieces]}
        if rank == 0:
            result.update(finish(self.exp, self.ctx, comm.unwrap(self.model), task, self.history, test_metrics,
                                 test_detail, count_parameters(self.model), self.train_seconds, self.samples_seen,
                                 time.time() - self.started, best_epoch))
        return comm.finish(result)


def _best_epoch(history: list[dict[str, Any]], task) -> int | None:
    """The epoch (1-based) with the best validation metric; the first of equals; None without val data."""
    key = f"val_{task.metric}"
    scored = [(r[key] if task.higher_is_better else -r[key], -r["epoch"]) for r in history if key in r]
    return -max(scored)[1] if scored else None


GRAD_NORM_EVERY = 10   # steps between gradient-norm readings: cheap, and enough for a per-epoch mean


def grad_norms(model) -> dict[str, float]:
    """L2 norm of the (averaged) gradients per top-level module: the talk's vanishing gradients, made
    visible per epoch (an RNN's embedding next to an LSTM's, the first conv next to the head)."""
    sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            key = name.split(".", 1)[0]
            sq[key] = sq.get(key, 0.0) + float(p.grad.detach().float().pow(2).sum())
    return {k: v ** 0.5 for k, v in sq.items()}


def _add_norms(into: dict[str, float], more: dict[str, float]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0.0) + v


class StepCheckpoints:
    """When to write a mid-epoch checkpoint, decided alike on every rank without a collective per step.

    ``every_steps`` is a count; ``every_seconds`` becomes one: after ``CALIBRATE`` optimizer steps of this
    launch rank 0's measured seconds per step is broadcast (one collective, at the same step on every
    rank) and the interval is ``every_seconds / that``. The smaller of the two intervals wins.
    """

    CALIBRATE = 8   # optimizer steps timed before the seconds interval is fixed (the first is left out)

    def __init__(self, every_steps: int | None, every_seconds: float | None) -> None:
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.interval = every_steps
        self.done = 0          # optimizer steps in this launch
        self.since = 0         # ... since the last step checkpoint
        self.t_first = 0.0
        self.written = 0       # step checkpoints written in this launch ...
        self.spent = 0.0       # ... and the seconds they took (gather, save, prune): bench/recovery.py

    def due(self, comm) -> bool:
        self.done += 1
        self.since += 1
        if self.every_seconds is not None and self.done == 1:
            self.t_first = time.time()
        if self.every_seconds is not None and self.done == self.CALIBRATE:
            per_step = comm.broadcast_object((time.time() - self.t_first) / (self.CALIBRATE - 1), name="step_seconds")
            by_time = max(1, int(self.every_seconds / max(per_step, 1e-9)))
            self.interval = min(self.interval or by_time, by_time)
        if self.interval and self.since >= self.interval:
            self.since = 0
            return True
        return False


def _merged_partial(ranks: list[dict[str, Any]], task) -> dict[str, Any]:
    """The partial epoch of every old rank added up (for rank 0 after the world size changed)."""
    sums, norms = task.empty_sums(), {}
    for r in ranks:
        add(sums, r["sums"])
        _add_norms(norms, r["norms"])
    return {"rng": None, "sums": sums, "norms": norms, "measured": max(r["measured"] for r in ranks)}


def _fault_fires(ckpt_dir: str, epoch: int, step: int, steps: int, global_batch: int) -> bool:
    """The test fault fires once per run: a marker in the checkpoint folder (with the kill's time and
    position, which bench/recovery.py reads) keeps the restarted rank from dying again."""
    from sparkzoo.pipelines import paths
    from sparkzoo.pipelines.train.checkpoint import FAULT_MARKER

    marker = paths.join(ckpt_dir, FAULT_MARKER)
    if paths.exists(marker):
        return False
    paths.write_json(marker, {"killed_at": time.time(), "epoch": epoch, "step": step, "steps_per_epoch": steps,
                              "global_batch": global_batch})
    return True
