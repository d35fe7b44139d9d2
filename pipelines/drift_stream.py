"""The drift profile of ``drift.profile``, built from batches in one process (the in-process scorer).

Why a second way: ``drift.profile`` is a handful of Spark aggregations, which is right for a nightly
table and most of the cost of a small job (each is a Spark job; on 3,000 rows they took 4-6 s). The
in-process scorer (pipelines/score_in_process.py) already holds each batch of fitting rows and its
predictions, so it counts the same bins as it goes. Each feature here is the Spark expression or the
shared numpy function of ``drift`` it mirrors, and tests/test_score_in_process.py checks that both
engines give the same profile of the same rows:

* text length ``size(split(trim(text), '\\s+'))`` (Spark's ``trim`` strips spaces only; Java's ``\\s`` is
  ASCII whitespace; the split keeps empty pieces) and characters ``length(text)`` (code points);
* token length, the out-of-vocabulary rate and the log2 id bands;
* images and audio: ``drift.pixel_stats`` (the body of Spark's ``drift.image_stats``, fed the Arrow buffer's
  uint8 view) / ``drift.audio_stats``, the very functions Spark's pass runs;
* the embedding sample ``pmod(xxhash64(id), every) == 0``: Spark's xxhash64 (XXH64 of the id's UTF-8
  bytes, seed 42) is computed here, so both engines sample the same rows;
* a value is in bin k when it is above k of the edges (``sum(when(v > edge))``; NaN, which Spark sorts
  above every number, lands in the last bin).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from . import drift

_JAVA_SPACE = re.compile(r"[ \t\n\x0b\f\r]+")   # java.util.regex \s
_M64 = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                           0x27D4EB2F165667C5)
SPARK_HASH_SEED = 42   # the seed of Spark's xxhash64 function


def xxhash64(data: bytes) -> int:
    """XXH64 as Spark's ``xxhash64`` column computes it for a string, as a signed 64-bit integer (one
    value: ``xxhash64_strings`` does the work)."""
    import pyarrow as pa

    return int(xxhash64_strings(pa.array([data], pa.binary()))[0])


def xxhash64_strings(arr) -> np.ndarray:
    """``xxhash64`` of every string of an Arrow string array at once, as signed 64-bit integers (a null
    hashes to the seed, as in Spark).

    Why: the in-process engine and the Python workers that read their own files (``score.file_io``) have
    no Spark column to read the sample flag from, and hashing one id at a time in Python cost about 15 us,
    more than an int8 model's forward pass per row. Rows of one byte length share every step of the hash, so
    each length is one pass of numpy uint64 arithmetic (which wraps, as the hash wants) over all its rows."""
    import pyarrow as pa

    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    n = len(arr)
    out = np.full(n, SPARK_HASH_SEED, dtype=np.int64)
    if n == 0:
        return out
    wide = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    raw = np.frombuffer(arr.buffers()[1], dtype=np.int64 if wide else np.int32)
    off = raw[arr.offset: arr.offset + n + 1].astype(np.int64)
    data = arr.buffers()[2]
    flat = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    lengths = np.diff(off)
    for length in np.unique(lengths[valid]):
        rows = np.flatnonzero(valid & (lengths == length))
        cells = flat[off[rows][:, None] + np.arange(int(length))] if length else np.zeros((len(rows), 0), np.uint8)
        out[rows] = _xxh64_rows(np.ascontiguousarray(cells)).view(np.int64)
    return out


_U = np.uint64


def _xxh64_rows(cells: np.ndarray) -> np.ndarray:
    """XXH64 (Spark's seed) of each row of a ``(rows, length)`` uint8 matrix, as uint64: ``xxhash64``'s
    steps, one numpy operation per step for all rows."""
    p1, p2, p3, p4, p5 = (_U(p) for p in (_P1, _P2, _P3, _P4, _P5))
    rotl = lambda x, r: (x << _U(r)) | (x >> _U(64 - r))   # noqa: E731
    rnd = lambda acc, lane: rotl(acc + lane * p2, 31) * p1   # noqa: E731
    word = lambda i, size: np.ascontiguousarray(cells[:, i: i + size]).view(   # noqa: E731
        "<u8" if size == 8 else "<u4")[:, 0].astype(np.uint64)
    rows, n = cells.shape
    seed = _U(SPARK_HASH_SEED)
    i = 0
    with np.errstate(over="ignore"):
        if n >= 32:
            v = [np.full(rows, x, dtype=np.uint64) for x in ((SPARK_HASH_SEED + _P1 + _P2) & _M64,
                                                             (SPARK_HASH_SEED + _P2) & _M64, SPARK_HASH_SEED,
                                                             (SPARK_HASH_SEED - _P1) & _M64)]
            while i <= n - 32:
                v = [rnd(v[k], word(i + 8 * k, 8)) for k in range(4)]
                i += 32
            h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)
            for lane in v:
                h = (h ^ rnd(_U(0), lane)) * p1 + p4
        else:
            h = np.full(rows, seed + p5, dtype=np.uint64)
        h = h + _U(n)
        while i + 8 <= n:
            h = rotl(h ^ rnd(_U(0), word(i, 8)), 27) * p1 + p4
            i += 8
        if i + 4 <= n:
            h = rotl(h ^ (word(i, 4) * p1), 23) * p2 + p3
            i += 4
        while i < n:
            h = rotl(h ^ (cells[:, i].astype(np.uint64) * p5), 11) * p1
            i += 1
        h ^= h >> _U(33)
        h = h * p2
        h ^= h >> _U(29)
        h = h * p3
        h ^= h >> _U(32)
    return h


SAMPLE_FLAG = "_sample"   # a column Spark computes natively (``sample_flag``): the hash in the JVM, not here


def sample_flag(every: int):
    """``pmod(xxhash64(id), every) == 0`` as a Spark column, so a Spark task reads the flag instead of
    hashing every id in Python (``xxhash64_strings``, what the workers that read their own files use)."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64("id"), F.lit(every)) == 0


def in_sample(ids: list[str], every: int) -> np.ndarray:
    """Which rows ``drift.embedding_features`` samples: ``pmod(xxhash64(id), every) == 0``."""
    import pyarrow as pa

    return in_sample_column(pa.array(ids, pa.string()), every)


def in_sample_column(ids, every: int) -> np.ndarray:
    """``in_sample`` for an Arrow string column, read in place."""
    if every <= 1:
        return np.ones(len(ids), dtype=bool)
    return xxhash64_strings(ids) % every == 0


def text_stats(texts: list[str]):
    """``drift.numeric_features`` of raw text: words after Spark's trim and split, and characters."""
    import pandas as pd

    return pd.DataFrame({"length": [float(len(_JAVA_SPACE.split(t.strip(" ")))) for t in texts],
                         "characters": [float(len(t)) for t in texts]})


def token_stats(lengths: np.ndarray, unknown: np.ndarray):
    """``drift.numeric_features`` of token ids: the length and the share of ``<unk>`` ids per row."""
    import pandas as pd

    return pd.DataFrame({"length": lengths.astype(np.float64),
                         "oov_rate": unknown / np.maximum(lengths, 1)})


def token_bands(values: np.ndarray) -> np.ndarray:
    """Each id's band ``least(floor(log2(t + 1)), TOKEN_BANDS - 1)``, as Spark's ``log2`` computes it."""
    bands = np.floor(np.log(values.astype(np.float64) + 1) / math.log(2))
    return np.minimum(bands, drift.TOKEN_BANDS - 1).astype(np.int64)


def bins(values: np.ndarray, cuts: list[float]) -> np.ndarray:
    """Rows per bin: bin k holds the values above exactly k of ``cuts`` (NaN above all of them)."""
    v = np.asarray(values, dtype=np.float64)
    k = (v[:, None] > np.asarray(cuts, dtype=np.float64)[None, :]).sum(axis=1)
    k[np.isnan(v)] = len(cuts)
    return np.bincount(k, minlength=len(cuts) + 1)


class StreamProfile:
    """``drift.profile(inputs, predictions, spec, edges, ...)`` on the reference's edges, fed batch by batch.

    Mergeable: each Spark task builds one over its partition and sends ``state()`` to the driver, which
    adds them up (``merge``); the in-process engine has a single one."""

    def __init__(self, spec: dict[str, Any], edges: dict[str, list[float]], columns: list[str]) -> None:
        self.spec, self.edges = spec, edges
        self.numeric_names = self._numeric_names(columns)
        self.counts: dict[str, np.ndarray] = {}
        self.categories: dict[str, dict[str, int]] = {}
        self.rows = 0
        self.sample_rows = 0

    def state(self) -> dict[str, Any]:
        """What the driver needs of this partial profile: plain numbers (pickled back from a task)."""
        return {"counts": {k: [int(c) for c in v] for k, v in self.counts.items()}, "categories": self.categories,
                "rows": self.rows, "sample_rows": self.sample_rows}

    def merge(self, state: dict[str, Any]) -> None:
        for name, counts in state["counts"].items():
            self.counts[name] = self.counts.get(name, 0) + np.asarray(counts, dtype=np.int64)
        for feature, counts in state["categories"].items():
            self._add_category(feature, np.asarray(list(counts), dtype=object), np.asarray(list(counts.values())))
        self.rows += state["rows"]
        self.sample_rows += state["sample_rows"]

    def _numeric_names(self, columns: list[str]) -> list[str]:
        shape = self.spec.get("shape", {})
        if "image" in columns and "height" in shape:
            return list(drift.IMAGE_FEATURES)
        if "features" in columns and "n_mels" in shape and "hop_ms" in shape:
            return list(drift.AUDIO_FEATURES)
        if "token_ids" in columns:
            return ["length", "oov_rate"]
        if "text" in columns:
            return ["length", "characters"]
        return []

    def _add_numeric(self, frame, names: list[str]) -> None:
        for name in names:
            if name in self.edges:
                got = bins(frame[name].to_numpy(), self.edges[name])
                self.counts[name] = self.counts.get(name, 0) + got

    def _add_category(self, feature: str, keys: np.ndarray, how_many: np.ndarray) -> None:
        into = self.categories.setdefault(feature, {})
        for key, n in zip(keys, how_many):
            into[str(key)] = into.get(str(key), 0) + int(n)

    def add_inputs(self, batch) -> None:
        """One Arrow batch of rows that fit the model (its id and model input columns)."""
        from .arrow_rows import _offsets, image_batch

        if not self.numeric_names and "token_ids" not in batch.schema.names:
            return
        names = batch.schema.names
        shape = self.spec.get("shape", {})
        frame = None
        if "image" in names and self.numeric_names == list(drift.IMAGE_FEATURES):
            frame = drift.pixel_stats(image_batch(batch.column(names.index("image")), shape))
        elif "features" in names and self.numeric_names == list(drift.AUDIO_FEATURES):
            frame = drift.audio_stats(batch.column(names.index("features")).to_pylist(), int(shape["n_mels"]),
                                      float(shape["hop_ms"]) / 1000.0)
        elif "token_ids" in names:
            ids = batch.column(names.index("token_ids"))
            values = ids.flatten().to_numpy(zero_copy_only=False)
            lengths = np.diff(_offsets(ids))
            row_of = np.repeat(np.arange(len(lengths)), lengths)
            unknown = np.bincount(row_of, weights=(values == drift.UNK), minlength=len(lengths))
            frame = token_stats(lengths, unknown)
            band, count = np.unique(token_bands(values), return_counts=True)
            self._add_category("token_distribution", band, count)
        elif "text" in names:
            frame = text_stats(batch.column(names.index("text")).to_pylist())
        if frame is not None:
            self.rows += len(frame)
            self._add_numeric(frame, self.numeric_names)

    def add_embeddings(self, frame) -> None:
        """One frame of ``drift._embeddings`` output (the sampled rows' head summaries)."""
        self.sample_rows += len(frame)
        self._add_numeric(frame, list(frame.columns))

    def add_predictions(self, out: dict[str, np.ndarray]) -> None:
        """One batch of the model's outputs (``Predictor.predict_batch``)."""
        if "prediction" not in out:
            return
        keys, how_many = np.unique(np.asarray(out["prediction"]).astype(np.int64), return_counts=True)
        self._add_category("predicted_class", keys, how_many)
        if "confidence" in out and "confidence" in self.edges:
            # Spark reads the written float column back and casts it to double
            got = bins(np.asarray(out["confidence"], dtype=np.float32).astype(np.float64), self.edges["confidence"])
            self.counts["confidence"] = self.counts.get("confidence", 0) + got

    def result(self, embedding_names: list[str]) -> dict[str, Any]:
        """The profile dict ``drift.profile`` returns, in its order of features; ``embedding_names``: the
        features of the embedding sample (none when the model has no sample, as for non-classifiers)."""
        out: dict[str, Any] = {"features": {}}

        def numeric(name: str) -> None:
            if name in self.edges:
                got = self.counts.get(name, np.zeros(len(self.edges[name]) + 1, dtype=np.int64))
                out["features"][name] = {"kind": "numeric", "edges": self.edges[name], "counts": [int(c) for c in got]}

        if any(n in self.edges for n in self.numeric_names):
            out["rows"] = self.rows
            for name in self.numeric_names:
                numeric(name)
        if any(n in self.edges for n in embedding_names):
            out["embedding_sample_rows"] = self.sample_rows
            for name in embedding_names:
                numeric(name)
        if "token_distribution" in self.categories:
            out["features"]["token_distribution"] = {"kind": "categorical",
                                                     "counts": self.categories["token_distribution"]}
        if "predicted_class" in self.categories:
            out["features"]["predicted_class"] = {"kind": "categorical", "counts": self.categories["predicted_class"]}
            numeric("confidence")
        return out



class PartitionProfile:
    """Tonight's profile over one partition of scored rows (a Spark task's, or the whole in-process job's):
    the inputs and predictions of every batch, and the embedding sample's rows, which go through the
    model's head (``drift._embeddings``) once the partition is done.

    ``tap`` (built on the driver by ``tap``): the reference's edges and directions, the model's spec and
    input columns, the sampling step and how to load the eager model for the embeddings."""

    def __init__(self, tap: dict[str, Any]) -> None:
        self.tap = tap
        self.profile = StreamProfile(tap["spec"], tap["edges"], tap["columns"])
        self.sample: list[Any] = []

    def add(self, batch, outputs: dict[str, np.ndarray]) -> None:
        """One Arrow batch of fitting rows (id first) and the model's outputs for it."""
        import pyarrow as pa

        self.profile.add_inputs(batch)
        self.profile.add_predictions(outputs)
        if self.tap["embedded"]:
            names = batch.schema.names
            hit = (batch.column(names.index(SAMPLE_FLAG)).to_numpy(zero_copy_only=False) if SAMPLE_FLAG in names
                   else in_sample_column(batch.column(0), self.tap["every"]))
            if hit.any():
                self.sample.append(batch.select(self.tap["sample_columns"]).filter(pa.array(hit)))

    def finish(self) -> dict[str, Any]:
        """The embedding sample through the head, then the partial profile's ``state``."""
        if self.sample:
            frames = (b.to_pandas() for b in self.sample)
            for frame in drift._embeddings(frames, self.tap["model_file"], self.tap["key"], self.tap["vectors"],
                                           options=self.tap["embed_options"]):
                self.profile.add_embeddings(frame)
            self.sample = []
        return self.profile.state()


def tap(spec: dict[str, Any], ref: dict[str, Any], columns: list[str], inputs: list[str], rows: int,
        classifier: bool, model_file: str, key: str, embed_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a ``PartitionProfile`` needs, as plain values a Spark task can take: ``columns`` the input's,
    ``inputs`` the model's input columns, ``rows`` the input's row count (the sampling step is
    ``rows // EMBEDDING_SAMPLE``, as in ``drift.embedding_features``)."""
    vectors = (ref.get("embedding_directions") or {}).get("vectors")
    embedded = [*drift.EMBEDDING_FEATURES, *drift.direction_names(len(vectors or []))] if classifier else []
    return {"spec": spec, "edges": drift.edges_of(ref), "columns": columns, "sample_columns": ["id", *inputs],
            "every": max(1, int(rows) // drift.EMBEDDING_SAMPLE), "vectors": vectors, "embedded": embedded,
            "model_file": model_file, "key": key, "embed_options": embed_options or {}}


def merged(tap: dict[str, Any], states: list[dict[str, Any]]) -> dict[str, Any]:
    """The profile dict of the whole job from its partitions' states."""
    whole = StreamProfile(tap["spec"], tap["edges"], tap["columns"])
    for state in states:
        whole.merge(state)
    return whole.result(tap["embedded"])


class ByPartition:
    """An accumulator of partial profiles keyed by partition (pyspark's AccumulatorParam protocol): a task
    that runs again (a retry, a lost executor's stage run once more) replaces its partition's entry
    instead of counting its rows twice."""

    def zero(self, value: dict[int, Any]) -> dict[int, Any]:
        return {}

    def addInPlace(self, a: dict[int, Any], b: dict[int, Any]) -> dict[int, Any]:
        a.update(b)
        return a
