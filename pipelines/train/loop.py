"""What each Horovod rank runs: the same code under horovod.spark.run and horovodrun.

Driver code ships plain values (the config as a dict, a context dict of paths and ids); everything
heavy is imported here, inside the rank. Only rank 0 talks to MLflow and writes checkpoints.
"""

from __future__ import annotations

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
    """Train on this rank's shard; rank 0 returns the run summary, others a small status dict."""
    import torch

    from sparkzoo.models import InputSpec, count_parameters, get_model, make_task, model_task
    from sparkzoo.pipelines.config import from_dict
    from sparkzoo.pipelines.train import checkpoint
    from sparkzoo.pipelines.train.comm import make_comm
    from sparkzoo.pipelines.train.data import ShardReader, steps_per_epoch

    exp = from_dict(exp_dict)
    tc = exp.train
    comm = make_comm(comm_kind)
    rank, size = comm.rank, comm.size
    torch.set_num_threads(tc.threads_per_rank)
    _seed_everything(exp.seed)
    use_cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{comm.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    manifest = ctx["manifest"]
    shape = manifest["shape"]
    spec = InputSpec(shape["channels"], shape["height"], shape["width"], manifest["num_classes"])
    model = get_model(exp.model.name, spec, **exp.model.params).to(device)
    task = make_task(model_task(exp.model.name), manifest["num_classes"])
    mean, std = manifest["stats"]["mean"], manifest["stats"]["std"]

    def files(split: str) -> list[dict[str, Any]]:
        return [{"path": ctx["dataset_path"] + "/" + f["path"], "row_groups": f["row_groups"]}
                for f in manifest["splits"][split]["files"]]

    def reader(split: str) -> ShardReader:
        return ShardReader(files(split), rank, size, shape=shape, batch_size=tc.batch_size, seed=exp.seed,
                           shuffle_buffer=tc.shuffle_buffer, prefetch_batches=tc.prefetch_batches, reader=tc.reader,
                           dataset_dir=ctx["dataset_path"] + "/" + split)

    train_reader = reader("train")
    every = tc.backward_passes_per_step
    steps = steps_per_epoch(files("train"), size, tc.batch_size, tc.max_steps_per_epoch)
    steps -= steps % every                       # whole optimizer steps only
    if steps == 0:
        raise _training_error(f"the train split has too few rows for {size} ranks x batch_size {tc.batch_size}; "
                              f"lower train.batch_size or train.num_proc, or prepare more data")

    lr = tc.lr * (size if tc.scale_lr_by_world_size else 1)
    if tc.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=tc.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    warmup_steps = int(tc.warmup_epochs * steps / every)

    def lr_factor(step: int) -> float:
        # Horovod's recipe: start from the single-process rate and ramp up to lr * size.
        if warmup_steps <= 0 or step >= warmup_steps:
            return 1.0
        start = 1.0 / size if tc.scale_lr_by_world_size else 0.0
        return start + (1.0 - start) * step / warmup_steps

    model, opt = comm.prepare(model, opt, fp16_compression=tc.fp16_compression, backward_passes_per_step=every)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)   # on the wrapped optimizer, so steps count

    start_epoch, history, best, stale = 0, [], None, 0
    if rank == 0 and ctx.get("resume_from"):
        state = checkpoint.load(ctx["resume_from"])
        comm.unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        best, stale = state.get("best"), state.get("stale", 0)
        checkpoint.set_rng_state(state["rng"])
    comm.sync_state(model, opt)
    start_epoch, history, last, best, stale = comm.broadcast_object(
        (start_epoch, history, scheduler.last_epoch, best, stale), name="resume")
    scheduler.last_epoch = last

    def autocast():
        import contextlib

        if use_cuda and tc.amp:   # bf16 needs no loss scaling, so it composes with any optimizer wrapper
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(batch: dict[str, np.ndarray]):
        x = _to_tensor(batch["image"], mean, std).to(device, non_blocking=True)
        y = torch.from_numpy(batch["label"]).to(device, non_blocking=True)
        return x, y

    def allreduce_sums(sums: dict[str, float], extra: np.ndarray | None = None):
        keys = sorted(sums)
        total = dict(zip(keys, comm.allreduce_sum(np.array([sums[k] for k in keys]), name=f"sums.{len(keys)}").tolist()))
        if extra is not None:
            extra = comm.allreduce_sum(extra, name="confusion").astype(np.int64)
        return total, extra

    def evaluate(split: str):
        """Metrics summed over ranks, plus an ``EvalDetail``: confusion, calibration bins, rank 0's samples."""
        from sparkzoo.pipelines.train.metrics import EvalDetail, calibration_sums, expected_calibration_error

        net = comm.unwrap(model)   # no collectives inside the forward pass: shards may be uneven
        net.eval()
        sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
        conf = np.zeros((task.num_classes, task.num_classes), dtype=np.int64)
        calib = calibration_sums(np.zeros(0), np.zeros(0))
        samples = None
        with torch.inference_mode():
            for batch in reader(split).full_pass(batch_size=max(tc.batch_size, 512)):
                x, y = to_device(batch)
                with autocast():
                    logits = net(x).float()
                for k, v in task.metric_sums(logits, y).items():
                    sums[k] += v
                confidence, pred_t = torch.softmax(logits, dim=1).max(1)
                pred, confidence = pred_t.cpu().numpy(), confidence.cpu().numpy().astype(np.float64)
                conf += np.bincount(batch["label"] * task.num_classes + pred,
                                    minlength=task.num_classes ** 2).reshape(task.num_classes, -1)
                calib += calibration_sums(confidence, pred == batch["label"])
                if samples is None and rank == 0:
                    n = min(len(pred), EvalDetail.SAMPLES)
                    samples = {"image": np.array(batch["image"][:n]), "label": np.array(batch["label"][:n]),
                               "prediction": pred[:n], "confidence": confidence[:n]}
        total, conf = allreduce_sums(sums, conf)
        calib = comm.allreduce_sum(calib, name="calibration")
        metrics = task.finish(total)
        metrics["ece"] = expected_calibration_error(calib)
        return metrics, EvalDetail(confusion=conf, calibration=calib, samples=samples)

    ckpt_dir = ctx["checkpoint_dir"]
    fault = tuple(ctx["fault"]) if ctx.get("fault") else None   # (rank, epoch, step) to kill, tests only
    first_step_at = None
    started = time.time()
    samples_seen = 0
    train_seconds = 0.0
    from sparkzoo.pipelines.train.progress import EpochProgress

    for epoch in range(start_epoch, tc.epochs):
        torch.manual_seed(exp.seed + 1000 * epoch + rank)  # dropout differs per rank; same after a resume
        model.train()
        sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
        bar = EpochProgress(epoch, tc.epochs, steps, tc.batch_size * size, enabled=rank == 0 and tc.progress)
        t0 = time.time()
        opt.zero_grad()
        for step, batch in enumerate(train_reader.epoch(epoch, steps=steps)):
            if fault is not None and fault == (rank, epoch + 1, step):
                os.kill(os.getpid(), 9)   # fault injection for the resume test: this rank dies, no goodbye
            if first_step_at is None:
                first_step_at = time.time()
            x, y = to_device(batch)
            with comm.accumulation_context(model, step, every), autocast():
                logits = model(x)
                loss = task.loss(logits.float(), y)
                (loss / every).backward()
            if (step + 1) % every == 0:
                opt.step()
                scheduler.step()
                opt.zero_grad()
            with torch.no_grad():
                for k, v in task.metric_sums(logits.detach(), y).items():
                    sums[k] += v
            bar.update(float(loss.detach()))
        bar.close()
        epoch_seconds = time.time() - t0
        train_seconds += epoch_seconds
        samples_seen += steps * tc.batch_size * size
        train_metrics = task.finish(allreduce_sums(sums)[0])
        val_metrics, _ = evaluate("val") if manifest["splits"]["val"]["rows"] else ({}, None)
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train_metrics.items()},
                  **{f"val_{k}": v for k, v in val_metrics.items()},
                  "epoch_seconds": epoch_seconds, "samples_per_second": steps * tc.batch_size * size / epoch_seconds,
                  "lr": scheduler.get_last_lr()[0]}
        history.append(record)
        watch = val_metrics.get(task.metric)
        if watch is not None and (best is None or watch > best):
            best, stale = watch, 0
        else:
            stale += 1
        if rank == 0:
            _log_epoch(exp, ctx, record, epoch)
            state = {"model": comm.unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch, "history": history, "rng": checkpoint.rng_state(), "best": best, "stale": stale}
            path = checkpoint.save(ckpt_dir, epoch, state)
            _log_checkpoint(exp, ctx, state)
            print(f"[sparkzoo] epoch {epoch + 1}/{tc.epochs}: train_loss={record['train_loss']:.4f} "
                  f"train_acc={record['train_accuracy']:.4f} val_acc={record.get('val_accuracy', float('nan')):.4f} "
                  f"{record['samples_per_second']:.0f} samples/s; checkpoint {path}", flush=True)
        if tc.early_stopping_patience and stale >= tc.early_stopping_patience:
            break

    test_metrics, test_conf = evaluate("test") if manifest["splits"]["test"]["rows"] else ({}, None)
    result = {"rank": rank, "size": size, "rows_read": train_reader.expected_rows, "steps_per_epoch": steps,
              "first_step_seconds": (first_step_at or time.time()) - ctx.get("launched_at", started),
              "pieces": [(p.path, p.row_group) for p in train_reader.pieces]}
    if rank == 0:
        result.update(_finish(exp, ctx, comm.unwrap(model), history, test_metrics, test_conf, count_parameters(model),
                              train_seconds, samples_seen, time.time() - started))
    return result


