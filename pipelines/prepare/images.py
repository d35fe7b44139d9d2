"""Image rows in the prepared-data contract: raw uint8 pixels as ``binary`` plus their shape.

Rows are built as whole columns per Arrow batch (no per-row Python beyond the id strings), and carry
per-row pixel sums so normalisation statistics come out of one Spark aggregation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .split import assign

# Every prepare row, good or bad, before the writer routes it to a split or to quarantine.
ROW_SCHEMA = (
    "id string, source string, split string, image binary, height int, width int, channels int, "
    "label long, label_name string, pix_sum double, pix_sumsq double, pix_count long, "
    "stage string, reason string, detail string"
)
DATA_COLUMNS = ["id", "source", "image", "height", "width", "channels", "label", "label_name"]

def image_rows(ids: list[str], sources: list[str], source_split: str, pixels: np.ndarray,
               labels: np.ndarray, label_names: list[str], val_fraction: float) -> pd.DataFrame:
    """Good rows from uint8 (n, h, w, c) pixels; labels outside the known classes become bad rows."""
    n, h, w, c = pixels.shape if pixels.ndim == 4 else (0, 0, 0, 0)
    flat = pixels.reshape(n, -1)
    as_float = flat.astype(np.float64) / 255.0
    known = (labels >= 0) & (labels < len(label_names)) if label_names else np.ones(n, dtype=bool)
    names = np.array(label_names + [""], dtype=object)
    frame = pd.DataFrame({
        "id": ids,
        "source": sources,
        "split": assign(ids, source_split, val_fraction),
        "image": [row.tobytes() for row in flat],
        "height": np.full(n, h, dtype=np.int32),
        "width": np.full(n, w, dtype=np.int32),
        "channels": np.full(n, c, dtype=np.int32),
        "label": labels.astype(np.int64),
        "label_name": names[np.where(known, labels, len(label_names))],
        "pix_sum": as_float.sum(axis=1),
        "pix_sumsq": (as_float ** 2).sum(axis=1),
        "pix_count": np.full(n, h * w * c, dtype=np.int64),
        "stage": None, "reason": None, "detail": None,
    })
    if not known.all():
        bad = ~known
        frame.loc[bad, "stage"] = "decode"
        frame.loc[bad, "reason"] = "bad_label"
        frame.loc[bad, "detail"] = [f"label {int(v)} is outside 0..{len(label_names) - 1}" for v in labels[bad]]
    return frame


def bad_rows(ids: list[str], sources: list[str], source_split: str, reason: str, detail: str,
             stage: str = "read") -> pd.DataFrame:
    """Rows for records that could not be read: they go to quarantine, never silently away."""
    n = len(ids)
    return pd.DataFrame({
        "id": ids, "source": sources, "split": [source_split] * n, "image": [None] * n,
        "height": np.zeros(n, np.int32), "width": np.zeros(n, np.int32), "channels": np.zeros(n, np.int32),
        "label": np.full(n, -1, np.int64), "label_name": [None] * n,
        "pix_sum": np.zeros(n), "pix_sumsq": np.zeros(n), "pix_count": np.zeros(n, np.int64),
        "stage": [stage] * n, "reason": [reason] * n, "detail": [detail] * n,
    })
