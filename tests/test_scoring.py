"""Scheduled scoring: idempotent reruns, incremental runs, rejects, any input (glob, catalog table), the
alias pinned while a promotion happens, plain MLflow spark_udf on the same model, optimised paths.
Real local Spark, real Parquet, real MLflow sqlite registry, real trained models."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from sparkzoo.pipelines import score, track
from sparkzoo.pipelines.dataset import open_prepared
from sparkzoo.pipelines.errors import ScoringError

from .conftest import copy_version


def _partition(spark, out, version, date):
    return spark.read.parquet(out).filter((F.col("model_version") == version) &
                                          (F.col("run_date").cast("string") == date))


def test_shipped_model_leaves_no_folder_behind(trained, make_exp, spark, tmp_path, monkeypatch):
    """The driver's download goes with the block, the zip lives in Spark's own file folder (Spark deletes
    it with the context; an executor that joins later still fetches it), and a whole job leaves nothing."""
    import tempfile

    from pyspark import SparkFiles

    from sparkzoo.pipelines import scoring
    from sparkzoo.pipelines.modelpack import SPEC_FILE

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    exp = make_exp(f"score.output={tmp_path / 'out'}")
    rows = spark.read.parquet(open_prepared(exp).split_dir("test")).limit(64)
    with scoring.shipped_model(spark, exp, exp.model_name, trained.model_version) as shipped:
        assert (Path(shipped.local_dir) / SPEC_FILE).exists() and shipped.is_classifier
        good = scoring.fitting_rows(rows, "test split", shipped.spec)
        assert scoring.score_frame(good, shipped, scoring.worker_options(exp), ["label"]).count() == 64
    assert not Path(shipped.local_dir).exists()
    assert (Path(SparkFiles.getRootDirectory()) / shipped.file).exists()
    assert score.run(exp, spark).scored_rows == open_prepared(exp).rows("test")
    assert list((tmp_path / "tmp").iterdir()) == []
    # a download started before the Spark session (score.run does) and abandoned by a failure before the
    # model is shipped: the block waits for it to end, then removes its folder
    with pytest.raises(RuntimeError, match="no session"):
        with scoring.model_download(exp, exp.model_name, trained.model_version):
            raise RuntimeError("no session")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_rerun_for_same_date_replaces_only_its_partition(trained, make_exp, spark, tmp_path):
    out = tmp_path / "pred"
    n = open_prepared(make_exp()).rows("test")
    other = score.run(make_exp(f"score.output={out}", "score.run_date=2026-03-01"), spark)
    first = score.run(make_exp(f"score.output={out}", "score.run_date=2026-03-02"), spark)
    snapshot = _partition(spark, str(out), first.model_version, "2026-03-02").select("id", "prediction", "confidence")
    snapshot = snapshot.localCheckpoint()   # keep the first run's rows while the rerun overwrites the files
    again = score.run(make_exp(f"score.output={out}", "score.run_date=2026-03-02"), spark)
    assert first.scored_rows == again.scored_rows == other.scored_rows == n
    mine = _partition(spark, str(out), again.model_version, "2026-03-02")
    assert mine.count() == mine.select("id").distinct().count() == n                # no duplicates
    assert mine.select("id", "prediction", "confidence").exceptAll(snapshot).count() == 0   # same rows
    assert _partition(spark, str(out), other.model_version, "2026-03-01").count() == n     # other date untouched


def test_incremental_scores_only_ids_not_yet_scored(trained, make_exp, spark, tmp_path):
    ds = open_prepared(make_exp())
    test = spark.read.parquet(ds.split_dir("test"))
    old_path, all_path, out = tmp_path / "old", tmp_path / "all", tmp_path / "pred"
    old = test.filter(F.crc32("id") % 4 != 0)
    old.write.parquet(str(old_path))
    test.write.parquet(str(all_path))
    n_old, n_all = old.count(), test.count()
    base = [f"score.output={out}", "score.incremental=true"]

    day1 = score.run(make_exp(*base, f"score.input_path={old_path}", "score.run_date=2026-04-01"), spark)
    assert (day1.scored_rows, day1.skipped_rows) == (n_old, 0)
    day2 = score.run(make_exp(*base, f"score.input_path={all_path}", "score.run_date=2026-04-02"), spark)
    assert (day2.scored_rows, day2.skipped_rows) == (n_all - n_old, n_old)
    new_ids = _partition(spark, str(out), day2.model_version, "2026-04-02").select("id")
    assert new_ids.join(old.select("id"), "id").count() == 0                       # only new input scored
    # a rerun of the same incremental day is idempotent: it does not skip its own earlier output
    rerun = score.run(make_exp(*base, f"score.input_path={all_path}", "score.run_date=2026-04-02"), spark)
    assert (rerun.scored_rows, rerun.skipped_rows) == (n_all - n_old, n_old)
    every = spark.read.parquet(str(out)).filter(F.col("model_version") == day2.model_version)
    assert every.count() == every.select("id").distinct().count() == n_all


def test_rejects_bad_rows_with_a_reason(trained, make_exp, spark, tmp_path):
    ds = open_prepared(make_exp())
    frame = pq.read_table(ds.split_dir("test"), columns=["id", "image", "height", "width", "channels", "label"]
                          ).slice(0, 40).to_pandas()
    frame.loc[1, "id"] = None
    frame.loc[2, "image"] = None
    frame.loc[3, "image"] = b"\x01" * 100
    frame.loc[4, "height"], frame.loc[4, "width"] = 14, 56          # right byte count, wrong shape
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    result = score.run(make_exp(f"score.input_path={path}", f"score.output={tmp_path / 'out'}"), spark)
    assert (result.input_rows, result.scored_rows, result.rejected_rows) == (40, 36, 4)
    rejects = pd.read_parquet(result.rejects)
    reasons = dict(zip(rejects["reason"].str.split(":").str[0], rejects["id"]))
    assert set(reasons) == {"null_id", "null_image", "wrong_size", "wrong_shape"}
    assert reasons["wrong_shape"] == frame.loc[4, "id"] and reasons["null_image"] == frame.loc[2, "id"]
    assert "14x56x1, model expects 28x28x1" in " ".join(rejects["reason"])
    assert pd.read_parquet(result.output)["id"].isin(frame.loc[[0] + list(range(5, 40)), "id"]).all()


def test_clean_rerun_of_a_date_clears_that_dates_rejects(trained, make_exp, spark, tmp_path):
    """Rejects follow the input of the latest run of a date: once the bad rows are fixed, a rerun leaves no
    stale reject files behind (a dynamic overwrite with no reject rows would keep them)."""
    from sparkzoo.pipelines.score import partition_dir

    ds = open_prepared(make_exp())
    frame = pq.read_table(ds.split_dir("test"), columns=["id", "image", "label"]).slice(0, 30).to_pandas()
    bad = frame.copy()
    bad.loc[3, "image"] = b"\x01" * 100
    bad_path, good_path, out = tmp_path / "bad.parquet", tmp_path / "good.parquet", tmp_path / "out"
    bad.to_parquet(bad_path)
    frame.to_parquet(good_path)
    sets = [f"score.output={out}", "score.run_date=2026-05-01"]
    first = score.run(make_exp(*sets, f"score.input_path={bad_path}"), spark)
    assert (first.scored_rows, first.rejected_rows) == (29, 1)
    again = score.run(make_exp(*sets, f"score.input_path={good_path}"), spark)
    assert (again.scored_rows, again.rejected_rows) == (30, 0)
    folder = partition_dir(again.rejects, again.model_version, again.run_date)
    assert not list(Path(folder).glob("*.parquet"))
    manifest = json.loads(open(f"{folder}/_manifest.json").read())
    assert manifest["rows"] == 0 and manifest["files"] == []
    assert pd.read_parquet(again.output)["id"].nunique() == 30


def test_a_table_of_only_bad_rows_is_all_rejects_not_a_crash(trained, make_exp, spark, tmp_path):
    frame = pd.DataFrame({"id": [f"bad-{i}" for i in range(6)], "image": [b"\x00" * 10] * 6})
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    result = score.run(make_exp(f"score.input_path={path}", f"score.output={tmp_path / 'out'}"), spark)
    assert (result.input_rows, result.scored_rows, result.rejected_rows) == (6, 0, 6)
    assert set(pd.read_parquet(result.rejects)["reason"].str.split(":").str[0]) == {"wrong_size"}


def test_a_small_one_file_table_is_scored_on_every_core(trained, make_exp, spark, tmp_path):
    """One file, one row group: Spark would read it in one task (one core busy); the scorer spreads it."""
    from sparkzoo.pipelines.score import partition_dir

    ds = open_prepared(make_exp())
    # without the Spark schema the prepared files carry in their metadata (Spark would read it back)
    table = pq.read_table(ds.split_dir("test"), columns=["id", "image", "label"]).replace_schema_metadata(None)
    path = tmp_path / "one.parquet"
    pq.write_table(table, path, row_group_size=table.num_rows)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    result = score.run(make_exp(f"score.input_path={path}", f"score.output={tmp_path / 'out'}"), spark)
    assert result.scored_rows == table.num_rows
    written = list(Path(partition_dir(result.output, result.model_version, result.run_date)).glob("*.parquet"))
    assert len(written) == spark.sparkContext.defaultParallelism >= 2     # one scoring task per core


def test_wrong_column_type_fails_before_any_work(trained, make_exp, spark, tmp_path):
    path, out = tmp_path / "strings.parquet", tmp_path / "out"
    pd.DataFrame({"id": ["a", "b"], "image": ["not", "bytes"]}).to_parquet(path)
    with pytest.raises(ScoringError, match=r"column 'image' is string, the model expects binary \(28x28x1"):
        score.run(make_exp(f"score.input_path={path}", f"score.output={out}"), spark)
    assert not out.exists()


def test_input_by_glob_and_by_catalog_table(trained, make_exp, spark, tmp_path):
    ds = open_prepared(make_exp())
    n = ds.rows("test")
    by_glob = score.run(make_exp(f"score.input_path={ds.split_dir('test')}/part-*.parquet",
                                 f"score.output={tmp_path / 'g'}"), spark)
    assert by_glob.scored_rows == n
    # Hadoop's {a,b} alternatives, which Spark reads and Python's glob does not know: both engines take them
    splits = f"{os.path.dirname(ds.split_dir('test'))}/{{val,test}}"
    for engine in ("spark", "in_process"):
        by_braces = score.run(make_exp(f"score.input_path={splits}", f"score.engine={engine}",
                                       f"score.output={tmp_path / engine}"), spark if engine == "spark" else None)
        assert by_braces.scored_rows == ds.rows("val") + n, engine
    spark.read.parquet(ds.split_dir("test")).limit(300).createOrReplaceTempView("fm_nightly_input")
    by_table = score.run(make_exp("score.input_table=fm_nightly_input", f"score.output={tmp_path / 't'}"), spark)
    assert by_table.scored_rows == 300
    with pytest.raises(ScoringError, match="score.input_table 'no_such_table' is not in the Spark catalog"):
        score.run(make_exp("score.input_table=no_such_table", f"score.output={tmp_path / 'x'}"), spark)
    with pytest.raises(ScoringError, match="matches nothing"):
        score.run(make_exp(f"score.input_path={tmp_path}/nothing-*.parquet", f"score.output={tmp_path / 'x'}"), spark)


def test_alias_is_pinned_while_a_promotion_happens(trained, weak_trained, make_exp, spark, tmp_path):
    """champion moves to a different model while the job runs: every output row is the old version's."""
    exp = make_exp("mlflow.model_name=pin_cnn", f"score.output={tmp_path / 'pred'}", "score.batch_size=32",
                   "score.run_date=2026-05-01")
    good = copy_version(exp, f"models:/fashion_mnist_cnn/{trained.model_version}")
    weak = copy_version(exp, f"models:/weak_cnn/{weak_trained.model_version}")
    track.set_alias(exp, "champion", good)
    tracker = spark.sparkContext.statusTracker()
    outcome: dict = {}
    job = threading.Thread(target=lambda: outcome.update(result=score.run(exp, spark)))
    job.start()
    deadline = time.time() + 120
    while not tracker.getActiveStageIds() and job.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    track.set_alias(exp, "champion", weak)              # the promotion, mid-job
    moved_while_running = job.is_alive()
    job.join()
    assert moved_while_running, "the job ended before the alias moved; the test proved nothing"
    assert outcome["result"].model_version == good
    out = spark.read.parquet(str(tmp_path / "pred"))
    assert out.select("model_version").distinct().count() == 1
    # the rows are the pinned model's predictions, not the new champion's
    pinned = score.run(make_exp("mlflow.model_name=pin_cnn", f"score.output={tmp_path / 'v1'}",
                                f"score.model_uri=models:/pin_cnn/{good}"), spark)
    newer = score.run(make_exp("mlflow.model_name=pin_cnn", f"score.output={tmp_path / 'v2'}",
                               f"score.model_uri=models:/pin_cnn/{weak}"), spark)
    cols = ["id", "prediction", "confidence"]
    assert out.select(*cols).exceptAll(spark.read.parquet(pinned.output).select(*cols)).count() == 0
    assert out.select(*cols).exceptAll(spark.read.parquet(newer.output).select(*cols)).count() > 0
    assert track.resolve_model_version(exp, None) == ("pin_cnn", weak)  # later jobs do see the new champion


