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
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ...errors import DataError


def _lines(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as fh:
            return [line for line in fh.read().splitlines() if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read as a (gzip) CSV of pixel rows ({exc}); fix data.source.path") from None


def read(spark, exp):
    from ..images import ROW_SCHEMA

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
    return df.mapInPandas(lambda it: decode(it, ctx), ROW_SCHEMA)


def decode(frames: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    from PIL import Image

    from ..images import bad_rows, image_rows, transform_image

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
