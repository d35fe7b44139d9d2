"""Arrow record batches <-> the numpy batches a Predictor reads and writes, without pandas in between.

Why: the scorer's Python worker receives Arrow batches from Spark and sends Arrow batches back. Going
through pandas costs a Python ``bytes`` object per image (and a ``b"".join`` to put them back together),
a Python list per token row, and a numpy array per probability row on the way out. Arrow already holds
each column as one contiguous buffer plus offsets, so a fixed-size image column *is* a ``(n, h, w, c)``
uint8 array (a view, no copy), a token column is its flat values plus offsets, and an output matrix
goes back as one buffer plus computed offsets.

The row checks are the scorer's native Spark filter (``scoring.reject_reason``); what reaches here
fits the model, and the checks below only guard against a caller that skipped it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def _offsets(arr: pa.Array) -> np.ndarray:
    """The ``n + 1`` int64 offsets of a binary or list array, respecting a sliced array's own offset."""
    width = 8 if pa.types.is_large_binary(arr.type) or pa.types.is_large_list(arr.type) else 4
    raw = np.frombuffer(arr.buffers()[1], dtype=np.int64 if width == 8 else np.int32)
    return raw[arr.offset: arr.offset + len(arr) + 1].astype(np.int64, copy=False)


def _no_nulls(arr: pa.Array, name: str) -> None:
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"row {row}: {name} is null")


def binary_rows(arr: pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A binary column -> (all its bytes as one uint8 view, each row's byte length)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    _no_nulls(arr, name)
    off = _offsets(arr)
    data = arr.buffers()[2]
    flat = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return flat[off[0]: off[-1]], np.diff(off)


def image_batch(arr: pa.Array, shape: dict[str, int]) -> np.ndarray:
    """Raw pixel rows -> uint8 ``(n, h, w, c)``, a view of the Arrow buffer when every row has the size."""
    per = shape["height"] * shape["width"] * shape["channels"]
    flat, lengths = binary_rows(arr, "image")
    bad = np.flatnonzero(lengths != per)
    if len(bad):
        raise ValueError(f"row {int(bad[0])}: image has {int(lengths[bad[0]])} bytes, the model expects {per} "
                         f"({shape['height']}x{shape['width']}x{shape['channels']})")
    return flat.reshape(len(lengths), shape["height"], shape["width"], shape["channels"])


def _padded(values: np.ndarray, lengths: np.ndarray, tail: tuple[int, ...], dtype) -> np.ndarray:
    """Flat rows of ``lengths`` items (each item ``tail``-shaped) -> ``(n, longest, *tail)``, zero-padded."""
    out = np.zeros((len(lengths), int(lengths.max()) if len(lengths) else 1, *tail), dtype=dtype)
    if len(lengths):
        out[np.arange(out.shape[1]) < lengths[:, None]] = values.reshape(-1, *tail)
    return out


def token_batch(arr: pa.Array, name: str = "token_ids") -> dict[str, np.ndarray]:
    """A list<int> column -> the padded ids and their lengths, as ``sequence_inputs.ids_batch`` lays them."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    _no_nulls(arr, name)
    lengths = np.diff(_offsets(arr))
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        raise ValueError(f"row {int(empty[0])}: {name} is empty; the model needs at least one token")
    values = arr.flatten()
    if values.null_count:
        raise ValueError(f"{name}: a token id is null")
    ids = values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return {name: _padded(ids, lengths, (), np.int64), f"{name}__len": lengths.astype(np.int64)}


def frames_batch(arr: pa.Array, n_mels: int) -> dict[str, np.ndarray]:
    """Binary float32 log-mel rows -> ``(n, most frames, n_mels)`` and the frame counts."""
    per = 4 * n_mels
    flat, lengths = binary_rows(arr, "features")
    bad = np.flatnonzero((lengths == 0) | (lengths % per != 0))
    if len(bad):
        raise ValueError(f"row {int(bad[0])}: features hold {int(lengths[bad[0]])} bytes, not whole frames of "
                         f"{n_mels} float32 values")
    values = np.frombuffer(flat.tobytes() if flat.ctypes.data % 4 else flat, dtype=np.float32)
    return {"features": _padded(values, lengths // per, (n_mels,), np.float32), "features__len": lengths // per}


def input_batch(batch: pa.RecordBatch, spec: dict[str, Any], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The model's input columns of an Arrow batch -> the numpy batch its task reads."""
    from .sequence_inputs import text_batch

    names = batch.schema.names
    if "image" in columns:
        return {"image": image_batch(batch.column(names.index("image")), spec["shape"])}
    if "features" in columns:
        return frames_batch(batch.column(names.index("features")), int(spec["shape"]["n_mels"]))
    if "token_ids" in names:
        return token_batch(batch.column(names.index("token_ids")))
    if "text" in names:   # tokenising is per row anyway: the strings go through Python once
        return text_batch(batch.column(names.index("text")).to_pylist(), spec)
    raise ValueError(f"a {spec['task']} model needs a 'token_ids' or 'text' column; got {names}")


def _list_array(matrix: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A 2-D numeric matrix -> a list array, one list per row, from one values buffer."""
    n, width = matrix.shape[0], int(np.prod(matrix.shape[1:], dtype=np.int64))
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width, type=pa.int32())
    values = _typed(np.ascontiguousarray(matrix).reshape(-1), type_.value_type)
    return pa.ListArray.from_arrays(offsets, values, type=type_)


def _typed(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A 1-D numpy array as an Arrow array of ``type_`` (a float64 output narrows to a float column)."""
    arr = pa.array(values, from_pandas=True)
    return arr if arr.type == type_ else arr.cast(type_, safe=not (pa.types.is_floating(type_)))


def _binary_array(matrix: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A 2-D uint8 matrix (a mask per row) -> a binary array over one data buffer."""
    n, width = matrix.shape[0], int(np.prod(matrix.shape[1:], dtype=np.int64))
    offsets = np.arange(n + 1, dtype=np.int32) * width
    data = np.ascontiguousarray(matrix).reshape(-1)
    return pa.Array.from_buffers(type_, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def output_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """One output of ``Predictor.predict_batch`` -> the Arrow array of its column's declared type."""
    if values.dtype == object:   # ragged rows (per-chunk padding) or strings: Arrow builds them row by row
        return pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in values], type=type_)
    if values.ndim == 1:
        return _typed(values, type_)
    if pa.types.is_binary(type_):
        return _binary_array(values, type_)
    if pa.types.is_list(type_):
        return _list_array(values, type_)
    raise ValueError(f"an output of shape {values.shape} cannot be a {type_} column")


def output_batch(out: dict[str, np.ndarray], ids: pa.Array, kept: list[pa.Array],
                 schema: pa.Schema) -> pa.RecordBatch:
    """``id``, the task's outputs in ``schema``'s order, then the kept columns, as one record batch."""
    n_out = len(schema) - 1 - len(kept)
    outputs = [output_array(out[f.name], f.type) for f in list(schema)[1: 1 + n_out]]
    return pa.RecordBatch.from_arrays([ids, *outputs, *kept], schema=schema)
