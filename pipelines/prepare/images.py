"""Image rows in the prepared-data contract: raw uint8 pixels (channels last) as ``binary`` + shape.

Sources: IDX files (Fashion-MNIST), a class-per-subfolder tree, a CSV/Parquet index, one large grid
image (the OpenCV digits sheet). Every decode happens inside a Spark task (``binaryFile`` +
``mapInPandas``): Pillow decode, alpha compositing, resize / crop / pad to ``data.image``, channel
layout, optional mask (from the alpha channel or a mask file) and caption. Each row carries pixel sums
so the normalisation statistics come out of one Spark aggregation.
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
from .split import assign

COMMON_SCHEMA = ("id string, source string, split string, label_name string, stage string, reason string, "
                 "detail string, stat_sum double, stat_sumsq double, stat_count long")
# Every image row, good or bad, before the writer routes it to a split or to quarantine.
ROW_SCHEMA = (COMMON_SCHEMA + ", image binary, height int, width int, channels int, label long, mask binary, "
              "caption string")
DATA_COLUMNS = ["id", "source", "image", "height", "width", "channels", "label", "label_name"]
EXT_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF", "webp": "WEBP",
              "tif": "TIFF", "tiff": "TIFF"}


# ---- rows ----------------------------------------------------------------------------------------

def pixel_sums(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row sum and sum of squares of uint8 pixels on the 0..1 scale, for the normalisation statistics.

    Exact integer sums: converting every pixel to float64 first cost a fifth of the whole decode (1.5 s
    per 800 64x64 RGB images, against 0.02 s this way). uint32 holds a row's sum of squares up to
    66,051 values (255^2 each); larger rows use uint64.
    """
    wide = np.uint32 if flat.shape[1] * 255 * 255 < 2 ** 32 else np.uint64
    as_int = flat.astype(wide)
    total = flat.sum(axis=1, dtype=np.uint64).astype(np.float64) / 255.0
    squares = np.einsum("ij,ij->i", as_int, as_int).astype(np.float64) / (255.0 * 255.0)
    return total, squares


def image_rows(ids: list[str], sources: list[str], source_split: str, pixels: np.ndarray,
               labels: np.ndarray, label_names: list[str], val_fraction: float, test_fraction: float = 0.0,
               masks: list[bytes | None] | None = None, captions: list[str | None] | None = None,
               split_ids: list[str] | None = None) -> pd.DataFrame:
    """Good rows from uint8 (n, h, w, c) pixels; labels outside the known classes become bad rows.

    ``split_ids`` (default: the ids) decide the split, so several rows made from one file share it.
    """
    n, h, w, c = pixels.shape if pixels.ndim == 4 else (0, 0, 0, 0)
    flat = pixels.reshape(n, -1)
    pixel_sum, pixel_sumsq = pixel_sums(flat)
    known = (labels >= 0) & (labels < len(label_names)) if label_names else np.ones(n, dtype=bool)
    names = np.array(label_names + [""], dtype=object)
    frame = pd.DataFrame({
        "id": ids,
        "source": sources,
        "split": assign(split_ids or ids, source_split, val_fraction, test_fraction),
        "label_name": names[np.where(known, labels, len(label_names))] if label_names else [None] * n,
        "stage": None, "reason": None, "detail": None,
        "stat_sum": pixel_sum,
        "stat_sumsq": pixel_sumsq,
        "stat_count": np.full(n, h * w * c, dtype=np.int64),
        "image": [row.tobytes() for row in flat],
        "height": np.full(n, h, dtype=np.int32),
        "width": np.full(n, w, dtype=np.int32),
        "channels": np.full(n, c, dtype=np.int32),
        "label": labels.astype(np.int64),
        "mask": masks if masks is not None else [None] * n,
        "caption": captions if captions is not None else [None] * n,
    })
    if not known.all():
        bad = ~known
        frame.loc[bad, "stage"] = "decode"
        frame.loc[bad, "reason"] = "bad_label"
        frame.loc[bad, "detail"] = [f"label {int(v)} is outside 0..{len(label_names) - 1}" for v in labels[bad]]
    return frame


