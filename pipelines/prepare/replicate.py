"""``sparkzoo replicate``: grow a prepared dataset N-fold with seeded random augmentation, in Spark.

For benchmarks at scale on one machine (millions of rows from a few thousand real ones). Copy 0 of a
row is the row itself; copies 1..N-1 get ids ``<id>#<k>`` and an augmentation drawn from a generator
seeded by (seed, id, k), so the same config always gives the same bytes. Every copy stays in its
original's split: a replicated val/test row never leaks an augmented twin into train.

Images: random crop after padding, horizontal flip, Gaussian pixel noise (masks follow the geometry).
Audio (on the prepared log-mel): gain (a constant in the log domain), speed (time resampling of the
frames), additive noise in the power domain. Text: token dropout to <unk>.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .. import paths
from ..config import Experiment
from ..dataset import MANIFEST, SPLITS, open_prepared, open_prepared_at
from . import PrepareResult
from . import manifest as manifest_mod

log = logging.getLogger("sparkzoo.replicate")


def _rng(seed: int, rid: str, k: int) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}:{rid}:{k}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def augment_image(pix: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, cfg: dict[str, Any]
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (h, w, c) -> same shape: pad+random crop, random flip, Gaussian noise."""
    h, w, _ = pix.shape
    p = int(cfg["crop_pad"])
    if p:
        dy, dx = rng.integers(0, 2 * p + 1, size=2)
        pix = np.pad(pix, ((p, p), (p, p), (0, 0)), mode="edge")[dy:dy + h, dx:dx + w]
        if mask is not None:
            mask = np.pad(mask, ((p, p), (p, p)), mode="constant")[dy:dy + h, dx:dx + w]
    if cfg["flip"] and rng.random() < 0.5:
        pix = pix[:, ::-1]
        mask = mask[:, ::-1] if mask is not None else None
    if cfg["noise_std"]:
        noisy = pix.astype(np.float32) + rng.normal(0.0, 255.0 * cfg["noise_std"], size=pix.shape)
        pix = np.clip(noisy, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pix), (np.ascontiguousarray(mask) if mask is not None else None)


def augment_audio(feats: np.ndarray, rng: np.random.Generator, cfg: dict[str, Any]) -> np.ndarray:
    """float32 (frames, mels) natural-log mel power -> gain, tempo change, additive noise."""
    gain_db = rng.uniform(-cfg["gain_db"], cfg["gain_db"]) if cfg["gain_db"] else 0.0
    out = feats + np.float32(2.0 * np.log(10.0 ** (gain_db / 20.0)))      # log(a^2 P) = log P + 2 ln a
    if cfg["speed"]:
        rate = rng.uniform(1.0 - cfg["speed"], 1.0 + cfg["speed"])
        n = max(1, int(round(out.shape[0] / rate)))
        src = np.linspace(0, out.shape[0] - 1, n)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, out.shape[0] - 1)
        frac = (src - lo)[:, None].astype(np.float32)
        out = out[lo] * (1 - frac) + out[hi] * frac
    if cfg["noise_std"]:
        power = np.exp(out)
        noise = rng.exponential(cfg["noise_std"] * float(power.mean()), size=power.shape)
        out = np.log(power + noise)
    return out.astype(np.float32)


