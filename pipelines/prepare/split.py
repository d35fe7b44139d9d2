"""Split assignment by a hash of the row id: a row keeps its split when data is added or re-prepared."""

from __future__ import annotations

import hashlib

import numpy as np

_BUCKETS = 10_000


def bucket(row_id: str) -> int:
    """A stable bucket in [0, 10000) from the id alone (blake2b, not Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(row_id.encode("utf-8"), digest_size=8).digest(), "big") % _BUCKETS


def assign(ids: list[str], source_split: str, val_fraction: float) -> np.ndarray:
    """The official test set stays test; val is a stable ``val_fraction`` share of the source train set."""
    if source_split == "test":
        return np.full(len(ids), "test", dtype=object)
    cut = int(round(val_fraction * _BUCKETS))
    return np.array(["val" if bucket(i) < cut else "train" for i in ids], dtype=object)
