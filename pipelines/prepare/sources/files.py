"""File trees read by Spark tasks, planned from the driver's listing.

Why plan on the driver: we already hold the listing (it is the version fingerprint). Spark's own file
scan would list the tree again in the JVM and pack small files into tasks by ``maxPartitionBytes`` plus
an ``openCostInBytes`` charge per file, which for ~800 PNGs of 20-200 kB gave ~200 tiny tasks whose fixed
cost exceeded the decode work. Instead the chosen files are dealt into ``prepare.tasks_per_core`` tasks
per core of even bytes, and each task reads its own files (no bytes through the JVM).
"""

from __future__ import annotations

import fnmatch
import functools
import io
import os
import tarfile
import zipfile
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


def index_with_content(spark, exp, base: str, label_column: str | None, texts: dict[str, tuple[str, str]],
                       mask_column: str | None = None):
    """An index source's rows: ``path``, ``label_name`` (when ``label_column``), each ``texts`` column
    (row column -> (index column, the type the index must give it)) and the bytes of every file it names,
    read in the tasks (so a path the index names but the disk lacks is a quarantine row, not a silently
    missing join partner); ``mask_column`` adds the bytes of the mask file it names."""
    from pyspark.sql import functions as F

    src = exp.data.source
    table = read_index(spark, src.path, {src.path_column: "string"}
                       | {column: kind for column, kind in texts.values()}
                       | ({mask_column: "string"} if mask_column else {})
                       | ({label_column: "any"} if label_column else {}))
    cols = [index_path(base, src.path_column).alias("path")]
    schema = "path string, content binary, read_error string"
    if label_column:
        cols.append(F.col(label_column).cast("string").alias("label_name"))
        schema += ", label_name string"
    for name, (column, _) in texts.items():
        cols.append(F.col(column).alias(name))
        schema += f", {name} string"
    if mask_column:
        cols.append(F.concat(F.lit(base + "/"), F.col(mask_column)).alias("mask_path"))
        schema += ", mask_content binary"
    index = table.select(*cols)
    if exp.data.max_records:
        index = index.limit(exp.data.max_records)
    return index.repartition(max(1, spark.sparkContext.defaultParallelism * exp.prepare.tasks_per_core)) \
        .mapInPandas(lambda it: attach_content(it, base), schema)


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


def planned_tasks(spark, tasks_per_core: int, total_bytes: int = 0, max_task_bytes: int | None = None) -> int:
    """``tasks_per_core`` per core, or more when a task would otherwise read over ``max_task_bytes``."""
    by_bytes = -(-total_bytes // max_task_bytes) if max_task_bytes else 0
    return max(1, spark.sparkContext.defaultParallelism * tasks_per_core, by_bytes)


def require_some(files: list[dict[str, Any]], root: str, extensions: list[str]) -> None:
    if not files:
        raise DataError(f"no files with extension {', '.join(extensions)} under {root}; "
                        f"check data.source.path, data.source.extensions and data.source.include")


_PATHS_PER_FRAME = 256   # paths handed to the decode body at a time: bounds a task's rows in flight


def balanced_groups(files: list[dict[str, Any]], groups: int) -> list[list[str]]:
    """Paths dealt into ``groups`` lists of near-equal total bytes: largest file first, each to the
    lightest group (LPT), so no task is a straggler."""
    import heapq

    heap = [(0, i) for i in range(max(1, min(groups, len(files))))]
    out: list[list[str]] = [[] for _ in heap]
    for f in sorted(files, key=lambda f: (-int(f["size"]), f["path"])):
        load, i = heapq.heappop(heap)
        out[i].append(local(f["path"]))
        heapq.heappush(heap, (load + int(f["size"]), i))
    return [sorted(g) for g in out]


def listed_paths(spark, files: list[dict[str, Any]], prepare_cfg, body):
    """``body`` (a mapInPandas body over frames with a ``path`` column) run over the chosen files in
    ``planned_tasks`` Spark tasks of even bytes (``prepare_cfg``: ``tasks_per_core``, ``max_task_bytes``),
    straight from the driver's listing.

    The listing is already on the driver (it is the version fingerprint), so the file scan Spark would
    do again (``binaryFile`` lists the tree in the JVM: 0.7 s of a 4.7 s Tux Paint prepare on two cores,
    bench/RESULTS.md) is skipped: the path groups go to the executors once as a broadcast, a
    ``range`` with one row per group is the task list, and each task reads and decodes its own files.
    Zero-byte files are left to ``empty_file_rows``. Returns ``(rows, schema)``-ready ``mapInPandas``
    arguments: the DataFrame of group ids and the function to map over it.
    """
    import pandas as pd

    sized = [f for f in files if int(f["size"]) > 0]
    tasks = planned_tasks(spark, prepare_cfg.tasks_per_core, sum(int(f["size"]) for f in sized),
                          prepare_cfg.max_task_bytes)
    groups = balanced_groups(sized, tasks)
    shared = spark.sparkContext.broadcast(groups)

    def frames(batches) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for gid in batch["id"].tolist():
                group = shared.value[gid]
                for start in range(0, len(group), _PATHS_PER_FRAME):
                    yield pd.DataFrame({"path": group[start:start + _PATHS_PER_FRAME]})

    return spark.range(len(groups), numPartitions=len(groups)), lambda it: body(frames(it))


def folder_rows(spark, exp, listing: list[dict[str, Any]], decode, schema: str, skip_suffix: str | None = None):
    """A folder source's rows: the listing's matching files (``data.max_records`` of them when set) decoded
    by ``decode`` (a mapInPandas body over ``path`` frames) in even-byte tasks, plus a quarantine row for
    each zero-byte file (the tasks skip those)."""
    src = exp.data.source
    chosen = matching(listing, src.path, src.extensions, src.include, src.exclude, skip_suffix)
    if exp.data.max_records:
        chosen = chosen[: exp.data.max_records]
    require_some(chosen, src.path, src.extensions)
    tasks, body = listed_paths(spark, chosen, exp.prepare, decode)
    rows = tasks.mapInPandas(body, schema)
    empty = empty_file_rows(spark, chosen, src.path, exp.data.dataset, schema)
    return rows if empty is None else rows.unionByName(empty)


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


def attach_content(frames: Iterator[Any], root: str) -> Iterator[Any]:
    """Read each file the index names, but never one outside ``root`` (an index is user data: it may
    say ``../../etc/shadow``); what cannot be read is kept as ``read_error`` for the quarantine."""

    def get(p):
        if not inside(p, root):
            return None, f"outside_root: {p} is outside {root}, the folder of the index; only files under it are read"
        try:
            return read_bytes(p), None
        except FileNotFoundError:
            return None, f"missing_file: the index names {p}, which does not exist"
        except OSError as exc:
            return None, f"unreadable: cannot read {p} ({exc})"

    for frame in frames:
        frame = frame.copy()
        got = [get(p) for p in frame["path"]]
        frame["content"] = [c for c, _ in got]
        frame["read_error"] = [e for _, e in got]
        if "mask_path" in frame:
            frame["mask_content"] = [get(p)[0] if isinstance(p, str) else None for p in frame["mask_path"]]
            frame = frame.drop(columns=["mask_path"])
        yield frame
