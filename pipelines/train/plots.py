"""The report's pictures, by name: a task class lists the ones it wants (``Task.plots``), this module draws them.

Why a registry of pictures rather than of tasks: pictures are shared (text and image classifiers both
show a confusion matrix and a reliability diagram), and the drawing needs matplotlib, which the logged
model's code (``models/``) must never import. A drawer gets everything it may need in one ``PlotInputs``
and returns ``(local file, caption)``, or ``None`` when its inputs are missing (no samples, no attention).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from . import metrics as m


@dataclass(frozen=True)
class PlotInputs:
    task: Any                     # the task object (its target vocabulary, its metric)
    detail: Any                   # metrics.EvalDetail: the test arrays and rank 0's samples
    metrics: dict[str, float]     # test metrics, without the ``test_`` prefix
    names: list[str]              # class names
    folder: str                   # where to write the files
    manifest: dict[str, Any]

    @property
    def samples(self) -> dict[str, Any] | None:
        return self.detail.samples

    def path(self, file: str) -> str:
        return os.path.join(self.folder, file)

    def figure(self, key: str) -> float:
        return self.metrics.get(key, float("nan"))


Drawer = Callable[[PlotInputs], "tuple[str, str] | None"]
PLOTS: dict[str, Drawer] = {}


def register_plot(name: str) -> Callable[[Drawer], Drawer]:
    def wrap(fn: Drawer) -> Drawer:
        PLOTS[name] = fn
        return fn

    return wrap


def task_plots(task, detail, test_metrics: dict[str, float], names: list[str], folder: str,
               manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The pictures ``task.plots`` names, in that order; an unknown name is a programming error."""
    unknown = [p for p in task.plots if p not in PLOTS]
    if unknown:
        raise KeyError(f"task {task.name} asks for plots {unknown}; known: {', '.join(sorted(PLOTS))}")
    given = PlotInputs(task, detail, test_metrics, names, folder, manifest)
    drawn = (PLOTS[name](given) for name in task.plots)
    return [d for d in drawn if d is not None]


def slice_plots(task, detail, test_metrics: dict[str, float], names: list[str], folder: str,
                manifest: dict[str, Any], slices) -> list[tuple[str, str]]:
    """The task's pictures once more for each test slice (a held-out speaker's own letter confusion)."""
    from .metrics import EvalDetail

    plots: list[tuple[str, str]] = []
    for name, arrays in detail.slices.items():
        own = os.path.join(folder, f"slice-{name}")
        os.makedirs(own, exist_ok=True)
        metrics = {k.removesuffix(f"_{name}"): v for k, v in test_metrics.items() if k.endswith(f"_{name}")}
        for path, caption in task_plots(task, EvalDetail(arrays=arrays), metrics, names, own, manifest):
            stem, ext = os.path.splitext(os.path.basename(path))
            renamed = os.path.join(folder, f"{stem}_{name}{ext}")
            os.replace(path, renamed)
            plots.append((renamed, f"slice {name} ({slices.column}): {caption}"))
    return plots


@register_plot("confusion")
def _confusion(p: PlotInputs) -> tuple[str, str]:
    return m.plot_confusion(p.detail.arrays["confusion"], p.names, p.path("confusion_matrix.png")), "test confusion matrix"


@register_plot("reliability")
def _reliability(p: PlotInputs) -> tuple[str, str]:
    return (m.plot_reliability(p.detail.arrays["calibration"], p.path("reliability.png")),
            f"reliability diagram, test ECE {p.figure('ece'):.4f}")


@register_plot("samples")
def _samples(p: PlotInputs) -> tuple[str, str] | None:
    s = p.samples
    if s is None or "image" not in s:
        return None
    return (m.plot_samples(s["image"], s["label"], s["prediction"], s["confidence"], p.names, p.path("test_samples.png")),
            "test samples: predicted / true")


@register_plot("reconstructions")
def _reconstructions(p: PlotInputs) -> tuple[str, str] | None:
    s = p.samples
    if s is None:
        return None
    return (m.plot_reconstructions(s["image"], s["reconstruction"], p.path("reconstructions.png")),
            f"test inputs (top) and reconstructions (below), MSE {p.figure('mse'):.4f}")


@register_plot("mask_overlays")
def _mask_overlays(p: PlotInputs) -> tuple[str, str] | None:
    s = p.samples
    if s is None:
        return None
    return (m.plot_mask_overlays(s["image"], s["mask"], s["prediction"], p.path("mask_overlays.png")),
            f"test images with predicted (red) and true (outline) masks, IoU {p.figure('iou'):.3f}")


@register_plot("attention")
def _attention(p: PlotInputs) -> tuple[str, str] | None:
    s = p.samples
    if s is None or "attention" not in s:
        return None
    vocab = (p.manifest.get("vocab") or {}).get("text", [])
    return (m.plot_attention(s, vocab, p.task.target_vocab, p.path("attention.png"), sources=s.get("source")),
            "test attention maps (decoded hypothesis)")


@register_plot("caption_attention")
def _caption_attention(p: PlotInputs) -> tuple[str, str] | None:
    """Each word's attention over the image regions; the plain attention map when no pixels came back."""
    s = p.samples
    if s is None or "attention" not in s or "image" not in s:
        return _attention(p)
    return (m.plot_caption_attention(s["image"], s, p.task.target_vocab, p.path("attention.png")),
            "test attention maps: each decoded word's attention laid over the image regions")


@register_plot("char_confusion")
def _char_confusion(p: PlotInputs) -> tuple[str, str] | None:
    if "char_confusion" not in p.detail.arrays:
        return None
    labels = [t if t.strip() else "_" for t in p.task.target_vocab] + ["(none)"]
    return (m.plot_confusion(p.detail.arrays["char_confusion"], labels, p.path("char_confusion.png"),
                             title="test character confusion ((none) = inserted / deleted)"),
            f"test character confusion along the edit alignment, CER {p.figure('cer'):.4f}")