def _to_tensor(pixels: np.ndarray, mean: float, std: float):
    from sparkzoo.models.tasks import images_to_tensor

    return images_to_tensor(pixels, mean, std)


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


def _finish(exp, ctx: dict[str, Any], model, history, test_metrics, test_detail, n_params: int, train_seconds: float,
            samples: int, wall: float) -> dict[str, Any]:
    """Rank 0: final metrics, plots, report, manifest and config artefacts, and the logged model."""
    import pandas as pd

    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.modelpack import build_spec
    from sparkzoo.pipelines.train.metrics import plot_confusion, plot_curves, plot_reliability, plot_samples
    from sparkzoo.pipelines.train.report import write_report

    manifest = ctx["manifest"]
    run_id = ctx["run_id"]
    final = {f"test_{k}": v for k, v in test_metrics.items()}
    final.update({"parameters": n_params, "train_seconds": train_seconds,
                  "train_samples_per_second": samples / train_seconds if train_seconds else 0.0})
    track.log_metrics(exp, run_id, final, step=len(history))
    config = track.mask_secrets(exp.model_dump(mode="json", exclude={"source_file"}))   # also goes into report.html
    names = manifest["label_names"]
    with tempfile.TemporaryDirectory() as tmp:
        plots = []   # (local file, artefact path, caption)
        if history:
            plots.append((plot_curves(history, os.path.join(tmp, "curves.png")), "loss and accuracy per epoch"))
        if test_detail is not None:
            plots.append((plot_confusion(test_detail.confusion, names, os.path.join(tmp, "confusion_matrix.png")),
                          "test confusion matrix"))
            plots.append((plot_reliability(test_detail.calibration, os.path.join(tmp, "reliability.png")),
                          f"reliability diagram, test ECE {test_metrics.get('ece', float('nan')):.4f}"))
            if test_detail.samples is not None:
                s = test_detail.samples
                plots.append((plot_samples(s["image"], s["label"], s["prediction"], s["confidence"], names,
                                           os.path.join(tmp, "test_samples.png")), "test samples: predicted / true"))
        plots = [(p, "plots/" + os.path.basename(p), c) for p, c in plots]
        for local, _, _ in plots:
            track.log_artifact(exp, run_id, local, "plots")
        report = write_report(
            os.path.join(tmp, "report.html"), title=f"sparkzoo run {run_id}: {exp.name}",
            meta={"experiment": exp.mlflow.experiment, "model": f"{exp.model.name} ({n_params:,} parameters)",
                  "dataset": f"{manifest['dataset']} v{manifest['version']}", "run": run_id,
                  "training": f"{train_seconds:.1f}s, {final['train_samples_per_second']:.0f} samples/s"},
            final=final, history=history, images=plots, config=config, manifest=manifest,
            artifacts=[a for _, a, _ in plots] + ["config.yaml", "dataset/manifest.json", "history.json"])
        track.log_artifact(exp, run_id, report)
    track.log_dict(exp, run_id, history, "history.json")
    track.log_dict(exp, run_id, config, "config.yaml")
    track.log_dict(exp, run_id, {k: v for k, v in manifest.items() if k != "splits"}, "dataset/manifest.json")
    spec = build_spec(family=exp.model.name, params=exp.model.params, task="classification", shape=manifest["shape"],
                      stats=manifest["stats"], label_names=manifest["label_names"], dataset=manifest["dataset"],
                      dataset_version=manifest["version"])
    shape = manifest["shape"]
    example = pd.DataFrame({"image": [bytes(shape["height"] * shape["width"] * shape["channels"])] * 2})
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    model_uri = track.log_model(exp, run_id, spec, state, example)
    return {"history": history, "test": test_metrics, "parameters": n_params, "train_seconds": train_seconds,
            "train_samples_per_second": final["train_samples_per_second"], "wall_seconds": wall,
            "model_uri": model_uri}