def test_plain_mlflow_spark_udf_on_the_registered_model(trained, make_exp, spark, tmp_path):
    exp = make_exp(f"score.output={tmp_path / 'ours'}")
    ours = score.run(exp, spark)
    track.client(exp)
    udf = mlflow.pyfunc.spark_udf(spark, f"models:/fashion_mnist_cnn/{ours.model_version}",
                                  result_type="prediction long, confidence float, probability array<float>")
    test = spark.read.parquet(open_prepared(exp).split_dir("test"))
    theirs = test.select("id", udf("image").alias("p")).select("id", "p.prediction", "p.confidence")
    joined = theirs.join(spark.read.parquet(ours.output).select("id", F.col("prediction").alias("ours")), "id")
    assert joined.count() == ours.scored_rows
    assert joined.filter(F.col("prediction") != F.col("ours")).count() == 0


# Largest probability change per path over the test split: layout only; dynamic int8 Linear layers and
# bf16 weights (8 mantissa bits); int8 graph but the last layer, scales fixed on calibration rows.
_PROBABILITY_DRIFT = {"channels_last": 1e-4, "int8": 0.05, "bf16": 0.05, "int8_static": 0.1}


@pytest.mark.parametrize("optimize", sorted(_PROBABILITY_DRIFT))
def test_optimised_paths_stay_within_half_a_point(trained, make_exp, optimize):
    from sparkzoo.pipelines.modelpack import Predictor

    exp = make_exp()
    track.client(exp)
    local = mlflow.artifacts.download_artifacts(f"models:/fashion_mnist_cnn/{trained.model_version}")
    ds = open_prepared(exp)
    frame = pq.read_table(ds.split_dir("test"), columns=["image", "label"]).to_pandas()
    eager = Predictor.from_dir(f"{local}/artifacts")
    calibration = eager.decode(pq.read_table(ds.split_dir("train"), columns=["image"]).slice(0, exp.score.optimize_calibration_rows)
                               .to_pandas()["image"])
    fast = Predictor.from_dir(f"{local}/artifacts", optimize=optimize, calibration=calibration)
    pixels, labels = eager.decode(frame["image"]), frame["label"].to_numpy()
    a, b = (p.predict_arrays(pixels) for p in (eager, fast))
    assert abs((a["prediction"] == labels).mean() - (b["prediction"] == labels).mean()) <= 0.005
    assert np.abs(a["probability"] - b["probability"]).max() < _PROBABILITY_DRIFT[optimize]
    assert np.allclose(b["probability"].sum(axis=1), 1.0, atol=1e-4)   # float32 softmax on every path


