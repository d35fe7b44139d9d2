"""Transfer learning in a rank: start from a registered model's weights (``model.init_from``) and freeze
what ``model.freeze`` names.

Only rank 0 reads the source model (the other ranks get its tensors from the first broadcast), so the
source's artefacts are downloaded once per job, not once per rank.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from ..errors import TrainingError

log = logging.getLogger("sparkzoo.train")


def init_from(exp, model, source: dict[str, Any], exclude: list[str], own_vocab: list[str]) -> None:
    """Transfer learning: copy every tensor whose name and shape match the source version (the trunk);
    the rest (a head for other classes or another input size, or what ``exclude`` names) stays fresh.
    Word embeddings are matched by token, so a text model pre-trained on another corpus (another
    vocabulary) passes on the rows of every word both vocabularies share."""
    import json

    import torch

    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.modelpack import SPEC_FILE, WEIGHTS_FILE

    with tempfile.TemporaryDirectory() as tmp:
        files = track.download_model_files(exp, source["name"], source["version"], tmp)
        state = torch.load(os.path.join(files, WEIGHTS_FILE), map_location="cpu", weights_only=True)
        with open(os.path.join(files, SPEC_FILE)) as fh:
            source_vocab = ((json.load(fh).get("vocab") or {}).get("text")) or []
    own = model.state_dict()
    if source_vocab and own_vocab:
        state = remap_embeddings(state, own, source_vocab, own_vocab)
    taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
             and not any(k.startswith(pre) for pre in exclude)}
    if not taken:
        raise TrainingError(f"model.init_from {source['uri']} shares no tensor (same name and shape) with "
                              f"this model; use a source of the same family")
    model.load_state_dict(taken, strict=False)
    fresh = sorted(set(own) - set(taken))
    log.info("init_from %s (v%s): %d tensors copied, %d kept fresh (%s%s)", source["uri"], source["version"],
             len(taken), len(fresh), ", ".join(fresh[:6]), ", ..." if len(fresh) > 6 else "")


def remap_embeddings(state: dict[str, Any], own: dict[str, Any], source_vocab: list[str],
                      own_vocab: list[str]) -> dict[str, Any]:
    """Embedding tables (rows = source vocabulary) re-indexed to this model's vocabulary: shared tokens
    keep their learned row, new tokens keep this model's fresh row."""
    index = {t: i for i, t in enumerate(source_vocab)}
    rows = [(i, index[t]) for i, t in enumerate(own_vocab) if t in index]
    out = dict(state)
    for k, v in state.items():
        if "embedding" in k and k in own and v.dim() == 2 and v.shape[0] == len(source_vocab) \
                and own[k].shape == (len(own_vocab), v.shape[1]):
            table = own[k].clone()
            mine, theirs = zip(*rows) if rows else ((), ())
            table[list(mine)] = v[list(theirs)]
            out[k] = table
            log.info("init_from: %s mapped by token, %d of %d words shared", k, len(rows), len(own_vocab))
    return out


def freeze(model, prefixes: list[str]) -> None:
    """Parameters under these name prefixes stop learning (every rank applies it before the optimizer)."""
    for name, p in model.named_parameters():
        if any(name.startswith(pre) for pre in prefixes):
            p.requires_grad_(False)
