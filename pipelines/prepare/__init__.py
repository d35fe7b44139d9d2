"""The prepare stage: raw files -> versioned Parquet dataset + manifest + quarantine, all in Spark.

Output is written to a staging folder; the manifest and then the ``_SUCCESS`` marker are written last,
and only then is the folder renamed into place, so a dataset folder with the marker is always complete
(readers refuse one without it); an unchanged source and config give the same
version, and preparing it again does no work.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .. import paths
from ..config import Experiment
from ..dataset import MANIFEST, SPLITS, dataset_version, open_prepared_at, source_listing
from . import manifest as manifest_mod
from .quarantine import COLUMNS as QUARANTINE_COLUMNS
from .quarantine import BadSummary, check_threshold


class _LazyF:
    """pyspark.sql.functions, imported on first use so importing this package needs no Spark."""

    def __getattr__(self, name: str):
        from pyspark.sql import functions

        return getattr(functions, name)


F = _LazyF()

log = logging.getLogger("sparkzoo.prepare")


@dataclass
class PrepareResult:
    path: str
    version: str
    rows: dict[str, int]
    quarantined: int
    input_records: int
    seconds: float
    skipped: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.input_records / self.seconds if self.seconds else 0.0


def run(exp: Experiment, spark=None) -> PrepareResult:
    """Prepare the dataset the config names; a no-op when that version already exists.

    The flow is the same for every modality: the modality module reads and decodes records in Spark
    tasks (bad ones flagged, never dropped), this function counts good and bad rows with small
    aggregations, enforces ``prepare.max_bad_fraction``, lets the module finish (vocabularies, token
    ids, label ids), then writes splits + quarantine + manifest into a staging folder and renames it.
    """
    started = time.time()
    listing = source_listing(exp)
    version = dataset_version(exp, listing)
    target = paths.dataset_dir(exp, version)
    if paths.is_complete(target):
        ds = open_prepared_at(target)
        log.info("dataset %s version %s is already prepared at %s: nothing to do", exp.data.dataset, version, target)
        return PrepareResult(target, version, {s: ds.rows(s) for s in SPLITS}, int(ds.manifest["quarantined"]),
                             int(ds.manifest["input_records"]), time.time() - started, skipped=True,
                             manifest=ds.manifest)
    if spark is None:
        from ..session import get_spark
        spark = get_spark(exp)
    source = exp.data.source

    from pyspark import StorageLevel
    with contextlib.ExitStack() as stack:
        fixed_names = list(source.label_names)   # empty: the sorted labels found
        rows = _check_labels(source.read(spark, exp, listing, stack), fixed_names)
        rows = _keep_train_fraction(rows, exp.data.train_fraction)
        # DISK_ONLY: prepared rows are large binary values (pixels, log-mel frames); kept in the heap they
        # filled a 2 GB driver at 20,000 spliced utterances (the columnar cache builder ran out of heap),
        # while local disk costs one write and one read and scales with the data, not with the heap.
        rows = rows.persist(StorageLevel.DISK_ONLY)
        stack.callback(rows.unpersist)
        totals, per_class, summary = _aggregate(rows)
        log.info("%s: %d input records, %d good, %d quarantined%s", exp.data.source.path, summary.total,
                 summary.total - summary.bad, summary.bad,
                 f" ({', '.join(f'{k}: {v}' for k, v in sorted(summary.by_reason.items()))})" if summary.bad else "")
        check_threshold(summary, exp.prepare.max_bad_fraction, f"{exp.data.source.path}")
        label_names = fixed_names or sorted(
            {name for split in per_class.values() for name in split})
        good = rows.filter(F.col("reason").isNull())
        data, extra = _finish(source)(spark, exp, good, label_names, totals)
        staging = paths.join(paths.datasets_root(exp), f".staging-{version}-{uuid.uuid4().hex[:8]}")
        try:
            manifest = _write(rows, data, exp, staging, version, listing, label_names, totals, per_class,
                              summary, extra)
            paths.mark_complete(staging, {"dataset": exp.data.dataset, "version": version,
                                          "rows": {s: manifest["splits"][s]["rows"] for s in SPLITS},
                                          "quarantined": summary.bad, "created_at": manifest["created_at"]})
            paths.commit_dir(staging, target)   # a no-op if another job finished the same version first
        except BaseException as exc:
            _discard(staging)
            failure = paths.write_failure(exc, f"the prepared dataset under {paths.datasets_root(exp)}")
            if failure is not None:
                raise failure from None
            raise
    seconds = time.time() - started
    result = PrepareResult(target, version, {s: manifest["splits"][s]["rows"] for s in SPLITS},
                           summary.bad, summary.total, seconds, manifest=manifest)
    log.info("prepared %s v%s: %d input records = %d written + %d quarantined, in %.1fs (%.0f rows/s); "
             "train/val/test = %d/%d/%d", exp.data.dataset, version, summary.total, summary.total - summary.bad,
             summary.bad, seconds, result.rows_per_second, result.rows["train"], result.rows["val"],
             result.rows["test"])
    return result


def _discard(staging: str) -> None:
    """Remove a staging folder after a failure; on a full disk even that may fail, and the folder has
    no marker, so it can never be mistaken for a dataset."""
    with contextlib.suppress(OSError):
        paths.delete_dir(staging)


UNUSED = "unused"   # train rows left out by data.train_fraction: counted, never written


def _keep_train_fraction(rows, fraction: float):
    """``data.train_fraction`` < 1: a stable hash of the id moves the rest of train to ``unused``."""
    if fraction >= 1.0:
        return rows
    from .split import BUCKETS

    drop = (F.col("split") == "train") & (F.pmod(F.xxhash64("id"), F.lit(BUCKETS)) >= int(round(fraction * BUCKETS)))
    return rows.withColumn("split", F.when(drop, F.lit(UNUSED)).otherwise(F.col("split")))


def _finish(source):
    """Who turns the good rows into the written columns: the source itself when it knows more (IDX
    label ids, compositions, spliced utterances), else its modality's writer module."""
    own = getattr(source, "finish", None)
    if own is not None:
        return own
    from . import audio, images, text

    return {"image": images, "text": text, "audio": audio}[source.modality].finish


