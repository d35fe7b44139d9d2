"""The model format sparkzoo logs to MLflow: a pyfunc that carries its own pre-processing.

Why not ``mlflow.pytorch.log_model``: in mlflow 3.17 it saves torch.export (pt2) programs that refuse
``.eval()`` and need fixed example shapes. We log a small spec (family, params, task, input shape,
normalisation, label names) plus a ``state_dict``; loading rebuilds the module from the registry. The
pyfunc takes a pandas DataFrame in the prepared schema (an ``image`` binary column), so
``mlflow.pyfunc.load_model`` and ``mlflow.pyfunc.spark_udf`` work on the same model our scorer uses,
and our scorer calls ``predict_arrays`` on whole numpy batches. The model carries a copy of this module
(``model_bundle``), so plain MLflow loads it without sparkzoo installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Any

import numpy as np
import pandas as pd

from .modelspec import (SPEC_FILE, WEIGHTS_FILE, build_module, build_spec, input_spec,  # noqa: F401  (re-exported)
                        make_spec_task, target_vocab)


OPTIMIZATIONS = ("none", "channels_last", "bf16", "compile", "int8", "int8_static")
# Paths whose numbers depend on example rows: static quantisation fixes each activation's int8 scale
# from the ranges it sees on them, so every worker must calibrate on the same rows to give the same answers.
CALIBRATED = ("int8_static",)


# Rows per forward pass on CPU for image models, per inference path (``score.image_chunk: null``). A
# Spark worker runs one torch thread; with one thread the LeNet-like CNN ran 9,651 rows/s at 128 rows and
# 6,417 at 1,024, as the activations of a large pass fall out of cache (`bench/scoring.py --chunk-sweep`,
# idle 2-core VM, 2026-11-30). The lighter paths peak later: two 1-thread processes side by side, as
# Spark runs its workers, scored int8_static at 28,226 rows/s with 256 rows against 27,488 with 128
# (28,116 against 27,345 in another run); bf16 9,744 against 9,588 in one worker (2026-12-07,
# bench/RESULTS.md). A GPU takes the whole Arrow batch.
IMAGE_CHUNK = 128
IMAGE_CHUNK_BY_PATH = {"bf16": 256, "int8_static": 256}

# Rows per forward pass for sequence models. Measured on the Pang & Lee BiLSTM (bench/RESULTS.md): a
# 10,000-row Arrow batch in one pass ran 20x slower per row than chunks of 64 sorted by length (the
# recurrent steps run to the longest row, and large activations fall out of cache).
SEQUENCE_CHUNK = 64


def image_chunk_for(optimize: str, image_chunk: int | None = None) -> int:
    """``score.image_chunk`` when set, else the measured best for the path."""
    return max(1, int(image_chunk or IMAGE_CHUNK_BY_PATH.get(optimize, IMAGE_CHUNK)))


class Predictor:
    """A loaded model plus its pre-processing; vectorised over whole batches.

    ``device`` puts the module on a GPU when the scorer found one; ``optimize`` is the opt-in fast path
    (checked against eager accuracy by the scorer before it is used on a job); ``calibration`` holds the
    uint8 pixel rows a calibrated path (``CALIBRATED``) fixes its int8 scales on.
    """

    def __init__(self, spec: dict[str, Any], module, *, device: str = "cpu", optimize: str = "none",
                 chunk: int = SEQUENCE_CHUNK, image_chunk: int | None = None,
                 calibration: np.ndarray | None = None) -> None:
        import torch

        if optimize not in OPTIMIZATIONS:
            raise ValueError(f"unknown optimisation '{optimize}'; choose one of: {', '.join(OPTIMIZATIONS)}")
        self.spec = spec
        self.device = torch.device(device)
        self.optimize = optimize
        self.task = make_spec_task(spec)
        examples = None
        if optimize in CALIBRATED:
            if calibration is None or len(calibration) == 0:
                raise ValueError(f"score.optimize={optimize} needs calibration rows (uint8 pixels) to fix its int8 "
                                 f"scales; none were given")
            examples = self.task.inputs(calibration)
        self.module = optimize_module(module.eval().to(self.device), optimize, self.device, examples,
                                      family=spec.get("family", "this"))
        self.chunk = max(1, int(chunk))
        self.image_chunk = image_chunk_for(optimize, image_chunk)
        self._torch = torch

    @classmethod
    def from_dir(cls, directory: str, *, device: str = "cpu", optimize: str = "none",
                 chunk: int = SEQUENCE_CHUNK, image_chunk: int | None = None,
                 calibration: np.ndarray | None = None) -> "Predictor":
        import torch

        with open(os.path.join(directory, SPEC_FILE)) as fh:
            spec = json.load(fh)
        module = build_module(spec)
        module.load_state_dict(torch.load(os.path.join(directory, WEIGHTS_FILE), map_location="cpu", weights_only=True))
        return cls(spec, module, device=device, optimize=optimize, chunk=chunk, image_chunk=image_chunk,
                   calibration=calibration)

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.task.input_columns

    def decode(self, images: pd.Series) -> np.ndarray:
        """A column of raw pixel bytes -> uint8 (n, h, w, c); a wrong size is a ValueError naming the row."""
        return self.decode_pixels(images, self.spec)

    @staticmethod
    def decode_pixels(images: pd.Series, spec: dict[str, Any]) -> np.ndarray:
        shape = spec["shape"]
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
        key = self.task.sort_key if self.task.sort_key in batch else None
        if key:
            order = np.argsort(batch[key], kind="stable")
            bounds = equal_length_chunks(np.asarray(batch[key])[order], self.chunk)
        else:
            order, bounds = np.arange(n), [(i, min(i + self.chunk, n)) for i in range(0, n, self.chunk)]
        parts = [self._predict_sequence({k: v[order[lo:hi]] for k, v in batch.items()}) for lo, hi in bounds]
        back = np.empty(n, dtype=np.int64)
        back[order] = np.arange(n)
        return {k: _stack([p[k] for p in parts])[back] for k in parts[0]}

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        return outputs_frame(self.predict_batch(self.batch(frame)))


def equal_length_chunks(lengths: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """Row ranges over ``lengths`` sorted ascending, at most ``chunk`` rows each: a length with at least a
    quarter of ``chunk`` rows gets chunks of its own (split evenly when it has more than ``chunk``); rarer
    lengths share padded chunks.

    Why: a chunk of one length has no padding, and a recurrent model then skips packing (the BiLSTM ran
    1.5-1.7x the rows/s unpacked, bench/RESULTS.md); a long tail of rare lengths still fills whole chunks
    instead of making many tiny forward passes.
    """
    n, bounds, lo = len(lengths), [], 0
    alone = max(1, chunk // 4)

    def run_end(i: int) -> int:
        return int(np.searchsorted(lengths, lengths[i], side="right"))

    while lo < n:
        end = run_end(lo)
        if end - lo >= alone:
            pieces = -(-(end - lo) // chunk)
            edges = np.linspace(lo, end, pieces + 1).round().astype(int)
            bounds.extend(zip(edges[:-1].tolist(), edges[1:].tolist()))
            lo = end
            continue
        hi = lo
        while hi < lo + chunk and hi < n:
            end = run_end(hi)
            if hi > lo and end - hi >= alone:
                break                      # the next length fills chunks of its own
            hi = min(end, lo + chunk)
        bounds.append((lo, hi))
        lo = hi
    return bounds


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


def optimize_module(module, optimize: str, device, examples=None, family: str = "this"):
    """The opt-in inference paths; each returns a module with the same outputs up to rounding.

    - channels_last: NHWC weights and inputs, the layout oneDNN and cuDNN convolutions run fastest in.
    - bf16: channels-last bfloat16 weights and inputs, float32 logits out; fast where the CPU has native
      bf16 dot products (AVX512-BF16, AMX) or on a GPU, slow elsewhere, which the scorer's check measures.
    - compile: ``torch.compile`` (Inductor, C++/OpenMP kernels from the machine's compiler on CPU) over the
      channels-last module; compiled once per Python worker, on its first batch.
    - int8: dynamic int8 quantisation of the Linear, LSTM and GRU layers (weights int8, activations
      quantised per batch); CPU only.
    - int8_static: post-training static quantisation of the whole graph (FX, x86 backend): convolutions
      and Linear layers run int8 with activation scales fixed on ``examples`` (float inputs as the task
      builds them); CPU only. The convolutions dominate an image classifier, and only this path makes
      them int8.
    """
    import torch

    if optimize == "none":
        return module
    if optimize in ("int8", "int8_static") and device.type != "cpu":
        raise ValueError(f"score.optimize={optimize} (int8 quantisation) runs on CPU only; use channels_last, bf16 "
                         f"or compile on a GPU")
    if optimize == "int8":
        from torch.ao.quantization import quantize_dynamic

        with _quiet_quantization():
            return quantize_dynamic(module, {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU}, dtype=torch.qint8)
    if optimize == "int8_static":
        return _quantize_static(module, examples, family)
    module = module.to(memory_format=torch.channels_last)
    if optimize == "bf16":
        return _Bfloat16(module.to(torch.bfloat16))
    if optimize == "compile":
        return torch.compile(module, dynamic=False)
    return module


@contextlib.contextmanager
def _quiet_quantization():
    """torch.ao.quantization warns on every call that it is moving to torchao and that its observers'
    arguments and quantized tensor types are deprecated; the pinned torch has all of it, and a scoring
    log with one warning per worker per module hides the lines that matter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


_CALIBRATION_PASS = 256   # rows per calibration forward pass (observers only need to see the ranges)


def _quantize_static(module, examples, family: str):
    """FX post-training quantisation: trace, observe ``examples``, convert to int8 kernels (all but the
    last layer: with it in int8 the test split of tests/test_scoring.py moved 0.45 points, close to the
    0.5-point gate)."""
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = get_default_qconfig_mapping("x86")
    last = [name for name, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1:]
    for name in last:   # the layer that writes the logits stays float: its rounding moves predictions most
        mapping.set_module_name(name, None)
    try:
        with _quiet_quantization():
            prepared = prepare_fx(module, mapping, (examples[:1],))
    except Exception as exc:   # a forward with data-dependent Python control flow does not trace
        raise ValueError(f"score.optimize=int8_static cannot trace the {family} model for static quantisation "
                         f"({type(exc).__name__}: {exc}); use score.optimize=int8 or bf16") from None
    with torch.no_grad():
        for part in examples.split(_CALIBRATION_PASS):
            prepared(part)
    with _quiet_quantization():
        return convert_fx(prepared)


class _Bfloat16:
    """Calls a bfloat16 channels-last module on float inputs and gives float32 outputs back, so the task's
    softmax and the probabilities it writes keep float32 precision."""

    def __init__(self, module) -> None:
        self.module = module

    def __call__(self, x):
        import torch

        if isinstance(x, dict):   # a sequence model's inputs: token ids stay integers, features go bf16
            x = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in x.items()}
        else:
            x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        out = self.module(x)
        if isinstance(out, dict):
            return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        return out.float()


