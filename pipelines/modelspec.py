"""What a logged model is, without MLflow: the spec (family, params, task, shapes, vocabularies) and how
the module and the task are rebuilt from it.

Why apart from ``modelpack``: every training rank needs these at start, and ``modelpack`` imports
MLflow (about a second per process) for the pyfunc class, which only rank 0 needs, at the end.
"""

from __future__ import annotations

from typing import Any

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.pt"


def build_spec(*, family: str, params: dict[str, Any], task: str, shape: dict[str, int], stats: dict[str, float],
               label_names: list[str], dataset: str, dataset_version: str, vocab: dict[str, list[str]] | None = None,
               decode: dict[str, Any] | None = None, text: dict[str, Any] | None = None) -> dict[str, Any]:
    """What rebuilding and serving the model needs: sequence models also carry their vocabularies, the
    decoding settings (beam, length limit, how tokens join into text) and the text normalisation, so a
    raw ``text`` column can be scored without the prepare stage."""
    spec = {"family": family, "params": params, "task": task, "shape": shape, "stats": stats,
            "label_names": label_names, "num_classes": len(label_names), "dataset": dataset,
            "dataset_version": dataset_version}
    if vocab:
        spec["vocab"] = vocab
    if decode:
        spec["decode"] = decode
    if text:
        spec["text"] = text
    return spec


def target_vocab(spec: dict[str, Any]) -> list[str]:
    """The output vocabulary of a sequence model (seq2seq/CTC ``target``, captioning ``caption``)."""
    vocab = spec.get("vocab") or {}
    return vocab.get("target") or vocab.get("caption") or []


def input_spec(spec: dict[str, Any]):
    """The ``InputSpec`` a family is built from, out of a model spec (or a manifest: same keys)."""
    from ..models import InputSpec

    shape, vocab = spec.get("shape") or {}, spec.get("vocab") or {}
    lengths = spec.get("lengths") or {}
    longest = max([int(v.get("max", 0)) for v in lengths.values()] + [int(shape.get("max_length") or 0)])
    return InputSpec(channels=int(shape.get("channels", 0)), height=int(shape.get("height", 0)),
                     width=int(shape.get("width", 0)), num_classes=int(spec.get("num_classes") or 0),
                     vocab_size=len(vocab.get("text", [])), target_vocab_size=len(target_vocab(spec)),
                     n_mels=int(shape.get("n_mels", 0)), max_length=longest)


def make_spec_task(spec: dict[str, Any]):
    """The task object of a model spec, with its vocabulary and decoding settings."""
    from ..models import make_task

    decode = spec.get("decode") or {}
    return make_task(spec["task"], spec["num_classes"], mean=spec["stats"]["mean"], std=spec["stats"]["std"],
                     target_vocab=tuple(target_vocab(spec)), **decode)


def build_module(spec: dict[str, Any]):
    from ..models import get_model

    return get_model(spec["family"], input_spec(spec), **spec["params"])
