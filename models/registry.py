"""One registry: family builders register by name with a decorator; ``get_model`` is the only lookup."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

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
    config: type | None = None    # the family's config dataclass: what ``model.params`` values must fit


_MODELS: dict[str, _Entry] = {}


class UnknownModelError(KeyError):
    """Raised by ``get_model`` with the list of valid names (pipelines turn it into a ConfigError)."""


class ParamsError(TypeError, ValueError):
    """``model.params`` that do not fit the family: an unknown key or a value its config rejects (a
    TypeError like an unexpected keyword, and a ValueError like a bad choice)."""


def register(name: str, *, task: str, config: type | None = None
             ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(spec, **params)`` under ``name`` for a task (``models.tasks``); ``config``
    is the dataclass its params fill, whose field types (``Literal`` choices included) are checked."""
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = _Entry(fn, task, config)
        return fn

    return wrap


def unregister(name: str) -> None:
    """Forget a family (a plugin's, a test's); registering it again is allowed afterwards."""
    _MODELS.pop(name, None)


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


def param_names(name: str) -> list[str] | None:
    """The keywords ``model.params`` may hold for a family (None: the builder takes any)."""
    sig = inspect.signature(_entry(name).builder)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return [n for n, p in list(sig.parameters.items())[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_params(name: str, params: dict[str, Any]) -> None:
    """Raise ``ParamsError`` (one line: the key, the value, what fits) unless every key is a parameter of
    the family and every value fits its config field: the type, and for ``Literal`` fields one of the
    choices, so ``cell: lstmm`` fails before a model is built instead of quietly building a GRU."""
    known = param_names(name)
    for key in params:
        if known is not None and key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            more = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ParamsError(f"unknown key 'model.params.{key}' for model {name}{more}; "
                              f"its parameters: {', '.join(known) or 'none'}")
    config = _entry(name).config
    if config is None:
        return
    hints = typing.get_type_hints(config)
    fields = {f.name for f in dataclasses.fields(config)}
    for key, value in params.items():
        if key in hints and value is not None and not _fits(value, hints[key]):
            raise ParamsError(f"model.params.{key}: {value!r} does not fit model {name}; {_describe(hints[key])}")
    try:   # the config's own checks (__post_init__: d_model a multiple of heads, a known cell ...)
        config(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in fields and v is not None})
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"model.params do not fit model {name}: {exc}") from None


def _fits(value: Any, hint: Any) -> bool:
    """A YAML value against a config field's type: scalars, Literal choices, lists/tuples of scalars."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin in (tuple, list):
        inner = [a for a in args if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(any(_fits(v, a) for a in inner) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "choose one of: " + ", ".join(str(a) for a in typing.get_args(hint))
    return f"expected {getattr(hint, '__name__', None) or hint}"


def get_model(name: str, spec: InputSpec, **params: Any) -> nn.Module:
    """Build a registered family; ``None`` params are dropped so an unset option keeps its default."""
    clean = {k: v for k, v in params.items() if v is not None}
    check_params(name, clean)
    return _entry(name).builder(spec, **clean)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
