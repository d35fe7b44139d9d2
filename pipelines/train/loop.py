"""What each Horovod rank runs: the same code under horovod.spark.run and horovodrun.

Driver code ships plain values (the config as a dict, a context dict of paths and ids); everything
heavy is imported here, inside the rank. Only rank 0 talks to MLflow and writes checkpoints.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from typing import Any

import numpy as np


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_rank(exp_dict: dict[str, Any], ctx: dict[str, Any], comm_kind: str = "horovod") -> dict[str, Any]:
    """Train on this rank's shard; rank 0 returns the run summary, others a small status dict.

    A SparkzooError (the user's config or data, a deliberate message) is also left in the checkpoint
    folder for the driver, which otherwise learns only an exit code and would retry it.
    """
    from sparkzoo.pipelines.errors import SparkzooError

    try:
        return _train_rank(exp_dict, ctx, comm_kind)
    except SparkzooError as exc:
        from sparkzoo.pipelines.train.recovery import report_rank_error

        report_rank_error(ctx["checkpoint_dir"], int(os.environ.get("HOROVOD_RANK", os.environ.get("RANK", 0))), exc)
        raise


def _train_rank(exp_dict: dict[str, Any], ctx: dict[str, Any], comm_kind: str) -> dict[str, Any]:
    import torch

    from sparkzoo.models import count_parameters, get_model, model_task
    from sparkzoo.pipelines.modelspec import input_spec, make_spec_task
    from sparkzoo.pipelines.config import from_dict
    from sparkzoo.pipelines import paths
    from sparkzoo.pipelines.train import checkpoint
    from sparkzoo.pipelines.train.comm import make_comm
    from sparkzoo.pipelines.train.data import ShardReader, steps_per_epoch
    from sparkzoo.pipelines.train.metrics import GRAD_NORM_PREFIX

    from sparkzoo.pipelines import devices

    exp = from_dict(exp_dict)
    tc = exp.train
    claimed = devices.claim_rank_gpus(tc.device, tc.backend, tc.gpus_per_rank)   # before CUDA initialises
    comm = make_comm(comm_kind, tc.gradient_exchange,
                     on_gpu=devices.would_use_gpu(tc.device, tc.backend, claimed))
    rank, size = comm.rank, comm.size
    choice = devices.for_rank(tc.device, tc.backend, rank, comm.local_rank, tc.gpus_per_rank, claimed)
    devices.report("rank", choice, rank=rank, local_rank=comm.local_rank, size=size)
    if rank == 0:
        print(f"[sparkzoo] {choice.note}", flush=True)
    torch.set_num_threads(tc.threads_per_rank)
    _seed_everything(exp.seed)
    device = torch.device(choice.device)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(device)

    manifest = ctx["manifest"]
    shape = manifest["shape"]
    model_spec = build_model_spec(exp, manifest, model_task(exp.model.name))
    try:
        model = get_model(exp.model.name, input_spec({**model_spec, "lengths": manifest.get("lengths")}),
                          **exp.model.params).to(device)
    except (TypeError, ValueError) as exc:   # the user's params: a ConfigError is never retried
        raise _config_error(f"model.params {exp.model.params} do not fit model {exp.model.name}: {exc}; "
                            f"see docs/MODEL_ZOO.md for its parameters") from None
    task = make_spec_task(model_spec)
    if rank == 0 and exp.model.init_from:
        _init_from(exp, model, ctx["init_from"], exp.model.init_exclude, (manifest.get("vocab") or {}).get("text") or [])   # other ranks get these weights from the broadcast below
    _freeze(model, exp.model.freeze)

    def files(split: str) -> list[dict[str, Any]]:
        return [{"path": ctx["dataset_path"] + "/" + f["path"], "row_groups": f["row_groups"]}
                for f in manifest["splits"][split]["files"]]

    slices = tc.test_slices

    def reader(split: str, extra: tuple[str, ...] = ()) -> ShardReader:
        return ShardReader(files(split), rank, size, shape=shape, batch_size=tc.batch_size, seed=exp.seed,
                           columns=task.columns + extra, shuffle_buffer=tc.shuffle_buffer, prefetch_batches=tc.prefetch_batches, reader=tc.reader,
                           dataset_dir=ctx["dataset_path"] + "/" + split,
                           sort_key=task.sort_key if tc.bucket_by_length else None)

    train_reader = reader("train")
    every = tc.backward_passes_per_step
    steps = steps_per_epoch(files("train"), size, tc.batch_size, tc.max_steps_per_epoch)
    steps -= steps % every                       # whole optimizer steps only
    if steps == 0:
        raise _training_error(f"the train split has too few rows for {size} ranks x batch_size {tc.batch_size}; "
                              f"lower train.batch_size or train.num_proc, or prepare more data")

    lr = tc.lr * (size if tc.scale_lr_by_world_size else 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if tc.optimizer == "adam":
        opt = torch.optim.Adam(trainable, lr=lr, weight_decay=tc.weight_decay)
    else:
        opt = torch.optim.SGD(trainable, lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    warmup_steps = int(tc.warmup_epochs * steps / every)
    total_steps = max(1, tc.epochs * steps // every)

    def lr_factor(step: int) -> float:
        # Horovod's recipe: start from the single-process rate and ramp up to lr * size.
        if warmup_steps > 0 and step < warmup_steps:
            start = 1.0 / size if tc.scale_lr_by_world_size else 0.0
            return start + (1.0 - start) * step / warmup_steps
        if tc.lr_schedule == "cosine":   # decay to 0 over the remaining steps: better final weights, no tuning
            done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
        return 1.0

    model, opt = comm.prepare(model, opt, fp16_compression=tc.fp16_compression, backward_passes_per_step=every)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)   # on the wrapped optimizer, so steps count

    base_lrs = list(scheduler.base_lrs)   # this world size's rates, whatever a checkpoint was trained with
    start_epoch, start_step, history, best, stale, partial = 0, 0, [], None, 0, None
    saved_at = ctx.get("first_launched_at")   # what a restart before any checkpoint lost: all since launch
    if rank == 0 and ctx.get("resume_from"):
        state = checkpoint.load(ctx["resume_from"])
        comm.unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, stale = state["history"], state.get("best"), state.get("stale", 0)
        saved_at = state.get("saved_at", saved_at)
        if state.get("step") is None:   # an epoch end
            start_epoch = state["epoch"] + 1
            checkpoint.set_rng_state(state["rng"])
        else:                           # mid-epoch: every rank's RNG and partial sums come back too
            start_epoch, start_step = state["epoch"], state["step"]
            partial = {"size": state["size"], "ranks": state["ranks"]}
    comm.sync_state(model, opt)
    start_epoch, start_step, history, last, best, stale, partial, saved_at = comm.broadcast_object(
        (start_epoch, start_step, history, scheduler.last_epoch, best, stale, partial, saved_at), name="resume")
    own = None   # this rank's share of a mid-epoch checkpoint: torch RNG state and partial epoch sums
    if partial is not None and partial["size"] == size:
        own = partial["ranks"][rank]
    elif partial is not None:
        # Another world size (an elastic relaunch): other shards, so not the same batches. The epoch
        # continues at the same share of its samples; the old ranks' sums go to rank 0 (metrics are sums).
        start_step = min(steps, start_step * partial["size"] // size) // every * every
        last = (start_epoch * steps + start_step) // every
        own = _merged_partial(partial["ranks"], task) if rank == 0 else None
        if rank == 0:
            print(f"[sparkzoo] world size {partial['size']} -> {size}: epoch {start_epoch + 1} continues at step "
                  f"{start_step}/{steps} on new shards, lr {tc.lr * (size if tc.scale_lr_by_world_size else 1):g}",
                  flush=True)
    scheduler.base_lrs = base_lrs
    scheduler.last_epoch = last
    for group, base in zip(opt.param_groups, base_lrs):   # the rate the schedule gives at this step
        group["initial_lr"], group["lr"] = base, base * lr_factor(last)

    def autocast():
        import contextlib

        if use_cuda and tc.amp:   # bf16 needs no loss scaling, so it composes with any optimizer wrapper
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def allreduce_sums(sums: dict[str, float], extra: np.ndarray | None = None):
        keys = sorted(sums)
        total = dict(zip(keys, comm.allreduce_sum(np.array([sums[k] for k in keys]), name=f"sums.{len(keys)}").tolist()))
        if extra is not None:
            extra = comm.allreduce_sum(extra, name="confusion").astype(np.int64)
        return total, extra

    def evaluate(split: str, task=task, sliced: bool = False):
        """Task metrics summed over ranks, plus an ``EvalDetail``: the task's arrays and rank 0's samples.

        ``sliced`` (test with ``train.test_slices``): each batch's rows are split by slice before the
        forward pass, so every slice gets its own sums and arrays; the overall figures are their sums.
        """
        from sparkzoo.pipelines.train.data import _rows, _take
        from sparkzoo.pipelines.train.metrics import EvalDetail

        net = comm.unwrap(model)   # no collectives inside the forward pass: shards may be uneven
        net.eval()
        names = slices.names() if sliced else []
        parts = {name: (task.empty_sums(), task.empty_arrays()) for name in names or [""]}
        samples = None
        rows_seen = {name: 0 for name in parts}
        extra = (slices.column,) if sliced else ()
        with torch.inference_mode():
            for batch in reader(split, extra).full_pass(batch_size=max(tc.batch_size, 512)):
                if sliced:
                    label = slices.labels(batch.pop(slices.column))
                    groups = [(name, _take(batch, label == i)) for i, name in enumerate(names) if (label == i).any()]
                else:
                    groups = [("", batch)]
                for name, rows in groups:
                    x, y = task.tensors(rows, device)
                    with autocast():
                        out = task.as_float(task.predict(net, x))
                    _add(parts[name][0], task.metric_sums(out, y))
                    _add(parts[name][1], task.detail_arrays(out, y))
                    rows_seen[name] += _rows(rows)
                    if samples is None and rank == 0:
                        samples = task.samples(out, rows, EvalDetail.SAMPLES)
        reduced = {}
        for name, (sums, arrays) in parts.items():   # same names in the same order on every rank
            total, _ = allreduce_sums(sums)
            arrays = {k: comm.allreduce_sum(v, name=f"detail.{name}.{k}").astype(v.dtype) for k, v in sorted(arrays.items())}
            reduced[name] = (total, arrays)
        if not sliced:
            total, arrays = reduced[""]
            return task.finish(total, arrays), EvalDetail(arrays=arrays, samples=samples)
        total = task.empty_sums()
        arrays = task.empty_arrays()
        for part_sums, part_arrays in reduced.values():
            _add(total, part_sums)
            _add(arrays, part_arrays)
        metrics = task.finish(total, arrays)
        counts = comm.allreduce_sum(np.array([rows_seen[name] for name in names], dtype=np.float64), name="slice_rows")
        per_slice = {}
        for (name, (part_sums, part_arrays)), n in zip(reduced.items(), counts.tolist()):
            if n > 0:   # a slice with no test rows reports nothing
                metrics.update({f"{k}_{name}": v for k, v in task.finish(part_sums, part_arrays).items()})
                metrics[f"rows_{name}"] = n
                per_slice[name] = part_arrays
        return metrics, EvalDetail(arrays=arrays, samples=samples, slices=per_slice)

    ckpt_dir = ctx["checkpoint_dir"]
    fault = tuple(ctx["fault"]) if ctx.get("fault") else None   # (rank, epoch, step) to kill, tests only
    cadence = StepCheckpoints(tc.checkpoint_every_steps, tc.checkpoint_every_seconds)
    first_step_at = None
    started = time.time()
    samples_seen = 0
    train_seconds = 0.0
    from sparkzoo.pipelines.train.progress import EpochProgress
    from sparkzoo.pipelines.train.progress import note as progress_note

    for epoch in range(start_epoch, tc.epochs):
        first = start_step if epoch == start_epoch else 0
        mine = own if epoch == start_epoch else None
        if mine is not None and mine.get("rng") is not None:
            torch.set_rng_state(mine["rng"])   # this rank's dropout continues where it stopped
        else:
            torch.manual_seed(exp.seed + 1000 * epoch + rank + first)  # dropout differs per rank; same after a resume
        model.train()
        sums = dict(mine["sums"]) if mine else task.empty_sums()
        norms: dict[str, float] = dict(mine["norms"]) if mine else {}
        measured = mine["measured"] if mine else 0
        bar = EpochProgress(epoch, tc.epochs, steps, tc.batch_size * size, enabled=rank == 0 and tc.progress,
                            address=ctx.get("progress"))
        t0 = time.time()
        opt.zero_grad()
        for step, batch in enumerate(train_reader.epoch(epoch, steps=steps, skip=first), start=first):
            if fault is not None and fault == (rank, epoch + 1, step) and _fault_fires(ckpt_dir, epoch, step, steps,
                                                                                      tc.batch_size * size):
                os.kill(os.getpid(), 9)   # fault injection for the restart tests: this rank dies, no goodbye
            if first_step_at is None:
                first_step_at = time.time()
            x, y = task.tensors(batch, device)
            with comm.accumulation_context(model, step, every), autocast():
                out = task.as_float(model(x))
                loss = task.loss(out, y)
                (loss / every).backward()
            if (step + 1) % every == 0:
                comm.reduce_gradients(opt)
                if step % GRAD_NORM_EVERY < every:
                    _add_norms(norms, grad_norms(comm.unwrap(model)))
                    measured += 1
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip)
                comm.step(opt)
                scheduler.step()
                opt.zero_grad()
            with torch.no_grad():
                _add(sums, task.metric_sums(task.as_float(out, detach=True), y))
            bar.update(float(loss.detach()))
            if (step + 1) % every == 0 and cadence.due(comm) and step + 1 < steps:
                ckpt_t0 = time.time()
                mine = {"rng": torch.get_rng_state(), "sums": sums, "norms": norms, "measured": measured}
                ranks_state = comm.gather_object(mine, name="step_checkpoint")
                if rank == 0:
                    state = {"model": comm.unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step + 1, "size": size,
                             "ranks": ranks_state, "history": history, "best": best, "stale": stale,
                             "rng": checkpoint.rng_state(), "saved_at": time.time()}
                    checkpoint.save(ckpt_dir, epoch, state, step=step + 1)
                    checkpoint.prune(ckpt_dir, tc.keep_checkpoints, keep_epochs=tc.restore_best)
                cadence.spent += time.time() - ckpt_t0   # the others wait this long at the next allreduce
                cadence.written += 1
        bar.close()
        epoch_seconds = time.time() - t0
        train_seconds += epoch_seconds
        samples_seen += (steps - first) * tc.batch_size * size
        train_metrics = task.finish(allreduce_sums(sums)[0])
        val_metrics, _ = evaluate("val") if manifest["splits"]["val"]["rows"] else ({}, None)
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train_metrics.items()},
                  **{f"val_{k}": v for k, v in val_metrics.items()},
                  "epoch_seconds": epoch_seconds, "samples_per_second": (steps - first) * tc.batch_size * size / epoch_seconds,
                  "lr": scheduler.get_last_lr()[0],
                  **{f"{GRAD_NORM_PREFIX}{k}": v / max(measured, 1) for k, v in sorted(norms.items())}}
        history.append(record)
        watch = val_metrics.get(task.metric)
        if watch is not None and task.higher_is_better is False:
            watch = -watch   # best/stale compare "higher is better"
        if watch is not None and (best is None or watch > best):
            best, stale = watch, 0
        else:
            stale += 1
        if rank == 0:
            _log_epoch(exp, ctx, record, epoch)
            if ctx.get("restart") and epoch == start_epoch:   # what the restart cost, once the ranks train again
                _log_restart(exp, ctx, first_step_at, saved_at)
            state = {"model": comm.unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch, "step": None, "size": size, "history": history, "rng": checkpoint.rng_state(),
                     "best": best, "stale": stale, "saved_at": time.time()}
            path = checkpoint.save(ckpt_dir, epoch, state)
            checkpoint.prune(ckpt_dir, tc.keep_checkpoints, keep_epochs=tc.restore_best)
            _log_checkpoint(exp, ctx, state)
            m = task.metric
            line = (f"epoch {epoch + 1}/{tc.epochs}: train_loss={record['train_loss']:.4f} "
                    f"train_{m}={record.get(f'train_{m}', float('nan')):.4f} "
                    f"val_{m}={record.get(f'val_{m}', float('nan')):.4f} {record['samples_per_second']:.0f} samples/s")
            print(f"[sparkzoo] {line}; checkpoint {os.path.basename(path)}", flush=True)   # the rank's log
            if tc.progress:
                progress_note(ctx.get("progress"), line)   # the driver's terminal
        cadence.since = 0   # an epoch end checkpointed too: the interval counts from here (every rank alike)
        if tc.early_stopping_patience and stale >= tc.early_stopping_patience:
            break

    best_epoch = _best_epoch(history, task) if tc.restore_best else None
    if best_epoch is not None and best_epoch != history[-1]["epoch"]:
        # every rank loads rank 0's copy: the checkpoint folder need not be shared between hosts
        best_state = checkpoint.load(paths.join(ckpt_dir, f"epoch-{best_epoch - 1:04d}.pt"))["model"] if rank == 0 else None
        comm.unwrap(model).load_state_dict(comm.broadcast_object(best_state, name="best_state"))
        if rank == 0:
            print(f"[sparkzoo] restore_best: testing and registering epoch {best_epoch} (best val_{task.metric})", flush=True)
    test_metrics, test_conf = (evaluate("test", sliced=slices is not None) if manifest["splits"]["test"]["rows"]
                               else ({}, None))
    if test_metrics and hasattr(task, "beam"):
        import dataclasses

        for width in exp.model.eval_beams:   # the same weights decoded greedily and with wider beams
            if width != task.beam:
                other, _ = evaluate("test", dataclasses.replace(task, beam=width), sliced=slices is not None)
                test_metrics.update({f"{k}_beam{width}": v for k, v in other.items()
                                     if k == task.metric or (slices and k.startswith(f"{task.metric}_"))})
    result = {"rank": rank, "size": size, "rows_read": train_reader.expected_rows, "steps_per_epoch": steps,
              "gradient_exchange": comm.exchange, "device": choice.device, "gpus": choice.addresses,
              "seen_as": devices.seen_as(choice),
              "first_step_seconds": (first_step_at or time.time()) - ctx.get("launched_at", started),
              "first_step_at": first_step_at, "resumed_at": (start_epoch, start_step),
              "step_checkpoints": cadence.written, "step_checkpoint_seconds": cadence.spent,
              "pieces": [(p.path, p.row_group) for p in train_reader.pieces]}
    if rank == 0:
        result.update(_finish(exp, ctx, comm.unwrap(model), task, history, test_metrics, test_conf,
                              count_parameters(model), train_seconds, samples_seen, time.time() - started,
                              best_epoch))
    return comm.finish(result)


def _best_epoch(history: list[dict[str, Any]], task) -> int | None:
    """The epoch (1-based) with the best validation metric; the first of equals; None without val data."""
    key = f"val_{task.metric}"
    scored = [(r[key] if task.higher_is_better else -r[key], -r["epoch"]) for r in history if key in r]
    return -max(scored)[1] if scored else None


def _add(into: dict[str, Any], more: dict[str, Any]) -> None:
    for k, v in more.items():
        into[k] = into[k] + v


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


def example_frame(task, manifest: dict[str, Any]):
    """A two-row input example in what the logged model accepts: pixels, log-mel frames, or raw text
    (the model carries its tokeniser, so MLflow users can send sentences)."""
    import pandas as pd

    shape = manifest["shape"]
    if "image" in task.input_columns:
        return pd.DataFrame({"image": [bytes(shape["height"] * shape["width"] * shape["channels"])] * 2})
    if "features" in task.input_columns:
        return pd.DataFrame({"features": [bytes(4 * int(shape["n_mels"]) * 20)] * 2})
    vocab = (manifest.get("vocab") or {}).get("text") or ["<pad>", "<unk>", "<bos>", "<eos>", "a"]
    words = [t for t in vocab[4:14] if t.strip()] or ["a"]
    text_cfg = ((manifest.get("prepare_config") or {}).get("data") or {}).get("text") or {}
    joiner = "" if text_cfg.get("tokenizer") == "char" else " "
    return pd.DataFrame({"text": [joiner.join(words[:5]), words[0]]})


def build_model_spec(exp, manifest: dict[str, Any], task: str) -> dict[str, Any]:
    """The spec logged with the model: what rebuilds it and, for sequence models, the vocabularies,
    decoding settings and text normalisation that scoring needs."""
    from sparkzoo.models.tasks import task_class
    from sparkzoo.pipelines.modelspec import build_spec, target_vocab

    kind = task_class(task)
    text_cfg = ((manifest.get("prepare_config") or {}).get("data") or {}).get("text") or {}
    vocab = manifest.get("vocab") or None
    decode, text = None, None
    if kind.writes_sequences:
        how = text_cfg.get(kind.target_tokenizer) if kind.target_tokenizer else "char"
        lengths = manifest.get("lengths") or {}
        longest = max([int(v.get("max", 0)) for k, v in lengths.items() if k in ("target", "caption")] + [0])
        decode = {"beam": exp.model.beam, "joiner": "" if how == "char" else " ",
                  "max_decode": exp.model.max_decode_length or longest + 8}
        if kind.decode_top_k:
            decode["top_k"] = exp.model.beam
    if vocab and "text" in vocab:
        text = {k: text_cfg.get(k) for k in ("tokenizer", "lowercase", "max_length")}
    spec = build_spec(family=exp.model.name, params=exp.model.params, task=task, shape=manifest["shape"],
                      stats=manifest["stats"], label_names=manifest["label_names"], dataset=manifest["dataset"],
                      dataset_version=manifest["version"], vocab=vocab, decode=decode, text=text)
    if kind.writes_sequences and not target_vocab(spec):
        raise _training_error(f"model {exp.model.name} writes sequences but {manifest['dataset']} has no target "
                              f"vocabulary; prepare it with text pairs, captions or transcripts")
    return spec


def _init_from(exp, model, source: dict[str, Any], exclude: list[str], own_vocab: list[str]) -> None:
    """Transfer learning: copy every tensor whose name and shape match the source version (the trunk);
    the rest (a head for other classes or another input size, or what ``exclude`` names) stays fresh.
    Word embeddings are matched by token, so a text model pre-trained on another corpus (another
    vocabulary) passes on the rows of every word both vocabularies share."""
    import json

    import torch

    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.modelpack import SPEC_FILE, WEIGHTS_FILE

    with tempfile.TemporaryDirectory() as tmp:
        files = track.download_model_files(exp, source["name"], source["version"], tmp)
        state = torch.load(os.path.join(files, WEIGHTS_FILE), map_location="cpu", weights_only=True)
        with open(os.path.join(files, SPEC_FILE)) as fh:
            source_vocab = ((json.load(fh).get("vocab") or {}).get("text")) or []
    own = model.state_dict()
    if source_vocab and own_vocab:
        state = _remap_embeddings(state, own, source_vocab, own_vocab)
    taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
             and not any(k.startswith(pre) for pre in exclude)}
    if not taken:
        raise _training_error(f"model.init_from {source['uri']} shares no tensor (same name and shape) with "
                              f"this model; use a source of the same family")
    model.load_state_dict(taken, strict=False)
    fresh = sorted(set(own) - set(taken))
    print(f"[sparkzoo] init_from {source['uri']} (v{source['version']}): {len(taken)} tensors copied, "
          f"{len(fresh)} kept fresh ({', '.join(fresh[:6])}{', ...' if len(fresh) > 6 else ''})", flush=True)


def _remap_embeddings(state: dict[str, Any], own: dict[str, Any], source_vocab: list[str],
                      own_vocab: list[str]) -> dict[str, Any]:
    """Embedding tables (rows = source vocabulary) re-indexed to this model's vocabulary: shared tokens
    keep their learned row, new tokens keep this model's fresh row."""
    index = {t: i for i, t in enumerate(source_vocab)}
    rows = [(i, index[t]) for i, t in enumerate(own_vocab) if t in index]
    out = dict(state)
    for k, v in state.items():
        if "embedding" in k and k in own and v.dim() == 2 and v.shape[0] == len(source_vocab) \
                and own[k].shape == (len(own_vocab), v.shape[1]):
            table = own[k].clone()
            mine, theirs = zip(*rows) if rows else ((), ())
            table[list(mine)] = v[list(theirs)]
            out[k] = table
            print(f"[sparkzoo] init_from: {k} mapped by token, {len(rows)} of {len(own_vocab)} words shared", flush=True)
    return out


def _freeze(model, prefixes: list[str]) -> None:
    """Parameters under these name prefixes stop learning (every rank applies it before the optimizer)."""
    for name, p in model.named_parameters():
        if any(name.startswith(pre) for pre in prefixes):
            p.requires_grad_(False)


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
        _add(sums, r["sums"])
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


def _log_restart(exp, ctx: dict[str, Any], first_step_at: float | None, saved_at: float | None) -> None:
    """Rank 0, after the first epoch of a relaunch: the wall time the failure cost, as MLflow metrics
    (step = restart number): ``restart_lost_seconds`` from the checkpoint it resumed to its first step
    again (work redone plus relaunch), ``restart_relaunch_seconds`` from the driver seeing the failure."""
    from sparkzoo.pipelines import track

    info = ctx["restart"]
    now = first_step_at or time.time()
    metrics = {"restart_relaunch_seconds": now - info["failed_at"]}
    if saved_at is not None:
        metrics["restart_lost_seconds"] = now - saved_at
    track.log_metrics(exp, ctx["run_id"], metrics, step=info["number"])


def _config_error(message: str) -> Exception:
    from sparkzoo.pipelines.errors import ConfigError

    return ConfigError(message)


def _training_error(message: str) -> Exception:
    from sparkzoo.pipelines.errors import TrainingError

    return TrainingError(message)


def _log_epoch(exp, ctx: dict[str, Any], record: dict[str, float], epoch: int) -> None:
    from sparkzoo.pipelines import track

    metrics = {k: v for k, v in record.items() if k != "epoch"}
    track.log_metrics(exp, ctx["run_id"], metrics, step=epoch + 1)


def _log_checkpoint(exp, ctx: dict[str, Any], state: dict[str, Any]) -> None:
    """The newest checkpoint also goes to the run's artefacts (one file, replaced every epoch)."""
    import torch

    from sparkzoo.pipelines import track

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "last.pt")
        torch.save(state, path)
        track.log_artifact(exp, ctx["run_id"], path, "checkpoints")


