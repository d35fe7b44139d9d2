"""Pandas columns -> the padded numpy batches sequence tasks read, for the scorer and the pyfunc.

The same layout the training loader produces (``pipelines/train/data.py``): a ragged column padded
with 0 and its true lengths as ``<column>__len``. Bad rows raise ``ValueError`` naming the row; the
scorer filters them out beforehand with native Spark checks, so this only fires for direct pyfunc use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .textnorm import normalise, tokenize

UNK = 1


def ids_batch(column: pd.Series, name: str) -> dict[str, np.ndarray]:
    rows = [np.asarray(v, dtype=np.int64) if v is not None else None for v in column.tolist()]
    for i, r in enumerate(rows):
        if r is None or r.ndim != 1 or len(r) == 0:
            raise ValueError(f"row {i}: {name} is empty or null; the model needs at least one token")
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    out = np.zeros((len(rows), int(lengths.max()) if len(rows) else 1), dtype=np.int64)
    if len(rows):
        out[np.arange(out.shape[1]) < lengths[:, None]] = np.concatenate(rows)
    return {name: out, f"{name}__len": lengths}


def text_batch(column: pd.Series | list[Any], spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """Raw text through the model's own normalisation, tokeniser and vocabulary (unknown words -> <unk>)."""
    settings = spec.get("text") or {}
    vocab = (spec.get("vocab") or {}).get("text") or []
    if not vocab:
        raise ValueError("this model was logged without a text vocabulary; score prepared token_ids instead")
    index = {t: i for i, t in enumerate(vocab)}
    how, lower = settings.get("tokenizer", "word"), bool(settings.get("lowercase", True))
    limit = int(settings.get("max_length") or 0) or None
    ids = []
    for i, text in enumerate(column.tolist() if hasattr(column, "tolist") else column):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"row {i}: text is empty or null")
        ids.append([index.get(t, UNK) for t in tokenize(normalise(text, lower), how)][:limit])
    return ids_batch(pd.Series(ids, dtype=object), "token_ids")


def frames_batch(column: pd.Series, n_mels: int) -> dict[str, np.ndarray]:
    """Binary float32 log-mel rows (frames x n_mels) -> (n, most frames, n_mels) plus frame counts."""
    rows = column.tolist()
    per = 4 * n_mels
    for i, b in enumerate(rows):
        if b is None or len(b) == 0 or len(b) % per:
            raise ValueError(f"row {i}: features hold {0 if b is None else len(b)} bytes, not whole frames of "
                             f"{n_mels} float32 values")
    frames = np.array([len(b) // per for b in rows], dtype=np.int64)
    out = np.zeros((len(rows), int(frames.max()) if len(rows) else 1, n_mels), dtype=np.float32)
    if len(rows):
        out[np.arange(out.shape[1]) < frames[:, None]] = np.frombuffer(b"".join(rows), dtype=np.float32).reshape(-1, n_mels)
    return {"features": out, "features__len": frames}
