"""Rank 0's side of a run in MLflow: the logged model's spec and input example, each epoch's metrics and
checkpoint, what a restart cost, and the finish (test metrics, plots, report, the model itself).

Why apart from the loop: the loop is the part every rank runs in lock-step and must stay readable as
such; what only rank 0 writes for people (MLflow, the report) changes for other reasons.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from ..errors import TrainingError


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
        raise TrainingError(f"model {exp.model.name} writes sequences but {manifest['dataset']} has no target "
                              f"vocabulary; prepare it with text pairs, captions or transcripts")
    return spec


def log_epoch(exp, ctx: dict[str, Any], record: dict[str, float], epoch: int) -> None:
    from sparkzoo.pipelines import track

    metrics = {k: v for k, v in record.items() if k != "epoch"}
    track.log_metrics(exp, ctx["run_id"], metrics, step=epoch + 1)


def log_checkpoint(exp, ctx: dict[str, Any], state: dict[str, Any]) -> None:
    """The newest checkpoint also goes to the run's artefacts (one file, replaced every epoch)."""
    import torch

    from sparkzoo.pipelines import track

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "last.pt")
        torch.save(state, path)
        track.log_artifact(exp, ctx["run_id"], path, "checkpoints")


def log_restart(exp, ctx: dict[str, Any], first_step_at: float | None, saved_at: float | None) -> None:
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


def _log_metric_params(exp, run_id: str, params: dict[str, str]) -> None:
    """How the metrics were computed (sacreBLEU's signature), as run parameters: a figure is comparable
    with a published one only with the same tokenisation and smoothing."""
    import logging

    from sparkzoo.pipelines import track

    try:
        c = track.client(exp)
        for key, value in params.items():
            c.log_param(run_id, key, value)
    except Exception as exc:   # an outage must not fail a finished training over a parameter
        logging.getLogger("sparkzoo.train").warning("could not log %s on MLflow run %s: %s", ", ".join(params), run_id, exc)


def finish(exp, ctx: dict[str, Any], model, task, history, test_metrics, test_detail, n_params: int,
            train_seconds: float, samples: int, wall: float, best_epoch: int | None = None) -> dict[str, Any]:
    """Rank 0: final metrics, plots, report, manifest and config artefacts, and the logged model."""
    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.train.metrics import plot_curves, plot_grad_norms
    from sparkzoo.pipelines.train.plots import slice_plots, task_plots
    from sparkzoo.pipelines.train.report import write_report

    manifest = ctx["manifest"]
    run_id = ctx["run_id"]
    final = {f"test_{k}": v for k, v in test_metrics.items()}
    final.update({"parameters": n_params, "train_seconds": train_seconds,
                  "train_samples_per_second": samples / train_seconds if train_seconds else 0.0})
    if best_epoch is not None:
        final["best_epoch"] = best_epoch
    track.log_metrics(exp, run_id, final, step=len(history))
    _log_metric_params(exp, run_id, task.metric_params())
    config = track.mask_secrets(exp.model_dump(mode="json", exclude={"source_file"}))   # also goes into report.html
    names = manifest["label_names"]
    with tempfile.TemporaryDirectory() as tmp:
        plots = []   # (local file, artefact path, caption)
        if history:
            plots.append((plot_curves(history, os.path.join(tmp, "curves.png"), metric=task.metric),
                          f"loss and {task.metric} per epoch"))
        if test_detail is not None:
            plots += task_plots(task, test_detail, test_metrics, names, tmp, manifest)
            plots += slice_plots(task, test_detail, test_metrics, names, tmp, manifest, exp.train.test_slices)
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