def _pyfunc_class() -> type:
    """``SparkzooPyfunc``, built on first use: importing MLflow costs a scoring worker (which runs
    ``Predictor`` and never the pyfunc) about 1.5 s of start-up, so only the pyfunc's users pay it."""
    try:  # mlflow is on every machine that logs or loads models; the models package never imports this
        from mlflow.pyfunc import PythonModel
    except ImportError:  # pragma: no cover
        PythonModel = object  # type: ignore[misc,assignment]

    class SparkzooPyfunc(PythonModel):
        """The MLflow pyfunc wrapper around ``Predictor``, logged from code (``model_bundle``): this module
        travels with the model and loads where sparkzoo is not installed, so it imports only its bundled
        siblings (``modelspec``, ``sequence_inputs``, ``textnorm``, ``..models``), relatively."""

        def load_context(self, context) -> None:
            import torch

            self.predictor = Predictor.from_dir(os.path.dirname(context.artifacts["spec"]))
            torch.set_num_threads(max(1, int(os.environ.get("SPARKZOO_SCORE_THREADS", "1"))))

        def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
            return self.predictor.predict_frame(model_input)

    SparkzooPyfunc.__qualname__ = "SparkzooPyfunc"   # pickled by reference as modelpack.SparkzooPyfunc
    return SparkzooPyfunc


def __getattr__(name: str) -> Any:
    """``from .modelpack import SparkzooPyfunc`` (the logged model's code file) builds the class once."""
    if name == "SparkzooPyfunc":
        cls = globals()["SparkzooPyfunc"] = _pyfunc_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save_local(directory: str, spec: dict[str, Any], state_dict: dict[str, Any]) -> dict[str, str]:
    """Write spec + weights into a folder; returns the pyfunc ``artifacts`` mapping."""
    import torch

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, SPEC_FILE), "w") as fh:
        json.dump(spec, fh, indent=2)
    torch.save(state_dict, os.path.join(directory, WEIGHTS_FILE))
    return {"spec": os.path.join(directory, SPEC_FILE), "weights": os.path.join(directory, WEIGHTS_FILE)}