def test_static_int8_needs_calibration_rows(trained, make_exp):
    from sparkzoo.pipelines.modelpack import Predictor

    track.client(make_exp())
    local = mlflow.artifacts.download_artifacts(f"models:/fashion_mnist_cnn/{trained.model_version}")
    with pytest.raises(ValueError, match="needs calibration rows"):
        Predictor.from_dir(f"{local}/artifacts", optimize="int8_static")


def test_optimised_scoring_job_checks_accuracy_first(trained, make_exp, spark, tmp_path):
    eager = score.run(make_exp(f"score.output={tmp_path / 'e'}"), spark)
    fast = score.run(make_exp(f"score.output={tmp_path / 'q'}", "score.optimize=int8"), spark)
    assert fast.optimize == "int8" and fast.scored_rows == eager.scored_rows
    assert abs(fast.accuracy - eager.accuracy) <= 0.005


def test_the_scoring_tasks_check_an_optimised_path_before_the_commit(trained, make_exp, tmp_path):
    """With the workers writing to staging (``score.file_io=pyarrow``), int8_static's accuracy check runs
    on labelled rows as they are scored, not on the driver first; a path the check refuses commits nothing."""
    import pyarrow as pa

    from sparkzoo.pipelines import paths
    from sparkzoo.pipelines.modelpack import Predictor
    from sparkzoo.pipelines.score import partition_dir

    # Labelled with the eager model's own answers, so eager scores 1.0 and int8 its agreement with eager:
    # any row where int8 disagrees moves the check, whatever the model learnt.
    exp = make_exp()
    track.client(exp)
    local = mlflow.artifacts.download_artifacts(f"models:/fashion_mnist_cnn/{trained.model_version}")
    table = pq.read_table(open_prepared(exp).split_dir("test"), columns=["id", "image", "label"]).slice(0, 4000)
    eager = Predictor.from_dir(f"{local}/artifacts")
    answers = eager.predict_arrays(eager.decode(table.column("image").to_pandas()))["prediction"]
    src = tmp_path / "relabelled"
    src.mkdir()
    pq.write_table(table.set_column(2, "label", pa.array(answers.astype("int64"))), src / "part-0.parquet",
                   row_group_size=1000)
    sets = (f"score.input_path={src}", "score.optimize=int8_static", "score.file_io=pyarrow")
    fast = score.run(make_exp(f"score.output={tmp_path / 'q'}", *sets, "score.optimize_tolerance=1"))
    seen = json.loads(open(f"{partition_dir(fast.output, fast.model_version, fast.run_date)}/_manifest.json")
                      .read())["inference_path"]
    assert fast.optimize == "int8_static" and seen["checked_by"] == "the scoring tasks"
    assert seen["accuracy"]["none"] == 1.0 and 0.9 < seen["accuracy"]["int8_static"] <= 1.0
    moved = 1.0 - seen["accuracy"]["int8_static"]
    # The same rows are checked again (same plan, same calibration), so a tolerance under what the path
    # moved must refuse it (and with no disagreement, a tolerance of 0 must pass).
    out = tmp_path / "strict"
    strict = make_exp(f"score.output={out}", *sets, f"score.optimize_tolerance={moved / 2}")
    if moved > 0:
        with pytest.raises(ScoringError, match="int8_static changes accuracy.*nothing was committed"):
            score.run(strict)
        assert not paths.exists(partition_dir(str(out), fast.model_version, fast.run_date))
        assert not [p for p in os.listdir(out) if p.startswith(".scoring-")]   # staging gone too
    else:
        assert score.run(strict).scored_rows == fast.scored_rows


