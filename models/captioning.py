"""Image captioning with visual attention (Show, Attend and Tell, Xu et al. 2015): the talk's
one-to-many shape.

A small ResNet trunk turns the image into a grid of region vectors instead of one pooled vector, and
the same attention decoder as the seq2seq family looks at those regions while it writes each word; the
attention over regions is the picture the run logs. Each region also gets a learned position vector:
pooled conv features say *what* is in a region but barely *where* it is, and captions talk about both
("a sneaker left of a bag").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from .decoding import AttentionDecoder, AttentionEncoderDecoder, Memory, check_cell
from .registry import InputSpec, register
from .resnet import resnet_trunk


@dataclass(frozen=True)
class CaptionConfig:
    widths: tuple[int, ...] = (16, 32, 64)   # ResNet trunk stages
    blocks: int = 1
    grid: int = 4              # regions per side the decoder attends over (grid * grid in all)
    cell: Literal["lstm", "gru"] = "lstm"
    hidden: int = 128
    embed: int = 64
    attention: int = 0         # additive attention size; 0 = hidden
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_cell(self.cell)


class RegionEncoder(nn.Module):
    """ResNet trunk -> adaptive average pool to grid x grid -> (n, grid*grid, channels) + region positions."""

    def __init__(self, channels: int, cfg: CaptionConfig) -> None:
        super().__init__()
        self.trunk = resnet_trunk(channels, cfg.widths, cfg.blocks)
        self.pool = nn.AdaptiveAvgPool2d(cfg.grid)
        self.position = nn.Parameter(torch.zeros(cfg.grid * cfg.grid, cfg.widths[-1]))
        nn.init.normal_(self.position, std=0.1)
        self.out_dim = cfg.widths[-1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        regions = self.pool(self.trunk(image)).flatten(2).transpose(1, 2)   # (n, regions, c), row-major
        return regions + self.position.to(regions.dtype)


class CaptionAttention(AttentionEncoderDecoder):
    def __init__(self, spec: InputSpec, cfg: CaptionConfig) -> None:
        super().__init__()
        self.encoder = RegionEncoder(spec.channels, cfg)
        self.decoder = AttentionDecoder(spec.target_vocab_size, self.encoder.out_dim, cell=cfg.cell,
                                        hidden=cfg.hidden, embed=cfg.embed, attention=cfg.attention,
                                        dropout=cfg.dropout)

    def encode(self, inputs: dict[str, torch.Tensor]) -> Memory:
        regions = self.encoder(inputs["image"])
        mask = torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)
        return self.decoder.memory(regions, mask)


def _create_caption(spec: InputSpec, **params) -> CaptionAttention:
    return CaptionAttention(spec, CaptionConfig(**params))


@register("caption_attention", task="captioning", config=CaptionConfig)
def caption_attention(spec: InputSpec, *, widths: list[int] | None = None, blocks: int | None = None,
                      grid: int | None = None, cell: str | None = None, hidden: int | None = None,
                      embed: int | None = None, attention: int | None = None,
                      dropout: float | None = None) -> CaptionAttention:
    params = {"widths": tuple(widths) if widths else None, "blocks": blocks, "grid": grid, "cell": cell,
              "hidden": hidden, "embed": embed, "attention": attention, "dropout": dropout}
    return _create_caption(spec, **{k: v for k, v in params.items() if v is not None})