def bad_rows(ids: list[str], sources: list[str], source_split: str, reason: str | list[str],
             detail: str | list[str], stage: str | list[str] = "read") -> pd.DataFrame:
    """Rows for records that could not be read: they go to quarantine, never silently away."""
    n = len(ids)
    as_list = lambda v: v if isinstance(v, list) else [v] * n  # noqa: E731
    return pd.DataFrame({
        "id": ids, "source": sources, "split": [source_split] * n, "label_name": [None] * n,
        "stage": as_list(stage), "reason": as_list(reason), "detail": as_list(detail),
        "stat_sum": np.zeros(n), "stat_sumsq": np.zeros(n), "stat_count": np.zeros(n, np.int64),
        "image": [None] * n, "height": np.zeros(n, np.int32), "width": np.zeros(n, np.int32),
        "channels": np.zeros(n, np.int32), "label": np.full(n, -1, np.int64), "mask": [None] * n,
        "caption": [None] * n,
    })


def label_ids(label_names: list[str]):
    """Spark column: the position of ``label_name`` in the class list (the manifest's label order)."""
    from itertools import chain

    from pyspark.sql import functions as F

    if not label_names:   # an unlabelled set (label_column: null): an empty map literal has no key type
        return F.lit(-1).cast("long")
    lookup = F.create_map(*chain.from_iterable((F.lit(n), F.lit(i)) for i, n in enumerate(label_names)))
    return F.coalesce(lookup[F.col("label_name")], F.lit(-1)).cast("long")


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
    from .sources.files import local

    side = os.path.splitext(local(path))[0] + suffix
    with contextlib.suppress(OSError):
        with open(side, "rb") as fh:
            return fh.read()
    return None


