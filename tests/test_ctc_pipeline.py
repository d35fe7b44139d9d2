"""CTC speech recognition through the real pipeline: spliced spelled words (Spark prepare, audio_splice),
Horovod training of ctc_bilstm on 2 ranks, registration, and Spark scoring that writes the decoded text.

A short run on a small alphabet with a reduced bar that still catches a broken model: the CTC loss
falls and the character error rate is well under that of a model that emits nothing (1.0). The full
bars (CER <= 0.10 on unseen words, the unseen en_GB speaker reported) are measured on
conf/klettres_spelling.yaml (docs/MODEL_ZOO.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import ROOT

CONF = ROOT / "conf" / "klettres_spelling.yaml"
F2 = "espeak:en-us+f2"    # one synthetic voice, reported as its own test slice


SPELLING = ("data.source.symbols=abcd", "data.source.min_symbols=2", "data.source.max_symbols=3",
            "data.source.words=null", "data.source.utterances=1200", "data.source.utterances_per_task=300",
            "data.source.speakers=[en]", "data.source.held_out_speakers=[]",
            "data.source.synthetic_voices=[en-us, en-us+f2]", "data.max_records=null",
            "model.params={hidden: 64, layers: 1, subsample: 4}", "train.epochs=12", "train.batch_size=8",
            "train.lr=0.0015", "mlflow.model_name=spelling_ctc", "score.output=predictions_ctc",
            f"train.test_slices={{column: speaker, groups: {{f2: ['{F2}']}}, others: rest}}")


@pytest.fixture(scope="module")
def ctc_exp(pipeline):
    return pipeline(CONF, *SPELLING, train=False).exp


@pytest.fixture(scope="module")
def ctc_trained(pipeline):
    prepared = pipeline(CONF, *SPELLING, train=False).prepared
    assert prepared.manifest["task"] == "ctc" and prepared.manifest["vocab"]["target"] == list("abcd")
    return prepared, pipeline(CONF, *SPELLING).trained


def test_ctc_loss_falls_and_cer_beats_an_empty_transcript(ctc_trained):
    _, r = ctc_trained
    assert r.history[-1]["train_loss"] < 0.7 * r.history[0]["train_loss"], r.history
    assert r.test["cer"] < 0.75, r.test          # emitting nothing (all blanks) scores 1.0
    assert r.aliases[0] == "candidate"


def test_test_slices_report_each_speaker_group_and_its_confusion_table(ctc_exp, ctc_trained):
    from sparkzoo.pipelines import track

    prepared, r = ctc_trained
    assert r.test["rows_f2"] > 0 and r.test["rows_rest"] > 0
    assert r.test["rows_f2"] + r.test["rows_rest"] == prepared.rows["test"]
    # the overall CER is the edit-weighted mix of the two slices', so it lies between them
    low, high = sorted((r.test["cer_f2"], r.test["cer_rest"]))
    assert low - 1e-9 <= r.test["cer"] <= high + 1e-9, r.test
    client = track.client(ctc_exp())
    arts = {a.path for a in client.list_artifacts(r.run_id, "plots")}
    assert {"plots/char_confusion.png", "plots/char_confusion_f2.png", "plots/char_confusion_rest.png"} <= arts, arts
    metrics = client.get_run(r.run_id).data.metrics
    assert metrics["test_cer_f2"] == pytest.approx(r.test["cer_f2"])


def test_scoring_writes_decoded_text_for_every_row(spark, ctc_exp, ctc_trained):
    from sparkzoo.pipelines import score

    prepared, _ = ctc_trained
    scored = score.run(ctc_exp(), spark)
    assert scored.scored_rows == prepared.rows["test"] and scored.rejected_rows == 0
    rows = spark.read.parquet(scored.output).select("prediction_text", "prediction_ids", "score").collect()  # small: test split of a subsample
    assert len(rows) == prepared.rows["test"]
    assert all(set(r["prediction_text"]) <= set("abcd") for r in rows)
    assert all(len(r["prediction_text"]) == len(r["prediction_ids"]) for r in rows)
    assert sum(bool(r["prediction_text"]) for r in rows) > 0.5 * len(rows)
