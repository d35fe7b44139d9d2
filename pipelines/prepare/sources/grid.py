"""One large image holding equal cells, e.g. the OpenCV digits sheet (2000x1000, 50x100 cells of 20x20).

Each Spark task opens the sheet itself and cuts its own block of cell rows, so the driver only reads
the image size. A cell's class is ``cell_row // rows_per_class``; its id is its grid position, which
never changes.
"""

from __future__ import annotations

import io
from typing import Any, Iterator

import numpy as np
import pandas as pd

from pydantic import Field

from ... import paths
from ...errors import DataError
from ...source_registry import SourceConfig, register_source
from .files import read_bytes


def _size(path: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        # header only: Pillow reads what it needs from the stream that pipelines/paths opens
        fs, inner = paths.filesystem(path)
        with fs.open_input_file(inner) as fh, Image.open(fh) as img:
            return img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path} cannot be opened as an image ({exc}); fix data.source.path") from None


def read(spark, exp):
    from ..rows import IMAGE_ROW_SCHEMA

    src = exp.data.source
    width, height = _size(src.path)
    rows, cols = height // src.cell_height, width // src.cell_width
    if rows == 0 or cols == 0:
        raise DataError(f"{src.path} ({width}x{height}) is smaller than one {src.cell_width}x{src.cell_height} cell; "
                        f"fix data.source.cell_height/cell_width")
    tasks = [{"start": r, "end": min(r + src.rows_per_task, rows)} for r in range(0, rows, src.rows_per_task)]
    ctx = {"path": src.path, "ch": src.cell_height, "cw": src.cell_width, "cols": cols,
           "rows_per_class": src.rows_per_class, "names": list(src.label_names), "dataset": exp.data.dataset,
           "image": exp.data.image.model_dump(mode="json"), "val_fraction": exp.data.val_fraction,
           "test_fraction": exp.data.test_fraction, "max_records": exp.data.max_records, "seed": exp.seed}
    df = spark.createDataFrame(pd.DataFrame(tasks)).repartition(len(tasks))
    return df.mapInPandas(lambda it: cut(it, ctx), IMAGE_ROW_SCHEMA)


def cut(frames: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    from PIL import Image

    from ..images import transform_image
    from ..rows import image_rows

    sheet = np.asarray(Image.open(io.BytesIO(read_bytes(ctx["path"]))).convert("L"))
    ch, cw, cols = ctx["ch"], ctx["cw"], ctx["cols"]
    for frame in frames:
        for t in frame.itertuples(index=False):
            ids, sources, pix, labels = [], [], [], []
            for r in range(int(t.start), int(t.end)):
                for c in range(cols):
                    n = r * cols + c
                    if ctx["max_records"] and n >= ctx["max_records"]:
                        continue
                    cell = sheet[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw]
                    if (ch, cw) != (ctx["image"]["height"], ctx["image"]["width"]) or ctx["image"]["channels"] != 1:
                        buf = io.BytesIO()
                        Image.fromarray(cell).save(buf, format="PNG")
                        out, _ = transform_image(buf.getvalue(), "png", ctx["image"], str(n), ctx["seed"])
                    else:
                        out = cell[..., None]
                    ids.append(f"{ctx['dataset']}/r{r:03d}c{c:03d}")
                    sources.append(f"{ctx['path']}#r{r}c{c}")
                    pix.append(out)
                    labels.append(r // ctx["rows_per_class"])
            if ids:
                names = ctx["names"] or [str(i) for i in range(max(labels) + 1)]
                yield image_rows(ids, sources, "all", np.stack(pix), np.array(labels), names,
                                 ctx["val_fraction"], ctx["test_fraction"])


@register_source("image_grid", "image")
class ImageGridSource(SourceConfig):
    """One large image holding equal cells (the OpenCV digits sheet); class = cell row // rows_per_class."""

    cell_height: int = Field(gt=0)
    cell_width: int = Field(gt=0)
    rows_per_class: int = Field(gt=0)
    rows_per_task: int = Field(5, gt=0)

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        return read(spark, exp)
