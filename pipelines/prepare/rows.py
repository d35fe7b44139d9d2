"""The prepared-row contract every source and modality writes, good and bad rows alike.

Every row carries the same leading columns (id, source, split, label and, for a bad record, the stage,
reason and detail the quarantine keeps) plus per-row statistic sums, so the job counts, routes and
normalises all modalities the same way. Image rows add their pixels here too, because several image
sources (IDX, grid, pixel CSV, compositions) build them directly; text and audio add their columns in
their own modules.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .split import assign

COMMON_SCHEMA = ("id string, source string, split string, label_name string, stage string, reason string, "
                 "detail string, stat_sum double, stat_sumsq double, stat_count long")
# Every image row, good or bad, before the writer routes it to a split or to quarantine.
IMAGE_ROW_SCHEMA = (COMMON_SCHEMA + ", image binary, height int, width int, channels int, label long, "
                    "mask binary, caption string")

def pixel_sums(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row sum and sum of squares of uint8 pixels on the 0..1 scale, for the normalisation statistics.

    Exact integer sums: converting every pixel to float64 first cost a fifth of the whole decode (1.5 s
    per 800 64x64 RGB images, against 0.02 s this way). uint32 holds a row's sum of squares up to
    66,051 values (255^2 each); larger rows use uint64.
    """
    wide = np.uint32 if flat.shape[1] * 255 * 255 < 2 ** 32 else np.uint64
    as_int = flat.astype(wide)
    total = flat.sum(axis=1, dtype=np.uint64).astype(np.float64) / 255.0
    squares = np.einsum("ij,ij->i", as_int, as_int).astype(np.float64) / (255.0 * 255.0)
    return total, squares


def image_rows(ids: list[str], sources: list[str], source_split: str, pixels: np.ndarray,
               labels: np.ndarray, label_names: list[str], val_fraction: float, test_fraction: float = 0.0,
               masks: list[bytes | None] | None = None, captions: list[str | None] | None = None,
               split_ids: list[str] | None = None) -> pd.DataFrame:
    """Good rows from uint8 (n, h, w, c) pixels; labels outside the known classes become bad rows.

    ``split_ids`` (default: the ids) decide the split, so several rows made from one file share it.
    """
    n, h, w, c = pixels.shape if pixels.ndim == 4 else (0, 0, 0, 0)
    flat = pixels.reshape(n, -1)
    pixel_sum, pixel_sumsq = pixel_sums(flat)
    known = (labels >= 0) & (labels < len(label_names)) if label_names else np.ones(n, dtype=bool)
    names = np.array(label_names + [""], dtype=object)
    frame = pd.DataFrame({
        "id": ids,
        "source": sources,
        "split": assign(split_ids or ids, source_split, val_fraction, test_fraction),
        "label_name": names[np.where(known, labels, len(label_names))] if label_names else [None] * n,
        "stage": None, "reason": None, "detail": None,
        "stat_sum": pixel_sum,
        "stat_sumsq": pixel_sumsq,
        "stat_count": np.full(n, h * w * c, dtype=np.int64),
        "image": [row.tobytes() for row in flat],
        "height": np.full(n, h, dtype=np.int32),
        "width": np.full(n, w, dtype=np.int32),
        "channels": np.full(n, c, dtype=np.int32),
        "label": labels.astype(np.int64),
        "mask": masks if masks is not None else [None] * n,
        "caption": captions if captions is not None else [None] * n,
    })
    if not known.all():
        bad = ~known
        frame.loc[bad, "stage"] = "decode"
        frame.loc[bad, "reason"] = "bad_label"
        frame.loc[bad, "detail"] = [f"label {int(v)} is outside 0..{len(label_names) - 1}" for v in labels[bad]]
    return frame


def bad_rows(ids: list[str], sources: list[str], source_split: str, reason: str | list[str],
             detail: str | list[str], stage: str | list[str] = "read") -> pd.DataFrame:
    """Rows for records that could not be read: they go to quarantine, never silently away."""
    n = len(ids)
    as_list = lambda v: v if isinstance(v, list) else [v] * n  # noqa: E731
    return pd.DataFrame({
        "id": ids, "source": sources, "split": [source_split] * n, "label_name": [None] * n,
        "stage": as_list(stage), "reason": as_list(reason), "detail": as_list(detail),
        "stat_sum": np.zeros(n), "stat_sumsq": np.zeros(n), "stat_count": np.zeros(n, np.int64),
        "image": [None] * n, "height": np.zeros(n, np.int32), "width": np.zeros(n, np.int32),
        "channels": np.zeros(n, np.int32), "label": np.full(n, -1, np.int64), "mask": [None] * n,
        "caption": [None] * n,
    })


def label_ids(label_names: list[str]):
    """Spark column: the position of ``label_name`` in the class list (the manifest's label order)."""
    from itertools import chain

    from pyspark.sql import functions as F

    if not label_names:   # an unlabelled set (label_column: null): an empty map literal has no key type
        return F.lit(-1).cast("long")
    lookup = F.create_map(*chain.from_iterable((F.lit(n), F.lit(i)) for i, n in enumerate(label_names)))
    return F.coalesce(lookup[F.col("label_name")], F.lit(-1)).cast("long")
