"""Image tasks: classification, reconstruction (autoencoders) and segmentation.

What each model returns and what scoring writes:

- classification: logits (n, classes) -> ``prediction``, ``confidence``, ``probability``
- reconstruction: {"reconstruction", "code"[, "kl"]} -> ``code`` (the bottleneck) and ``error`` (pixel MSE)
- segmentation: foreground logits (n, 1, h, w) -> ``mask`` (h*w bytes of 0/1) and ``foreground`` (share)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation import calibration_sums, confusion, expected_calibration_error, mask_iou_sums
from .base import Batch, Task, register_task


@register_task
@dataclass(frozen=True)
class ClassificationTask(Task):
    """Softmax classification: cross-entropy loss, accuracy, prediction + class probabilities."""

    name: ClassVar[str] = "classification"
    data_hint: ClassVar[str] = "an image set with labels"
    classifier: ClassVar[bool] = True
    plots: ClassVar[tuple[str, ...]] = ("confusion", "reliability", "samples")
    baseline: ClassVar[str | None] = "logistic_regression"
    metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    output_schema: ClassVar[str] = "prediction long, confidence float, probability array<float>"

    def tensors(self, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs(batch["image"]).to(device, non_blocking=True)
        return x, torch.from_numpy(batch["label"]).to(device, non_blocking=True)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    def empty_sums(self) -> dict[str, float]:
        return {"loss": 0.0, "correct": 0.0, "count": 0.0}

    def metric_sums(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {
            "loss": float(F.cross_entropy(logits, target, reduction="sum")),
            "correct": float((logits.argmax(1) == target).sum()),
            "count": float(target.numel()),
        }

    def finish(self, sums: dict[str, float], arrays: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        count = max(sums["count"], 1.0)
        out = {"loss": sums["loss"] / count, "accuracy": sums["correct"] / count}
        if arrays and "calibration" in arrays:
            out["ece"] = expected_calibration_error(arrays["calibration"])
        return out

    def empty_arrays(self) -> dict[str, np.ndarray]:
        return {"confusion": np.zeros((self.num_classes, self.num_classes), dtype=np.int64),
                "calibration": calibration_sums(np.zeros(0), np.zeros(0))}

    def detail_arrays(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
        confidence, pred = torch.softmax(logits, dim=1).max(1)
        pred_np, truth = pred.cpu().numpy(), target.cpu().numpy()
        return {"confusion": confusion(pred_np, truth, self.num_classes),
                "calibration": calibration_sums(confidence.cpu().numpy().astype(np.float64), pred_np == truth)}

    def samples(self, logits: torch.Tensor, batch: Batch, n: int) -> dict[str, np.ndarray]:
        confidence, pred = torch.softmax(logits[:n], dim=1).max(1)
        return {"image": np.array(batch["image"][:n]), "label": np.array(batch["label"][:n]),
                "prediction": pred.cpu().numpy(), "confidence": confidence.cpu().numpy().astype(np.float64)}

    def outputs(self, logits: torch.Tensor, inputs: torch.Tensor) -> dict[str, np.ndarray]:
        prob = torch.softmax(logits.float(), dim=1)
        conf, pred = prob.max(1)
        return {"prediction": pred.numpy().astype(np.int64), "confidence": conf.numpy().astype(np.float32),
                "probability": prob.numpy().astype(np.float32)}


@register_task
@dataclass(frozen=True)
class ReconstructionTask(Task):
    """Autoencoders: give back the (clean) input. Loss is the per-row summed squared error in normalised
    space plus the model's own ``penalty`` (beta x KL for variational models); the reported ``mse`` is per
    pixel on the 0..1 scale, the scale PCA baselines are reported on."""

    name: ClassVar[str] = "reconstruction"
    needs: ClassVar[tuple[str, ...] | None] = ("image",)
    plots: ClassVar[tuple[str, ...]] = ("reconstructions",)
    baseline: ClassVar[str | None] = "pca"
    metric: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False
    output_schema: ClassVar[str] = "code array<float>, error float"

    def tensors(self, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs(batch["image"]).to(device, non_blocking=True)
        return x, x

    def _row_sq_err(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return (out["reconstruction"] - target).pow(2).flatten(1).sum(1)

    def loss(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        loss = self._row_sq_err(out, target).mean()
        if "penalty" in out:
            loss = loss + out["penalty"].mean()
        return loss

    def empty_sums(self) -> dict[str, float]:
        return {"loss": 0.0, "sq_err": 0.0, "kl": 0.0, "count": 0.0, "values": 0.0}

    def metric_sums(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, float]:
        sq = self._row_sq_err(out, target)
        kl = out["kl"] if "kl" in out else torch.zeros_like(sq)
        penalty = out["penalty"] if "penalty" in out else torch.zeros_like(sq)
        return {"loss": float((sq + penalty).sum()), "sq_err": float(sq.sum()), "kl": float(kl.sum()),
                "count": float(sq.numel()), "values": float(target.numel())}

    def finish(self, sums: dict[str, float], arrays: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        count, values = max(sums["count"], 1.0), max(sums["values"], 1.0)
        out = {"loss": sums["loss"] / count, "mse": sums["sq_err"] / values * self.std ** 2}
        if sums["kl"]:
            out["kl"] = sums["kl"] / count
        return out

    def samples(self, out: dict[str, torch.Tensor], batch: Batch, n: int) -> dict[str, np.ndarray]:
        return {"image": np.array(batch["image"][:n]), "reconstruction": self.to_pixels(out["reconstruction"][:n])}

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        """Normalised (n, c, h, w) -> uint8 (n, h, w, c), for pictures."""
        pix = (x.float() * self.std + self.mean).clamp(0, 1) * 255.0
        return pix.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def outputs(self, out: dict[str, torch.Tensor], inputs: torch.Tensor) -> dict[str, np.ndarray]:
        rec, code = out["reconstruction"].float(), out["code"].float()
        err = (rec - inputs.float()).pow(2).flatten(1).mean(1) * self.std ** 2   # against what was scored
        return {"code": code.cpu().numpy().astype(np.float32), "error": err.cpu().numpy().astype(np.float32)}


@register_task
@dataclass(frozen=True)
class SegmentationTask(Task):
    """Binary foreground segmentation: per-pixel logistic loss; foreground IoU (over all pixels of the
    split, and the mean per image) and pixel accuracy."""

    name: ClassVar[str] = "segmentation"
    data_hint: ClassVar[str] = "images with masks (data.source.mask: alpha or file, see conf/tuxpaint_masks.yaml)"
    plots: ClassVar[tuple[str, ...]] = ("mask_overlays",)
    baseline: ClassVar[str | None] = "colour_threshold"
    metric: ClassVar[str] = "iou"
    higher_is_better: ClassVar[bool] = True
    columns: ClassVar[tuple[str, ...]] = ("image", "mask")
    output_schema: ClassVar[str] = "mask binary, foreground float"

    def tensors(self, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs(batch["image"]).to(device, non_blocking=True)
        y = torch.from_numpy(batch["mask"]).to(device, non_blocking=True).unsqueeze(1).float()
        return x, y

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target)

    def empty_sums(self) -> dict[str, float]:
        return {"loss": 0.0, "count": 0.0, "intersection": 0.0, "union": 0.0, "image_iou": 0.0,
                "pixel_correct": 0.0, "pixels": 0.0}

    def metric_sums(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        per_row = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
        pred = (logits > 0).squeeze(1).cpu().numpy()
        return {"loss": float(per_row.sum()), "count": float(len(per_row)),
                **mask_iou_sums(pred, target.squeeze(1).cpu().numpy() > 0.5)}

    def finish(self, sums: dict[str, float], arrays: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        count = max(sums["count"], 1.0)
        return {"loss": sums["loss"] / count, "iou": sums["intersection"] / max(sums["union"], 1.0),
                "mean_image_iou": sums["image_iou"] / count,
                "pixel_accuracy": sums["pixel_correct"] / max(sums["pixels"], 1.0)}

    def samples(self, logits: torch.Tensor, batch: Batch, n: int) -> dict[str, np.ndarray]:
        return {"image": np.array(batch["image"][:n]), "mask": np.array(batch["mask"][:n]),
                "prediction": (logits[:n] > 0).squeeze(1).cpu().numpy().astype(np.uint8)}

    def outputs(self, logits: torch.Tensor, inputs: torch.Tensor) -> dict[str, np.ndarray]:
        pred = (logits.float() > 0).squeeze(1).cpu().numpy().astype(np.uint8)
        return {"mask": pred.reshape(len(pred), -1), "foreground": pred.reshape(len(pred), -1).mean(1).astype(np.float32)}
