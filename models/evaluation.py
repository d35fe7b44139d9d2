"""Evaluation sums in numpy: shapes fixed in advance so every rank can allreduce them and divide once.

These live with the models (not the pipelines) because a task's metrics are part of its definition;
they know numpy only, so ranks, the scorer and tests share them.
"""

from __future__ import annotations

import numpy as np

CALIBRATION_BINS = 15   # the usual choice for ECE (Guo et al. 2017); fine enough for 10k test rows


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


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


def mask_iou_sums(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Foreground IoU pieces for (n, h, w) 0/1 masks: global intersection and union, and per-image IoU summed.

    An image with no foreground in either mask counts as IoU 1 (nothing to find, nothing found).
    """
    pred = pred.astype(bool).reshape(len(pred), -1)
    target = target.astype(bool).reshape(len(target), -1)
    inter = (pred & target).sum(axis=1)
    union = (pred | target).sum(axis=1)
    per_image = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {"intersection": float(inter.sum()), "union": float(union.sum()), "image_iou": float(per_image.sum()),
            "pixel_correct": float((pred == target).sum()), "pixels": float(pred.size)}