def _task_plots(task, detail, test_metrics: dict[str, float], names: list[str], tmp: str,
                manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The pictures each task's report shows: (local file, caption)."""
    from sparkzoo.models.tasks import CLASSIFIER_TASKS
    from sparkzoo.pipelines.train import metrics as m

    plots: list[tuple[str, str]] = []
    s = detail.samples
    vocab = manifest.get("vocab") or {}
    if task.name in CLASSIFIER_TASKS:
        plots.append((m.plot_confusion(detail.arrays["confusion"], names, os.path.join(tmp, "confusion_matrix.png")),
                      "test confusion matrix"))
        plots.append((m.plot_reliability(detail.arrays["calibration"], os.path.join(tmp, "reliability.png")),
                      f"reliability diagram, test ECE {test_metrics.get('ece', float('nan')):.4f}"))
        if s is not None and "image" in s:
            plots.append((m.plot_samples(s["image"], s["label"], s["prediction"], s["confidence"], names,
                                         os.path.join(tmp, "test_samples.png")), "test samples: predicted / true"))
    elif task.name == "reconstruction" and s is not None:
        plots.append((m.plot_reconstructions(s["image"], s["reconstruction"], os.path.join(tmp, "reconstructions.png")),
                      f"test inputs (top) and reconstructions (below), MSE {test_metrics.get('mse', float('nan')):.4f}"))
    elif task.name == "segmentation" and s is not None:
        plots.append((m.plot_mask_overlays(s["image"], s["mask"], s["prediction"], os.path.join(tmp, "mask_overlays.png")),
                      f"test images with predicted (red) and true (outline) masks, IoU {test_metrics.get('iou', float('nan')):.3f}"))
    elif task.name == "captioning" and s is not None and "attention" in s and "image" in s:
        plots.append((m.plot_caption_attention(s["image"], s, task.target_vocab, os.path.join(tmp, "attention.png")),
                      "test attention maps: each decoded word's attention laid over the image regions"))
    elif task.name in ("seq2seq", "captioning") and s is not None and "attention" in s:
        plots.append((m.plot_attention(s, vocab.get("text", []), task.target_vocab, os.path.join(tmp, "attention.png"),
                                       sources=s.get("source")), "test attention maps (decoded hypothesis)"))
    elif task.name == "ctc" and "char_confusion" in detail.arrays:
        labels = [t if t.strip() else "_" for t in task.target_vocab] + ["(none)"]
        plots.append((m.plot_confusion(detail.arrays["char_confusion"], labels, os.path.join(tmp, "char_confusion.png"),
                                       title="test character confusion ((none) = inserted / deleted)"),
                      f"test character confusion along the edit alignment, CER {test_metrics.get('cer', float('nan')):.4f}"))
    return plots


def _slice_plots(task, detail, test_metrics: dict[str, float], names: list[str], tmp: str,
                 manifest: dict[str, Any], slices) -> list[tuple[str, str]]:
    """The task's pictures once more for each test slice (a held-out speaker's own letter confusion)."""
    from sparkzoo.pipelines.train.metrics import EvalDetail

    plots: list[tuple[str, str]] = []
    for name, arrays in detail.slices.items():
        own = os.path.join(tmp, f"slice-{name}")
        os.makedirs(own, exist_ok=True)
        metrics = {k.removesuffix(f"_{name}"): v for k, v in test_metrics.items() if k.endswith(f"_{name}")}
        for path, caption in _task_plots(task, EvalDetail(arrays=arrays), metrics, names, own, manifest):
            stem, ext = os.path.splitext(os.path.basename(path))
            renamed = os.path.join(tmp, f"{stem}_{name}{ext}")
            os.replace(path, renamed)
            plots.append((renamed, f"slice {name} ({slices.column}): {caption}"))
    return plots


def _finish(exp, ctx: dict[str, Any], model, task, history, test_metrics, test_detail, n_params: int,
            train_seconds: float, samples: int, wall: float, best_epoch: int | None = None) -> dict[str, Any]:
    """Rank 0: final metrics, plots, report, manifest and config artefacts, and the logged model."""
    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.train.metrics import plot_curves, plot_grad_norms
    from sparkzoo.pipelines.train.report import write_report

    manifest = ctx["manifest"]
    run_id = ctx["run_id"]
    final = {f"test_{k}": v for k, v in test_metrics.items()}
    final.update({"parameters": n_params, "train_seconds": train_seconds,
                  "train_samples_per_second": samples / train_seconds if train_seconds else 0.0})
    if best_epoch is not None:
        final["best_epoch"] = best_epoch
    track.log_metrics(exp, run_id, final, step=len(history))
    config = track.mask_secrets(exp.model_dump(mode="json", exclude={"source_file"}))   # also goes into report.html
    names = manifest["label_names"]
    with tempfile.TemporaryDirectory() as tmp:
        plots = []   # (local file, artefact path, caption)
        if history:
            plots.append((plot_curves(history, os.path.join(tmp, "curves.png"), metric=task.metric),
                          f"loss and {task.metric} per epoch"))
        if test_detail is not None:
            plots += _task_plots(task, test_detail, test_metrics, names, tmp, manifest)
            plots += _slice_plots(task, test_detail, test_metrics, names, tmp, manifest, exp.train.test_slices)
        norms = plot_grad_norms(history, os.path.join(tmp, "grad_norms.png")) if history else None
        if norms:
            plots.append((norms, "mean gradient norm per module and epoch"))
        plots = [(p, "plots/" + os.path.basename(p), c) for p, c in plots]
        for local, _, _ in plots:
            track.log_artifact(exp, run_id, local, "plots")
        source = ctx.get("init_from")
        report = write_report(
            os.path.join(tmp, "report.html"), title=f"sparkzoo run {run_id}: {exp.name}",
            meta={"experiment": exp.mlflow.experiment, "model": f"{exp.model.name} ({n_params:,} parameters)",
                  "task": task.name,
                  "dataset": f"{manifest['dataset']} v{manifest['version']}", "run": run_id,
                  **({"initialised from": f"{source['uri']} (v{source['version']})"} if source else {}),
                  "training": f"{train_seconds:.1f}s, {final['train_samples_per_second']:.0f} samples/s"},
            final=final, history=history, images=plots, config=config, manifest=manifest,
            artifacts=[a for _, a, _ in plots] + ["config.yaml", "dataset/manifest.json", "history.json"])
        track.log_artifact(exp, run_id, report)
    track.log_dict(exp, run_id, history, "history.json")
    track.log_dict(exp, run_id, config, "config.yaml")
    track.log_dict(exp, run_id, {k: v for k, v in manifest.items() if k != "splits"}, "dataset/manifest.json")
    spec = build_model_spec(exp, manifest, task.name)
    example = example_frame(task, manifest)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    model_uri = track.log_model(exp, run_id, spec, state, example)
    return {"history": history, "test": test_metrics, "parameters": n_params, "train_seconds": train_seconds,
            "train_samples_per_second": final["train_samples_per_second"], "wall_seconds": wall,
            "model_uri": model_uri, "task": task.name, "metric": task.metric}