def test_a_reused_worker_keeps_the_model_across_jobs(trained, make_exp, spark, tmp_path):
    """The tasks that read and write their own files key the worker's loaded model by the registered
    version, not by the per-job zip Spark ships, so the next job on the same workers loads nothing (each
    job had rebuilt the eager model and int8_static's calibrated copy, about 0.7 s a worker here)."""
    for name in ("a", "b"):
        score.run(make_exp(f"score.output={tmp_path / name}", "score.file_io=pyarrow",
                           "score.optimize=int8_static"), spark)

    def loaded(_):
        from sparkzoo.pipelines import scoring_worker

        return [sorted({key[0] for key in scoring_worker._LOADED})]

    held = {key for keys in spark.sparkContext.parallelize(range(2), 2).mapPartitions(loaded).collect()
            for key in keys}   # the session's workers: earlier tests' models may be there too
    assert f"{track.registry_uri(make_exp())}|fashion_mnist_cnn|{trained.model_version}" in held
    assert not [key for key in held if key.endswith(".zip")], held   # one job's ship name: never hit again


def test_the_tasks_check_is_judged_on_all_their_rows_together(make_exp):
    """The tasks' counts are summed before the verdict: two tasks each within the tolerance of eager can
    still move the whole check past it, and a check that saw no labelled row refuses the path."""
    from sparkzoo.pipelines.inference_path import PathChoice, accept_checked

    exp = make_exp("score.optimize_tolerance=0.005")
    choice = PathChoice("int8_static", deferred=2000)
    accept_checked(exp, choice, [{"rows": 1000, "fast": 900, "eager": 904}, {"rows": 1000, "fast": 800, "eager": 800}])
    assert choice.accuracy == {"none": 0.852, "int8_static": 0.85}
    with pytest.raises(ScoringError, match=r"from 0\.8560 \(eager\) to 0\.8500.*nothing was committed"):
        accept_checked(exp, choice, [{"rows": 1000, "fast": 900, "eager": 906}, {"rows": 1000, "fast": 800, "eager": 806}])
    with pytest.raises(ScoringError, match="held none"):
        accept_checked(exp, choice, [{"rows": 0, "fast": 0, "eager": 0}])


