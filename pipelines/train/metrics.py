"""Metric plumbing shared by ranks: sums that allreduce, and the plots rank 0 logs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np


@dataclass
class EvalDetail:
    """What an evaluation pass leaves besides its metrics, for rank 0's plots and report.

    ``confusion`` and ``calibration`` are already summed over ranks; ``samples`` are the first rows of
    rank 0's shard with their predictions (None on other ranks), enough for a picture, never a dataset.
    """

    SAMPLES: ClassVar[int] = 32
    confusion: np.ndarray
    calibration: np.ndarray
    samples: dict[str, Any] | None = None


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


CALIBRATION_BINS = 15   # the usual choice for ECE (Guo et al. 2017); fine enough for 10k test rows


def calibration_sums(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> np.ndarray:
    """Per confidence bin: (rows, summed confidence, summed correctness) as one (3, bins) float64 array.

    Sums, not means, so ranks can allreduce them and divide once, exactly like the confusion matrix.
    """
    idx = np.minimum((np.asarray(confidence, dtype=np.float64) * bins).astype(np.int64), bins - 1)
    return np.stack([np.bincount(idx, minlength=bins).astype(np.float64),
                     np.bincount(idx, weights=confidence, minlength=bins),
                     np.bincount(idx, weights=np.asarray(correct, dtype=np.float64), minlength=bins)])


def expected_calibration_error(sums: np.ndarray) -> float:
    """ECE: the row-weighted mean gap between confidence and accuracy over the bins (0 = calibrated)."""
    count, conf, correct = sums
    total = count.sum()
    if total == 0:
        return 0.0
    return float(np.abs(conf - correct).sum() / total)


def plot_reliability(sums: np.ndarray, path: str, title: str = "test reliability diagram") -> str:
    """Accuracy per confidence bin against the diagonal; bar width shows where predictions fall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count, conf, correct = sums
    bins = count.shape[0]
    edges = np.linspace(0.0, 1.0, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    seen = count > 0
    acc = np.divide(correct, count, out=np.zeros_like(correct), where=seen)
    mean_conf = np.divide(conf, count, out=np.zeros_like(conf), where=seen)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers[seen], acc[seen], width=1.0 / bins, edgecolor="black", alpha=0.8, label="accuracy")
    ax.bar(centers[seen], (mean_conf - acc)[seen], bottom=acc[seen], width=1.0 / bins, color="red", alpha=0.3,
           hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfectly calibrated")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (ECE {expected_calibration_error(sums):.4f})")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centers, count, width=1.0 / bins, edgecolor="black", color="grey")
    hist.set_xlabel("confidence")
    hist.set_ylabel("rows")
    hist.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_samples(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, confidence: np.ndarray,
                 label_names: Sequence[str], path: str, columns: int = 8) -> str:
    """A grid of test inputs titled "predicted (confidence) / true": mistakes in red, to eyeball them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ok = int(predictions[i]) == int(labels[i])
        ax.set_title(f"{label_names[int(predictions[i])]} ({confidence[i]:.2f})\n/ {label_names[int(labels[i])]}",
                     fontsize=7, color="black" if ok else "red")
    fig.suptitle("test samples: predicted (confidence) / true", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(history: list[dict[str, float]], path: str) -> str:
    """Train vs validation loss and accuracy per epoch: the talk's overfitting check at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}_{metric}"
            if all(key in h for h in history):
                ax.plot(epochs, [h[key] for h in history], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path: str, title: str = "test confusion matrix") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
