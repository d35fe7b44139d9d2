"""File trees read by Spark: ``binaryFile`` with task sizing chosen from the driver's listing.

Why the sizing: Spark packs small files into tasks by ``spark.sql.files.maxPartitionBytes`` plus an
``openCostInBytes`` charge per file (4 MB by default), which for ~800 PNGs of 20-200 kB gives ~200
tiny tasks whose fixed cost (scheduling, a Python worker round trip, Arrow setup) exceeds the decode
work. We already hold the listing (it is the version fingerprint), so we set both values to give about
``prepare.tasks_per_core`` tasks per core of even byte size: few tasks, no stragglers.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import math
import os
import tarfile
import zipfile
from contextlib import contextmanager
from typing import Any, Iterator

from ... import paths
from ...errors import DataError


def local(path: str) -> str:
    """``file:/x`` (what binaryFile reports) -> ``/x``; other URIs stay as they are."""
    if path.startswith("file://"):
        return path[len("file://"):]
    if path.startswith("file:"):
        return path[len("file:"):]
    return path


def relative(path: str, root: str) -> str:
    root = local(root).rstrip("/")
    path = local(path)
    return path[len(root) + 1:] if path.startswith(root + "/") else os.path.basename(path)


def inside(path: str, root: str) -> bool:
    """Whether ``path`` lies under ``root`` once ``..`` and (for local files) symbolic links are resolved."""
    import posixpath

    path, root = local(path), local(root)
    if paths.is_uri(path) or paths.is_uri(root):
        real, base = posixpath.normpath(path), posixpath.normpath(root)
    else:
        real, base = os.path.realpath(path), _real_root(root)
    return real == base or real.startswith(base.rstrip("/") + "/")


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    """The source root resolved once per task process: every file of a task shares it, and resolving it
    again per file was half the cost of this check."""
    return os.path.realpath(root)


def check_source(path: str, root: str, read_error: str | None = None) -> None:
    """Inside a task, before a record's bytes are used: raise ``BadRecord`` for a file the source may
    not read (outside the configured root, e.g. through a symlink) or could not read."""
    from ..quarantine import BadRecord

    if read_error:
        reason, _, detail = read_error.partition(": ")
        raise BadRecord(reason, detail, "read")
    if not inside(path, root):
        target = os.path.realpath(local(path)) if not paths.is_uri(path) else path
        raise BadRecord("outside_root", f"{local(path)} resolves to {target}, outside data.source.path {local(root)}; "
                                        f"only files under the configured root are read", "read")


def read_index(spark, path: str, columns: dict[str, str]):
    """An image/audio index table (CSV with a header, or Parquet), checked on the driver before any
    work: every configured column must exist and path-like columns must be strings."""
    try:
        table = (spark.read.parquet(path) if path.endswith(".parquet")
                 else spark.read.option("header", "true").csv(path))
        types = dict(table.dtypes)
    except Exception as exc:   # Spark's AnalysisException / SparkException: a corrupt or non-table file
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read the index {path} as {'Parquet' if path.endswith('.parquet') else 'CSV'}: "
                        f"{first}; fix the file or data.source.path") from None
    missing = [c for c in columns if c not in types]
    if missing:
        raise DataError(f"the index {path} has no column(s) {', '.join(missing)} (its columns: "
                        f"{', '.join(types) or 'none'}); fix the file or set data.source.path_column / "
                        f"label_column / ... to its names")
    wrong = [f"{c} is {types[c]}" for c, want in columns.items() if want != "any" and types[c] != want]
    if wrong:
        raise DataError(f"the index {path} has the wrong schema: {', '.join(wrong)}, expected string (a path or "
                        f"text relative to the index's folder); rewrite those columns as strings")
    return table


def index_path(base: str, column: str):
    """Spark column: ``<base>/<value>``; a null value gets a unique placeholder that reads as missing."""
    from pyspark.sql import functions as F

    return F.coalesce(F.concat(F.lit(base + "/"), F.col(column)),
                      F.concat(F.lit(f"{base}/<empty {column}> row "), F.monotonically_increasing_id().cast("string")))


def selected(rel: str, include: list[str], exclude: list[str]) -> bool:
    """Include/exclude globs on the path under the source root (fnmatch: ``*`` also crosses ``/``)."""
    if include and not any(fnmatch.fnmatch(rel, g) for g in include):
        return False
    return not any(fnmatch.fnmatch(rel, g) for g in exclude)


def matching(listing: list[dict[str, Any]], root: str, extensions: list[str], include: list[str],
             exclude: list[str], skip_suffix: str | None = None) -> list[dict[str, Any]]:
    """The listing entries a source will read, decided on the driver from metadata only."""
    exts = tuple("." + e.lower().lstrip(".") for e in extensions)
    out = []
    for f in listing:
        rel = relative(f["path"], root)
        stem = os.path.splitext(rel)[0]
        if not rel.lower().endswith(exts) or os.path.basename(rel).startswith("."):
            continue
        if skip_suffix and stem.endswith(skip_suffix):
            continue
        if selected(rel, include, exclude):
            out.append(f)
    return out


def planned_tasks(spark, tasks_per_core: int) -> int:
    return max(1, spark.sparkContext.defaultParallelism * tasks_per_core)


def in_planned_tasks(df, spark, tasks_per_core: int):
    """The scan merged into at most the planned number of tasks. Spark packs files into splits of the
    size ``sized_tasks`` sets and closes a split before it overflows, so a few small leftover splits
    follow the full ones; each is one more task start and a straggler round on the cores (measured:
    merging them took the Tux Paint prepare bench from 0.96x to 1.36x the plain loop)."""
    return df.coalesce(planned_tasks(spark, tasks_per_core))


@contextmanager
def sized_tasks(spark, files: list[dict[str, Any]], tasks_per_core: int) -> Iterator[None]:
    """Set file-split sizes so the files form ~tasks_per_core tasks per core; restore them afterwards."""
    keys = ("spark.sql.files.maxPartitionBytes", "spark.sql.files.openCostInBytes")
    before = {k: spark.conf.get(k, None) for k in keys}
    total = sum(int(f["size"]) for f in files) or 1
    tasks = planned_tasks(spark, tasks_per_core)
    open_cost = max(1, total // max(len(files), 1) // 8)          # a file costs ~1/8 of an average file
    split = max(4096, math.ceil((total + open_cost * len(files)) / tasks))
    spark.conf.set(keys[0], str(split))
    spark.conf.set(keys[1], str(open_cost))
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def binary_files(spark, root: str, files: list[dict[str, Any]], extensions: list[str], explicit: bool):
    """A ``binaryFile`` DataFrame (path, length, content) over the chosen files.

    With ``explicit`` (a subsample) the exact paths are passed; otherwise the folder with an extension
    filter, which avoids a huge path list on the driver for millions of files.
    """
    if not files:
        raise DataError(f"no files with extension {', '.join(extensions)} under {root}; "
                        f"check data.source.path, data.source.extensions and data.source.include")
    reader = spark.read.format("binaryFile")
    if explicit:
        return reader.load([f["path"] for f in files])
    globs = ",".join(sorted({e.lower().lstrip(".") for e in extensions} | {e.upper().lstrip(".") for e in extensions}))
    return (reader.option("recursiveFileLookup", "true").option("pathGlobFilter", "*.{" + globs + "}")
            .load(local(root) if not paths.is_uri(root) else root))


def row_content(row: Any, path: str) -> bytes | None:
    """A record's bytes: the scan's ``content`` when the JVM read them, else read here, in the task.

    Folder sources scan paths only: carrying every file's bytes from the JVM to the Python worker cost
    as much as decoding them (bench/RESULTS.md, prepare throughput). One file at a time, so a task holds
    one file's bytes, not its whole Arrow batch's. A file that vanished since the listing, or that cannot
    be read, is a quarantine record, not a failed job.
    """
    from ..quarantine import BadRecord

    if hasattr(row, "content"):
        return bytes(row.content) if row.content is not None else None
    try:
        return read_bytes(path)
    except FileNotFoundError:
        raise BadRecord("missing_file", f"{path} was listed when the job started but no longer exists", "read") from None
    except OSError as exc:
        raise BadRecord("unreadable", f"cannot read {path} ({exc})", "read") from None


def read_bytes(path: str, member: str | None = None) -> bytes:
    """A file's bytes, or one member's bytes from a .tar(.gz) / .zip / .whl archive; runs in a task."""
    fs, inner = paths.filesystem(local(path))
    with fs.open_input_file(inner) as fh:
        data = fh.read()
    if member is None:
        return data
    buf = io.BytesIO(data)
    if zipfile.is_zipfile(buf):
        with zipfile.ZipFile(buf) as zf:
            return zf.read(member)
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r:*") as tf:
        got = tf.extractfile(member)
        if got is None:
            raise KeyError(member)
        return got.read()


def empty_file_rows(spark, files: list[dict[str, Any]], root: str, dataset: str, schema: str):
    """Quarantine rows for 0-byte files, built from the listing: Spark's file scan skips empty files,
    so without this they would vanish instead of being counted as input records."""
    import pandas as pd

    empty = [f for f in files if int(f["size"]) == 0]
    if not empty:
        return None
    rels = [relative(f["path"], root) for f in empty]
    frame = pd.DataFrame({"id": [f"{dataset}/{r}" for r in rels], "source": [local(f["path"]) for f in empty],
                          "split": ["all"] * len(empty), "stage": ["read"] * len(empty),
                          "reason": ["empty_file"] * len(empty), "detail": ["the file has 0 bytes"] * len(empty),
                          "stat_sum": [0.0] * len(empty), "stat_sumsq": [0.0] * len(empty),
                          "stat_count": [0] * len(empty)})
    fields = [f.strip().split(" ", 1) for f in schema.split(",")]
    for name, _ in fields:
        if name not in frame:
            frame[name] = None
    return spark.createDataFrame(frame[[n for n, _ in fields]], schema=schema)
