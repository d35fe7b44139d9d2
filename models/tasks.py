"""Per task: how raw arrays become tensors, the loss, the metrics, and the columns scoring writes.

Training, evaluation and the logged MLflow model all call these same functions, so a model scored in
Spark sees exactly the pre-processing it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def images_to_tensor(pixels: np.ndarray, mean: float, std: float, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W).

    With a ``device`` the uint8 pixels move first (a quarter of the float bytes) and are normalised there.
    The result keeps the NHWC memory order (channels-last strides), which is what oneDNN/cuDNN convolutions
    prefer anyway.
    """
    x = torch.from_numpy(np.require(pixels, requirements=["C", "W"]))
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float()
    return (x / 255.0 - mean) / std


@dataclass(frozen=True)
class ClassificationTask:
    """Softmax classification: cross-entropy loss, accuracy, prediction + class probabilities."""

    num_classes: int
    name: str = "classification"
    metric: str = "accuracy"

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    def metric_sums(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Sums, not means, so ranks can allreduce them and divide once."""
        return {
            "loss": float(F.cross_entropy(logits, target, reduction="sum")),
            "correct": float((logits.argmax(1) == target).sum()),
            "count": float(target.numel()),
        }

    @staticmethod
    def finish(sums: dict[str, float]) -> dict[str, float]:
        count = max(sums["count"], 1.0)
        return {"loss": sums["loss"] / count, "accuracy": sums["correct"] / count}

    def outputs(self, logits: torch.Tensor) -> dict[str, np.ndarray]:
        prob = torch.softmax(logits.float(), dim=1)
        conf, pred = prob.max(1)
        return {"prediction": pred.numpy().astype(np.int64), "confidence": conf.numpy().astype(np.float32),
                "probability": prob.numpy().astype(np.float32)}


def make_task(task: str, num_classes: int) -> ClassificationTask:
    if task == "classification":
        return ClassificationTask(num_classes=num_classes)
    raise ValueError(f"unknown task '{task}'; choose one of: classification")
