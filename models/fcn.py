"""A fully convolutional segmenter with a transposed-convolution decoder (FCN with skip fusion).

No dense layer anywhere, so the net runs on any input size and answers per pixel. The encoder halves
the resolution three times; the decoder unfolds the code back with learned upsampling (transposed
convolutions, the talk's "deconvolution"), and at each scale adds the encoder's features of that
scale (FCN-8s style skips) so the coarse "what" regains the fine "where" of object edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .registry import InputSpec, register


@dataclass(frozen=True)
class FCNConfig:
    widths: tuple[int, ...] = (16, 32, 48, 64)   # full, 1/2, 1/4, 1/8 resolution


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class FCN(nn.Module):
    def __init__(self, spec: InputSpec, cfg: FCNConfig) -> None:
        super().__init__()
        w = cfg.widths
        self.down = nn.ModuleList([nn.Sequential(_conv(spec.channels, w[0]), _conv(w[0], w[0]))])
        for cin, cout in zip(w[:-1], w[1:]):
            self.down.append(nn.Sequential(_conv(cin, cout, stride=2), _conv(cout, cout)))
        self.up = nn.ModuleList()
        for cin, cout in zip(reversed(w[1:]), reversed(w[:-1])):
            self.up.append(nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
                                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True)))
        self.fuse = nn.ModuleList([_conv(c, c) for c in reversed(w[:-1])])
        self.classify = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            skip = skips.pop()
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:   # odd sizes: crop the upsampled map to the skip's
                x = x[..., : skip.shape[-2], : skip.shape[-1]]
            x = fuse(x + skip)
        return self.classify(x)


@register("fcn", task="segmentation", config=FCNConfig)
def fcn(spec: InputSpec, *, widths: list[int] | None = None) -> FCN:
    return FCN(spec, FCNConfig(widths=tuple(widths)) if widths else FCNConfig())
