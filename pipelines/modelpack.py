"""The model format sparkzoo logs to MLflow: a pyfunc that carries its own pre-processing.

Why not ``mlflow.pytorch.log_model``: in mlflow 3.17 it saves torch.export (pt2) programs that refuse
``.eval()`` and need fixed example shapes. We log a small spec (family, params, task, input shape,
normalisation, label names) plus a ``state_dict``; loading rebuilds the module from the registry. The
pyfunc takes a pandas DataFrame in the prepared schema (an ``image`` binary column), so
``mlflow.pyfunc.load_model`` and ``mlflow.pyfunc.spark_udf`` work on the same model our scorer uses,
and our scorer calls ``predict_arrays`` on whole numpy batches.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd

from .modelspec import (SPEC_FILE, WEIGHTS_FILE, build_module, build_spec, input_spec,  # noqa: F401  (re-exported)
                        make_spec_task, target_vocab)

try:  # mlflow is on every machine that logs or loads models; the models package never imports this
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]

OPTIMIZATIONS = ("none", "channels_last", "compile", "int8")


# Rows per forward pass on CPU for image models: a sweep of the LeNet-like CNN (bench/scoring.py, idle
# 2-core VM) ran 12,403 rows/s at 1,024 rows and 8,637 at 10,000 (the Arrow batch), as activations
# of a 10,000-row pass fall out of cache. A GPU takes the whole Arrow batch.
IMAGE_CHUNK = 1024
# Rows per forward pass for sequence models. Measured on the Pang & Lee BiLSTM (bench/RESULTS.md): a
# 10,000-row Arrow batch in one pass ran 20x slower per row than chunks of 64 sorted by length (the
# recurrent steps run to the longest row, and large activations fall out of cache).
SEQUENCE_CHUNK = 64


class Predictor:
    """A loaded model plus its pre-processing; vectorised over whole batches.

    ``device`` puts the module on a GPU when the scorer found one; ``optimize`` is the opt-in fast path
    (checked against eager accuracy by the scorer before it is used on a job).
    """

    def __init__(self, spec: dict[str, Any], module, *, device: str = "cpu", optimize: str = "none",
                 chunk: int = SEQUENCE_CHUNK, image_chunk: int = IMAGE_CHUNK) -> None:
        import torch

        if optimize not in OPTIMIZATIONS:
            raise ValueError(f"unknown optimisation '{optimize}'; choose one of: {', '.join(OPTIMIZATIONS)}")
        self.spec = spec
        self.device = torch.device(device)
        self.optimize = optimize
        self.module = optimize_module(module.eval().to(self.device), optimize, self.device)
        self.task = make_spec_task(spec)
        self.chunk = max(1, int(chunk))
        self.image_chunk = max(1, int(image_chunk))
        self._torch = torch

    @classmethod
    def from_dir(cls, directory: str, *, device: str = "cpu", optimize: str = "none",
                 chunk: int = SEQUENCE_CHUNK, image_chunk: int = IMAGE_CHUNK) -> "Predictor":
        import torch

        with open(os.path.join(directory, SPEC_FILE)) as fh:
            spec = json.load(fh)
        module = build_module(spec)
        module.load_state_dict(torch.load(os.path.join(directory, WEIGHTS_FILE), map_location="cpu", weights_only=True))
        return cls(spec, module, device=device, optimize=optimize, chunk=chunk, image_chunk=image_chunk)

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.task.input_columns

    def decode(self, images: pd.Series) -> np.ndarray:
        """A column of raw pixel bytes -> uint8 (n, h, w, c); a wrong size is a ValueError naming the row."""
        shape = self.spec["shape"]
        per = shape["height"] * shape["width"] * shape["channels"]
        lengths = images.map(lambda b: -1 if b is None else len(b)).to_numpy()
        bad = np.flatnonzero(lengths != per)
        if len(bad):
            raise ValueError(f"row {int(bad[0])}: image has {int(lengths[bad[0]])} bytes, the model expects {per} "
                             f"({shape['height']}x{shape['width']}x{shape['channels']})")
        flat = np.frombuffer(b"".join(images.tolist()), dtype=np.uint8)
        return flat.reshape(len(images), shape["height"], shape["width"], shape["channels"])

    def batch(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """A pandas frame in the prepared schema -> the numpy batch the task reads.

        Text models take ``token_ids`` or, when a frame has only raw ``text``, tokenise it with the
        model's own vocabulary and normalisation (the pre-processing travels with the model).
        """
        from .sequence_inputs import frames_batch, ids_batch, text_batch

        cols = self.input_columns
        if "image" in cols:
            return {"image": self.decode(frame["image"])}
        if "features" in cols:
            return frames_batch(frame["features"], int(self.spec["shape"]["n_mels"]))
        if "token_ids" in frame.columns:
            return ids_batch(frame["token_ids"], "token_ids")
        if "text" in frame.columns:
            return text_batch(frame["text"], self.spec)
        raise ValueError(f"a {self.spec['task']} model needs a 'token_ids' or 'text' column; got {list(frame.columns)}")

    def predict_arrays(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (n, h, w, c) -> the task's output columns as numpy arrays (see ``models.tasks``)."""
        return self.predict_batch({"image": pixels})

    def predict_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A numpy batch -> the task's output columns as numpy arrays, under ``torch.inference_mode``."""
        torch = self._torch
        with torch.inference_mode():
            if "image" not in self.input_columns or hasattr(self.task, "model_inputs"):
                # sequence tasks (captioning too: an image in, a dict of tensors for the model) build their
                # own inputs; only plain image tasks take the bare pixel tensor below
                return self._predict_chunks(batch)
            pixels = batch["image"]
            n = len(pixels)
            step = self.image_chunk if self.device.type == "cpu" else max(n, 1)   # a GPU takes the whole batch
            if n <= step:
                return self._predict_images(pixels)
            parts = [self._predict_images(pixels[i:i + step]) for i in range(0, n, step)]
            return {k: _stack([p[k] for p in parts]) for k in parts[0]}

    def _predict_images(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        x = self.task.inputs(pixels, self.device if self.device.type != "cpu" else None)
        if self.optimize in ("channels_last", "compile"):
            x = x.contiguous(memory_format=torch.channels_last)
        n = x.shape[0]
        if self.optimize == "compile":
            # One static graph: pad a short (last) batch up to the largest size seen instead of
            # recompiling for every partition's remainder.
            self._pad_to = max(getattr(self, "_pad_to", 0), n)
            if n < self._pad_to:
                x = torch.cat([x, x.new_zeros((self._pad_to - n, *x.shape[1:]))]).contiguous(
                    memory_format=torch.channels_last)
        out = self.task.as_float(_rows(self.task.predict(self.module, x), n))
        if self.device.type != "cpu":
            out = {k: v.cpu() for k, v in out.items()} if isinstance(out, dict) else out.cpu()
        return self.task.outputs(out, x[:n].cpu())

    def _predict_sequence(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self.task.model_inputs(batch, self.device)
        out = self.task.as_float(self.task.predict(self.module, x))
        if self.device.type != "cpu":
            out = {k: v.cpu() for k, v in out.items()}
        return self.task.outputs(out, x)

    def _predict_chunks(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows sorted by length, ``chunk`` at a time (each cut to its own longest row by the task), and
        the outputs put back in the caller's row order: same answers, far less padding per pass."""
        n = len(next(iter(batch.values())))
        if n <= self.chunk:
            return self._predict_sequence(batch)
        key = self.task.sort_key
        order = np.argsort(batch[key], kind="stable") if key and key in batch else np.arange(n)
        parts = [self._predict_sequence({k: v[order[i:i + self.chunk]] for k, v in batch.items()})
                 for i in range(0, n, self.chunk)]
        back = np.empty(n, dtype=np.int64)
        back[order] = np.arange(n)
        return {k: _stack([p[k] for p in parts])[back] for k in parts[0]}

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        return outputs_frame(self.predict_batch(self.batch(frame)))


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Chunks' outputs as one array; rows of different widths (per-chunk padding) become object rows."""
    if all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays)
    rows = [row for a in arrays for row in a]
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):   # item by item: numpy would try to broadcast equal-width rows
        out[i] = row
    return out


def _rows(out: Any, n: int) -> Any:
    return {k: v[:n] for k, v in out.items()} if isinstance(out, dict) else out[:n]


def outputs_frame(out: dict[str, np.ndarray]) -> pd.DataFrame:
    """Task outputs -> the columns scoring writes: uint8 rows become bytes (masks), float rows arrays."""
    cols: dict[str, Any] = {}
    for name, arr in out.items():
        if arr.ndim == 1:
            cols[name] = arr
        elif arr.dtype == np.uint8:
            cols[name] = [row.tobytes() for row in arr]
        else:
            cols[name] = list(arr)
    return pd.DataFrame(cols)


def optimize_module(module, optimize: str, device):
    """The opt-in inference paths; each returns a module with the same outputs up to rounding.

    - channels_last: NHWC weights and inputs, the layout oneDNN and cuDNN convolutions run fastest in.
    - compile: ``torch.compile`` (Inductor, C++/OpenMP kernels from the machine's compiler on CPU) over the
      channels-last module; compiled once per Python worker, on its first batch.
    - int8: dynamic int8 quantisation of the Linear, LSTM and GRU layers (weights int8, activations
      quantised per batch); CPU only.
    """
    import torch

    if optimize == "none":
        return module
    if optimize == "int8":
        if device.type != "cpu":
            raise ValueError("score.optimize=int8 (dynamic quantisation) runs on CPU only; use channels_last or "
                             "compile on a GPU")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(module, {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU}, dtype=torch.qint8)
    module = module.to(memory_format=torch.channels_last)
    if optimize == "compile":
        return torch.compile(module, dynamic=False)
    return module


class SparkzooPyfunc(PythonModel):
    """The MLflow pyfunc wrapper around ``Predictor``."""

    def load_context(self, context) -> None:
        import torch

        self.predictor = Predictor.from_dir(os.path.dirname(context.artifacts["spec"]))
        torch.set_num_threads(max(1, int(os.environ.get("SPARKZOO_SCORE_THREADS", "1"))))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.predictor.predict_frame(model_input)


def save_local(directory: str, spec: dict[str, Any], state_dict: dict[str, Any]) -> dict[str, str]:
    """Write spec + weights into a folder; returns the pyfunc ``artifacts`` mapping."""
    import torch

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, SPEC_FILE), "w") as fh:
        json.dump(spec, fh, indent=2)
    torch.save(state_dict, os.path.join(directory, WEIGHTS_FILE))
    return {"spec": os.path.join(directory, SPEC_FILE), "weights": os.path.join(directory, WEIGHTS_FILE)}
