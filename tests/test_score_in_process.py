"""The in-process scoring engine (``score.engine``) against the Spark engine on the same rows: the same
predictions, rejects with the same reasons, the same drift profile, the same layout and manifest; its
mirrors of Spark's expressions (reject reasons, text and token features, xxhash64) checked row by row;
the engine ``auto`` picks; and the CLI scoring a small table with no JVM. Real local Spark, real Parquet,
real SQLite MLflow store, the real trained CNN."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from sparkzoo.pipelines import arrow_pass, drift, drift_stream, score, score_in_process
from sparkzoo.pipelines.config import load as load_experiment
from sparkzoo.pipelines.dataset import open_prepared
from sparkzoo.pipelines.scoring import partition_dir, reject_reason

from .conftest import CONF, exp_overrides, run_cli

TEXT_SPEC = {"task": "text_classification", "shape": {}}
TOKEN_SPEC = {"task": "text_classification", "shape": {}}


def _bad_rows_table(exp, path: Path) -> int:
    """The test split plus copies of its first rows made unfit in every way the model checks."""
    ds = open_prepared(exp)
    table = pq.read_table(ds.split_dir("test"), columns=["id", "image", "height", "width", "channels", "label"])
    bad = table.slice(0, 6).to_pandas()
    bad["id"] = [f"bad-{i}" for i in range(6)]
    bad.loc[0, "id"] = None
    bad.loc[1, "image"] = None
    bad.loc[2, "image"] = b"\x01" * 100
    bad.loc[3, "height"], bad.loc[3, "width"] = 14, 56          # right byte count, wrong shape
    bad.loc[4, "channels"] = None
    frame = pd.concat([table.to_pandas(), bad], ignore_index=True)
    for col in ("height", "width", "channels", "label"):
        frame[col] = frame[col].astype("Int32")   # a null dimension stays an integer column
    frame.loc[10, "label"] = None                  # a row that fits but has no label: not in the accuracy
    frame.to_parquet(path)
    return len(frame)


def _files(folder: str) -> pd.DataFrame:
    return pq.ParquetDataset(folder).read().to_pandas()


def test_in_process_gives_the_spark_jobs_answer(trained, make_exp, spark, tmp_path):
    src = tmp_path / "input.parquet"
    n = _bad_rows_table(make_exp(), src)
    assert n >= 2 * drift.EMBEDDING_SAMPLE   # the embedding sample is every 2nd hash: xxhash64 matters
    sets = [f"score.input_path={src}", "score.run_date=2026-09-01"]
    on_spark = score.run(make_exp(*sets, f"score.output={tmp_path / 'spark'}", "score.file_io=spark"), spark)
    # Spark's tasks reading and writing the files themselves (pipelines/score_files.py); 3 files, and
    # splits small enough that a file's row groups land on different tasks
    split = tmp_path / "split"
    split.mkdir()
    whole = pq.read_table(src)
    for i, lo in enumerate(range(0, whole.num_rows, whole.num_rows // 3 + 1)):
        pq.write_table(whole.slice(lo, whole.num_rows // 3 + 1), split / f"part-{i}.parquet", row_group_size=97)
    spark.conf.set("spark.sql.files.maxPartitionBytes", "64k")
    try:
        on_files = score.run(make_exp(f"score.input_path={split}", "score.run_date=2026-09-01",
                                      f"score.output={tmp_path / 'files'}", "score.file_io=pyarrow"), spark)
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    # the former worker keeps the drift profile in Spark aggregations (drift.profile): an independent count
    aggregated = score.run(make_exp(*sets, f"score.output={tmp_path / 'agg'}", "score.batch_format=pandas"), spark)
    here = score.run(make_exp(*sets, f"score.output={tmp_path / 'here'}", "score.engine=in_process"))

    assert (here.input_rows, here.scored_rows, here.rejected_rows) == \
        (on_spark.input_rows, on_spark.scored_rows, on_spark.rejected_rows) == \
        (on_files.input_rows, on_files.scored_rows, on_files.rejected_rows) == (n, n - 5, 5)
    assert on_files.accuracy == pytest.approx(on_spark.accuracy, abs=1e-9)
    assert "spark session" not in here.phases and "spark session" in on_spark.phases
    assert here.accuracy == pytest.approx(on_spark.accuracy, abs=1e-9)
    version, date = here.model_version, here.run_date
    a = _files(partition_dir(here.output, version, date)).sort_values("id").reset_index(drop=True)
    b = _files(partition_dir(on_spark.output, version, date)).sort_values("id").reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    assert (a["id"] == b["id"]).all() and (a["prediction"] == b["prediction"]).all()
    assert np.abs(a["confidence"] - b["confidence"]).max() < 1e-5
    assert a["model_name"].equals(b["model_name"]) and a["model_name"].nunique() == 1
    c = _files(partition_dir(on_files.output, version, date)).sort_values("id").reset_index(drop=True)
    assert list(c.columns) == list(b.columns) and (c["id"] == b["id"]).all()
    assert (c["prediction"] == b["prediction"]).all() and np.abs(c["confidence"] - b["confidence"]).max() < 1e-5
    parts = list(Path(partition_dir(on_files.output, version, date)).glob("*.parquet"))
    assert len(parts) > 3   # more tasks than files: each wrote its own file
    assert not [p for p in (tmp_path / "files").iterdir() if p.name.startswith(".")]   # no staging left
    rc = _files(partition_dir(on_files.rejects, version, date)).sort_values("reason").reset_index(drop=True)
    ra = _files(partition_dir(here.rejects, version, date)).sort_values("reason").reset_index(drop=True)
    rb = _files(partition_dir(on_spark.rejects, version, date)).sort_values("reason").reset_index(drop=True)
    assert ra[["id", "reason"]].equals(rb[["id", "reason"]]) and rc[["id", "reason"]].equals(rb[["id", "reason"]])
    assert any("wrong_shape: 14x56x1" in r for r in ra["reason"]) and any("null" in r for r in ra["reason"])

    ma, mb = (json.loads(Path(partition_dir(r.output, version, date), "_manifest.json").read_text())
              for r in (here, on_spark))
    assert (ma["engine"], mb["engine"], mb["file_io"]) == ("in_process", "spark", "spark")
    mc = json.loads(Path(partition_dir(on_files.output, version, date), "_manifest.json").read_text())
    assert (mc["engine"], mc["file_io"], mc["rows"]) == ("spark", "pyarrow", n - 5)
    assert Path(partition_dir(on_files.rejects, version, date), "_SUCCESS").exists()
    assert ma["input"]["digest"] == mb["input"]["digest"] and ma["rows"] == mb["rows"] == n - 5
    assert Path(partition_dir(here.output, version, date), "_SUCCESS").exists()
    assert Path(partition_dir(here.rejects, version, date), "_SUCCESS").exists()
    assert Path(here.drift["report"]).exists() and here.drift["monitoring_run"]
    for counted in (on_spark, aggregated, on_files):   # in process, in Spark's pass, as Spark's aggregations
        _same_profile(here.drift["profile"], counted.drift["profile"])
    _same_profile(on_spark.drift["profile"], aggregated.drift["profile"])
    assert "drift" in on_spark.phases and on_spark.drift["monitoring_run"]

    # a rerun of the date with the bad rows mended replaces tonight's partitions and leaves other dates
    good = tmp_path / "good.parquet"
    pq.write_table(pq.read_table(open_prepared(make_exp()).split_dir("test")), good)
    other = score.run(make_exp(f"score.input_path={good}", "score.run_date=2026-09-02",
                               f"score.output={tmp_path / 'here'}", "score.engine=in_process"))
    again = score.run(make_exp(f"score.input_path={good}", "score.run_date=2026-09-01",
                               f"score.output={tmp_path / 'here'}", "score.engine=in_process"))
    assert (again.scored_rows, again.rejected_rows) == (n - 6, 0)
    assert len(_files(partition_dir(again.output, version, date))) == n - 6
    assert not list(Path(partition_dir(again.rejects, version, date)).glob("*.parquet"))
    assert len(_files(partition_dir(other.output, version, "2026-09-02"))) == n - 6
    everything = spark.read.parquet(str(tmp_path / "here"))   # Spark reads what the engine wrote
    assert everything.filter(F.col("run_date").cast("string") == date).count() == n - 6
    assert not [p for p in (tmp_path / "here").iterdir() if p.name.startswith(".")]   # no staging left


def _same_profile(mine: dict, theirs: dict) -> None:
    assert mine["rows"] == theirs["rows"] and mine["embedding_sample_rows"] == theirs["embedding_sample_rows"]
    assert set(mine["features"]) == set(theirs["features"])
    for name, feature in theirs["features"].items():
        got = mine["features"][name]["counts"]
        if name.startswith("embedding") or name == "confidence":   # float noise of another batching
            assert sum(abs(x - y) for x, y in zip(got, feature["counts"])) <= 4, (name, got, feature["counts"])
        else:
            assert got == feature["counts"], name


def test_reject_reasons_and_text_features_match_spark(spark):
    texts = ["a good film", None, "", "   ", "\t", " two  words ", "tab\tand\nnewline\n", "é ü ß", "x"]
    ids = [f"t{i}" for i in range(len(texts))]
    ids[8] = None
    df = spark.createDataFrame(pd.DataFrame({"id": ids, "text": texts}), "id string, text string")
    want = [r["why"] for r in df.select(reject_reason(df, TEXT_SPEC).alias("why")).collect()]  # small: 9 rows
    batch = pa.RecordBatch.from_pydict({"id": ids, "text": texts})
    assert list(arrow_pass.reject_reasons(batch, TEXT_SPEC)) == want
    fitting = [t for t, w in zip(texts, want) if w is None]
    feats, names = drift.numeric_features(df.filter(reject_reason(df, TEXT_SPEC).isNull()), TEXT_SPEC)
    spark_rows = feats.toPandas()   # small: the fitting rows of 9
    mine = drift_stream.text_stats(fitting)
    assert names == list(mine.columns) and mine.equals(spark_rows.astype("float64"))

    tokens = [[5, 1, 9], None, [], [3, None], [1, 1], list(range(0, 300, 7))]
    tid = [f"s{i}" for i in range(len(tokens))]
    tdf = spark.createDataFrame(pd.DataFrame({"id": tid, "token_ids": tokens}), "id string, token_ids array<int>")
    want = [r["why"] for r in tdf.select(reject_reason(tdf, TOKEN_SPEC).alias("why")).collect()]  # small: 6 rows
    tbatch = pa.RecordBatch.from_pydict({"id": tid, "token_ids": pa.array(tokens, pa.list_(pa.int32()))})
    assert list(arrow_pass.reject_reasons(tbatch, TOKEN_SPEC)) == want
    keep = [i for i, w in enumerate(want) if w is None]
    fit_df = tdf.filter(reject_reason(tdf, TOKEN_SPEC).isNull())
    profile = drift_stream.StreamProfile(TOKEN_SPEC, {"length": [2.0, 10.0], "oov_rate": [0.1, 0.5]}, ["token_ids"])
    profile.add_inputs(tbatch.filter(pa.array([i in keep for i in range(len(tokens))])))
    got = profile.result([])
    assert got["features"]["token_distribution"]["counts"] == drift._token_bands(fit_df)
    ref = drift.profile(fit_df, None, TOKEN_SPEC, {"length": [2.0, 10.0], "oov_rate": [0.1, 0.5]})
    assert got == ref


def test_scored_files_keep_a_dictionary_only_for_columns_whose_values_repeat(tmp_path):
    """The tasks' own Parquet writer: predictions, labels, model name and time as dictionaries; ids, floats
    and probabilities plain (a dictionary there is abandoned per row group after costing the time); the
    file reads back to the rows that went in."""
    from pyarrow import fs as pafs

    n = 5000
    rng = np.random.default_rng(0)
    probs = rng.random((n, 10), dtype=np.float32)
    batch = pa.RecordBatch.from_pydict({
        "id": [f"row-{i}" for i in range(n)], "prediction": probs.argmax(1).astype(np.int64),
        "confidence": probs.max(1), "probability": list(probs), "label": rng.integers(0, 10, n),
        "model_name": ["fashion_mnist_cnn"] * n, "image": [bytes(rng.integers(0, 256, 16, np.uint8)) for _ in range(n)]})
    out = arrow_pass.BatchFile(pafs.LocalFileSystem(), str(tmp_path), batch.schema)
    out.write(batch)
    name = out.close()
    meta = pq.ParquetFile(tmp_path / name).metadata.row_group(0)
    dictionary = {meta.column(i).path_in_schema.split(".")[0] for i in range(meta.num_columns)
                  if "RLE_DICTIONARY" in meta.column(i).encodings or "PLAIN_DICTIONARY" in meta.column(i).encodings}
    assert dictionary == {"prediction", "label", "model_name"}
    assert pq.read_table(tmp_path / name).equals(pa.Table.from_batches([batch]))


def test_xxhash64_is_sparks(spark):
    ids = ["", "a", "abc", "1234", "12345678", "fashion_mnist-test-00042", "x" * 31, "y" * 32, "z" * 33,
           "é" * 20, "id-" + "0123456789" * 7, "日本語のテキスト"]
    df = spark.createDataFrame([(i,) for i in ids], "id string")
    want = [r["h"] for r in df.select(F.xxhash64("id").alias("h")).collect()]   # small: 12 rows
    assert [drift_stream.xxhash64(i.encode("utf-8")) for i in ids] == want
    assert list(drift_stream.in_sample(ids, 3)) == [h % 3 == 0 for h in want]
    # the vectorised hash (one numpy pass per byte length): a null hashes to Spark's seed, a slice reads
    # its own rows, and a run of mixed lengths matches Spark row by row
    mixed = [f"row-{i}" + "q" * (i % 41) for i in range(300)] + [None]
    got = spark.createDataFrame([(i,) for i in mixed], "id string").select(F.xxhash64("id").alias("h")).collect()
    arr = pa.array(mixed, pa.string())
    assert list(drift_stream.xxhash64_strings(arr)) == [r["h"] for r in got]   # small: 301 rows
    assert list(drift_stream.xxhash64_strings(arr.slice(17, 50))) == [r["h"] for r in got[17:67]]
    assert list(drift_stream.xxhash64_strings(pa.array(ids, pa.large_string()))) == want


def test_auto_picks_in_process_only_where_spark_adds_nothing(spark, make_exp, tmp_path, monkeypatch):
    from pyspark import SparkContext

    small = tmp_path / "small.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "image": [b"\x00" * 784, b"\x01" * 784]}), small)
    exp = make_exp(f"score.input_path={small}")
    # this test process holds the suite's Spark session: auto leaves a job to it
    assert score_in_process.choose_engine(exp)[0] == "spark"
    monkeypatch.setattr(SparkContext, "_active_spark_context", None)   # as in a fresh `sparkzoo score`
    assert score_in_process.choose_engine(exp)[0] == "in_process"
    over = score_in_process.choose_engine(make_exp(f"score.input_path={small}", "score.in_process_max_bytes=100"))
    assert over[0] == "spark" and "in_process_max_bytes" in over[1]
    for sets, why in ((["score.incremental=true"], "incremental"), (["spark.master=spark://nowhere:7077"], "master"),
                      (["score.output=s3://bucket/predictions"], "object store"),
                      (["score.optimize=bf16"], "optimize")):
        picked = score_in_process.choose_engine(make_exp(f"score.input_path={small}", *sets))
        assert picked[0] == "spark" and why in picked[1], picked
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")
    assert score_in_process.choose_engine(exp) == ("spark", "spark-submit started the job")
    with pytest.raises(Exception, match="score.engine=in_process scores without Spark, but score.incremental"):
        load_experiment(str(CONF), ["score.engine=in_process", "score.incremental=true"])
    # who reads the files of a Spark job: the workers for a local path, Spark where its reader is needed
    from sparkzoo.pipelines import score_files

    assert score_files.choose(exp)[0] == "pyarrow"
    for sets, why in ((["score.incremental=true"], "incremental"), (["score.batch_format=pandas"], "pandas"),
                      (["score.output=s3://bucket/predictions"], "not on a local or mounted filesystem")):
        picked = score_files.choose(make_exp(f"score.input_path={small}", *sets))
        assert picked[0] == "spark" and why in picked[1], picked
    with pytest.raises(Exception, match="score.file_io=pyarrow has the workers read files, but score.incremental"):
        load_experiment(str(CONF), ["score.file_io=pyarrow", "score.incremental=true"])


def test_cli_scores_a_small_table_with_no_jvm(trained, make_exp, workspace, tmp_path):
    ds = open_prepared(make_exp())
    src = tmp_path / "few.parquet"
    pq.write_table(pq.read_table(ds.split_dir("test")).slice(0, 300), src)
    sets = exp_overrides(workspace, f"score.input_path={src}", f"score.output={tmp_path / 'out'}",
                         "score.run_date=2026-09-03")
    done = run_cli("score", "-c", str(CONF), *[a for s in sets for a in ("--set", s)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scored 300 rows" in done.stdout and "rejected 0" in done.stdout
    log = Path(done.stderr.split("log: ")[-1].split()[0]).read_text()
    assert "scoring engine: in_process" in log and "spark session" not in log.split("score phases:")[-1]
    manifest = json.loads(Path(partition_dir(str(tmp_path / "out"), trained.model_version, "2026-09-03"),
                               "_manifest.json").read_text())
    assert manifest["engine"] == "in_process" and manifest["rows"] == 300 and "drift" in manifest


@pytest.mark.parametrize("engine", ["in_process", "spark"])
def test_a_file_that_is_not_parquet_is_named_and_nothing_is_committed(trained, make_exp, spark, tmp_path, engine):
    from sparkzoo.pipelines.errors import ScoringError

    folder = tmp_path / "input"
    folder.mkdir()
    pq.write_table(pq.read_table(open_prepared(make_exp()).split_dir("test")).slice(0, 50), folder / "part-0.parquet")
    (folder / "part-1.parquet").write_bytes(b"not parquet at all")
    exp = make_exp(f"score.input_path={folder}", f"score.output={tmp_path / 'out'}", f"score.engine={engine}")
    with pytest.raises(ScoringError, match=r"scoring input file \S*part-1.parquet is not a readable Parquet file"):
        score.run(exp, spark if engine == "spark" else None)
    assert not list((tmp_path / "out").rglob("_SUCCESS"))


def test_a_killed_worker_of_the_file_reading_pass_is_retried_and_its_files_are_not_kept(trained, make_exp,
                                                                                         workspace, tmp_path):
    """``score.file_io=pyarrow``: a Python worker SIGKILLed after writing its task's file; Spark retries the
    task, and the committed partition holds each input row once (the dead attempt's file stays out)."""
    ds = open_prepared(make_exp())
    src = tmp_path / "in"
    src.mkdir()
    table = pq.read_table(ds.split_dir("test"))
    for i in range(4):   # four files: tasks on both cores, and one of them dies
        pq.write_table(table.slice(i * 100, 100), src / f"part-{i}.parquet")
    marker = tmp_path / "killed-once"
    sets = exp_overrides(workspace, f"score.input_path={src}", f"score.output={tmp_path / 'out'}",
                         "score.run_date=2026-09-04", "score.engine=spark", "score.file_io=pyarrow",
                         "spark.master=local[2,3]", "spark.conf.spark.ui.enabled=false")
    done = run_cli("score", "-v", "-c", str(CONF), *[a for s in sets for a in ("--set", s)],
                   env={"SPARKZOO_FAULT": f"score.files:{marker}", "PYSPARK_PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists(), "the fault was never injected"
    assert "Lost task" in done.stderr and "Python worker exited unexpectedly" in done.stderr   # Spark saw it die
    assert "scored 400 rows" in done.stdout
    part = Path(partition_dir(str(tmp_path / "out"), trained.model_version, "2026-09-04"))
    ids = pq.read_table(part).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 400, "the dead attempt's file was committed beside the retry's"
    assert json.loads((part / "_manifest.json").read_text())["file_io"] == "pyarrow"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]   # no staging left