def decode_files(frames: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    """mapInPandas body over ``binaryFile`` rows (path, content) plus optional label/mask/caption columns."""
    from .sources.files import check_source, local, relative, row_content, selected

    root, src = ctx["root"], ctx["source"]
    for frame in frames:
        good: dict[str, list] = {k: [] for k in ("id", "split_id", "source", "label", "mask", "caption")}
        pixels: list[np.ndarray] = []
        bad: dict[str, list] = {k: [] for k in ("id", "source", "reason", "detail", "stage")}
        for row in frame.itertuples(index=False):
            path = local(row.path)
            rel = relative(path, root)
            if ctx["kind"] == "image_folder" and not selected(rel, src["include"], src["exclude"]):
                continue
            rid = f"{ctx['dataset']}/{rel}"
            ext = os.path.splitext(path)[1].lstrip(".")
            try:
                check_source(path, root, getattr(row, "read_error", None))
                if ctx["kind"] == "image_folder":
                    label = _folder_label(rel, src["label_level"])
                else:
                    label = getattr(row, "label_name", None)
                    label = None if label is None or (isinstance(label, float) and np.isnan(label)) or str(label) == "" \
                        else str(label)
                if ctx["needs_label"] and label is None:
                    raise BadRecord("missing_label", f"no label for {rel}: " + (
                        f"it is not inside a class folder (label_level {src.get('label_level')})"
                        if ctx["kind"] == "image_folder" else f"column {src.get('label_column')} is empty"), "label")
                mask_bytes = None
                if ctx["mask"] == "file":
                    mask_bytes = (_sidecar(path, src["mask_suffix"] + ".png") if ctx["kind"] == "image_folder"
                                  else getattr(row, "mask_content", None))
                caption = None
                if ctx["caption"]:
                    raw = (_sidecar(path, src["caption_sidecar"]) if ctx["kind"] == "image_folder"
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


def _ctx(exp, root: str) -> dict[str, Any]:
    src = exp.data.source
    d = src.model_dump(mode="json")
    task_label = (getattr(src, "label_level", 0) is not None) if src.kind == "image_folder" else bool(
        getattr(src, "label_column", None))
    return {"root": root, "source": d, "kind": src.kind, "dataset": exp.data.dataset, "seed": exp.seed,
            "image": exp.data.image.model_dump(mode="json"), "val_fraction": exp.data.val_fraction,
            "test_fraction": exp.data.test_fraction, "needs_label": task_label,
            "mask": d.get("mask", "file" if d.get("mask_column") else "none"),
            "caption": bool(d.get("caption_sidecar") or d.get("caption_column")) or src.kind == "compositions",
            "variants": exp.data.image.variants if exp.data.image.background == "texture" else 1}


def read(spark, exp, listing: list[dict[str, Any]], stack: contextlib.ExitStack):
    """Image rows (good and flagged bad) for any image source, decoded in Spark tasks."""
    from .sources import compose, files, grid, idx, pixel_csv

    src = exp.data.source
    if src.kind == "idx":
        return idx.read(spark, exp)
    if src.kind == "compositions":
        return compose.read(spark, exp)
    if src.kind == "image_grid":
        return grid.read(spark, exp)
    if src.kind == "pixel_csv":
        return pixel_csv.read(spark, exp)
    if src.kind == "image_folder":
        ctx = _ctx(exp, src.path)
        # paths from the driver's listing (mask files, read as sidecars, are left out of the rows);
        # each task reads its own files (files.row_content): no second listing, no bytes through the JVM
        return files.folder_rows(spark, exp, listing, lambda it: decode_files(it, ctx), ROW_SCHEMA,
                                 skip_suffix=src.mask_suffix if src.mask == "file" else None)
    # image_index: a small table on the driver is fine (paths only); the files are read in the tasks
    df = _index_with_content(spark, exp, stack)
    ctx = _ctx(exp, src.path.rsplit("/", 1)[0])
    return df.mapInPandas(lambda it: decode_files(it, ctx), ROW_SCHEMA)


def _index_with_content(spark, exp, stack):
    """Join the index (path, label, mask, caption) to binaryFile contents of the files it names."""
    from pyspark.sql import functions as F

    from .sources import files

    src = exp.data.source
    base = files.local(src.path).rsplit("/", 1)[0]
    table = files.read_index(spark, src.path, {c: "string" for c in (src.path_column, src.mask_column,
                                                                     getattr(src, "caption_column", None)) if c}
                             | ({src.label_column: "any"} if src.label_column else {}))
    cols = [files.index_path(base, src.path_column).alias("path")]
    if src.label_column:
        cols.append(F.col(src.label_column).cast("string").alias("label_name"))
    if getattr(src, "caption_column", None):
        cols.append(F.col(src.caption_column).alias("caption"))
    if getattr(src, "mask_column", None):
        cols.append(F.concat(F.lit(base + "/"), F.col(src.mask_column)).alias("mask_path"))
    index = table.select(*cols)
    if exp.data.max_records:
        index = index.limit(exp.data.max_records)
    # content is read by path in the task (so a path the index names but the disk lacks is a quarantine
    # row, not a silently missing join partner)
    return index.repartition(max(1, spark.sparkContext.defaultParallelism * exp.prepare.tasks_per_core)) \
        .mapInPandas(lambda it: _attach_content(it, base), _index_schema(src))


def _index_schema(src) -> str:
    s = "path string, content binary, read_error string"
    if src.label_column:
        s += ", label_name string"
    if getattr(src, "caption_column", None):
        s += ", caption string"
    if getattr(src, "mask_column", None):
        s += ", mask_content binary"
    return s


def _attach_content(frames: Iterator[pd.DataFrame], root: str) -> Iterator[pd.DataFrame]:
    """Read each file the index names, but never one outside ``root`` (an index is user data: it may
    say ``../../etc/shadow``); what cannot be read is kept as ``read_error`` for the quarantine."""
    from .sources.files import inside, read_bytes

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


# ---- finish: label ids, caption ids, manifest extras ----------------------------------------------

def finish(spark, exp, good, label_names: list[str], totals) -> tuple[Any, dict[str, Any]]:
    from pyspark.sql import functions as F

    src = exp.data.source
    cols = list(DATA_COLUMNS)
    df = good
    extra: dict[str, Any] = {}
    if src.kind == "compositions":
        from .sources import compose

        df = df.withColumn("label", F.lit(-1).cast("long"))
        shape = {"channels": 1, "height": src.canvas, "width": src.canvas}
        cols += ["subject", "relation", "object"]
        extra["compositions"] = {"nouns": list(src.nouns), "relations": list(src.relations), "canvas": src.canvas,
                                 "triples": compose.summary(df)}
    elif src.kind != "idx":
        df = df.withColumn("label", label_ids(label_names) if label_names else F.lit(-1).cast("long"))
        shape = {"channels": exp.data.image.channels, "height": exp.data.image.height, "width": exp.data.image.width}
    else:
        from .sources import idx

        shape = idx.shape(exp)
    ctx = _ctx(exp, getattr(src, "path", ""))
    task = "classification"
    if ctx["mask"] != "none":
        cols.append("mask")
        task = "segmentation"
        extra["mask"] = {"values": [0, 1], "meaning": "1 = object (alpha > 127 or mask > 127)"}
    if ctx["caption"]:
        from . import text

        cols.append("caption")
        # <bos> ... <eos> around every caption: a decoder learns where captions start and end
        df, vocab, lengths = text.add_token_ids(df, exp, "caption", "caption_ids", exp.data.text.tokenizer,
                                                bos_eos=True)
        cols.append("caption_ids")
        extra["vocab"] = {"caption": vocab}
        extra["lengths"] = {"caption": lengths}
        task = "captioning" if task == "classification" and not label_names else task
    extra["task"] = task
    extra["shape"] = shape
    return df.select("split", *cols), extra
