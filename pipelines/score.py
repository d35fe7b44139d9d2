"""Batch scoring with a registered model: Spark ``mapInArrow`` over Arrow batches.

The model version is pinned on the driver at job start (an alias that moves mid-job cannot mix
versions), its files are shipped once as a zip with ``addFile``, and each Python worker loads it once,
on the executor's GPU when it has one. Input is a prepared split, any Parquet path or glob, or a catalog table;
a column of the wrong type stops the job before any work, while rows that cannot fit the model (null id
or image, wrong size, a declared shape that is not the model's) are routed by a native Spark filter to a
reject table with a reason and the job goes on. Output is Parquet partitioned by model version and run
date; a rerun overwrites only its own partitions (Spark's dynamic partition overwrite stages the files
and renames whole partitions at job commit), and each committed partition then gets a ``_manifest.json``
and a ``_SUCCESS`` marker, written last; incremental mode skips ids this version already scored on
earlier dates (an anti-join in Spark) and refuses to read a partition without its marker.

This module is the ``sparkzoo score`` stage; the shipped model, the input contract and ``score_frame`` it
runs on are the scoring library (pipelines/scoring.py), which promote, baselines and the drift check use
too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from typing import Any

from . import arrow_pass, devices, inference_path, monitoring, paths, score_files, track
from .config import Experiment
from .errors import DriftError, ScoringError
from .phases import Phases
from .score_job import REJECT_SCHEMA, ScoreResult, input_location, mark_partition, naming_unreadable_input
from .scoring import ShippedModel, check_input, input_snapshot, model_download, partition_dir, reject_reason, scoring_record, \
    score_frame, shipped_model, worker_options

log = logging.getLogger("sparkzoo.score")



def _device_failure(exc: Exception) -> ScoringError | None:
    """A task's ``score.device=cuda`` refusal, or an optimised path its model cannot take, out of the Spark
    and Py4J layers around it: one line."""
    import re

    found = re.search(r"ScoringError: (score\.(?:device=cuda|optimize=)[^\n]*)", str(exc))
    return ScoringError(found.group(1).strip()) if found else None


def under_profile(spark, frame, profile):
    """``frame`` whose scoring stage runs under ``profile`` (a GPU share per task), or ``frame`` itself.

    Spark 3.5's ``mapInPandas`` takes no profile (4.0's does), so the profile goes on the stage's RDD: a
    profile on any RDD of a stage applies to the whole stage (shuffle read, model, write), and stages
    before the shuffle (reading, prepare) keep the default, CPU-only profile. The cost is one pass of the
    scored rows (id, outputs; never the images) through Python pickling."""
    if profile is None:
        return frame
    return spark.createDataFrame(frame.rdd.withResources(profile), frame.schema)


def input_frame(spark, exp: Experiment):
    """The DataFrame to score and a name for it in messages: a catalog table, a path/glob, or a split."""
    if exp.score.input_table:
        name = exp.score.input_table
        if not spark.catalog.tableExists(name):
            raise ScoringError(f"score.input_table '{name}' is not in the Spark catalog "
                               f"(current database '{spark.catalog.currentDatabase()}'); create it, qualify it as "
                               f"database.table, or use score.input_path for a Parquet folder")
        return spark.table(name), f"table {name}"
    path = input_location(exp)
    return spark.read.parquet(path), path


def spread_over_cores(spark, df):
    """The input repartitioned to one partition per core, only when Spark would read it in fewer tasks
    than there are cores.

    Spark splits Parquet by row group, so a small table (one file, one row group) scores on one core
    while the rest idle, and scoring is compute-bound (measured: a 4 MB, 100,000-row token-id file ran on
    one of two workers). Spark already packs files into one split per core when they allow it, so an
    input that reads as enough tasks keeps them: the shuffle had been taken for any input under one
    ``maxPartitionBytes`` split per core, and on 240,000 images (8 files, read as 2 tasks anyway) it cost
    the JVM 3 s of CPU and the job 8% of its rows/s (bench/RESULTS.md)."""
    cores = spark.sparkContext.defaultParallelism
    if cores <= 1:
        return df
    try:   # planning only, no job: the read has already listed the files
        tasks = df.rdd.getNumPartitions()
    except Exception:   # a source with no partitions to plan: leave the input as it is
        return df
    if tasks < cores:
        log.info("scoring input reads as %d task(s) on %d cores: repartitioning to %d", tasks, cores, cores)
        return df.repartition(cores)
    return df


def require_complete(output: str, version: int, exclude_date: str | None = None) -> None:
    """Refuse to build on a predictions partition that lacks its marker: its job died while committing."""
    base = paths.join(output, f"model_version={version}")
    for folder in paths.list_dirs(base):
        if exclude_date and folder.rstrip("/").endswith(f"run_date={exclude_date}"):
            continue
        if not paths.is_complete(folder):
            raise ScoringError(f"predictions partition {folder} has no {paths.SUCCESS} marker: the scoring job that "
                               f"wrote it did not finish, so its ids cannot count as scored; re-run score for that "
                               f"date (--set score.run_date=...) or delete the partition")


def run(exp: Experiment, spark=None, phase: Phases | None = None) -> ScoreResult:
    """``sparkzoo score``: the pinned version over the configured input, committed partition by partition.

    ``phase`` collects seconds per phase (the CLI starts it with the process's own start-up); the job
    logs them as one line and returns them in ``ScoreResult.phases``."""
    started = time.time()
    phase = phase or Phases()
    with contextlib.ExitStack() as stack:   # the driver's copy of the model goes when the job is done
        with phase("resolve model"):
            name, version = track.resolve_model_version(exp, exp.score.model_uri)   # pinned: aliases may move now
            # the download runs in a thread while the JVM starts and the input is listed (small jobs)
            download = stack.enter_context(model_download(exp, name, version))
        run_date = exp.score.run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()
        if spark is None:   # a caller's session (tests, other stages) means Spark
            from . import score_in_process

            with phase("choose engine"):
                engine, why = score_in_process.choose_engine(exp)
            log.info("scoring engine: %s (%s)", engine, why)
            if engine == "in_process":
                result = score_in_process.run(exp, name, version, download, run_date, started, phase)
                result.phases = phase.seconds
                log.info("score phases: %s", phase.line())
                _log_scored(result, exp)
                return result
        with phase("spark session"):
            if spark is None:
                from .session import get_spark
                spark = get_spark(exp)
            profile = devices.score_profile(spark, exp.score.tasks_per_gpu)   # before any work: a bad request fails now
        log.info("scoring: %s", devices.score_plan(spark, exp.score.device, exp.score.tasks_per_gpu))
        # Spark's schema read, or any Spark job after it, may be the first to read a file that is not Parquet
        with naming_unreadable_input():
            with phase("open input"):
                df, where = input_frame(spark, exp)
            with phase("ship model"):   # what the download has left to do, then the zip for the executors
                shipped = stack.enter_context(shipped_model(spark, exp, name, version, download))
            result = _score(exp, spark, shipped, df, where, run_date, profile, started, phase)
    result.phases = phase.seconds
    log.info("score phases: %s", phase.line())
    return result


def _score(exp: Experiment, spark, shipped: ShippedModel, df, where: str, run_date: str, profile,
           started: float, phase: Phases) -> ScoreResult:
    """The scoring passes, the reject table, the partition manifests and the drift check of one job."""
    from pyspark.sql import functions as F

    name, version = shipped.name, shipped.version
    file_io, why = score_files.choose(exp)
    with phase("check input"):
        df = check_input(df, where, shipped.spec)
    splits = None
    if file_io == "pyarrow":   # the footers give the row count the drift tap needs, with no Spark job
        with phase("plan splits"):
            splits = _plan_files(spark, df, where)
    with phase("check input"):
        # the tasks that write to staging check an optimised path's accuracy themselves, before the commit
        choice = inference_path.choose(spark, exp, shipped, df, where, planned=splits)
        record = scoring_record(exp, input_snapshot(df, where, exp), name, version)   # input snapshot, model URI, config hash
    where_in = where

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(exp.score.batch_size))
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    log.info("scoring files read and written by %s (%s)", "the Python workers (pyarrow)" if file_io == "pyarrow"
             else "Spark", why)
    # spread for the scoring passes only: ``df.count()`` below stays a Parquet metadata count, no shuffle
    # (the workers that read their own files split the row groups themselves: pipelines/score_files.py)
    tagged = (spread_over_cores(spark, df) if file_io == "spark" else df).withColumn(
        "_reject", reject_reason(df, shipped.spec))
    keep = [c for c in ("label",) if c in df.columns and shipped.is_classifier]
    good = tagged.filter(F.col("_reject").isNull())
    out = paths.predictions_dir(exp)
    skipped = 0
    # One scan when every row fits: the scoring pass sees the tagged rows, drops and counts the bad ones,
    # and only a nonzero count costs the second scan that writes the reject table (0.9 s of a 30 s job
    # at 1,000,000 rows). Incremental runs drop already-scored ids first, so they keep both passes.
    counter = None
    if exp.score.incremental and paths.exists(out):
        # Ids this version scored on EARLIER dates; today's partition is about to be replaced, so a
        # rerun for the same date scores the same rows again and stays idempotent.
        require_complete(out, version, exclude_date=run_date)
        done = (spark.read.parquet(out)
                .filter((F.col("model_version") == version) & (F.col("run_date").cast("string") != run_date))
                .select("id"))
        skipped = good.join(done, "id", "left_semi").count()
        good = good.join(done, "id", "left_anti")
    else:
        counter = spark.sparkContext.accumulator(0)
        good = tagged
    seen = spark.sparkContext.accumulator(set(), devices.SetUnion())
    options = {**worker_options(exp), **choice.worker_options(spark), "reject_counter": counter, "device_seen": seen}
    with phase("drift"):
        plan = _drift_tap(exp, spark, shipped, df, record, options, rows=splits[1] if splits else None)
    rejects_path = out.rstrip("/") + "_rejects"
    written = None
    if splits is not None:
        agg, rejected, n_in = _pass_on_files(exp, spark, shipped, df, keep, options, splits, out, rejects_path,
                                             version, run_date, phase, choice)
    else:
        agg, rejected, n_in, written = _pass_on_spark(spark, shipped, df, tagged, good, keep, options, plan, profile,
                                                      counter, out, rejects_path, version, run_date, phase)
    if seen.value:
        log.info("scoring ran on %s", devices.summarise(seen.value))
    result = ScoreResult(name, version, n_in, int(agg["n"]), rejected, out, rejects_path,
                         float(agg["acc"]) if keep and agg["acc"] is not None else None, time.time() - started,
                         run_date, skipped, choice.path)
    if result.scored_rows + result.rejected_rows + skipped != n_in:
        raise ScoringError(f"scored {result.scored_rows} + rejected {rejected} + already scored {skipped} rows != "
                           f"{n_in} input rows; output at {out} is not trusted (duplicate ids in the input?)")
    drift_block = None
    if plan is not None and agg["n"]:   # counted by the scoring pass: only the comparison and report are left
        from .drift_stream import merged

        with phase("drift"):
            drift_block = monitoring.report(
                exp, plan["reference"], merged(plan, list(options["observer"][2].value.values())),
                run_id=record["model"]["run_id"], name=name, version=version, run_date=run_date,
                partition=partition_dir(out, version, run_date), where=where_in, seconds=plan["seconds"])
        result.drift = drift_block
    elif exp.score.drift and agg["n"] and not plan_folded(exp):
        # tonight's rows that fit the model + their predictions, vs the reference, in Spark aggregations
        with phase("drift"):
            drift_block = monitoring.check(
                exp, inputs=df.filter(reject_reason(df, shipped.spec).isNull()), predictions=written,
                spec=shipped.spec, run_id=record["model"]["run_id"], name=name, version=version, run_date=run_date,
                partition=partition_dir(out, version, run_date), where=where_in, model=(shipped.file, shipped.key),
                rows=n_in)
        result.drift = drift_block
    info = {"model_name": name, "model_version": version, "run_date": run_date, "input_rows": n_in,
            "scored_rows": result.scored_rows, "rejected_rows": rejected, "skipped_rows": skipped, "engine": "spark",
            "file_io": file_io, "inference_path": choice.summary(), **record, **({"drift": drift_block} if drift_block else {}),
            "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    with phase("commit"):
        for where, rows in ((rejects_path, rejected), (out, result.scored_rows)):   # predictions last
            mark_partition(partition_dir(where, version, run_date), {**info, "rows": rows})
    _log_scored(result, exp)
    return result


def _pass_on_spark(spark, shipped: ShippedModel, df, tagged, good, keep: list[str], options: dict[str, Any], plan,
                   profile, counter, out: str, rejects_path: str, version: int, run_date: str, phase: Phases):
    """The scoring pass with Spark reading and writing the files: the rows that fit scored and written,
    the flagged ones to the reject table, then what was written counted back. Returns (the count and
    accuracy, the rejected count, the input's count, this partition's predictions as a DataFrame)."""
    from pyspark.sql import functions as F

    name = shipped.name
    if plan is not None and plan["embedded"]:
        from .drift_stream import SAMPLE_FLAG, sample_flag

        tagged = tagged.withColumn(SAMPLE_FLAG, sample_flag(plan["every"]))
        good = tagged
    scored = (under_profile(spark, score_frame(good, shipped, options, keep), profile)
              .withColumn("model_name", F.lit(name))
              .withColumn("scored_at", F.current_timestamp())
              .withColumn("model_version", F.lit(version))
              .withColumn("run_date", F.lit(run_date)))
    rejects = (tagged.filter(F.col("_reject").isNotNull())
               .select("id", F.col("_reject").alias("reason"), F.lit(name).alias("model_name"),
                       F.lit(version).alias("model_version"), F.lit(run_date).alias("run_date")))
    for frame, where in ((scored, out), (rejects, rejects_path)):
        with phase("score and write" if where == out else "write rejects"):
            # no row flagged: this date's rejects are empty, and no second scan writes them
            _write_partition(frame, where, version, run_date,
                             empty=where == rejects_path and counter is not None and counter.value == 0)
    with phase("count"):
        written, agg, rejected, n_in = _counts(spark, out, rejects_path, version, run_date, keep, counter, df,
                                               plan["rows"] if plan is not None else None)
    return agg, rejected, n_in, written


def _plan_files(spark, df, where: str):
    """``score_files.plan`` over the files Spark's own listing found for ``df`` (``inputFiles``: no job,
    the read has listed them), split at Spark's ``maxPartitionBytes`` (as Spark parses it)."""
    from .scoring import local_path

    files = sorted(local_path(f) for f in df.inputFiles())
    if not files:
        raise ScoringError(f"scoring input {where} holds no Parquet file (names starting with _ or . are "
                           f"skipped, as Spark skips them)")
    split_bytes = spark._jsparkSession.sessionState().conf().filesMaxPartitionBytes()
    return score_files.plan(files, int(split_bytes), spark.sparkContext.defaultParallelism)


