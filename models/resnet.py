"""A small ResNet: the talk's "blocks with skip connections that let gradients pass".

Each basic block adds its input back to the output of two 3x3 convolutions, so a deep stack starts out
close to the identity and gradients reach the first layers undamped. Stages halve the resolution and
double the width; global average pooling makes the trunk independent of the input size, which is what
lets a trunk trained on 28x28 Fashion-MNIST be fine-tuned on 20x20 digits (transfer learning).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .registry import InputSpec, register


@dataclass(frozen=True)
class ResNetConfig:
    widths: tuple[int, ...] = (16, 32, 64)    # channels per stage; stages after the first halve the size
    blocks: int = 1                          # basic blocks per stage
    dropout: float = 0.1


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (1x1 conv when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def resnet_trunk(channels: int, widths: tuple[int, ...], blocks: int) -> nn.Sequential:
    """Stem plus stages of basic blocks, without a head: the classifier pools it, captioning keeps the
    grid of region vectors. Outputs ``widths[-1]`` channels at 1 / 2**(len(widths) - 1) of the input size."""
    first = widths[0]
    layers: list[nn.Module] = [nn.Conv2d(channels, first, 3, padding=1, bias=False), nn.BatchNorm2d(first),
                               nn.ReLU(inplace=True)]
    cin = first
    for i, width in enumerate(widths):
        for b in range(blocks):
            layers.append(BasicBlock(cin, width, stride=2 if i > 0 and b == 0 else 1))
            cin = width
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    def __init__(self, spec: InputSpec, cfg: ResNetConfig) -> None:
        super().__init__()
        self.features = resnet_trunk(spec.channels, cfg.widths, cfg.blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.widths[-1], spec.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register("resnet", task="classification", config=ResNetConfig)
def resnet(spec: InputSpec, *, widths: list[int] | None = None, blocks: int | None = None,
           dropout: float | None = None) -> ResNet:
    given = {"widths": tuple(widths) if widths else None, "blocks": blocks, "dropout": dropout}
    return ResNet(spec, ResNetConfig(**{k: v for k, v in given.items() if v is not None}))
