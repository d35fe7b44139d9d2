"""The prepare stage: raw files -> versioned Parquet dataset + manifest + quarantine, all in Spark.

Output is written to a staging folder and renamed into place only after the manifest is written, so a
dataset folder with a manifest is always complete; an unchanged source and config give the same
version, and preparing it again does no work.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .. import paths
from ..config import Experiment
from ..dataset import MANIFEST, SPLITS, dataset_version, open_prepared_at, source_listing
from . import manifest as manifest_mod
from .images import DATA_COLUMNS, ROW_SCHEMA
from .quarantine import COLUMNS as QUARANTINE_COLUMNS
from .quarantine import BadSummary, check_threshold
from .sources import idx

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
    """Prepare the dataset the config names; a no-op when that version already exists."""
    started = time.time()
    listing = source_listing(exp)
    version = dataset_version(exp, listing)
    target = paths.dataset_dir(exp, version)
    if paths.exists(paths.join(target, MANIFEST)):
        ds = open_prepared_at(target)
        log.info("dataset %s version %s is already prepared at %s: nothing to do", exp.data.dataset, version, target)
        return PrepareResult(target, version, {s: ds.rows(s) for s in SPLITS}, int(ds.manifest["quarantined"]),
                             int(ds.manifest["input_records"]), time.time() - started, skipped=True,
                             manifest=ds.manifest)

    pairs = idx.inspect(exp.data.source.path, exp.data.max_records)   # headers only, on the driver
    if spark is None:
        from ..session import get_spark
        spark = get_spark(exp)
    rows = _read_rows(spark, exp, pairs)

    from pyspark import StorageLevel
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        totals, per_class, summary = _aggregate(rows)
        check_threshold(summary, exp.prepare.max_bad_fraction, f"{exp.data.source.path}")
        staging = paths.join(paths.datasets_root(exp), f".staging-{version}-{uuid.uuid4().hex[:8]}")
        try:
            manifest = _write(rows, exp, staging, version, listing, pairs, totals, per_class, summary)
            if paths.exists(paths.join(target, MANIFEST)):   # another job finished the same version first
                paths.delete_dir(staging)
            else:
                paths.delete_dir(target)                      # a leftover without manifest is incomplete
                paths.move(staging, target)
        except BaseException:
            paths.delete_dir(staging)
            raise
    finally:
        rows.unpersist()
    seconds = time.time() - started
    result = PrepareResult(target, version, {s: manifest["splits"][s]["rows"] for s in SPLITS},
                           summary.bad, summary.total, seconds, manifest=manifest)
    log.info("prepared %s v%s: %d records in %.1fs (%.0f rows/s); train/val/test = %d/%d/%d; quarantined %d",
             exp.data.dataset, version, summary.total, seconds, result.rows_per_second,
             result.rows["train"], result.rows["val"], result.rows["test"], summary.bad)
    return result


def _read_rows(spark, exp: Experiment, pairs: list[idx.IdxPair]):
    """One Spark task per record range; rows come back flagged good or bad."""
    plan = idx.plan_ranges(pairs, exp.prepare.records_per_task)
    dataset, names, val_fraction = exp.data.dataset, list(exp.data.source.label_names), exp.data.val_fraction
    records = plan.to_dict("records")
    tasks = spark.sparkContext.parallelize(records, max(len(records), 1)).toDF(
        "source_split string, images string, labels string, start long, end long, height long, width long")

    def read(batches):
        from sparkzoo.pipelines.prepare.sources.idx import iter_records
        return iter_records(batches, dataset, names, val_fraction)

    return tasks.mapInPandas(read, ROW_SCHEMA)


def _aggregate(rows) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]], BadSummary]:
    """Counts, pixel sums and bad-record reasons: small aggregates, the only things the driver sees."""
    from pyspark.sql import functions as F

    good = rows.filter(F.col("reason").isNull())
    totals = {r["split"]: {"rows": r["n"], "sum": r["s"], "sumsq": r["ss"], "count": r["c"]}
              for r in good.groupBy("split").agg(F.count("*").alias("n"), F.sum("pix_sum").alias("s"),
                                                 F.sum("pix_sumsq").alias("ss"),
                                                 F.sum("pix_count").alias("c")).collect()}  # small: one row per split
    per_class: dict[str, dict[str, int]] = {}
    for r in good.groupBy("split", "label_name").count().collect():  # small: splits x classes
        per_class.setdefault(r["split"], {})[r["label_name"]] = int(r["count"])
    bad = rows.filter(F.col("reason").isNotNull())
    by_reason = {r["reason"]: int(r["count"]) for r in bad.groupBy("reason").count().collect()}  # small: reasons
    examples = [r.asDict() for r in bad.select("source", "reason", "detail").limit(3).collect()]  # small: 3 rows
    n_good = sum(int(t["rows"]) for t in totals.values())
    n_bad = sum(by_reason.values())
    return totals, per_class, BadSummary(n_good + n_bad, n_bad, by_reason, examples)


def _write(rows, exp: Experiment, staging: str, version: str, listing, pairs, totals, per_class,
           summary: BadSummary) -> dict[str, Any]:
    from pyspark.sql import functions as F

    good = rows.filter(F.col("reason").isNull())
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        out = paths.join(staging, split)
        (good.filter(F.col("split") == split).select(*DATA_COLUMNS)
         .write.mode("overwrite")
         .option("maxRecordsPerFile", exp.prepare.rows_per_file)
         .option("parquet.block.size", exp.prepare.row_group_bytes)
         .option("compression", "snappy")
         .parquet(out))
        files = manifest_mod.parquet_layout(out, staging)
        n = sum(sum(f["row_groups"]) for f in files)
        expected = int(totals.get(split, {}).get("rows", 0))
        if n != expected:
            raise RuntimeError(f"split {split}: wrote {n} rows but counted {expected}; the output is not trusted")
        splits[split] = {"rows": n, "files": files}
    (rows.filter(F.col("reason").isNotNull()).select(*QUARANTINE_COLUMNS)
     .write.mode("overwrite").parquet(paths.join(staging, "quarantine")))

    train = totals.get("train", {"sum": 0.0, "sumsq": 0.0, "count": 0})
    h, w = pairs[0].height, pairs[0].width
    manifest = manifest_mod.build(
        dataset=exp.data.dataset, version=version, modality="image", task="classification",
        source={"kind": exp.data.source.kind, "path": exp.data.source.path, "files": listing},
        shape={"channels": 1, "height": h, "width": w},
        label_names=list(exp.data.source.label_names),
        counts={s: {"rows": splits[s]["rows"], "per_class": per_class.get(s, {})} for s in SPLITS},
        stats=manifest_mod.pixel_stats(train["sum"] or 0.0, train["sumsq"] or 0.0, float(train["count"] or 0)),
        splits=splits, input_records=summary.total, quarantined=summary.bad,
        quarantine_by_reason=summary.by_reason,
        schema=[{"name": f.name, "type": f.dataType.simpleString()} for f in good.select(*DATA_COLUMNS).schema],
        config={"data": exp.data.model_dump(mode="json"), "prepare": exp.prepare.model_dump(mode="json")},
    )
    paths.write_json(paths.join(staging, MANIFEST), manifest)
    return manifest