def test_static_int8_job_gives_one_answer_whatever_the_batching(trained, make_exp, spark, tmp_path):
    """Every worker calibrates on the driver's broadcast rows, so Arrow batch boundaries (which decide
    which rows share a worker and a forward pass) cannot change a probability."""
    runs = [score.run(make_exp(f"score.output={tmp_path / f'b{b}'}", "score.optimize=int8_static",
                               f"score.batch_size={b}", "score.image_chunk=64"), spark) for b in (97, 5000)]
    assert [r.optimize for r in runs] == ["int8_static", "int8_static"]
    small, large = (spark.read.parquet(r.output).select("id", F.col("probability").alias(f"p{i}"))
                    for i, r in enumerate(runs))
    joined = small.join(large, "id")
    assert joined.count() == runs[0].scored_rows == runs[1].scored_rows
    assert joined.filter(F.col("p0") != F.col("p1")).count() == 0


def test_int8_scales_are_kept_per_model_version_so_a_row_scores_the_same_every_night(trained, make_exp, spark,
                                                                                    tmp_path):
    """The first int8_static job of a version keeps its calibration rows in the workspace; a later job on
    other input reuses them, so the rows both jobs score get the same probabilities. With
    ``score.optimize_calibration=per_job`` the later job calibrates on its own first rows instead, and
    those same rows come out different."""
    from sparkzoo.pipelines import paths
    from sparkzoo.pipelines.score import partition_dir

    table = pq.read_table(open_prepared(make_exp()).split_dir("test"), columns=["id", "image", "label"])
    inputs = {}
    for name, lo in (("monday", 0), ("tuesday", 1500)):
        inputs[name] = tmp_path / name
        inputs[name].mkdir()
        pq.write_table(table.slice(lo, 3000), inputs[name] / "part-0.parquet", row_group_size=1000)
    kept = paths.join(paths.workspace(make_exp()), "inference_paths",
                      f"fashion_mnist_cnn-v{trained.model_version}-calibration-512.json")
    if paths.exists(kept):   # an earlier test's int8 job in this session's workspace
        paths.delete_file(kept)

    def run(day: str, *sets: str):
        out = tmp_path / f"out-{day}-{len(sets)}"
        got = score.run(make_exp(f"score.input_path={inputs[day]}", f"score.output={out}", "score.optimize=int8_static",
                                 "score.optimize_tolerance=1", *sets), spark)
        seen = json.loads(open(f"{partition_dir(got.output, got.model_version, got.run_date)}/_manifest.json").read())
        probs = spark.read.parquet(got.output).select("id", "probability").toPandas()
        return seen["inference_path"]["calibrated_on"], dict(zip(probs["id"], probs["probability"].map(tuple)))

    first_on, first = run("monday")
    assert first_on.startswith(f"this job's input ({inputs['monday']})") and paths.exists(kept)
    assert set(paths.read_json(kept)["ids"]) <= set(first)
    later_on, later = run("tuesday")
    assert later_on.startswith(f"rows kept at {kept} from {inputs['monday']}")
    both = sorted(set(first) & set(later))
    assert len(both) == 1500 and all(first[i] == later[i] for i in both)
    own_on, own = run("tuesday", "score.optimize_calibration=per_job")
    assert own_on == f"this job's input ({inputs['tuesday']})"
    assert sum(first[i] != own[i] for i in both) > 0


