"""Captioned compositions of Fashion-MNIST items, generated inside Spark tasks.

Each row pastes two 28x28 items onto a grey canvas so that a spatial relation between them is true and
writes the caption that says so ("a sneaker left of a bag"). Nothing is made on the driver: it plans
``spark.range`` ids, and every task opens the IDX files itself (cached per Python worker, since a
composition needs random access to the whole item pool) and builds its rows from a generator seeded by
``(seed, split, row index)``, so a row is the same whatever the partitioning.

Held out by construction, so the test bar measures generalisation to new combinations and new pictures:

- the (subject, relation, object) triples are split once, by a seeded hash: test and val each get
  their own share that train never shows (``held_out_test``, ``held_out_val``);
- test rows paste items of the official Fashion-MNIST test file; val rows paste a stable
  ``data.val_fraction`` share of the train file's items (by a hash of the item index) that train rows
  never use.

A composition that needs an item the IDX file does not hold (a file that ends early) or a class with no
item in its split's pool (a tiny ``data.max_records``) is quarantined with the reason, never dropped.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, ClassVar, Iterator, Literal

import numpy as np
import pandas as pd

from pydantic import Field, field_validator, model_validator

from ...errors import DataError
from ...source_registry import SourceConfig, register_source

ITEM = 28            # Fashion-MNIST items are 28x28
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
EXTRA_SCHEMA = ", subject string, relation string, object string"


def caption(subject: str, relation: str, obj: str) -> str:
    return f"a {subject} {relation} a {obj}"


def triple_splits(nouns: list[str], relations: list[str], held_out_val: float, held_out_test: float,
                  seed: int, with_val: bool = True) -> dict[str, list[tuple[str, str, str]]]:
    """Every (subject, relation, object) triple in exactly one split, ranked by a seeded hash: exact
    shares, the same on every machine, and independent of how many rows are made."""
    triples = [(s, r, o) for s in nouns for r in relations for o in nouns]
    ranked = sorted(triples, key=lambda t: hashlib.blake2b(f"{seed}:{'|'.join(t)}".encode(), digest_size=8).digest())
    n_test = max(1, round(len(triples) * held_out_test))
    n_val = max(1, round(len(triples) * held_out_val)) if with_val and held_out_val > 0 else 0
    out = {"test": ranked[:n_test], "val": ranked[n_test:n_test + n_val], "train": ranked[n_test + n_val:]}
    seen = {w for s, _, o in out["train"] for w in (s, o)} | {r for _, r, _ in out["train"]}
    missing = [w for w in [*nouns, *relations] if w not in seen]
    if missing:
        raise DataError(f"no training triple uses {missing}: the model could never learn those words; lower "
                        f"data.source.held_out_val/held_out_test or add relations")
    return {k: sorted(v) for k, v in out.items()}


def place(relation: str, canvas: int, rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
    """(row, col) of the subject's and the object's 28x28 box: separated along the relation's axis by
    at least a box, offset across it by at most a quarter box, so exactly one relation holds."""
    free = canvas - 2 * ITEM
    gap = int(rng.integers(0, free + 1))
    first = int(rng.integers(0, free - gap + 1))
    second = first + ITEM + gap
    across = int(rng.integers(0, canvas - ITEM + 1))
    other = int(np.clip(across + rng.integers(-(ITEM // 4), ITEM // 4 + 1), 0, canvas - ITEM))
    if relation == "left of":
        return (across, first), (other, second)
    if relation == "right of":
        return (across, second), (other, first)
    if relation == "above":
        return (first, across), (second, other)
    return (second, across), (first, other)   # below


def compose(items: list[np.ndarray], boxes: list[tuple[int, int]], canvas: int) -> np.ndarray:
    """Items pasted with a pixel-wise maximum (white-on-black Fashion-MNIST stays readable where boxes touch)."""
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    for img, (r, c) in zip(items, boxes):
        np.maximum(out[r:r + ITEM, c:c + ITEM], img, out=out[r:r + ITEM, c:c + ITEM])
    return out


def _labels(path: str, count: int) -> np.ndarray:
    from .idx import _open

    with _open(path) as fh:
        fh.seek(8)
        return np.frombuffer(fh.read(count), dtype=np.uint8).astype(np.int64)


@functools.lru_cache(maxsize=4)
def _pool(split: str, ctx_key: tuple) -> tuple[np.ndarray, dict[int, np.ndarray], str | None, str]:
    """The item images a split may use, their indices by class, what went wrong reading, and the file."""
    from ..split import bucket
    from .idx import read_range

    images, labels, count, val_fraction = ctx_key
    imgs, _, problem = read_range(images, labels, 0, count, ITEM, ITEM)
    lbls = _labels(labels, count)
    index = np.arange(len(lbls))
    if split != "test":
        cut = int(round(val_fraction * 10_000))
        is_val = np.array([bucket(f"fashion-item/{i}") < cut for i in index], dtype=bool)
        index = index[is_val] if split == "val" else index[~is_val]
    by_class = {int(c): index[lbls[index] == c] for c in np.unique(lbls[index])}
    return imgs, by_class, problem, images


def make_rows(batches: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: ``spark.range`` ids in, composition rows (good and flagged bad) out."""
    from ..rows import bad_rows, image_rows

    nouns, canvas = ctx["nouns"], ctx["canvas"]
    starts = ctx["starts"]   # split -> first global id
    for frame in batches:
        ids = frame["id"].to_numpy()
        for split, (lo, hi) in starts.items():
            mine = ids[(ids >= lo) & (ids < hi)] - lo
            if not len(mine):
                continue
            triples = ctx["triples"][split]
            file_split = "test" if split == "test" else "train"
            imgs, by_class, problem, path = _pool(split, tuple(ctx["files"][file_split]))
            good: dict[str, list] = {k: [] for k in ("id", "source", "pix", "caption", "s", "r", "o")}
            bad: dict[str, list] = {k: [] for k in ("id", "source", "reason", "detail", "s", "r", "o")}
            for i in mine.tolist():
                rng = np.random.default_rng([ctx["seed"], SPLIT_CODES[split], i])
                s, r, o = triples[int(rng.integers(len(triples)))]
                rid = f"{ctx['dataset']}/{split}/{i:07d}"
                pools = [by_class.get(nouns.index(w), np.empty(0, np.int64)) for w in (s, o)]
                if any(len(p) == 0 for p in pools):
                    for k, v in zip(bad, (rid, path, "missing_item",
                                          f"the {split} item pool holds no {s if len(pools[0]) == 0 else o}; raise "
                                          f"data.max_records", s, r, o)):
                        bad[k].append(v)
                    continue
                chosen = [int(p[rng.integers(len(p))]) for p in pools]
                boxes = place(r, canvas, rng)
                source = f"{path}#{chosen[0]}+{chosen[1]}"
                if max(chosen) >= len(imgs):
                    for k, v in zip(bad, (rid, source, "truncated", f"item {max(chosen)} is missing: {problem}", s, r, o)):
                        bad[k].append(v)
                    continue
                for k, v in zip(good, (rid, source, compose([imgs[c] for c in chosen], list(boxes), canvas),
                                       caption(s, r, o), s, r, o)):
                    good[k].append(v)
            if good["id"]:
                out = image_rows(good["id"], good["source"], file_split, np.stack(good["pix"])[..., None],
                                 np.full(len(good["id"]), -1), [], 0.0, captions=good["caption"])
                out["split"] = split
                out["subject"], out["relation"], out["object"] = good["s"], good["r"], good["o"]
                yield out
            if bad["id"]:
                out = bad_rows(bad["id"], bad["source"], split, bad["reason"], bad["detail"], "compose")
                out["subject"], out["relation"], out["object"] = bad["s"], bad["r"], bad["o"]
                yield out


