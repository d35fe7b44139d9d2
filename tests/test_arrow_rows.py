"""pipelines/arrow_rows.py against the pandas path it replaces in the scorer (sequence_inputs, outputs_frame).

The scorer's worker reads Arrow columns as numpy views and writes outputs as Arrow buffers; each
conversion here must give exactly what the pandas path gives on the same rows, including on a sliced
Arrow array (a nonzero offset, which Spark's batches can carry) and on ragged outputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sparkzoo.pipelines import arrow_rows
from sparkzoo.pipelines.modelpack import Predictor, outputs_frame
from sparkzoo.pipelines.sequence_inputs import frames_batch, ids_batch, text_batch

SHAPE = {"height": 4, "width": 3, "channels": 2}


def _images(n: int, rng) -> list[bytes]:
    return [rng.integers(0, 256, 24, dtype=np.uint8).tobytes() for _ in range(n)]


def test_image_column_is_a_view_equal_to_the_pandas_decode():
    rows = _images(9, np.random.default_rng(0))
    arr = pa.array(rows, type=pa.binary())
    got = arrow_rows.image_batch(arr, SHAPE)
    want = Predictor.decode_pixels(pd.Series(rows, dtype=object), {"shape": SHAPE})
    assert got.shape == (9, 4, 3, 2) and np.array_equal(got, want)
    assert not got.flags.owndata                      # a view of the Arrow buffer, not a copy
    sliced = arr.slice(3, 4)                           # offset 3: the offsets must be read from there
    assert np.array_equal(arrow_rows.image_batch(sliced, SHAPE), want[3:7])


def test_a_wrong_sized_or_null_image_names_its_row():
    rows = _images(3, np.random.default_rng(1))
    with pytest.raises(ValueError, match="row 1: image has 5 bytes"):
        arrow_rows.image_batch(pa.array([rows[0], b"12345", rows[2]]), SHAPE)
    with pytest.raises(ValueError, match="row 2: image is null"):
        arrow_rows.image_batch(pa.array([rows[0], rows[1], None], type=pa.binary()), SHAPE)


def test_token_lists_pad_like_ids_batch():
    rows = [[5, 6, 7], [8], [9, 10], [3, 4, 5, 6, 7]]
    arr = pa.array(rows, type=pa.list_(pa.int32()))
    got = arrow_rows.token_batch(arr)
    want = ids_batch(pd.Series(rows, dtype=object), "token_ids")
    assert set(got) == set(want)
    for k in want:
        assert np.array_equal(got[k], want[k]) and got[k].dtype == want[k].dtype
    tail = arrow_rows.token_batch(arr.slice(1, 2))
    assert np.array_equal(tail["token_ids"], [[8, 0], [9, 10]]) and tail["token_ids__len"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="row 1: token_ids is empty"):
        arrow_rows.token_batch(pa.array([[1], []], type=pa.list_(pa.int32())))


def test_log_mel_frames_pad_like_frames_batch():
    rng = np.random.default_rng(2)
    rows = [rng.normal(size=(k, 5)).astype(np.float32).tobytes() for k in (3, 1, 4)]
    got = arrow_rows.frames_batch(pa.array(rows, type=pa.binary()), 5)
    want = frames_batch(pd.Series(rows, dtype=object), 5)
    for k in want:
        assert np.array_equal(got[k], want[k])
    with pytest.raises(ValueError, match="row 0: features hold 6 bytes"):
        arrow_rows.frames_batch(pa.array([b"123456"]), 5)


def test_raw_text_goes_through_the_models_tokeniser():
    spec = {"task": "text_classification", "text": {"tokenizer": "word", "lowercase": True},
            "vocab": {"text": ["<pad>", "<unk>", "good", "film"]}}
    batch = pa.record_batch([pa.array(["a", "b"]), pa.array(["Good film", "bad film"])], names=["id", "text"])
    got = arrow_rows.input_batch(batch, spec, ("token_ids",))
    want = text_batch(pd.Series(["Good film", "bad film"]), spec)
    assert np.array_equal(got["token_ids"], want["token_ids"]) and got["token_ids"].tolist() == [[2, 3], [1, 3]]


def test_outputs_match_the_pandas_frame_column_for_column():
    rng = np.random.default_rng(3)
    n = 5
    ragged = np.empty(n, dtype=object)
    ragged[:] = [list(range(i)) for i in range(n)]
    out = {"prediction": rng.integers(0, 9, n).astype(np.int64),
           "confidence": rng.random(n).astype(np.float32),
           "probability": rng.random((n, 4)).astype(np.float32),
           "mask": rng.integers(0, 2, (n, 6)).astype(np.uint8),
           "prediction_text": np.array([f"t{i}" for i in range(n)], dtype=object),
           "prediction_ids": ragged}
    schema = pa.schema([("id", pa.string()), ("prediction", pa.int64()), ("confidence", pa.float32()),
                        ("probability", pa.list_(pa.float32())), ("mask", pa.binary()),
                        ("prediction_text", pa.string()), ("prediction_ids", pa.list_(pa.int32())),
                        ("label", pa.int64())])
    ids, labels = pa.array([f"r{i}" for i in range(n)]), pa.array(range(n), type=pa.int64())
    batch = arrow_rows.output_batch(out, ids, [labels], schema)
    assert batch.schema == schema and batch.num_rows == n
    frame = outputs_frame(out)
    for name in out:
        got = batch.column(schema.names.index(name)).to_pylist()
        want = [v.tolist() if isinstance(v, np.ndarray) else (list(v) if isinstance(v, list) else v)
                for v in frame[name]]
        if name in ("confidence", "probability"):
            assert np.allclose(np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32), atol=0)
        else:
            assert got == [w.item() if hasattr(w, "item") else w for w in want], name
    assert batch.column(schema.names.index("label")).to_pylist() == list(range(n))


def test_float64_outputs_narrow_to_the_declared_float_column():
    out = {"error": np.array([0.25, 1.5]), "code": np.array([[1.0, 2.0], [3.0, 4.0]])}
    schema = pa.schema([("id", pa.string()), ("code", pa.list_(pa.float32())), ("error", pa.float32())])
    batch = arrow_rows.output_batch(out, pa.array(["a", "b"]), [], schema)
    assert batch.column(2).to_pylist() == [0.25, 1.5] and batch.column(1).to_pylist() == [[1.0, 2.0], [3.0, 4.0]]