def _check_labels(rows, names: list[str]):
    """With fixed class names in the config, a record whose label is not one of them is quarantined."""
    if not names:
        return rows
    unknown = F.col("reason").isNull() & F.col("label_name").isNotNull() & ~F.col("label_name").isin(names)
    detail = F.concat(F.lit("label '"), F.col("label_name"),
                      F.lit(f"' is not in data.source.label_names ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"))
    return (rows.withColumn("stage", F.when(unknown, F.lit("label")).otherwise(F.col("stage")))
            .withColumn("detail", F.when(unknown, detail).otherwise(F.col("detail")))
            .withColumn("reason", F.when(unknown, F.lit("unknown_label")).otherwise(F.col("reason"))))


def _aggregate(rows) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]], BadSummary]:
    """Counts, stat sums and bad-record reasons: small aggregates, the only things the driver sees."""
    good = rows.filter(F.col("reason").isNull())
    totals = {r["split"]: {"rows": r["n"], "sum": r["s"], "sumsq": r["ss"], "count": r["c"]}
              for r in good.groupBy("split").agg(F.count("*").alias("n"), F.sum("stat_sum").alias("s"),
                                                 F.sum("stat_sumsq").alias("ss"),
                                                 F.sum("stat_count").alias("c")).collect()}  # small: one row per split
    per_class: dict[str, dict[str, int]] = {}
    for r in good.filter(F.col("label_name").isNotNull()).groupBy("split", "label_name").count().collect():  # small: splits x classes
        per_class.setdefault(r["split"], {})[r["label_name"]] = int(r["count"])
    bad = rows.filter(F.col("reason").isNotNull())
    by_reason = {r["reason"]: int(r["count"]) for r in bad.groupBy("reason").count().collect()}  # small: reasons
    examples = [r.asDict() for r in bad.select("source", "reason", "detail").limit(3).collect()]  # small: 3 rows
    n_good = sum(int(t["rows"]) for t in totals.values())
    n_bad = sum(by_reason.values())
    return totals, per_class, BadSummary(n_good + n_bad, n_bad, by_reason, examples)


def _write(rows, data, exp: Experiment, staging: str, version: str, listing, label_names, totals, per_class,
           summary: BadSummary, extra: dict[str, Any]) -> dict[str, Any]:
    """All splits in one pass (partitioned by split, then renamed to train/val/test), then quarantine."""
    parts = paths.join(staging, "_parts")
    (data.filter(F.col("split") != UNUSED).write.mode("overwrite")
     .partitionBy("split")
     .option("maxRecordsPerFile", exp.prepare.rows_per_file)
     .option("parquet.block.size", exp.prepare.row_group_bytes)
     .option("compression", "snappy")
     .parquet(parts))
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        out = paths.join(staging, split)
        src = paths.join(parts, f"split={split}")
        if paths.exists(src):
            paths.move(src, out)
        files = manifest_mod.parquet_layout(out, staging)
        n = sum(sum(f["row_groups"]) for f in files)
        expected = int(totals.get(split, {}).get("rows", 0))
        if n != expected:
            raise RuntimeError(f"split {split}: wrote {n} rows but counted {expected}; the output is not trusted")
        splits[split] = {"rows": n, "files": files}
    paths.delete_dir(parts)
    (rows.filter(F.col("reason").isNotNull()).select(*QUARANTINE_COLUMNS)
     .write.mode("overwrite").parquet(paths.join(staging, "quarantine")))

    train = totals.get("train", {"sum": 0.0, "sumsq": 0.0, "count": 0})
    src_files: Any = listing if len(listing) <= 5000 else {"count": len(listing),
                                                           "bytes": sum(int(f["size"]) for f in listing)}
    # every file with its byte hash, in Parquet beside the manifest (lineage; no 5,000-file cliff)
    index = manifest_mod.write_file_index(rows.sparkSession, listing, exp.data.source.path, staging)
    manifest = manifest_mod.build(
        dataset=exp.data.dataset, version=version, modality=exp.data.modality, task=extra.pop("task"),
        source={"kind": exp.data.source.kind, "path": exp.data.source.path, "files": src_files, "index": index},
        shape=extra.pop("shape", {}),
        label_names=label_names,
        counts={s: {"rows": splits[s]["rows"], "per_class": per_class.get(s, {})} for s in SPLITS},
        stats=extra.pop("stats", None) or manifest_mod.pixel_stats(
            train["sum"] or 0.0, train["sumsq"] or 0.0, float(train["count"] or 0)),
        splits=splits, input_records=summary.total, quarantined=summary.bad,
        quarantine_by_reason=summary.by_reason,
        schema=[{"name": f.name, "type": f.dataType.simpleString()} for f in data.schema if f.name != "split"],
        config={"data": exp.data.model_dump(mode="json"), "prepare": exp.prepare.model_dump(mode="json")},
    )
    manifest.update(extra)
    if UNUSED in totals:
        manifest["unused_train_rows"] = int(totals[UNUSED]["rows"])   # data.train_fraction left them out
    paths.write_json(paths.join(staging, MANIFEST), manifest)
    return manifest
