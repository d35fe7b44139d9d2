"""manifest.json: what later stages need to know without scanning the data.

Shapes, classes, counts per split and class, normalisation statistics, the source fingerprint and the
row groups of every Parquet file (read from footers only), so training ranks can plan their shards and
check that each one delivered exactly the rows it should.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pyarrow.parquet as pq

from sparkzoo import __version__

from .. import paths
from ..dataset import FORMAT_VERSION, relpath


def parquet_layout(split_dir: str, dataset_dir: str) -> list[dict[str, Any]]:
    """[{path (relative), row_groups: [rows, ...]}] from each file's footer."""
    files = []
    for path in paths.list_files(split_dir, ".parquet"):
        fs, inner = paths.filesystem(path)
        with fs.open_input_file(inner) as fh:
            meta = pq.ParquetFile(fh).metadata
        groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if sum(groups):
            files.append({"path": relpath(path, dataset_dir), "row_groups": groups})
    return files


def pixel_stats(total: float, total_sq: float, count: float) -> dict[str, float]:
    mean = total / count if count else 0.0
    var = max(total_sq / count - mean * mean, 0.0) if count else 1.0
    return {"mean": mean, "std": math.sqrt(var) or 1.0}


def build(*, dataset: str, version: str, modality: str, task: str, source: dict[str, Any],
          shape: dict[str, int], label_names: list[str], counts: dict[str, dict[str, Any]],
          stats: dict[str, float], splits: dict[str, dict[str, Any]], input_records: int, quarantined: int,
          quarantine_by_reason: dict[str, int], schema: list[dict[str, str]], config: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "dataset": dataset,
        "version": version,
        "modality": modality,
        "task": task,
        "sparkzoo_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "schema": schema,
        "shape": shape,
        "num_classes": len(label_names),
        "label_names": label_names,
        "counts": counts,
        "stats": stats,
        "splits": splits,
        "input_records": input_records,
        "quarantined": quarantined,
        "quarantine_by_reason": quarantine_by_reason,
        "prepare_config": config,
    }
