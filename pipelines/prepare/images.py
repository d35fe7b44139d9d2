"""Image rows in the prepared-data contract: raw uint8 pixels (channels last) as ``binary`` + shape.

The image sources (``sources/``: IDX files, a class-per-subfolder tree, a CSV/Parquet index, one large
grid image, ...) read their records; this module holds what they share. Every decode happens inside a
Spark task (``binaryFile`` + ``mapInPandas``): Pillow decode, alpha compositing, resize / crop / pad to
``data.image``, channel layout, optional mask (from the alpha channel or a mask file) and caption. Each
row carries pixel sums (rows.py) so the normalisation statistics come out of one Spark aggregation.
Nothing here knows a source kind: a source says what it has (``mask_mode``, ``captions``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .. import faults
from .quarantine import BadRecord
from .rows import IMAGE_ROW_SCHEMA, bad_rows, image_rows, label_ids, pixel_sums  # noqa: F401  (the row contract)

# Every image row, good or bad, before the writer routes it to a split or to quarantine (rows.py).
ROW_SCHEMA = IMAGE_ROW_SCHEMA
DATA_COLUMNS = ["id", "source", "image", "height", "width", "channels", "label", "label_name"]
EXT_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF", "webp": "WEBP",
              "tif": "TIFF", "tiff": "TIFF"}


# ---- the transform (pure: the benchmark's plain loop calls exactly this) ---------------------------

def background_colour(mode: str, key: str, seed: int) -> tuple[int, int, int]:
    """Solid fill under transparent pixels and padding; ``random`` is seeded by the row id."""
    if mode == "white":
        return (255, 255, 255)
    if mode == "black":
        return (0, 0, 0)
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=3).digest()
    return (digest[0], digest[1], digest[2])


def _geometry(img, height: int, width: int, resize: str, fill, resample):
    from PIL import Image

    iw, ih = img.size
    if resize == "stretch" or (iw, ih) == (width, height):
        return img.resize((width, height), resample) if (iw, ih) != (width, height) else img
    scale = max(width / iw, height / ih) if resize == "crop" else min(width / iw, height / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    img = img.resize((nw, nh), resample)
    if resize == "crop":
        left, top = (nw - width) // 2, (nh - height) // 2
        return img.crop((left, top, left + width, top + height))
    canvas = Image.new(img.mode, (width, height), fill)
    canvas.paste(img, ((width - nw) // 2, (height - nh) // 2))
    return canvas


def _eight_bit(img):
    """16-bit (and 32-bit integer) grey images scaled to 8 bits; Pillow's convert("L") would clip them,
    turning almost every pixel of a 16-bit scan white."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.uint32)
        bits = 16 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 8
        return Image.fromarray(np.minimum(arr >> (bits - 8), 255).astype(np.uint8), "L")
    return img