def _pass_on_files(exp: Experiment, spark, shipped: ShippedModel, df, keep: list[str], options: dict[str, Any],
                   planned, out: str, rejects_path: str, version: int, run_date: str, phase: Phases,
                   choice: inference_path.PathChoice):
    """The scoring pass with the Python workers reading and writing the files (pipelines/score_files.py)
    over ``planned`` (``_plan_files``), and the optimised path's accuracy check when the tasks ran it
    (``choice.deferred``). Returns (the count and accuracy, the rejected count, the input's count)."""
    from .scoring import model_input_columns

    splits, n_in, input_fs = planned
    types = dict(df.dtypes)
    inputs = model_input_columns(shipped.spec, list(types))
    out_schema, scored_schema, rejects_schema, stamp = arrow_pass.output_schemas(shipped.spec, types, keep)
    job = {"columns": arrow_pass.task_columns(types, inputs, keep), "batch_size": exp.score.batch_size,
           "spec": shipped.spec, "inputs": inputs, "keep": keep, "out_schema": out_schema,
           "scored_schema": scored_schema, "rejects_schema": rejects_schema, "name": shipped.name, "stamp": stamp,
           "options": {**{k: v for k, v in options.items() if k != "reject_counter"}, "model_key": shipped.key},
           "model_file": shipped.file,
           "input_fs": input_fs}
    accept = None
    if choice.deferred:   # each task checks its share of the rows, its first ones; judged before the commit
        job["check_rows"] = -(-choice.deferred // len(splits))
        import pyarrow as pa

        job["check_skip"] = pa.array(choice.calibrated_ids, pa.string()) if choice.calibrated_ids else None
        accept = lambda done: inference_path.accept_checked(exp, choice, [t["check"] for t in done])   # noqa: E731
    for table in (out, rejects_path):   # an earlier run's marker must not vouch for files being replaced now
        paths.delete_file(paths.join(partition_dir(table, version, run_date), paths.SUCCESS))
    with phase("score and write"):
        try:
            passed = score_files.run(spark, splits, job, out, rejects_path, version, run_date, accept)
        except Exception as exc:
            failure = paths.write_failure(exc, f"scoring output {out}") or _device_failure(exc)
            if failure is not None:
                raise failure from None
            raise
    agg = {"n": passed.scored, "acc": passed.right / passed.labelled if passed.labelled else None}
    return agg, passed.rejected, n_in


def _log_scored(result: ScoreResult, exp: Experiment) -> None:
    """The job's last line, then the drift verdict: a move above ``score.drift_fail_above`` fails the job."""
    log.info("scored %d rows with %s v%d in %.1fs (%.0f rows/s), %d rejected%s", result.scored_rows,
             result.model_name, result.model_version, result.seconds,
             result.input_rows / max(result.seconds, 1e-9), result.rejected_rows,
             f", {result.skipped_rows} already scored (incremental)" if exp.score.incremental else "")
    limit = exp.score.drift_fail_above
    drift_block = result.drift
    failing = [n for n, f in (drift_block or {}).get("features", {}).items()
               if limit is not None and f["psi"] is not None and f["psi"] > limit]
    if failing:   # the output is written and marked: the job reports the move, it does not hide the scores
        moved = ", ".join(f"{n} (PSI {drift_block['features'][n]['psi']:.2f})" for n in failing)
        raise DriftError(f"drift: {moved} above score.drift_fail_above={limit:g}; see {drift_block['report']}")


def plan_folded(exp: Experiment) -> bool:
    """Whether the scoring pass itself counts the drift profile (``_drift_tap``): the Arrow worker on a
    full (not incremental) run. Incremental runs profile every fitting input row, scored tonight or
    before, and the pandas worker is the former path: both keep the Spark aggregations."""
    return exp.score.drift and exp.score.batch_format == "arrow" and not exp.score.incremental


def _drift_tap(exp: Experiment, spark, shipped: ShippedModel, df, record: dict[str, Any],
               options: dict[str, Any], rows: int | None = None) -> dict[str, Any] | None:
    """The drift profile folded into the scoring pass: each task counts its rows on the reference's bins
    (pipelines/drift_stream.py) and sends the counts back keyed by partition, so the profile costs no
    Spark job of its own (it was 4-5 of them, 3.4-5.8 s of a small job). Sets the worker's options;
    None when the pass does not count it (no reference, or ``plan_folded`` says no). ``rows``: the input's
    count when the caller has it (the footers the file-reading pass planned from), else a count job."""
    if not plan_folded(exp):
        return None
    from . import drift_stream
    from .scoring import model_input_columns

    started = time.perf_counter()
    ref = monitoring.load_reference(exp, record["model"]["run_id"])
    if ref is None:
        log.info("drift: %s v%d has no reference profile (trained before drift profiles); not compared",
                 shipped.name, shipped.version)
        return None
    if rows is None:   # a Parquet metadata count: the embedding sample's step, as drift.embedding_features has it
        rows = df.count()
    # the embedding sample runs on the scoring task's own device (the GPU Spark assigned it, if any)
    plan = drift_stream.tap(shipped.spec, ref, df.columns, model_input_columns(shipped.spec, df.columns), rows,
                            shipped.is_classifier, shipped.file, shipped.key, {"device": exp.score.device})
    options["observer"] = (drift_stream.PartitionProfile, plan,
                           spark.sparkContext.accumulator({}, drift_stream.ByPartition()))
    return {**plan, "reference": ref, "rows": rows, "seconds": time.perf_counter() - started}


def _write_partition(frame, where: str, version: int, run_date: str, empty: bool) -> None:
    """This job's partition of ``where`` replaced by ``frame`` (Spark's dynamic overwrite), unmarked until
    the job commits; ``empty``: the partition is known to have no rows, so its old files just go."""
    # a marker left from an earlier run of this date must not vouch for files being replaced now
    paths.delete_file(paths.join(partition_dir(where, version, run_date), paths.SUCCESS))
    if empty:   # a dynamic overwrite with no rows would leave an earlier run's files of this date
        paths.delete_dir(partition_dir(where, version, run_date))
        return
    try:
        frame.write.mode("overwrite").partitionBy("model_version", "run_date").parquet(where)
    except Exception as exc:
        failure = paths.write_failure(exc, f"scoring output {where}") or _device_failure(exc)
        if failure is not None:
            raise failure from None
        raise


def _counts(spark, out: str, rejects_path: str, version: int, run_date: str, keep: list[str], counter, df,
            n_in: int | None = None):
    """What the job wrote, read back: this partition's predictions, their count and accuracy, the
    rejected count (no scan when the scoring pass counted none) and the input's count."""
    from pyspark.sql import functions as F

    written = None
    mine = (F.col("model_version") == version) & (F.col("run_date").cast("string") == run_date)
    if paths.list_files(partition_dir(out, version, run_date), ".parquet"):
        written = spark.read.parquet(out).filter(mine)
        agg = written.agg(F.count("*").alias("n"),
                          *([F.avg((F.col("prediction") == F.col("label")).cast("double")).alias("acc")] if keep else [])
                          ).collect()[0]  # small: one row
    else:   # every row was rejected (or the input was empty): Spark wrote no file to read back
        agg = {"n": 0, "acc": None}
    rejected = (0 if counter is not None and counter.value == 0 else
                spark.read.schema(REJECT_SCHEMA).parquet(rejects_path).filter(mine).count())
    n_in = df.count() if n_in is None else n_in   # the drift tap counted it before the pass
    return written, agg, rejected, n_in
