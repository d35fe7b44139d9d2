"""A CSV of grey pixel rows: ``height * width`` values in ``0..max_value`` and the label last on each line.

That is the UCI optical-digits format, which scikit-learn ships as ``sklearn/datasets/data/digits.csv.gz``
(1,797 handwritten digits of 8x8, values 0..16, from 43 writers: another data set than the OpenCV
digits sheet). ``data.source.path: sklearn:digits.csv.gz`` names that bundled file; nothing is
downloaded. ``pad`` adds a black margin before the resize, so a digit that fills its 8x8 cell can be
framed like the target's digits (the OpenCV digits fill about 14 of their 20 rows). Each Spark task reads the (small) file itself and decodes its own block of lines; a row's
id is its line number, so splits never move, and a malformed line is quarantined with its reason.
"""

from __future__ import annotations

import gzip
import io
import os
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from ...errors import DataError
from ...source_registry import SourceConfig, register_source
from .files import read_bytes


def _lines(path: str) -> list[str]:
    try:
        raw = read_bytes(path)   # through pipelines/paths: a local file, S3 or HDFS alike
        text = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8")
        return [line for line in text.splitlines() if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read as a (gzip) CSV of pixel rows ({exc}); fix data.source.path") from None


def read(spark, exp):
    from ..rows import IMAGE_ROW_SCHEMA

    src = exp.data.source
    n = len(_lines(src.path))
    if exp.data.max_records:
        n = min(n, exp.data.max_records)
    if n == 0:
        raise DataError(f"{src.path} holds no pixel rows; fix data.source.path")
    per = max(1, -(-n // (2 * spark.sparkContext.defaultParallelism)))
    tasks = [{"start": s, "end": min(s + per, n)} for s in range(0, n, per)]
    ctx = {"path": src.path, "h": src.height, "w": src.width, "max_value": src.max_value, "pad": src.pad,
           "names": list(src.label_names), "dataset": exp.data.dataset, "image": exp.data.image.model_dump(mode="json"),
           "val_fraction": exp.data.val_fraction, "test_fraction": exp.data.test_fraction, "seed": exp.seed}
    df = spark.createDataFrame(pd.DataFrame(tasks)).repartition(len(tasks))
    return df.mapInPandas(lambda it: decode(it, ctx), IMAGE_ROW_SCHEMA)


def decode(frames: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    from PIL import Image

    from ..images import transform_image
    from ..rows import bad_rows, image_rows

    lines = _lines(ctx["path"])
    h, w, top = ctx["h"], ctx["w"], float(ctx["max_value"])
    pad = int(ctx["pad"])
    same_size = (h + 2 * pad, w + 2 * pad) == (ctx["image"]["height"], ctx["image"]["width"]) and ctx["image"]["channels"] == 1
    for frame in frames:
        for t in frame.itertuples(index=False):
            ids, sources, pix, labels, bad = [], [], [], [], []
            for n in range(int(t.start), int(t.end)):
                rid, where = f"{ctx['dataset']}/{n:06d}", f"{ctx['path']}#line{n + 1}"
                try:
                    values = np.array([float(v) for v in lines[n].split(",")])
                except ValueError as exc:
                    bad.append((rid, where, f"not a number: {exc}"))
                    continue
                if values.size != h * w + 1:
                    bad.append((rid, where, f"{values.size} values, expected {h * w} pixels and a label"))
                    continue
                if values[:-1].min() < 0 or values[:-1].max() > top:
                    bad.append((rid, where, f"pixel values outside 0..{top:g}"))
                    continue
                cell = np.pad(np.round(values[:-1].reshape(h, w) * (255.0 / top)).astype(np.uint8), pad)
                if same_size:
                    out = cell[..., None]
                else:
                    buf = io.BytesIO()
                    Image.fromarray(cell).save(buf, format="PNG")
                    out, _ = transform_image(buf.getvalue(), "png", ctx["image"], rid, ctx["seed"])
                ids.append(rid)
                sources.append(where)
                pix.append(out)
                labels.append(int(values[-1]))
            if ids:
                names = ctx["names"] or [str(i) for i in range(max(labels) + 1)]
                yield image_rows(ids, sources, "all", np.stack(pix), np.array(labels), names,
                                 ctx["val_fraction"], ctx["test_fraction"])
            if bad:
                yield bad_rows([b[0] for b in bad], [b[1] for b in bad], "all", "malformed", [b[2] for b in bad],
                               stage="decode")


@register_source("pixel_csv", "image")
class PixelCsvSource(SourceConfig):
    """A (gzip) CSV of grey pixel rows, label last: the UCI optical-digits format. ``sklearn:<file>`` names a
    file scikit-learn ships in ``sklearn/datasets/data`` (``sklearn:digits.csv.gz``: 1,797 8x8 digits)."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    max_value: float = Field(255.0, gt=0)   # the value that means full ink (16 in optical digits)
    pad: int = Field(0, ge=0)               # zero pixels added on every side before the resize (a margin)

    @field_validator("path")
    @classmethod
    def _bundled(cls, value: str) -> str:
        if not value.startswith("sklearn:"):
            return value
        import importlib.util

        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"{value} needs scikit-learn installed (it is in requirements.txt)")
        return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", value.removeprefix("sklearn:"))

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        return read(spark, exp)