def plan(exp) -> dict[str, Any]:
    """What the tasks need (small): row ranges per split, the triples of each split, the item files."""
    from . import idx

    src = exp.data.source
    pairs = {p.split: p for p in idx.inspect(src.path, exp.data.max_records)}   # headers only
    for p in pairs.values():
        if (p.height, p.width) != (ITEM, ITEM):
            raise DataError(f"{p.images} holds {p.height}x{p.width} images; compositions paste 28x28 "
                            f"Fashion-MNIST items")
    cap = exp.data.max_records
    rows = {"train": src.train_rows, "val": src.val_rows, "test": src.test_rows}
    rows = {k: min(v, cap) if cap else v for k, v in rows.items()}
    starts, at = {}, 0
    for split in ("train", "val", "test"):
        starts[split] = (at, at + rows[split])
        at += rows[split]
    triples = triple_splits(list(src.nouns), list(src.relations), src.held_out_val, src.held_out_test, exp.seed,
                            with_val=rows["val"] > 0)
    return {"dataset": exp.data.dataset, "seed": exp.seed, "nouns": list(src.nouns), "canvas": src.canvas,
            "starts": starts, "total": at, "triples": {k: [list(t) for t in v] for k, v in triples.items()},
            "files": {s: [p.images, p.labels, p.count, exp.data.val_fraction] for s, p in pairs.items()}}


