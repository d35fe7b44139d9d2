"""Checkpoints: everything needed to continue a run exactly where it stopped.

Written by rank 0 through the path helper (local, HDFS, S3), via a temporary name and a rename, so a
crash mid-write never leaves a checkpoint that loads but is wrong. Two kinds share a run's folder:
``epoch-EEEE.pt`` at the end of epoch E (0-based) and ``step-EEEE-SSSSSS.pt`` after S steps of epoch E
(``train.checkpoint_every_steps`` / ``_seconds``); a step checkpoint also holds every rank's RNG state
and partial epoch sums, and the loader position is (E, S): the reader replays it exactly.
"""

from __future__ import annotations

import io
import random
import re
from typing import Any

import numpy as np
import torch

from .. import paths

_NAME = re.compile(r"^(?:epoch-(\d{4})|step-(\d{4})-(\d{6}))\.pt$")
FAULT_MARKER = "fault-fired"   # the test fault hook fires once per run: a restarted rank finds this file


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def position(path: str) -> tuple[int, float]:
    """(epoch, steps done in it) of a checkpoint file; an epoch-end checkpoint sorts after all its steps."""
    m = _NAME.match(path.rsplit("/", 1)[-1])
    if m is None:
        raise ValueError(f"{path} is not a checkpoint name")
    return (int(m.group(1)), float("inf")) if m.group(1) else (int(m.group(2)), float(m.group(3)))


def name(epoch: int, step: int | None = None) -> str:
    return f"epoch-{epoch:04d}.pt" if step is None else f"step-{epoch:04d}-{step:06d}.pt"


def save(directory: str, epoch: int, state: dict[str, Any], step: int | None = None) -> str:
    """Write atomically (temp name + rename); ``step``: a mid-epoch checkpoint after that many steps."""
    path = paths.join(directory, name(epoch, step))
    fs, inner = paths.filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    tmp = inner + ".tmp"
    with fs.open_output_stream(tmp) as fh:
        fh.write(buf.getvalue())
    fs.move(tmp, inner)
    return path


def _all(directory: str) -> list[str]:
    if not paths.exists(directory):
        return []
    return sorted((p for p in paths.list_files(directory, ".pt") if _NAME.match(p.rsplit("/", 1)[-1])), key=position)


def latest(directory: str) -> str | None:
    """The newest complete checkpoint in a run's folder (furthest into training), or None."""
    found = _all(directory)
    return found[-1] if found else None


def prune(directory: str, keep: int, keep_epochs: bool = False) -> list[str]:
    """Delete all but the newest ``keep`` checkpoints; ``keep_epochs``: epoch ends stay (restore_best)."""
    found = _all(directory)
    gone = [p for p in found[:-keep] if not (keep_epochs and position(p)[1] == float("inf"))]
    for p in gone:
        paths.delete_file(p)
    return gone


def load(path: str) -> dict[str, Any]:
    fs, inner = paths.filesystem(path)
    with fs.open_input_stream(inner) as fh:
        data = fh.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
