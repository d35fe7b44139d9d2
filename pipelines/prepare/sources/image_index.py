"""A CSV or Parquet table of image paths (relative to the table's folder) with label, mask and caption
columns. The table is small and read on the driver (paths only); each task reads its own files."""

from __future__ import annotations

from typing import Any, Optional

from ...source_registry import IndexSource, register_source


@register_source("image_index", "image")
class ImageIndexSource(IndexSource):
    """A CSV or Parquet table of image paths (relative to the table's folder) with label/mask/caption."""

    label_column: Optional[str] = "label"
    mask_column: Optional[str] = None
    caption_column: Optional[str] = None

    @property
    def mask_mode(self) -> str:
        return "file" if self.mask_column else "none"

    @property
    def captions(self) -> bool:
        return bool(self.caption_column)

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        from .. import images
        from . import files

        base = files.local(self.path).rsplit("/", 1)[0]
        ctx = images.decode_context(exp, base, sidecars=False, needs_label=bool(self.label_column))
        texts = {"caption": (self.caption_column, "string")} if self.caption_column else {}
        return (files.index_with_content(spark, exp, base, self.label_column, texts, self.mask_column)
                .mapInPandas(lambda it: images.decode_files(it, ctx), images.ROW_SCHEMA))
