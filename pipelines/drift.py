"""Did the world move? A small profile of model inputs and predictions, compared night by night.

Training computes a reference profile on the validation split with the registered model (``reference``)
and logs it as ``drift/reference.json`` on its MLflow run; each scoring run computes the same profile on
its input and its predictions (``profile``) and compares the two (``compare``): population stability
index, Jensen-Shannon distance and a binned Kolmogorov-Smirnov statistic per feature.

Everything that touches rows is a Spark aggregation: per-row features are native column expressions
(text) or one vectorised pass over the pixel bytes (images), binned against the reference's decile edges
and counted in ONE ``agg`` of ``sum(when(...))`` columns; only the counts (a few hundred numbers) reach the
driver. Features:

* images: per-row mean, standard deviation, dark and bright pixel fractions, and edge energy (mean
  absolute difference between neighbouring pixels), all on 0..1 pixel values;
* text (token ids): length, out-of-vocabulary rate, and the token distribution over log2 id bands (ids
  are frequency ranks of the training vocabulary, so a shift in bands is a shift in vocabulary);
* image classifiers: the penultimate layer (the classifier head's input) on a hash sample of about
  2,000 rows, summarised per row as norm, mean, active fraction and max;
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


# ---- per-row features (Spark) ------------------------------------------------------------------------

def _image_features(frames, pixels: int):
    """mapInPandas body: five statistics per image from its raw uint8 bytes, vectorised per batch."""
    import pandas as pd

    for frame in frames:
        raw = frame["image"]
        ok = raw.map(lambda b: b is not None and len(b) == pixels).to_numpy()
        if not ok.any():
            continue
        x = np.frombuffer(b"".join(raw[ok]), dtype=np.uint8).reshape(int(ok.sum()), pixels).astype(np.float32) / 255.0
        yield pd.DataFrame({
            "pixel_mean": x.mean(axis=1), "pixel_std": x.std(axis=1),
            "dark_fraction": (x < 0.1).mean(axis=1), "bright_fraction": (x > 0.9).mean(axis=1),
            "edge_energy": np.abs(np.diff(x, axis=1)).mean(axis=1),
        }).astype("float64")


def numeric_features(df, spec: dict[str, Any]):
    """The per-row numeric features this model's input allows: (DataFrame of them, their names)."""
    from pyspark.sql import functions as F

    cols = set(df.columns)
    if "image" in cols and "height" in spec.get("shape", {}):
        shape = spec["shape"]
        pixels = int(shape["height"] * shape["width"] * shape["channels"])
        schema = ", ".join(f"{n} double" for n in IMAGE_FEATURES)
        return df.select("image").mapInPandas(lambda it: _image_features(it, pixels), schema), list(IMAGE_FEATURES)
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


def _embeddings(frames, model_file: str, key: str):
    """mapInPandas body: the input of the classifier head (the last ``Linear``: the penultimate layer's
    output) per row, summarised as norm, mean, active fraction and max. Eager model, cached per worker."""
    import pandas as pd
    import torch

    from .score import _predictor

    pred = _predictor(model_file, {"device": "cpu", "threads": 1, "optimize": "none", "model_key": key})
    heads = [m for m in pred.module.modules() if isinstance(m, torch.nn.Linear)]
    if not heads:
        return
    got: list[np.ndarray] = []
    handle = heads[-1].register_forward_hook(
        lambda _m, inp, _out: got.append(inp[0].detach().float().reshape(inp[0].shape[0], -1).cpu().numpy()))
    try:
        for frame in frames:
            got.clear()
            pred.predict_batch(pred.batch(frame))
            if not got:
                continue
            e = np.concatenate(got)
            yield pd.DataFrame({"embedding_norm": np.linalg.norm(e, axis=1), "embedding_mean": e.mean(axis=1),
                                "embedding_active": (e > 0).mean(axis=1), "embedding_max": e.max(axis=1)}).astype("float64")
    finally:
        handle.remove()


def embedding_features(df, spec: dict[str, Any], model: tuple[str, str] | None, rows: int):
    """Penultimate-layer summaries on a stable hash sample of ~EMBEDDING_SAMPLE rows (image classifiers)."""
    from pyspark.sql import functions as F

    from sparkzoo.models.tasks import CLASSIFIER_TASKS

    if model is None or "image" not in df.columns or spec.get("task") not in CLASSIFIER_TASKS:
        return None, []
    every = max(1, int(rows) // EMBEDDING_SAMPLE)
    sample = df.filter(F.pmod(F.xxhash64("id"), F.lit(every)) == 0).select("id", "image")
    schema = ", ".join(f"{n} double" for n in EMBEDDING_FEATURES)
    file, key = model
    return sample.mapInPandas(lambda it: _embeddings(it, file, key), schema), list(EMBEDDING_FEATURES)


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
            model: tuple[str, str] | None = None, rows: int = 0) -> dict[str, Any]:
    """The profile of one data set: inputs (model input columns) and the model's predictions on them.

    With ``edges`` (the reference's) the numeric features are binned on them; without, decile edges are
    computed from this data first (that is how the reference is made). ``model`` (the shipped file name
    and cache key) adds the penultimate-layer features on a sample of the ``rows`` input rows.
    """
    out: dict[str, Any] = {"features": {}}
    for i, (features, names) in enumerate((numeric_features(inputs, spec),
                                           embedding_features(inputs, spec, model, rows))):
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
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = lambda a: float(np.nansum(np.where(a > 0, a * np.log2(a / m), 0.0)))   # noqa: E731
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