def augment_frames(frames: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: (row, copy k) in, augmented row out; copy 0 is the row unchanged."""
    cfg, modality, seed = ctx["cfg"], ctx["modality"], ctx["seed"]
    for frame in frames:
        frame = frame.copy()
        ks = frame.pop("_copy").to_numpy()
        new_ids = []
        for i, (rid, k) in enumerate(zip(frame["id"].tolist(), ks)):
            new_ids.append(rid if k == 0 else f"{rid}#{k}")
            if k == 0:
                continue
            rng = _rng(seed, rid, int(k))
            if modality == "image":
                h, w, c = int(frame.at[i, "height"]), int(frame.at[i, "width"]), int(frame.at[i, "channels"])
                pix = np.frombuffer(frame.at[i, "image"], np.uint8).reshape(h, w, c)
                mask = None
                if "mask" in frame and frame.at[i, "mask"] is not None:
                    mask = np.frombuffer(frame.at[i, "mask"], np.uint8).reshape(h, w)
                pix, mask = augment_image(pix, mask, rng, cfg)
                frame.at[i, "image"] = pix.tobytes()
                if mask is not None:
                    frame.at[i, "mask"] = mask.tobytes()
            elif modality == "audio":
                n_mels = int(frame.at[i, "n_mels"])
                feats = np.frombuffer(frame.at[i, "features"], np.float32).reshape(-1, n_mels)
                feats = augment_audio(feats, rng, cfg)
                frame.at[i, "features"] = feats.tobytes()
                frame.at[i, "n_frames"] = feats.shape[0]
            else:
                ids = np.asarray(frame.at[i, "token_ids"], dtype=np.int32).copy()
                drop = (rng.random(ids.size) < cfg["token_dropout"]) & (ids > 3)
                ids[drop] = 1   # <unk>
                frame.at[i, "token_ids"] = ids.tolist()
        frame["id"] = new_ids
        yield frame


def output_version(source_version: str, exp: Experiment) -> str:
    key = f"{source_version}:{exp.seed}:{sorted(exp.replicate.model_dump(mode='json').items())}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def run(exp: Experiment, spark=None) -> PrepareResult:
    """Replicate the dataset this config prepares into ``<root>/<name>/<version>``; a no-op if it exists."""
    from pyspark.sql import functions as F

    started = time.time()
    src = open_prepared(exp)
    cfg = exp.replicate
    name = cfg.dataset or f"{exp.data.dataset}_x{cfg.factor}"
    version = output_version(src.version, exp)
    root = paths.join(paths.resolve(exp, exp.data.root), name)
    target = paths.join(root, version)
    if paths.is_complete(target):
        ds = open_prepared_at(target)
        return PrepareResult(target, version, {s: ds.rows(s) for s in SPLITS}, 0, int(ds.manifest["input_records"]),
                             time.time() - started, skipped=True, manifest=ds.manifest)
    if spark is None:
        from ..session import get_spark
        spark = get_spark(exp)
    m = src.manifest
    parts = [spark.read.parquet(src.split_dir(s)).withColumn("split", F.lit(s)) for s in SPLITS if src.rows(s)]
    df = parts[0]
    for p in parts[1:]:
        df = df.unionByName(p)
    total = sum(src.rows(s) for s in SPLITS) * cfg.factor
    n_tasks = max(spark.sparkContext.defaultParallelism * exp.prepare.tasks_per_core,
                  -(-total // exp.prepare.rows_per_file))
    df = df.repartition(n_tasks).withColumn("_copy", F.explode(F.sequence(F.lit(0), F.lit(cfg.factor - 1))))
    ctx = {"cfg": cfg.model_dump(mode="json"), "modality": m.get("modality", "image"), "seed": exp.seed}
    schema = df.drop("_copy").schema
    out = df.mapInPandas(lambda it: augment_frames(it, ctx), schema)
    staging = paths.join(root, f".staging-{version}-{uuid.uuid4().hex[:8]}")
    try:
        tmp = paths.join(staging, "_parts")
        (out.write.mode("overwrite").partitionBy("split").option("maxRecordsPerFile", exp.prepare.rows_per_file)
         .option("parquet.block.size", exp.prepare.row_group_bytes).parquet(tmp))
        splits = {}
        for s in SPLITS:
            if paths.exists(paths.join(tmp, f"split={s}")):
                paths.move(paths.join(tmp, f"split={s}"), paths.join(staging, s))
            files = manifest_mod.parquet_layout(paths.join(staging, s), staging)
            rows = sum(sum(f["row_groups"]) for f in files)
            if rows != src.rows(s) * cfg.factor:
                raise RuntimeError(f"replicate split {s}: wrote {rows} rows, expected {src.rows(s)} x {cfg.factor}")
            splits[s] = {"rows": rows, "files": files}
        paths.delete_dir(tmp)
        manifest = dict(m)
        manifest.update({
            "dataset": name, "version": version, "splits": splits,
            "counts": {s: {"rows": splits[s]["rows"],
                           "per_class": {k: v * cfg.factor for k, v in m["counts"][s].get("per_class", {}).items()}}
                       for s in SPLITS},
            "input_records": sum(src.rows(s) for s in SPLITS), "quarantined": 0, "quarantine_by_reason": {},
            "replicated_from": {"dataset": m["dataset"], "version": src.version, "factor": cfg.factor,
                                "seed": exp.seed, "augment": cfg.model_dump(mode="json"),
                                "note": "synthetic: augmented copies of real rows; stats are the source's"},
        })
        paths.write_json(paths.join(staging, MANIFEST), manifest)
        paths.mark_complete(staging, {"dataset": name, "version": version, "rows": {s: splits[s]["rows"] for s in SPLITS},
                                      "replicated_from": manifest["replicated_from"]})
        paths.commit_dir(staging, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            paths.delete_dir(staging)
        failure = paths.write_failure(exc, f"the replicated dataset under {root}")
        if failure is not None:
            raise failure from None
        raise
    seconds = time.time() - started
    rows = {s: splits[s]["rows"] for s in SPLITS}
    log.info("replicated %s v%s x%d -> %s v%s: %d rows in %.1fs (%.0f rows/s)", m["dataset"], src.version,
             cfg.factor, name, version, sum(rows.values()), seconds, sum(rows.values()) / max(seconds, 1e-9))
    return PrepareResult(target, version, rows, 0, manifest["input_records"], seconds, manifest=manifest)
