"""Autoencoders: a feed-forward net trained to give back its input through a narrow bottleneck.

The bottleneck (the talk uses 10 units) is a learned compression: its code serves for dimensionality
reduction and as features for a small classifier. Three variants share one encoder/decoder:

- ``autoencoder``: plain reconstruction.
- ``denoising_autoencoder``: Gaussian noise on the input while training, the clean image as target, so
  the code must capture structure rather than copy pixels; at inference the input is left alone.
- ``vae``: the encoder gives a mean and log-variance, a sample goes through the decoder, and
  ``beta`` x KL(q(z|x) || N(0, I)) joins the loss (returned as ``penalty``); the code is the mean.

Every variant returns {"reconstruction", "code"[, "kl", "penalty"]} (see ``models.tasks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .registry import InputSpec, register


@dataclass(frozen=True)
class AutoencoderConfig:
    code: int = 10
    hidden: tuple[int, ...] = field(default=(512, 256))
    noise_std: float = 0.0          # denoising: std of the input noise, in normalised pixel units
    variational: bool = False
    beta: float = 1.0               # vae: weight of the KL term


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    def __init__(self, spec: InputSpec, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.shape = (spec.channels, spec.height, spec.width)
        pixels = spec.channels * spec.height * spec.width
        self.encoder = _mlp([pixels, *cfg.hidden])
        self.to_code = nn.Linear(cfg.hidden[-1], cfg.code * (2 if cfg.variational else 1))
        self.decoder = nn.Sequential(_mlp([cfg.code, *reversed(cfg.hidden)]), nn.Linear(cfg.hidden[0], pixels))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.training and self.cfg.noise_std > 0:
            x = x + self.cfg.noise_std * torch.randn_like(x)
        h = self.to_code(self.encoder(x.flatten(1)))
        out: dict[str, torch.Tensor] = {}
        if self.cfg.variational:
            mu, logvar = h.chunk(2, dim=1)
            logvar = logvar.clamp(-10.0, 10.0)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
            out.update(kl=kl, penalty=self.cfg.beta * kl)
            code = mu
        else:
            code = z = h
        out.update(reconstruction=self.decoder(z).view(-1, *self.shape), code=code)
        return out


def _build(spec: InputSpec, **given) -> Autoencoder:
    if given.get("hidden") is not None:
        given["hidden"] = tuple(given["hidden"])
    return Autoencoder(spec, AutoencoderConfig(**{k: v for k, v in given.items() if v is not None}))


@register("autoencoder", task="reconstruction", config=AutoencoderConfig)
def autoencoder(spec: InputSpec, *, code: int | None = None, hidden: list[int] | None = None) -> Autoencoder:
    return _build(spec, code=code, hidden=hidden)


@register("denoising_autoencoder", task="reconstruction", config=AutoencoderConfig)
def denoising_autoencoder(spec: InputSpec, *, code: int | None = None, hidden: list[int] | None = None,
                          noise_std: float = 0.5) -> Autoencoder:
    return _build(spec, code=code, hidden=hidden, noise_std=noise_std)


@register("vae", task="reconstruction", config=AutoencoderConfig)
def vae(spec: InputSpec, *, code: int | None = None, hidden: list[int] | None = None, beta: float = 1.0) -> Autoencoder:
    return _build(spec, code=code, hidden=hidden, variational=True, beta=beta)
