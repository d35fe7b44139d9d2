"""One registry: family builders register by name with a decorator; ``get_model`` is the only lookup."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn


@dataclass(frozen=True)
class InputSpec:
    """What a builder needs to know about the data, read from the dataset manifest.

    Image families read the pixel shape; sequence families read vocabulary sizes (specials included:
    ``<pad>``=0, ``<unk>``=1, ``<bos>``=2, ``<eos>``=3 on text vocabularies) or ``n_mels`` for log-mel
    frames. A CTC vocabulary holds no blank: CTC models output ``target_vocab_size + 1`` classes and use
    the last one as the blank.
    """

    channels: int = 0
    height: int = 0
    width: int = 0
    num_classes: int = 0
    vocab_size: int = 0           # source-side tokens (text classifiers, seq2seq encoders)
    target_vocab_size: int = 0    # output tokens (seq2seq / captioning decoders, CTC without the blank)
    n_mels: int = 0               # log-mel features per frame (speech)
    max_length: int = 0           # longest token sequence the data holds (decoding limit)


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    task: str


_MODELS: dict[str, _Entry] = {}


class UnknownModelError(KeyError):
    """Raised by ``get_model`` with the list of valid names (pipelines turn it into a ConfigError)."""


def register(name: str, *, task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = _Entry(fn, task)
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def _entry(name: str) -> _Entry:
    if name not in _MODELS:
        hint = difflib.get_close_matches(name, list(_MODELS), n=1)
        more = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise UnknownModelError(f"unknown model '{name}'{more}; choose one of: {', '.join(list_models())}")
    return _MODELS[name]


def builder(name: str) -> Callable[..., nn.Module]:
    """The family's builder function: its keyword signature is what ``model.params`` may hold."""
    return _entry(name).builder


def model_task(name: str) -> str:
    return _entry(name).task


def get_model(name: str, spec: InputSpec, **params: Any) -> nn.Module:
    """Build a registered family; ``None`` params are dropped so an unset option keeps its default."""
    clean = {k: v for k, v in params.items() if v is not None}
    return _entry(name).builder(spec, **clean)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
