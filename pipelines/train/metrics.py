"""Metric plumbing shared by ranks: sums that allreduce, and the plots rank 0 logs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from sparkzoo.models.evaluation import (CALIBRATION_BINS, calibration_sums, confusion,  # noqa: F401  (re-exported)
                                       expected_calibration_error)


@dataclass
class EvalDetail:
    """What an evaluation pass leaves besides its metrics, for rank 0's plots and report.

    ``arrays`` are the task's fixed-shape sums (confusion matrix, calibration bins), already summed over
    ranks; ``samples`` are the first rows of rank 0's shard with the model's outputs (None on other
    ranks), enough for a picture, never a dataset.
    """

    SAMPLES: ClassVar[int] = 32
    arrays: dict[str, np.ndarray]
    samples: dict[str, Any] | None = None
    slices: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)   # slice name -> its arrays


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


def plot_curves(history: list[dict[str, float]], path: str, metric: str = "accuracy") -> str:
    """Train vs validation loss and the task's metric per epoch: the talk's overfitting check at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, ("loss", metric)):
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}_{name}"
            if all(key in h for h in history):
                ax.plot(epochs, [h[key] for h in history], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _show(ax, img: np.ndarray) -> None:
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=255)
    ax.axis("off")


def plot_reconstructions(images: np.ndarray, reconstructions: np.ndarray, path: str, columns: int = 12) -> str:
    """Inputs on one row, what the autoencoder gave back under each: what the bottleneck keeps and loses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(images), columns)
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.6), squeeze=False)
    for i in range(n):
        _show(axes[0, i], images[i])
        _show(axes[1, i], reconstructions[i])
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_mask_overlays(images: np.ndarray, masks: np.ndarray, predictions: np.ndarray, path: str,
                       columns: int = 8) -> str:
    """Each image with the predicted mask tinted red and the true mask's outline in yellow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(images), 2 * columns)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.7 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i] if images[i].shape[-1] == 3 else np.repeat(images[i], 3, axis=-1)
        tinted = img.astype(np.float64)
        pred = predictions[i].astype(bool)
        tinted[pred] = 0.5 * tinted[pred] + 0.5 * np.array([255.0, 0.0, 0.0])
        ax.imshow(tinted.astype(np.uint8))
        ax.contour(masks[i], levels=[0.5], colors="yellow", linewidths=0.8)
        inter, union = (pred & (masks[i] > 0)).sum(), (pred | (masks[i] > 0)).sum()
        ax.set_title(f"IoU {inter / union:.2f}" if union else "empty", fontsize=7)
    fig.suptitle("predicted mask (red) vs true outline (yellow)", fontsize=9)
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


def plot_attention(samples: dict, source_vocab: Sequence[str], target_vocab: Sequence[str], path: str,
                   sources: list[list[int]] | None = None, panels: int = 4,
                   title: str = "attention: decoder step (rows) over input positions (columns)") -> str:
    """Heat maps of the decoder's attention for the first test rows: the alignment a seq2seq model
    learned (letters to phonemes) or, with no source vocabulary, image regions per caption word."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attn = samples["attention"]
    hyps = samples["hypothesis"]
    k = min(panels, len(hyps))
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        rows = hyps[i] + [3]   # the attention of the EOS step too
        out_labels = [target_vocab[t] if t < len(target_vocab) else "?" for t in hyps[i]] + ["</s>"]
        src = sources[i] if sources else []
        cols = len(src) if src else attn.shape[2]
        ax.imshow(attn[i, : len(rows), :cols], cmap="viridis", aspect="auto", vmin=0)
        ax.set_yticks(range(len(out_labels)), out_labels, fontsize=7)
        if src:
            ax.set_xticks(range(len(src)), [source_vocab[t] if t < len(source_vocab) else "?" for t in src], fontsize=7)
        else:
            ax.set_xlabel("image region", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_caption_attention(images: np.ndarray, samples: dict, target_vocab: Sequence[str], path: str,
                           panels: int = 4) -> str:
    """Each decoded word's attention over the image regions, laid over the image: one row per test image
    (the image with its decoded and reference captions, then one panel per word and the end token).

    A heat map of step x region index hides *where* the regions are; on the picture one sees whether the
    decoder looks at the sneaker while it writes "sneaker" and at the bag while it writes "bag".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attn, hyps = samples["attention"], samples["hypothesis"]
    refs = samples.get("target") or [[] for _ in hyps]
    k = min(panels, len(hyps), len(images))
    words = lambda ids: [target_vocab[t] if 0 <= t < len(target_vocab) else "?" for t in ids]  # noqa: E731
    cols = 1 + max((len(hyps[i]) + 1 for i in range(k)), default=1)
    fig, axes = plt.subplots(k, cols, figsize=(1.55 * cols, 1.85 * k), squeeze=False)
    for i in range(k):
        img = images[i].astype(np.float32)
        grey = img[..., 0] if img.shape[-1] == 1 else img.mean(axis=-1)
        h, w = grey.shape
        regions = attn.shape[2]
        grid = int(round(regions ** 0.5))
        labels = (words(hyps[i]) + ["<eos>"])[: attn.shape[1]]   # no end step when decoding hit max length
        for ax in axes[i]:
            ax.axis("off")
        axes[i][0].imshow(images[i][..., 0] if images[i].shape[-1] == 1 else images[i],
                          cmap="gray" if images[i].shape[-1] == 1 else None)
        ok = hyps[i] == refs[i]
        axes[i][0].set_title(f"{' '.join(words(hyps[i]))}\n/ {' '.join(words(refs[i]))}", fontsize=6,
                             color="black" if ok else "red", loc="left")
        for j, word in enumerate(labels[: cols - 1]):
            if grid * grid != regions:   # not a square grid of regions: nothing to lay over the image
                break
            weights = attn[i, j].reshape(grid, grid)
            heat = np.kron(weights, np.ones((-(-h // grid), -(-w // grid))))[:h, :w]
            ax = axes[i][j + 1]
            ax.imshow(grey, cmap="gray")
            ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=max(float(weights.max()), 1e-6))
            ax.set_title(word, fontsize=8)
    fig.suptitle("where the decoder looks while it writes each word (test images; decoded / reference)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# "train_" so the MLflow chart view, which sorts metrics by name, still shows the test metrics first
GRAD_NORM_PREFIX = "train_grad_norm_"


def plot_grad_norms(history: list[dict[str, float]], path: str) -> str | None:
    """Mean gradient norm per top-level module and epoch, log scale: vanishing gradients show as a
    first layer whose norm sits orders of magnitude under the head's."""
    keys = sorted({k for h in history for k in h if k.startswith(GRAD_NORM_PREFIX)})
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    epochs = [h["epoch"] for h in history]
    for k in keys:
        ax.plot(epochs, [max(h.get(k, float("nan")), 1e-12) for h in history], marker="o", label=k[len(GRAD_NORM_PREFIX):])
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean gradient L2 norm")
    ax.legend(fontsize=7)
    ax.set_title("gradient norm per module")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
