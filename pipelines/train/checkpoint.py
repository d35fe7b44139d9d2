"""Checkpoints: everything needed to continue a run exactly where it stopped.

Written by rank 0 after every epoch through the path helper (local, HDFS, S3), via a temporary name and
a rename, so a crash mid-write never leaves a checkpoint that loads but is wrong.
"""

from __future__ import annotations

import io
import random
import re
from typing import Any

import numpy as np
import torch

from .. import paths

_NAME = re.compile(r"^epoch-(\d{4})\.pt$")


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save(directory: str, epoch: int, state: dict[str, Any]) -> str:
    path = paths.join(directory, f"epoch-{epoch:04d}.pt")
    fs, inner = paths.filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    tmp = inner + ".tmp"
    with fs.open_output_stream(tmp) as fh:
        fh.write(buf.getvalue())
    fs.move(tmp, inner)
    return path


def latest(directory: str) -> str | None:
    """The newest complete checkpoint in a run's folder, or None."""
    if not paths.exists(directory):
        return None
    found = sorted(p for p in paths.list_files(directory, ".pt") if _NAME.match(p.rsplit("/", 1)[-1]))
    return found[-1] if found else None


def load(path: str) -> dict[str, Any]:
    fs, inner = paths.filesystem(path)
    with fs.open_input_stream(inner) as fh:
        data = fh.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
