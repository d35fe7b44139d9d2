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


SOURCE_INDEX = "source_files"   # Parquet beside manifest.json: one row per source file (path, size, mtime, sha256)


def _uri(path: str, source_path: str) -> str:
    """A listing path (pyarrow's path inside its filesystem) as a URI an executor can open again."""
    if "://" in source_path and "://" not in path:
        return source_path.split("://", 1)[0] + "://" + path
    return path


def _hash_files(frames, source_path: str):
    """mapInPandas body: the sha256 of each file's bytes, streamed in 1 MiB reads (never a whole file)."""
    import hashlib

    for frame in frames:
        digests = []
        for path in frame["path"]:
            fs, inner = paths.filesystem(_uri(path, source_path))
            h = hashlib.sha256()
            with fs.open_input_stream(inner) as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            digests.append(h.hexdigest())
        yield frame.assign(sha256=digests)


def write_file_index(spark, listing: list[dict[str, Any]], source_path: str, dataset_dir: str) -> dict[str, Any]:
    """Hash every source file in Spark tasks and write the index beside the manifest.

    Why: the manifest inlines its listing only up to 5,000 files; lineage must name the exact bytes
    behind any prediction whatever the source size, so the full listing with content hashes lives in
    Parquet (one row per file) and the manifest keeps only its count, byte total and digest.
    Returns the manifest's ``source.index`` entry.
    """
    import pandas as pd
    from pyspark.sql import functions as F

    where = paths.join(dataset_dir, SOURCE_INDEX)
    frame = pd.DataFrame({"path": [str(f["path"]) for f in listing], "size": [int(f["size"]) for f in listing],
                          "mtime": [int(f["mtime"]) for f in listing]})
    df = spark.createDataFrame(frame, "path string, size long, mtime long")
    cores = spark.sparkContext.defaultParallelism
    df = df.repartition(max(1, min(len(listing), cores * 4)))
    hashed = df.mapInPandas(lambda it: _hash_files(it, source_path), "path string, size long, mtime long, sha256 string")
    hashed.coalesce(max(1, len(listing) // 1_000_000)).sortWithinPartitions("path").write.mode("overwrite").parquet(where)
    written = spark.read.parquet(where)
    agg = written.agg(F.count("*").alias("n"), F.sum("size").alias("bytes"),
                      F.sha2(F.concat_ws("\n", F.sort_array(F.collect_list(
                          F.concat_ws(" ", "sha256", "path")))), 256).alias("digest")).collect()[0]  # small: one row
    return {"path": SOURCE_INDEX, "files": int(agg["n"]), "bytes": int(agg["bytes"] or 0),
            "digest": agg["digest"], "hash": "sha256"}