def test_auto_measures_every_path_and_keeps_a_passing_one(trained, make_exp, spark, tmp_path):
    from sparkzoo.pipelines.inference_path import AUTO_CANDIDATES
    from sparkzoo.pipelines.score import partition_dir

    eager = score.run(make_exp(f"score.output={tmp_path / 'e'}"), spark)
    auto = score.run(make_exp(f"score.output={tmp_path / 'a'}", "score.optimize=auto"), spark)
    manifest = json.loads(open(f"{partition_dir(auto.output, auto.model_version, auto.run_date)}/_manifest.json").read())
    seen = manifest["inference_path"]
    assert seen["path"] == auto.optimize
    assert set(seen["rows_per_s"]) == {"none", *AUTO_CANDIDATES}     # every path measured, eager included
    assert all(r > 0 for r in seen["rows_per_s"].values())
    if auto.optimize != "none":   # the kept path passed the accuracy check and was the fastest that did
        chosen = seen["rows_per_s"][auto.optimize]
        assert abs(seen["accuracy"][auto.optimize] - seen["accuracy"]["none"]) <= 0.005
        assert chosen == max(r for p, r in seen["rows_per_s"].items() if p != "none" and p not in seen["rejected"])
        assert chosen >= 1.1 * seen["rows_per_s"]["none"]
    else:
        assert seen["rejected"]   # every path was passed over, each with its reason
    assert auto.scored_rows == eager.scored_rows
    assert abs(auto.accuracy - eager.accuracy) <= 0.005
    assert seen["reused"] is False and seen["measured_at"]

    # the next job with this model version on this machine keeps the timings and re-checks only accuracy
    again = score.run(make_exp(f"score.output={tmp_path / 'b'}", "score.optimize=auto"), spark)
    kept = json.loads(open(f"{partition_dir(again.output, again.model_version, again.run_date)}/_manifest.json")
                      .read())["inference_path"]
    assert kept["reused"] is True and kept["measured_at"] == seen["measured_at"]
    assert again.optimize == auto.optimize and kept["rows_per_s"] == seen["rows_per_s"]
    if auto.optimize != "none":   # checked again, by the scoring tasks this time (the timings need no driver)
        assert set(kept["accuracy"]) == {"none", auto.optimize} and kept["checked_by"] == "the scoring tasks"
    else:   # eager kept: nothing to check
        assert kept["accuracy"] == {} and kept["checked_by"] is None