def transform_image(content: bytes | None, ext: str, settings: dict[str, Any], key: str, seed: int = 0,
                    mask_mode: str = "none", mask_content: bytes | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Encoded bytes -> uint8 (h, w, c) pixels at the configured size, and an optional 0/1 mask.

    Raises ``BadRecord`` with the reason a person can act on: empty_file, unreadable, wrong_type,
    too_large, truncated, no_alpha, mask_unreadable, mask_size_mismatch.
    """
    from PIL import Image, UnidentifiedImageError

    if not content:
        raise BadRecord("empty_file", "the file has 0 bytes")
    max_pixels = int(settings.get("max_pixels") or 0)
    try:
        img = Image.open(io.BytesIO(content))
    except Image.DecompressionBombError as exc:   # Pillow's own cap (2x MAX_IMAGE_PIXELS), checked in open()
        raise BadRecord("too_large", f"{exc}; more than data.image.max_pixels={max_pixels}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadRecord("unreadable", f"Pillow cannot identify an image in {len(content)} bytes ({exc})") from None
    want = EXT_FORMAT.get(ext.lower())
    if want is not None and img.format != want:
        raise BadRecord("wrong_type", f"the file is {img.format or 'unknown'} data behind a .{ext} extension; "
                                      f"rename it or re-encode it as {want}")
    if max_pixels and img.size[0] * img.size[1] > max_pixels:
        # decided from the header, before a single pixel is decoded: a small file can declare a huge image
        raise BadRecord("too_large", f"the header declares {img.size[0]}x{img.size[1]} = {img.size[0] * img.size[1]:,} "
                                     f"pixels, more than data.image.max_pixels={max_pixels:,}")
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadRecord("truncated", f"decoding stopped early: {exc}") from None
    img = _eight_bit(img)
    h, w, c = int(settings["height"]), int(settings["width"]), int(settings["channels"])
    textured = settings.get("background") == "texture"
    bg = background_colour("white" if textured else settings.get("background", "white"), key, seed)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    alpha = None
    rgba = img.convert("RGBA") if has_alpha or textured else None
    if has_alpha:
        alpha = rgba.getchannel("A")
        base = Image.new("RGBA", rgba.size, bg + (255,))
        img = Image.alpha_composite(base, rgba).convert("RGB")
    mask_img = None
    if mask_mode == "alpha":
        if alpha is None:
            raise BadRecord("no_alpha", f"mask: alpha needs an alpha channel, the image is {img.mode}")
        mask_img = alpha.point(lambda v: 255 if v > 127 else 0)
    elif mask_mode == "file":
        if not mask_content:
            raise BadRecord("mask_unreadable", "the mask file is missing or empty")
        try:
            m = Image.open(io.BytesIO(mask_content))
            m.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise BadRecord("mask_unreadable", f"Pillow cannot read the mask ({exc})") from None
        if m.size != img.size:
            raise BadRecord("mask_size_mismatch", f"image is {img.size[0]}x{img.size[1]} but its mask is "
                                                  f"{m.size[0]}x{m.size[1]}")
        mask_img = m.convert("L").point(lambda v: 255 if v > 127 else 0)
    if textured:
        from .backgrounds import paste_on_texture

        placed, mask_img = paste_on_texture(rgba, mask_img, h, w, float(settings.get("paste_scale_min", 1.0)), key,
                                            seed, _geometry)
        out = np.asarray(placed.convert("L" if c == 1 else "RGB"), dtype=np.uint8).reshape(h, w, c)
        mask = (np.asarray(mask_img) > 127).astype(np.uint8) if mask_img is not None else None
        return out, mask
    img = img.convert("L" if c == 1 else "RGB")
    fill = (bg[0] * 299 + bg[1] * 587 + bg[2] * 114) // 1000 if c == 1 else bg
    out = np.asarray(_geometry(img, h, w, settings.get("resize", "fit"), fill, Image.BILINEAR), dtype=np.uint8)
    out = out.reshape(h, w, c)
    mask = None
    if mask_img is not None:
        mask = (np.asarray(_geometry(mask_img, h, w, settings.get("resize", "fit"), 0, Image.NEAREST)) > 127
                ).astype(np.uint8)
    return out, mask


# ---- folder / index sources ----------------------------------------------------------------------

def _folder_label(rel: str, level: int | None) -> str | None:
    if level is None:
        return None
    parts = rel.split("/")[:-1]
    if not parts:
        return None
    try:
        return parts[level]
    except IndexError:
        return None


def _sidecar(path: str, suffix: str) -> bytes | None:
    """The bytes of the file beside ``path`` with ``suffix`` instead of its extension, or None; read
    through pipelines/paths (files.read_bytes), so a tree on S3/HDFS has its sidecars too."""
    from .sources.files import local, read_bytes

    side = os.path.splitext(local(path))[0] + suffix
    with contextlib.suppress(OSError):
        return read_bytes(side)
    return None


def decode_files(frames: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    """mapInPandas body over ``binaryFile`` rows (path, content) plus optional label/mask/caption columns.

    ``ctx["sidecars"]``: a file tree (its include/exclude pick the files, the folder names the class,
    masks and captions sit beside each image); else an index whose columns carry them.
    """
    from .sources.files import check_source, local, relative, row_content, selected

    root, src, tree = ctx["root"], ctx["source"], ctx["sidecars"]
    for frame in frames:
        good: dict[str, list] = {k: [] for k in ("id", "split_id", "source", "label", "mask", "caption")}
        pixels: list[np.ndarray] = []
        bad: dict[str, list] = {k: [] for k in ("id", "source", "reason", "detail", "stage")}
        for row in frame.itertuples(index=False):
            path = local(row.path)
            rel = relative(path, root)
            if tree and not selected(rel, src["include"], src["exclude"]):
                continue
            rid = f"{ctx['dataset']}/{rel}"
            ext = os.path.splitext(path)[1].lstrip(".")
            try:
                check_source(path, root, getattr(row, "read_error", None))
                if tree:
                    label = _folder_label(rel, src["label_level"])
                else:
                    label = getattr(row, "label_name", None)
                    label = None if label is None or (isinstance(label, float) and np.isnan(label)) or str(label) == "" \
                        else str(label)
                if ctx["needs_label"] and label is None:
                    raise BadRecord("missing_label", f"no label for {rel}: " + (
                        f"it is not inside a class folder (label_level {src.get('label_level')})"
                        if tree else f"column {src.get('label_column')} is empty"), "label")
                mask_bytes = None
                if ctx["mask"] == "file":
                    mask_bytes = (_sidecar(path, src["mask_suffix"] + ".png") if tree
                                  else getattr(row, "mask_content", None))
                caption = None
                if ctx["caption"]:
                    raw = (_sidecar(path, src["caption_sidecar"]) if tree
                           else (getattr(row, "caption", None) or "").encode("utf-8"))
                    caption = _caption(raw)
                content = row_content(row, path)
                made = [(key, *transform_image(content, ext, ctx["image"], key, ctx["seed"], ctx["mask"], mask_bytes))
                        for key in _variant_ids(rid, ctx.get("variants", 1))]
            except BadRecord as bad_rec:
                for k, v in zip(("id", "source", "reason", "detail", "stage"),
                                (rid, path, bad_rec.reason, bad_rec.detail, bad_rec.stage)):
                    bad[k].append(v)
                continue
            for key, pix, mask in made:
                pixels.append(pix)
                good["id"].append(key)
                good["split_id"].append(rid)
                good["source"].append(path)
                good["label"].append(label)
                good["mask"].append(mask.tobytes() if mask is not None else None)
                good["caption"].append(caption)
        if pixels:
            out = image_rows(good["id"], good["source"], "all", np.stack(pixels), np.full(len(pixels), -1),
                             [], ctx["val_fraction"], ctx["test_fraction"], good["mask"], good["caption"],
                             split_ids=good["split_id"])
            out["label_name"] = good["label"]
            yield out
            faults.maybe_kill("prepare.decode")   # tests only: dies after sending rows, so the retry must not duplicate them
        if bad["id"]:
            yield bad_rows(bad["id"], bad["source"], "all", bad["reason"], bad["detail"], bad["stage"])


def _variant_ids(rid: str, variants: int) -> list[str]:
    """The file's own id, then ``<id>#v1``...: one row per background variant."""
    return [rid] + [f"{rid}#v{k}" for k in range(1, variants)]


def _caption(raw: bytes | None) -> str:
    if raw is None:
        raise BadRecord("missing_caption", "no caption file beside the image", "label")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRecord("non_utf8", f"caption is not UTF-8 ({exc})", "label") from None
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not first:
        raise BadRecord("empty_text", "the caption is empty", "label")
    return first


def mask_mode(src) -> str:
    """``none``, ``alpha`` or ``file``: what the source says about masks (image sources without a
    ``mask_mode`` have none)."""
    return getattr(src, "mask_mode", "none")


def has_captions(src) -> bool:
    """Whether the source gives every image a caption (a ``captions`` attribute; default none)."""
    return bool(getattr(src, "captions", False))


def decode_context(exp, root: str, sidecars: bool, needs_label: bool) -> dict[str, Any]:
    """What ``decode_files`` needs in the task: small, plain values (no config objects)."""
    src = exp.data.source
    return {"root": root, "source": src.model_dump(mode="json"), "sidecars": sidecars, "dataset": exp.data.dataset,
            "seed": exp.seed, "image": exp.data.image.model_dump(mode="json"), "val_fraction": exp.data.val_fraction,
            "test_fraction": exp.data.test_fraction, "needs_label": needs_label, "mask": mask_mode(src),
            "caption": has_captions(src),
            "variants": exp.data.image.variants if exp.data.image.background == "texture" else 1}


# ---- finish: label ids, caption ids, manifest extras ----------------------------------------------

def finish(spark, exp, good, label_names: list[str], totals, *, shape: dict[str, int] | None = None,
           relabel: bool = True, columns: tuple[str, ...] = (), extra: dict[str, Any] | None = None
           ) -> tuple[Any, dict[str, Any]]:
    """Label ids, masks, caption ids and the manifest extras of any image source.

    A source that knows more passes it in: ``shape`` (default: ``data.image``), ``relabel=False`` when
    its rows already hold label ids, extra ``columns`` to keep and manifest ``extra`` entries. The task
    follows from what the rows hold: masks -> segmentation, captions without classes -> captioning.
    """
    from pyspark.sql import functions as F

    src = exp.data.source
    cols = [*DATA_COLUMNS, *columns]
    df = good
    extra = dict(extra or {})
    if relabel:
        df = df.withColumn("label", label_ids(label_names) if label_names else F.lit(-1).cast("long"))
    masks, captions = mask_mode(src) != "none", has_captions(src)
    if masks:
        cols.append("mask")
        extra["mask"] = {"values": [0, 1], "meaning": "1 = object (alpha > 127 or mask > 127)"}
    if captions:
        from . import text

        cols.append("caption")
        # <bos> ... <eos> around every caption: a decoder learns where captions start and end
        df, vocab, lengths = text.add_token_ids(df, exp, "caption", "caption_ids", exp.data.text.tokenizer,
                                                bos_eos=True)
        cols.append("caption_ids")
        extra["vocab"] = {"caption": vocab}
        extra["lengths"] = {"caption": lengths}
    extra["task"] = "segmentation" if masks else "captioning" if captions and not label_names else "classification"
    extra["shape"] = shape or {"channels": exp.data.image.channels, "height": exp.data.image.height,
                               "width": exp.data.image.width}
    return df.select("split", *cols), extra