def read(spark, exp):
    """``spark.range`` over every row to make, one task per ``rows_per_task``; rows flagged good or bad."""
    from ..rows import IMAGE_ROW_SCHEMA

    ctx = plan(exp)
    ctx["triples"] = {k: [tuple(t) for t in v] for k, v in ctx["triples"].items()}
    parts = max(1, -(-ctx["total"] // exp.data.source.rows_per_task))

    def body(batches):
        from sparkzoo.pipelines.prepare.sources.compose import make_rows
        return make_rows(batches, ctx)

    return spark.range(0, ctx["total"], numPartitions=parts).mapInPandas(body, IMAGE_ROW_SCHEMA + EXTRA_SCHEMA)


def summary(df) -> dict[str, Any]:
    """Rows per (split, triple) from a Spark aggregation: the manifest's record of what each split holds
    (at most splits x triples rows reach the driver)."""
    from pyspark.sql import functions as F

    got: dict[str, dict[str, int]] = {}
    for r in df.groupBy("split", "subject", "relation", "object").agg(F.count("*").alias("n")).collect():  # small: splits x triples rows
        got.setdefault(r["split"], {})[f"{r['subject']}|{r['relation']}|{r['object']}"] = int(r["n"])
    return {split: dict(sorted(v.items())) for split, v in sorted(got.items())}


RELATIONS = ("left of", "right of", "above", "below")
MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NOUNS = 10   # one caption word per Fashion-MNIST class


@register_source("compositions", "image")
class CompositionSource(SourceConfig):
    """Captioned compositions of Fashion-MNIST items ("a sneaker left of a bag"), generated in Spark
    tasks from the IDX files at ``path``.

    A relation and its mirror cannot both be on: "a bag right of a sneaker" is the same picture as "a
    sneaker left of a bag", so the caption would stop being a function of the image and BLEU against
    the one reference would punish a correct caption. The subject is always the item the relation
    reads from (the left one for ``left of``, the top one for ``above``).
    """

    # caption word per Fashion-MNIST class, in the IDX label order (one token each)
    nouns: list[str] = Field(default_factory=lambda: ["top", "trouser", "pullover", "dress", "coat", "sandal",
                                                      "shirt", "sneaker", "bag", "boot"])
    relations: list[Literal["left of", "right of", "above", "below"]] = Field(
        default_factory=lambda: ["left of", "above"])
    canvas: int = Field(64, ge=56, le=256)      # square grey canvas; items are 28x28, so two fit side by side
    train_rows: int = Field(20000, ge=1)        # compositions per split (data.max_records caps each)
    val_rows: int = Field(2000, ge=0)
    test_rows: int = Field(2000, ge=1)
    # Shares of all (subject, relation, object) triples that only val / only test ever show: the test
    # bar is on combinations the model never saw in training.
    held_out_val: float = Field(0.15, ge=0.0, lt=1.0)
    held_out_test: float = Field(0.15, gt=0.0, lt=1.0)
    rows_per_task: int = Field(2000, gt=0)      # compositions one Spark task makes
    # (label_names is unused: compositions carry captions, not classes)

    # every row has a caption; the canvas and the rows per split are the source's own, so data.image and
    # data.test_fraction do not shape the rows
    captions: ClassVar[bool] = True
    unused_data_keys: ClassVar[frozenset[str]] = frozenset({"image", "test_fraction"})

    @field_validator("nouns")
    @classmethod
    def _one_token_each(cls, value: list[str]) -> list[str]:
        if len(value) != NOUNS:
            raise ValueError(f"needs one noun per Fashion-MNIST class ({NOUNS}), got {len(value)}")
        bad = [n for n in value if not re.fullmatch(r"[a-z]+", n)]
        if bad:
            raise ValueError(f"nouns must be single lower-case words (one caption token each): {bad}")
        return value

    @field_validator("relations")
    @classmethod
    def _unambiguous(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("needs at least one relation, each once")
        both = [r for r in value if MIRROR[r] in value]
        if both:
            raise ValueError(f"{both[0]!r} and {MIRROR[both[0]]!r} describe the same picture two ways; keep one "
                             f"of each pair (e.g. [left of, above]) so every image has exactly one caption")
        return value

    @model_validator(mode="after")
    def _room_for_train(self) -> "CompositionSource":
        if self.held_out_val + self.held_out_test >= 0.9:
            raise ValueError("held_out_val + held_out_test must leave at least 10% of the triples to train on")
        return self

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        return read(spark, exp)

    def finish(self, spark: Any, exp: Any, good: Any, label_names: list[str], totals: Any) -> tuple[Any, dict[str, Any]]:
        from pyspark.sql import functions as F

        from .. import images

        extra = {"compositions": {"nouns": list(self.nouns), "relations": list(self.relations),
                                  "canvas": self.canvas, "triples": summary(good)}}
        return images.finish(spark, exp, good.withColumn("label", F.lit(-1).cast("long")), label_names, totals,
                             shape={"channels": 1, "height": self.canvas, "width": self.canvas}, relabel=False,
                             columns=("subject", "relation", "object"), extra=extra)
