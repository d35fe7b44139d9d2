"""Did the world move? A small profile of model inputs and predictions, compared night by night.

Training computes a reference profile on the validation split with the registered model (``reference``)
and logs it as ``drift/reference.json`` on its MLflow run; each scoring run computes the same profile on
its input and its predictions (``profile``) and compares the two (``compare``): population stability
index, Jensen-Shannon distance and a binned Kolmogorov-Smirnov statistic per feature.

Everything that touches rows is a Spark aggregation: per-row features are native column expressions
(text) or one vectorised ``mapInPandas`` pass over the pixel bytes (images) or the log-mel frames
(audio), binned against the reference's decile edges and counted in ONE ``agg`` of ``sum(when(...))``
columns; only the counts (a few hundred numbers) reach the driver. Features:

* images: per-row mean, standard deviation, dark and bright pixel fractions, and edge energy (mean
  absolute difference between neighbouring pixels), all on 0..1 pixel values;
* audio (log-mel ``features``): duration in seconds, loudness (mean mel power in dB), mean and standard
  deviation of the log-mel values, the spectral centroid (power-weighted mean mel band, 0..1) and the
  pause fraction (frames ``PAUSE_DB`` under the row's loudest): a quieter or louder microphone moves
  loudness and the log-mel mean, noise moves the pause fraction and the centroid, other speech moves
  duration and the mel statistics;
* text (token ids): length, out-of-vocabulary rate, and the token distribution over log2 id bands (ids
  are frequency ranks of the training vocabulary, so a shift in bands is a shift in vocabulary);
* classifiers (images and text): the penultimate layer (the input of the classifier head, the last
  ``Linear`` to run) on a stable hash sample of about ``EMBEDDING_SAMPLE`` rows, per row its norm, mean,
  active fraction and max, and its projections on ``EMBEDDING_DIRECTIONS`` fixed directions: the top
  principal components of the reference sample (fitted once with Spark ML's PCA, which aggregates the
  covariance; seeded random unit vectors for layers wider than ``PCA_MAX_DIM``), stored in the
  reference and reused every night. The summaries say how big embeddings are; the projections' decile
  histograms say where they lie, so a shift to another region of the space moves them even when the
  norms stay;
* classifiers: the predicted-class distribution and the confidence.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np

log = logging.getLogger("sparkzoo.drift")

REFERENCE_ARTIFACT = "drift/reference.json"
QUANTILES = [i / 10 for i in range(1, 10)]   # decile edges: 10 bins of ~equal reference mass
EPS = 0.5                                     # additive smoothing per bin: an empty bin is not log(0)
IMAGE_FEATURES = ("pixel_mean", "pixel_std", "dark_fraction", "bright_fraction", "edge_energy")
UNK = 1                                       # pipelines/prepare/text.py SPECIALS: <pad>, <unk>, <bos>, <eos>
TOKEN_BANDS = 16                              # floor(log2(id + 1)), capped
AUDIO_FEATURES = ("duration_seconds", "loudness_db", "mel_mean", "mel_std", "mel_centroid", "pause_fraction")
# A frame 30 dB (1/1000 of the power) under its row's loudest frame is a pause, not a soft sound: speech
# sounds of one utterance sit within ~30 dB of each other, so pauses in a clean recording fall below it
# and background noise that fills them lifts them above it.
PAUSE_DB = 30.0


# ---- per-row features (Spark) ------------------------------------------------------------------------

# A pixel is dark below 0.1 and bright above 0.9 of full scale. Read off the float32 scale ``u / 255``
# once, so the per-row counts compare raw bytes (u < 26, u >= 230) and agree with it exactly.
_SCALE = np.arange(256, dtype=np.float32) / 255.0
DARK_BELOW = int((_SCALE < 0.1).sum())
BRIGHT_FROM = 256 - int((_SCALE > 0.9).sum())


def image_stats(raw: list[bytes], pixels: int):
    """Five statistics per image from its raw uint8 bytes (rows of ``pixels`` bytes)."""
    return pixel_stats(np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(raw), pixels))


def pixel_stats(u: np.ndarray):
    """``image_stats`` of a ``(n, ...)`` uint8 array (the scorer's view of an Arrow buffer, no copy).

    Integer sums, not float32 pixels: the drift profile counts every scored row, and converting each
    image to floats made it 15% of a scoring pass (0.29 s per 10,000 images against 0.02 s now). The
    integer sums are exact, so mean and std are the exact values (float32 sums drifted by ~1e-7). They
    accumulate in uint32 where a row's sum of squares fits (images up to 66,000 pixels): numpy widens
    uint8 to 32 bits in SIMD lanes but to 64 bits element by element, and 64-bit sums made these
    statistics 4.5 us of a LeNet row's ~190 us (int8_static: ~75 us), against 1.1 us in uint32."""
    import pandas as pd

    u = u.reshape(len(u), -1)
    p = u.shape[1]
    acc = np.uint32 if p * 255 * 255 < 2 ** 32 else np.uint64
    total = u.sum(axis=1, dtype=acc).astype(np.int64)
    wide = u.astype(np.uint16)
    np.multiply(wide, wide, out=wide)   # 255 ** 2 fits uint16
    squares = wide.sum(axis=1, dtype=acc).astype(np.int64)
    # p * squares - total ** 2 stays below 2 ** 63 for images up to ~10 megapixels
    spread = np.sqrt((p * squares - total * total).astype(np.float64)) / p
    after, before = u[:, 1:], u[:, :-1]
    steps = (np.maximum(after, before) - np.minimum(after, before)).sum(axis=1, dtype=acc)
    return pd.DataFrame({
        "pixel_mean": total / p / 255.0, "pixel_std": spread / 255.0,
        "dark_fraction": (u < DARK_BELOW).sum(axis=1, dtype=acc) / p,
        "bright_fraction": (u >= BRIGHT_FROM).sum(axis=1, dtype=acc) / p,
        "edge_energy": steps / max(p - 1, 1) / 255.0,
    }).astype("float64")


def _image_features(frames, pixels: int):
    """mapInPandas body: ``image_stats`` per batch of the rows whose size fits."""
    for frame in frames:
        raw = frame["image"]
        ok = raw.map(lambda b: b is not None and len(b) == pixels).to_numpy()
        if ok.any():
            yield image_stats(raw[ok].tolist(), pixels)


def audio_stats(rows: list[bytes], n_mels: int, hop_seconds: float):
    """Six statistics per utterance from its float32 log-mel frames (frames x n_mels, ``log(mel power +
    1e-6)`` as prepare writes them), vectorised over all frames of the rows at once."""
    import pandas as pd

    per = 4 * n_mels
    n = np.fromiter((len(b) // per for b in rows), np.int64, len(rows))
    starts = np.concatenate(([0], np.cumsum(n)[:-1]))
    x = np.frombuffer(b"".join(rows), np.float32).reshape(-1, n_mels).astype(np.float64)
    power = np.exp(x)                                   # mel power per frame and band
    frame_power = power.sum(axis=1)
    total = np.add.reduceat(frame_power, starts)
    frame_db = 10 * np.log10(frame_power)
    peak = np.maximum.reduceat(frame_db, starts)
    mean = np.add.reduceat(x.sum(axis=1), starts) / (n * n_mels)
    square = np.add.reduceat((x * x).sum(axis=1), starts) / (n * n_mels)
    centroid = np.add.reduceat(power @ np.arange(n_mels, dtype=np.float64), starts) / total / max(n_mels - 1, 1)
    pauses = np.add.reduceat((frame_db < np.repeat(peak, n) - PAUSE_DB).astype(np.float64), starts)
    return pd.DataFrame({
        "duration_seconds": n * hop_seconds, "loudness_db": 10 * np.log10(total / n),
        "mel_mean": mean, "mel_std": np.sqrt(np.maximum(square - mean * mean, 0.0)),
        "mel_centroid": centroid, "pause_fraction": pauses / n,
    }).astype("float64")


def _audio_features(frames, n_mels: int, hop_seconds: float):
    """mapInPandas body: ``audio_stats`` per batch of the rows that hold whole frames."""
    per = 4 * n_mels
    for frame in frames:
        raw = frame["features"]
        ok = raw.map(lambda b: b is not None and len(b) > 0 and len(b) % per == 0).to_numpy()
        if ok.any():
            yield audio_stats(raw[ok].tolist(), n_mels, hop_seconds)


def numeric_features(df, spec: dict[str, Any]):
    """The per-row numeric features this model's input allows: (DataFrame of them, their names)."""
    from pyspark.sql import functions as F

    cols = set(df.columns)
    shape = spec.get("shape", {})
    if "image" in cols and "height" in shape:
        pixels = int(shape["height"] * shape["width"] * shape["channels"])
        schema = ", ".join(f"{n} double" for n in IMAGE_FEATURES)
        return df.select("image").mapInPandas(lambda it: _image_features(it, pixels), schema), list(IMAGE_FEATURES)
    if "features" in cols and "n_mels" in shape and "hop_ms" in shape:   # log-mel frames (prepare's audio)
        n_mels, hop = int(shape["n_mels"]), float(shape["hop_ms"]) / 1000.0
        schema = ", ".join(f"{n} double" for n in AUDIO_FEATURES)
        return (df.select("features").mapInPandas(lambda it: _audio_features(it, n_mels, hop), schema),
                list(AUDIO_FEATURES))
    if "token_ids" in cols:
        n = F.size("token_ids")
        oov = F.size(F.filter("token_ids", lambda t: t == UNK)) / F.greatest(n, F.lit(1))
        return df.select(n.cast("double").alias("length"), oov.cast("double").alias("oov_rate")), ["length", "oov_rate"]
    if "text" in cols:
        words = F.size(F.split(F.trim(F.col("text")), r"\s+"))
        return df.select(words.cast("double").alias("length"),
                         F.length("text").cast("double").alias("characters")), ["length", "characters"]
    return None, []


EMBEDDING_FEATURES = ("embedding_norm", "embedding_mean", "embedding_active", "embedding_max")
EMBEDDING_SAMPLE = 2000   # rows (a stable hash sample of ids): the model runs again on these only
# Directions the penultimate vector is projected on: a handful of decile histograms (10 bins each) is
# enough to see the sample move between regions of the space and keeps the report and the monitoring
# run small (3 metrics per direction).
EMBEDDING_DIRECTIONS = 6
# Spark ML's PCA aggregates a d x d covariance on the driver: 8 MB of doubles at d = 1,024. Wider layers
# (a logreg's "penultimate layer" is its input pixels) get seeded random unit directions instead.
PCA_MAX_DIM = 1024
DIRECTION_SEED = 21       # the random directions of wide layers are the same on every machine


def direction_names(k: int) -> list[str]:
    return [f"embedding_dir{i + 1}" for i in range(k)]


def _pooled(t) -> np.ndarray:
    """A head input as one vector per row: (rows, d) as is; a per-position head's (rows, ..., d) averaged."""
    t = t.detach().float()
    if t.ndim > 2:
        t = t.reshape(t.shape[0], -1, t.shape[-1]).mean(dim=1)
    return t.reshape(t.shape[0], -1).cpu().numpy()


def _embeddings(frames, model_file: str, key: str, directions: list[list[float]] | None,
                keep_vectors: bool = False, options: dict[str, Any] | None = None):
    """mapInPandas body: the input of the classifier head per row (the last ``Linear`` to run in a
    forward: the penultimate layer's output), summarised as norm, mean, active fraction and max, plus
    its projections on ``directions`` (if any) or, with ``keep_vectors`` (the reference pass that fits
    the directions), the vector itself. Eager model, cached per worker; ``options`` adds to the worker's
    (the in-process engine passes its unpacked model folder and its thread count)."""
    import pandas as pd
    import torch

    from .scoring_worker import worker_predictor

    pred = worker_predictor(model_file, {"device": "cpu", "threads": 1, "optimize": "none", "model_key": key,
                                         **(options or {})})
    linears = [m for m in pred.module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        return
    calls: list[tuple[Any, Any]] = []
    hooks = [m.register_forward_hook(lambda m, inp, _out: calls.append((m, inp[0]))) for m in linears]
    head = None
    axes = np.asarray(directions, dtype=np.float32).T if directions else None   # (d, k)
    try:
        for frame in frames:
            calls.clear()
            pred.predict_batch(pred.batch(frame))
            if not calls:
                continue
            if head is None:   # the head is the last Linear that ran; hook only it from now on
                head = calls[-1][0]
                for h in hooks:
                    h.remove()
                hooks = [head.register_forward_hook(lambda m, inp, _out: calls.append((m, inp[0])))]
            e = np.concatenate([_pooled(t) for m, t in calls if m is head])
            out = pd.DataFrame({"embedding_norm": np.linalg.norm(e, axis=1), "embedding_mean": e.mean(axis=1),
                                "embedding_active": (e > 0).mean(axis=1), "embedding_max": e.max(axis=1)},
                               dtype="float64")
            if keep_vectors:
                out["embedding"] = list(e)
            elif axes is not None:
                for i, name in enumerate(direction_names(axes.shape[1])):
                    out[name] = (e @ axes[:, i]).astype("float64")
            yield out
    finally:
        for h in hooks:
            h.remove()


def _projected(frames, directions: list[list[float]]):
    """mapInPandas body: the reference pass's vectors -> their projections (the vectors themselves dropped)."""
    axes = np.asarray(directions, dtype=np.float64).T
    for frame in frames:
        e = np.stack(frame.pop("embedding").to_numpy()).astype(np.float64)
        for i, name in enumerate(direction_names(axes.shape[1])):
            frame[name] = e @ axes[:, i]
        yield frame


def fit_directions(vectors) -> dict[str, Any] | None:
    """The reference sample's top principal components (Spark ML PCA: the covariance is a Spark
    aggregation), or seeded random unit vectors when the layer is wider than ``PCA_MAX_DIM``; None with
    fewer than two rows (no spread to fit)."""
    from pyspark.sql import functions as F

    got = vectors.agg(F.count(F.lit(1)).alias("n"), F.max(F.size("embedding")).alias("d")).collect()[0]  # small: 2 numbers
    n, d = int(got["n"]), int(got["d"] or 0)
    if n < 2 or d < 1:
        return None
    k = min(EMBEDDING_DIRECTIONS, d)
    if d <= PCA_MAX_DIM:
        from pyspark.ml.feature import PCA
        from pyspark.ml.functions import array_to_vector

        fitted = PCA(k=k, inputCol="v").fit(vectors.select(array_to_vector("embedding").alias("v")))
        axes, method = fitted.pc.toArray().T, "pca"   # (k, d)
    else:
        axes = np.random.default_rng(DIRECTION_SEED).normal(size=(k, d))
        axes, method = axes / np.linalg.norm(axes, axis=1, keepdims=True), "random"
    return {"method": method, "dim": d, "vectors": [[round(float(v), 7) for v in row] for row in axes]}


def embedding_features(df, spec: dict[str, Any], model: tuple[str, str] | None, rows: int,
                       directions: dict[str, Any] | None = None, *, fit: bool = False):
    """Penultimate-layer features on a stable hash sample of ~EMBEDDING_SAMPLE rows (classifiers).

    Returns (DataFrame, names, directions, cached): with ``fit`` (the reference) the sample's vectors
    are kept (``cached``: unpersist it when counted), the directions fitted on them and the vectors
    projected; otherwise the worker projects on the reference's ``directions`` as it goes.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from sparkzoo.models.tasks import TASKS

    from .scoring import model_input_columns

    wanted = model_input_columns(spec, df.columns)
    if model is None or not (spec.get("task") in TASKS and TASKS[spec["task"]].classifier) or not set(wanted) <= set(df.columns):
        return None, [], None, None
    every = max(1, int(rows) // EMBEDDING_SAMPLE)
    sample = df.filter(F.pmod(F.xxhash64("id"), F.lit(every)) == 0).select("id", *wanted)
    scalars = ", ".join(f"{n} double" for n in EMBEDDING_FEATURES)
    file, key = model
    if not fit:
        vectors = (directions or {}).get("vectors")
        names = [*EMBEDDING_FEATURES, *direction_names(len(vectors or []))]
        schema = ", ".join(f"{n} double" for n in names)
        return sample.mapInPandas(lambda it: _embeddings(it, file, key, vectors), schema), names, directions, None
    raw = sample.mapInPandas(lambda it: _embeddings(it, file, key, None, True), f"{scalars}, embedding array<float>")
    raw = raw.persist(StorageLevel.MEMORY_AND_DISK)   # ~EMBEDDING_SAMPLE vectors: read by the fit and the counts
    fitted = fit_directions(raw)
    if fitted is None:
        return raw.drop("embedding"), list(EMBEDDING_FEATURES), None, raw
    names = [*EMBEDDING_FEATURES, *direction_names(len(fitted["vectors"]))]
    schema = ", ".join(f"{n} double" for n in names)
    vectors = fitted["vectors"]
    return raw.mapInPandas(lambda it: _projected(it, vectors), schema), names, fitted, raw


def _token_bands(df) -> dict[str, int] | None:
    """Token ids counted by log2 band (one exploding aggregation); None when the input has no ids."""
    from pyspark.sql import functions as F

    if "token_ids" not in df.columns:
        return None
    band = F.least(F.floor(F.log2(F.col("t") + 1)), F.lit(TOKEN_BANDS - 1)).cast("int")
    rows = (df.select(F.explode("token_ids").alias("t")).groupBy(band.alias("b")).count()
            .collect())   # small: at most TOKEN_BANDS rows
    return {str(r["b"]): int(r["count"]) for r in rows}


def _edges(features, names: list[str]) -> dict[str, list[float]]:
    """Reference decile edges per feature (Spark's approximate quantiles, one job), duplicates merged."""
    if not names:
        return {}
    qs = features.approxQuantile(names, QUANTILES, 0.001)   # small: 9 numbers per feature
    return {n: sorted({float(v) for v in q if v is not None and not math.isnan(v)}) for n, q in zip(names, qs)}


def _binned_counts(features, edges: dict[str, list[float]]) -> tuple[int, dict[str, list[int]]]:
    """Rows per bin for every feature in ONE aggregation: bin k holds edges[k-1] < v <= edges[k]."""
    from pyspark.sql import functions as F

    aggs = [F.count(F.lit(1)).alias("_n")]
    for name, cuts in edges.items():
        col = F.col(name)
        bin_ = sum((F.when(col > c, 1).otherwise(0) for c in cuts), F.lit(0))
        binned = f"_{name}_bin"
        features = features.withColumn(binned, bin_)
        aggs += [F.sum(F.when(F.col(binned) == k, 1).otherwise(0)).alias(f"{name}__{k}") for k in range(len(cuts) + 1)]
    row = features.agg(*aggs).collect()[0].asDict()   # small: one row of counts
    return int(row["_n"]), {name: [int(row[f"{name}__{k}"] or 0) for k in range(len(cuts) + 1)]
                            for name, cuts in edges.items()}


def _categorical(df, column: str) -> dict[str, int]:
    rows = df.groupBy(column).count().collect()   # small: one row per class
    return {str(r[column]): int(r["count"]) for r in rows}


# ---- profiles ---------------------------------------------------------------------------------------

def profile(inputs, predictions, spec: dict[str, Any], edges: dict[str, list[float]] | None = None, *,
            model: tuple[str, str] | None = None, rows: int = 0,
            directions: dict[str, Any] | None = None) -> dict[str, Any]:
    """The profile of one data set: inputs (model input columns) and the model's predictions on them.

    With ``edges`` (the reference's) the numeric features are binned on them and the embeddings projected
    on the reference's ``directions``; without, decile edges are computed from this data first and the
    directions fitted on it (that is how the reference is made; they go into it as
    ``embedding_directions``). ``model`` (the shipped file name and cache key) adds the penultimate-layer
    features on a sample of the ``rows`` input rows.
    """
    out: dict[str, Any] = {"features": {}}
    embedded, emb_names, fitted, cached = embedding_features(inputs, spec, model, rows, directions, fit=edges is None)
    try:
        for i, (features, names) in enumerate((numeric_features(inputs, spec), (embedded, emb_names))):
            if not names:
                continue
            cuts = edges if edges is not None else _edges(features, names)
            cuts = {n: cuts[n] for n in names if n in cuts}
            if not cuts:
                continue
            n, counts = _binned_counts(features, cuts)
            out["rows" if i == 0 else "embedding_sample_rows"] = n
            for name in cuts:
                out["features"][name] = {"kind": "numeric", "edges": cuts[name], "counts": counts[name]}
    finally:
        if cached is not None:
            cached.unpersist()
    if edges is None and fitted is not None:
        out["embedding_directions"] = fitted
    bands = _token_bands(inputs)
    if bands is not None:
        out["features"]["token_distribution"] = {"kind": "categorical", "counts": bands}
    if predictions is not None and "prediction" in predictions.columns:
        out["features"]["predicted_class"] = {"kind": "categorical", "counts": _categorical(predictions, "prediction")}
        if "confidence" in predictions.columns:
            from pyspark.sql import functions as F

            conf = predictions.select(F.col("confidence").cast("double").alias("confidence"))
            cuts = _edges(conf, ["confidence"])["confidence"] if edges is None else edges.get("confidence")
            if cuts is not None:
                _, counts = _binned_counts(conf, {"confidence": cuts})
                out["features"]["confidence"] = {"kind": "numeric", "edges": cuts, "counts": counts["confidence"]}
    return out


def edges_of(reference: dict[str, Any]) -> dict[str, list[float]]:
    return {n: f["edges"] for n, f in reference["features"].items() if f["kind"] == "numeric"}


# ---- comparison (numpy on the counts) ---------------------------------------------------------------

def _aligned(ref: dict[str, Any], cur: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    if ref["kind"] == "numeric":
        p, q = np.asarray(ref["counts"], float), np.asarray(cur["counts"], float)
    else:
        keys = sorted(set(ref["counts"]) | set(cur["counts"]), key=lambda k: (len(k), k))
        p = np.asarray([ref["counts"].get(k, 0) for k in keys], float)
        q = np.asarray([cur["counts"].get(k, 0) for k in keys], float)
    return p, q


def figures(ref: dict[str, Any], cur: dict[str, Any]) -> dict[str, float | None]:
    """PSI, Jensen-Shannon distance (base 2, 0..1) and binned KS for one feature's two histograms."""
    p, q = _aligned(ref, cur)
    if p.sum() == 0 or q.sum() == 0:
        return {"psi": None, "js": None, "ks": None}
    ps, qs = (p + EPS) / (p + EPS).sum(), (q + EPS) / (q + EPS).sum()
    psi = float(np.sum((qs - ps) * np.log(qs / ps)))
    pn, qn = p / p.sum(), q / q.sum()
    m = (pn + qn) / 2
    kl = lambda a: float(np.sum(a[a > 0] * np.log2(a[a > 0] / m[a > 0])))   # noqa: E731  (a > 0 -> m > 0)
    js = math.sqrt(max(0.0, (kl(pn) + kl(qn)) / 2))
    ks = float(np.max(np.abs(np.cumsum(pn) - np.cumsum(qn)))) if ref["kind"] == "numeric" else None
    return {"psi": psi, "js": js, "ks": ks}


def compare(reference: dict[str, Any], current: dict[str, Any], flag_above: float) -> dict[str, Any]:
    """Per feature: the three figures and ``drifted`` (PSI above ``flag_above``); plus the moved list."""
    out: dict[str, Any] = {"flag_above": flag_above, "features": {}, "moved": []}
    for name, ref in reference["features"].items():
        cur = current["features"].get(name)
        if cur is None:
            continue
        f = figures(ref, cur)
        f["drifted"] = f["psi"] is not None and f["psi"] > flag_above
        out["features"][name] = f
        if f["drifted"]:
            out["moved"].append(name)
    return out


def moved_line(result: dict[str, Any]) -> str:
    """One line naming the features that moved, with their PSI: what a scheduler's log shows."""
    parts = [f"{n} (PSI {result['features'][n]['psi']:.2f})" for n in result["moved"]]
    return f"drift above PSI {result['flag_above']:g}: " + ", ".join(parts)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True)
