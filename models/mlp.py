"""Feed-forward classifiers: stacked fully connected layers (a single layer is logistic regression).

The talk's warning applies: on image input an MLP has many parameters per unit of accuracy, so every
run reports its parameter count beside a convolutional net's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .registry import InputSpec, register


@dataclass(frozen=True)
class MLPConfig:
    hidden: tuple[int, ...] = field(default=(256, 128))
    dropout: float = 0.2


class MLP(nn.Module):
    def __init__(self, spec: InputSpec, cfg: MLPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = spec.channels * spec.height * spec.width
        for units in cfg.hidden:
            layers += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)]
            width = units
        layers.append(nn.Linear(width, spec.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register("mlp", task="classification", config=MLPConfig)
def mlp(spec: InputSpec, *, hidden: list[int] | None = None, dropout: float | None = None) -> MLP:
    cfg = MLPConfig(**{k: v for k, v in {"hidden": tuple(hidden) if hidden else None, "dropout": dropout}.items()
                       if v is not None})
    return MLP(spec, cfg)


@register("logreg", task="classification", config=MLPConfig)
def logreg(spec: InputSpec) -> MLP:
    """One neuron per class over the raw pixels: the talk's point that a neuron is logistic regression."""
    return MLP(spec, MLPConfig(hidden=(), dropout=0.0))
