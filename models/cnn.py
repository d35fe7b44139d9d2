"""Convolutional classifiers: the talk's LeNet-like net (conv 20 5x5, pool, conv 50 5x5, pool, dense 500).

Convolutions share weights across the image, so this net has far fewer parameters than an MLP on the
same input and trains more easily; features grow from edges to parts as layers stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .registry import InputSpec, register


@dataclass(frozen=True)
class LeNetConfig:
    conv1: int = 20
    conv2: int = 50
    hidden: int = 500
    kernel: int = 5
    dropout: float = 0.25


class LeNet(nn.Module):
    def __init__(self, spec: InputSpec, cfg: LeNetConfig) -> None:
        super().__init__()
        pad = cfg.kernel // 2  # "same" padding keeps the net usable on small inputs (8x8 digits too)
        self.features = nn.Sequential(
            nn.Conv2d(spec.channels, cfg.conv1, cfg.kernel, padding=pad),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(cfg.conv1, cfg.conv2, cfg.kernel, padding=pad),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        flat = cfg.conv2 * (spec.height // 4) * (spec.width // 4)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, cfg.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, spec.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _create_lenet(spec: InputSpec, **params) -> LeNet:
    return LeNet(spec, LeNetConfig(**params))


@register("lenet", task="classification", config=LeNetConfig)
def lenet(spec: InputSpec, *, conv1: int | None = None, conv2: int | None = None, hidden: int | None = None,
          dropout: float | None = None) -> LeNet:
    params = {"conv1": conv1, "conv2": conv2, "hidden": hidden, "dropout": dropout}
    return _create_lenet(spec, **{k: v for k, v in params.items() if v is not None})
