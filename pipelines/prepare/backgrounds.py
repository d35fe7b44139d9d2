"""Seeded random backgrounds for cut-out images (``data.image.background: texture``).

Segmentation needs the object to stand out by its shape, not by a background colour a threshold can
find: each row gets its own picture made of a two-colour gradient, a few filled shapes and pixel noise,
seeded by the row id, so a re-prepare gives the same pixels and different rows differ.
"""

from __future__ import annotations

import hashlib

import numpy as np

SHAPES = (2, 7)             # filled rectangles/ellipses per background, [low, high)
SHAPE_SIZE = (0.1, 0.5)     # shape side as a share of the frame
NOISE_STD = (0.0, 18.0)     # Gaussian pixel noise, uint8 scale


def rng_for(key: str, seed: int, purpose: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}:{key}:{purpose}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def texture(height: int, width: int, rng: np.random.Generator):
    """An RGB Pillow image: gradient + shapes + noise."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    c0, c1 = rng.integers(0, 256, size=(2, 3)).astype(np.float64)
    base = c0 + (c1 - c0) * t[..., None]
    img = Image.fromarray(base.round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(*SHAPES))):
        w = max(1, int(width * rng.uniform(*SHAPE_SIZE)))
        h = max(1, int(height * rng.uniform(*SHAPE_SIZE)))
        x0, y0 = int(rng.integers(-w // 2, width)), int(rng.integers(-h // 2, height))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=colour)
    arr = np.asarray(img, dtype=np.float64)
    arr = arr + rng.normal(0.0, rng.uniform(*NOISE_STD), size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")


def paste_on_texture(rgba, mask_img, height: int, width: int, scale_min: float, key: str, seed: int, geometry):
    """The cut-out fitted at a random scale and place on a random texture -> (RGB image, mask image | None).

    ``geometry`` is the caller's resize-and-pad function, so the cut-out and its mask follow the same
    resampling rules as every other image.
    """
    from PIL import Image

    rng = rng_for(key, seed, "paste")
    scale = rng.uniform(scale_min, 1.0)
    tw, th = max(1, round(width * scale)), max(1, round(height * scale))
    cut = geometry(rgba, th, tw, "fit", (0, 0, 0, 0), Image.BILINEAR)
    x0, y0 = int(rng.integers(0, width - tw + 1)), int(rng.integers(0, height - th + 1))
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    layer.paste(cut, (x0, y0))
    out = Image.alpha_composite(texture(height, width, rng).convert("RGBA"), layer).convert("RGB")
    mask = None
    if mask_img is not None:
        mask = Image.new("L", (width, height), 0)
        mask.paste(geometry(mask_img, th, tw, "fit", 0, Image.NEAREST), (x0, y0))
    return out, mask
