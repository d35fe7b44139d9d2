"""Split assignment by a hash of the row id: a row keeps its split when data is added or re-prepared."""

from __future__ import annotations

import hashlib

import numpy as np

BUCKETS = 10_000


def bucket(row_id: str) -> int:
    """A stable bucket in [0, 10000) from the id alone (blake2b, not Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(row_id.encode("utf-8"), digest_size=8).digest(), "big") % BUCKETS


def assign(ids: list[str], source_split: str, val_fraction: float, test_fraction: float = 0.0) -> np.ndarray:
    """The official test set stays test; val is a stable ``val_fraction`` share of the source train set.

    A source without an official split (``source_split="all"``) also gives a stable ``test_fraction``
    share to test. Bucket ranges are fixed by the fractions alone, so adding rows never moves a row.
    """
    if source_split == "test":
        return np.full(len(ids), "test", dtype=object)
    cut = int(round(val_fraction * BUCKETS))
    tcut = cut + int(round(test_fraction * BUCKETS)) if source_split == "all" else cut
    out = []
    for i in ids:
        b = bucket(i)
        out.append("val" if b < cut else "test" if b < tcut else "train")
    return np.array(out, dtype=object)
