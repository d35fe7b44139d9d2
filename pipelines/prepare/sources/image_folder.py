"""Images in a class-per-subfolder tree, with an optional mask (alpha channel or a mask file beside the
image) and caption (a text file beside the image)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from ...source_registry import FileTreeSource, register_source


@register_source("image_folder", "image")
class ImageFolderSource(FileTreeSource):
    """Images in a class-per-subfolder tree; optional mask (alpha channel or a mask file) and caption."""

    extensions: list[str] = Field(default_factory=lambda: ["png", "jpg", "jpeg", "bmp", "gif", "webp"])
    label_level: Optional[int] = 0      # which folder under `path` names the class (-1 = parent); null = no label
    mask: Literal["none", "alpha", "file"] = "none"
    mask_suffix: str = "_mask"          # mask: file -> <stem><mask_suffix>.png beside the image
    caption_sidecar: Optional[str] = None   # e.g. ".txt": the first line of <stem>.txt is the caption

    @property
    def mask_mode(self) -> str:
        return self.mask

    @property
    def captions(self) -> bool:
        return bool(self.caption_sidecar)

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        from .. import images
        from . import files

        ctx = images.decode_context(exp, self.path, sidecars=True, needs_label=self.label_level is not None)
        # paths from the driver's listing (mask files, read as sidecars, are left out of the rows);
        # each task reads its own files (files.row_content): no second listing, no bytes through the JVM
        return files.folder_rows(spark, exp, listing, lambda it: images.decode_files(it, ctx), images.ROW_SCHEMA,
                                 skip_suffix=self.mask_suffix if self.mask == "file" else None)
