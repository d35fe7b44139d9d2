"""End to end on a real Fashion-MNIST subsample: Horovod on Spark with 2 ranks -> MLflow -> Spark scoring."""

from __future__ import annotations

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sparkzoo.pipelines import score, track
from sparkzoo.pipelines.dataset import open_prepared


def test_two_ranks_read_disjoint_shards_covering_train(trained, make_exp):
    ds = open_prepared(make_exp())
    ranks = trained.ranks
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["size"] == 2 for r in ranks)
    pieces = [set(map(tuple, r["pieces"])) for r in ranks]
    assert not pieces[0] & pieces[1]
    assert sum(r["rows_read"] for r in ranks) == ds.rows("train")
    assert len(pieces[0] | pieces[1]) == sum(len(f["row_groups"]) for f in ds.split_files("train"))
    assert ranks[0]["steps_per_epoch"] == ranks[1]["steps_per_epoch"] > 0


def test_run_has_metrics_params_and_plots(trained, make_exp):
    exp = make_exp()
    client = track.client(exp)
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "train_accuracy", "val_accuracy", "test_accuracy", "parameters"):
        assert key in run.data.metrics
    history = client.get_metric_history(trained.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert run.data.params["model.name"] == "lenet" and run.data.params["train.num_proc"] == "2"
    assert run.data.tags["sparkzoo.world_size"] == "2"
    arts = {a.path for a in client.list_artifacts(trained.run_id, "plots")}
    assert {"plots/curves.png", "plots/confusion_matrix.png"} <= arts
    local = client.download_artifacts(trained.run_id, "plots/curves.png")
    assert open(local, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_model_registered_with_champion_alias(trained, make_exp):
    exp = make_exp()
    assert trained.model_name == "fashion_mnist_cnn" and trained.model_version == 1
    assert track.alias_version(exp, "champion") == 1 and track.alias_version(exp, "candidate") == 1
    mv = track.client(exp).get_model_version("fashion_mnist_cnn", "1")
    assert "fashion_mnist" in mv.description and mv.run_id == trained.run_id


def test_learns_on_small_run(trained):
    assert trained.test["accuracy"] > 0.7
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]


def test_plain_mlflow_pyfunc_loads_and_predicts(trained, make_exp):
    exp = make_exp()
    track.client(exp)
    model = mlflow.pyfunc.load_model("models:/fashion_mnist_cnn@champion")
    ds = open_prepared(exp)
    frame = pq.read_table(ds.split_dir("test"), columns=["image", "label"]).slice(0, 200).to_pandas()
    out = model.predict(frame[["image"]])
    assert list(out.columns) == ["prediction", "confidence", "probability"] and len(out) == 200
    assert (out["prediction"].to_numpy() == frame["label"].to_numpy()).mean() > 0.6


def test_score_writes_one_row_per_input(trained, make_exp, spark):
    exp = make_exp("score.run_date=2026-11-25")
    result = score.run(exp, spark)
    ds = open_prepared(exp)
    assert result.model_version == 1 and result.input_rows == ds.rows("test") == result.scored_rows
    assert result.rejected_rows == 0 and result.accuracy > 0.7
    out = spark.read.parquet(result.output)
    assert {"id", "prediction", "probability", "model_name", "model_version", "run_date"} <= set(out.columns)
    assert out.select("id").distinct().count() == ds.rows("test") == out.count()
    # rerun for the same date overwrites its own partition: still one row per input
    score.run(exp, spark)
    assert spark.read.parquet(result.output).count() == ds.rows("test")


def test_score_rejects_bad_rows_and_keeps_the_rest(trained, make_exp, spark, tmp_path):
    ds = open_prepared(make_exp())
    frame = pq.read_table(ds.split_dir("test"), columns=["id", "image", "label"]).slice(0, 50).to_pandas()
    frame.loc[3, "image"] = None
    frame.loc[7, "image"] = b"\x00" * 10
    path = tmp_path / "input.parquet"
    frame.to_parquet(path)
    result = score.run(make_exp(f"score.input_path={path}", f"score.output={tmp_path / 'out'}"), spark)
    assert (result.scored_rows, result.rejected_rows) == (48, 2)
    rejects = pd.read_parquet(result.rejects).sort_values("id")
    assert set(rejects["reason"].str.split(":").str[0]) == {"null_image", "wrong_size"}
    assert set(rejects["id"]) == {frame.loc[3, "id"], frame.loc[7, "id"]}
