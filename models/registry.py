"""One registry: family builders register by name with a decorator; ``get_model`` is the only lookup."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn


@dataclass(frozen=True)
class InputSpec:
    """What a builder needs to know about the data, read from the dataset manifest."""

    channels: int
    height: int
    width: int
    num_classes: int


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


def model_task(name: str) -> str:
    return _entry(name).task


def get_model(name: str, spec: InputSpec, **params: Any) -> nn.Module:
    """Build a registered family; ``None`` params are dropped so an unset option keeps its default."""
    clean = {k: v for k, v in params.items() if v is not None}
    return _entry(name).builder(spec, **clean)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