@pytest.mark.gpu
def test_scores_on_gpu_like_on_cpu(trained, make_exp):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from sparkzoo.pipelines.modelpack import Predictor

    exp = make_exp()
    track.client(exp)
    local = mlflow.artifacts.download_artifacts(f"models:/fashion_mnist_cnn/{trained.model_version}")
    frame = pq.read_table(open_prepared(exp).split_dir("test"), columns=["image"]).slice(0, 512).to_pandas()
    cpu, gpu = Predictor.from_dir(f"{local}/artifacts"), Predictor.from_dir(f"{local}/artifacts", device="cuda")
    pixels = cpu.decode(frame["image"])
    assert np.abs(cpu.predict_arrays(pixels)["probability"] - gpu.predict_arrays(pixels)["probability"]).max() < 1e-3


def test_nightly_scoring_conf_is_valid_and_incremental():
    from sparkzoo.pipelines import config

    from .conftest import ROOT

    exp = config.load(ROOT / "conf" / "nightly_scoring.yaml", ["score.run_date=2026-11-25"])
    assert exp.score.incremental and exp.model_name == "fashion_mnist_cnn" and exp.score.run_date == "2026-11-25"
    recipe = (ROOT / "docs" / "SCHEDULING.md").read_text()
    assert "job-file score" in recipe and "/score.py" in recipe and "score.run_date={{ ds }}" in recipe
    assert "SparkSubmitOperator" in recipe
