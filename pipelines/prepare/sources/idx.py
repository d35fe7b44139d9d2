"""IDX files (MNIST, Fashion-MNIST): large gzip'd single files read in record ranges across Spark tasks.

The driver reads only the 16-byte headers; each task opens the files itself, seeks to its first record
and reads its range with one vectorised read, so no process ever holds a whole file. A file that ends
before its header's record count yields "truncated" quarantine rows for the missing records instead
of killing the job.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np
import pandas as pd

from ... import paths
from ...errors import DataError
from ...source_registry import SourceConfig, register_source

# source split -> (images file, labels file): the names the Debian package and the original site use
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


@dataclass(frozen=True)
class IdxPair:
    split: str
    images: str
    labels: str
    count: int
    height: int
    width: int


def _open(path: str):
    fs, inner = paths.filesystem(path)
    raw = fs.open_input_file(inner)
    return gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw


def _header(path: str, words: int) -> tuple[int, ...]:
    try:
        with _open(path) as fh:
            head = fh.read(4 * words)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path} cannot be read as a gzip'd IDX file ({exc}); re-install the data set "
                        f"(apt-get install --reinstall dataset-fashion-mnist) or fix data.source.path") from None
    if len(head) < 4 * words:
        raise DataError(f"{path} is truncated inside its header; re-install the data set or replace the file")
    return struct.unpack(f">{words}I", head)


def inspect(source_dir: str, max_records: int | None) -> list[IdxPair]:
    """Check both files of each split on the driver (headers only) and plan what to read."""
    pairs = []
    for split, (img_name, lbl_name) in IDX_FILES.items():
        img, lbl = paths.join(source_dir, img_name), paths.join(source_dir, lbl_name)
        for p in (img, lbl):
            if not paths.exists(p):
                raise DataError(f"{p} is missing: an IDX source needs {', '.join(sum(IDX_FILES.values(), ()))} "
                                f"in data.source.path; install the data set or fix the path")
        magic, n, h, w = _header(img, 4)
        if magic != IMAGES_MAGIC:
            raise DataError(f"{img} is not an IDX image file (magic {magic:#010x}, expected {IMAGES_MAGIC:#010x})")
        lmagic, ln = _header(lbl, 2)
        if lmagic != LABELS_MAGIC:
            raise DataError(f"{lbl} is not an IDX label file (magic {lmagic:#010x}, expected {LABELS_MAGIC:#010x})")
        if n != ln:
            raise DataError(f"{img} holds {n} images but {lbl} holds {ln} labels; the pair does not belong together")
        count = min(n, max_records) if max_records else n
        pairs.append(IdxPair(split, img, lbl, count, h, w))
    return pairs


def plan_ranges(pairs: list[IdxPair], records_per_task: int) -> pd.DataFrame:
    """One row per Spark task: which split's files and which record range it reads."""
    rows = []
    for pair in pairs:
        for start in range(0, pair.count, records_per_task):
            rows.append({"source_split": pair.split, "images": pair.images, "labels": pair.labels,
                         "start": start, "end": min(start + records_per_task, pair.count),
                         "height": pair.height, "width": pair.width})
    return pd.DataFrame(rows)


def _read_exact(fh, offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def read_range(images: str, labels: str, start: int, end: int, height: int, width: int
               ) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Records [start, end) as uint8 (n, h, w) pixels and int labels, plus the reason if fewer came back."""
    want = end - start
    pix = height * width
    problem = None
    try:
        with _open(images) as fh:
            buf = _read_exact(fh, 16 + start * pix, want * pix)
    except (OSError, EOFError, gzip.BadGzipFile, struct.error, ValueError) as exc:
        buf, problem = b"", f"{images}: {exc}"
    try:
        with _open(labels) as fh:
            lbuf = _read_exact(fh, 8 + start, want)
    except (OSError, EOFError, gzip.BadGzipFile, struct.error, ValueError) as exc:
        lbuf, problem = b"", f"{labels}: {exc}"
    got = min(len(buf) // pix, len(lbuf))
    if got < want and problem is None:
        short = images if len(buf) // pix < want else labels
        problem = f"{short} ends after record {start + got} of the {end} its header promises"
    imgs = np.frombuffer(buf[: got * pix], dtype=np.uint8).reshape(got, height, width)
    lbls = np.frombuffer(lbuf[:got], dtype=np.uint8).astype(np.int64)
    return imgs, lbls, problem


def iter_records(tasks: Iterator[pd.DataFrame], dataset: str, label_names: list[str],
                 val_fraction: float) -> Iterator[pd.DataFrame]:
    """mapInPandas body: task rows in, image rows (good and bad, flagged) out."""
    from ..rows import bad_rows, image_rows

    for frame in tasks:
        for t in frame.itertuples(index=False):
            imgs, lbls, problem = read_range(t.images, t.labels, int(t.start), int(t.end), int(t.height), int(t.width))
            index = np.arange(int(t.start), int(t.start) + len(imgs))
            ids = [f"{dataset}/{t.source_split}/{i:06d}" for i in index]
            sources = [f"{t.images}#{i}" for i in index]
            yield image_rows(ids, sources, t.source_split, imgs[..., None], lbls, label_names, val_fraction)
            if problem is not None:
                missing = np.arange(int(t.start) + len(imgs), int(t.end))
                yield bad_rows(
                    [f"{dataset}/{t.source_split}/{i:06d}" for i in missing],
                    [f"{t.images}#{i}" for i in missing], t.source_split, "truncated_file", problem)


def read(spark, exp):
    """One Spark task per record range; rows come back flagged good or bad (rows.IMAGE_ROW_SCHEMA)."""
    from ..rows import IMAGE_ROW_SCHEMA

    pairs = inspect(exp.data.source.path, exp.data.max_records)   # headers only, on the driver
    plan = plan_ranges(pairs, exp.prepare.records_per_task)
    dataset, names, val_fraction = exp.data.dataset, list(exp.data.source.label_names), exp.data.val_fraction
    records = plan.to_dict("records")
    tasks = spark.sparkContext.parallelize(records, max(len(records), 1)).toDF(
        "source_split string, images string, labels string, start long, end long, height long, width long")

    def body(batches):
        from sparkzoo.pipelines.prepare.sources.idx import iter_records
        return iter_records(batches, dataset, names, val_fraction)

    return tasks.mapInPandas(body, IMAGE_ROW_SCHEMA)


def shape(exp) -> dict[str, int]:
    """The native image shape from the headers (IDX keeps its size: no resize)."""
    pair = inspect(exp.data.source.path, exp.data.max_records)[0]
    return {"channels": 1, "height": pair.height, "width": pair.width}


@register_source("idx", "image")
class IdxSource(SourceConfig):
    """The four gzip'd IDX files of MNIST / Fashion-MNIST in one folder."""

    # IDX keeps its native size and its official test split: data.image and data.test_fraction do not
    # shape the rows, so changing them keeps the version
    unused_data_keys: ClassVar[frozenset[str]] = frozenset({"image", "test_fraction"})

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        return read(spark, exp)

    def finish(self, spark: Any, exp: Any, good: Any, label_names: list[str], totals: Any) -> tuple[Any, dict[str, Any]]:
        from .. import images

        # the rows already hold the IDX label ids; the shape is the files' own
        return images.finish(spark, exp, good, label_names, totals, shape=shape(exp), relabel=False)
