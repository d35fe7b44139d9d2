"""Registry lifecycle: the promotion gate evaluated in Spark, decisions logged, rollback; real MLflow
sqlite store, real registered models (the session's trained CNN and a 2-step weak one). And the
baseline registry the task classes pick their baseline from by name."""

from __future__ import annotations

import pytest

from sparkzoo.pipelines import config, promote, track
from sparkzoo.pipelines.dataset import open_prepared
from sparkzoo.pipelines.errors import ConfigError, RegistryError, TrainingError

from .conftest import CONF, copy_version, exp_overrides, run_cli


def test_gate_needs_more_than_the_margin():
    assert track.decide("test_accuracy", 0.90, 0.80, 0.0)[0]
    assert not track.decide("test_accuracy", 0.80, 0.80, 0.0)[0]          # a tie keeps the champion
    assert not track.decide("test_accuracy", 0.805, 0.80, 0.01)[0]
    assert track.decide("val_loss", 0.30, 0.50, 0.1)[0]                    # loss: lower wins
    assert not track.decide("val_loss", 0.50, 0.30, 0.0)[0]


def test_unknown_promote_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="mlflow.promote_metric"):
        config.load(CONF, ["mlflow.promote_metric=test_f1"])


@pytest.fixture(scope="module")
def gate(make_exp, trained, weak_trained):
    """'gate_cnn' v1 = the weak model, champion and candidate, as training leaves a first version."""
    exp = make_exp("mlflow.model_name=gate_cnn")
    v1 = copy_version(exp, f"models:/weak_cnn/{weak_trained.model_version}")
    track.set_alias(exp, "candidate", v1)
    track.set_alias(exp, "champion", v1)
    return exp


def _run_of(exp, run_id):
    return track.client(exp).get_run(run_id)


def test_promotion_gate_promotes_better_keeps_worse_and_rolls_back(gate, spark, trained, weak_trained, workspace):
    exp, client = gate, track.client(gate)
    rows = open_prepared(exp).rows("test")

    # a better candidate takes the alias
    strong = copy_version(exp, f"models:/fashion_mnist_cnn/{trained.model_version}")
    track.set_alias(exp, "candidate", strong)
    r = promote.run(exp, spark)
    assert (r.decision, r.promoted, r.champion_before, r.champion_after) == ("promoted", True, 1, strong)
    assert track.alias_version(exp, "champion") == strong
    assert r.candidate_value > r.champion_value
    assert r.candidate_value == pytest.approx(trained.test["accuracy"], abs=0.002)   # same rows, same metric
    run = _run_of(exp, r.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sparkzoo.decision"] == "promoted"
    assert run.data.metrics["candidate_test_accuracy"] == pytest.approx(r.candidate_value)
    assert run.data.metrics["champion_test_accuracy"] == pytest.approx(r.champion_value)
    assert run.data.metrics["candidate_test_rows"] == run.data.metrics["champion_test_rows"] == rows
    tags = client.get_model_version("gate_cnn", str(strong)).tags
    assert tags[track.DECISION_TAG] == "promoted" and tags["sparkzoo.promotion_run_id"] == r.run_id
    assert "promoted over v1" in tags[track.PROMOTION_TAG]
    assert "replaced_by" in " ".join(client.get_model_version("gate_cnn", "1").tags)

    # a worse candidate does not
    worse = copy_version(exp, f"models:/weak_cnn/{weak_trained.model_version}")
    track.set_alias(exp, "candidate", worse)
    r2 = promote.run(exp, spark)
    assert (r2.decision, r2.promoted, r2.champion_after) == ("kept", False, strong)
    assert track.alias_version(exp, "champion") == strong
    assert r2.candidate_value < r2.champion_value
    assert _run_of(exp, r2.run_id).data.tags["sparkzoo.decision"] == "kept"
    assert client.get_model_version("gate_cnn", str(worse)).tags[track.DECISION_TAG] == "kept"

    # re-running on the same pair decides the same and moves nothing
    assert promote.run(exp, spark).decision == "kept" and track.alias_version(exp, "champion") == strong

    # rollback by moving the alias to an earlier version, logged too
    back = promote.rollback(exp, 1)
    assert (back.decision, back.champion_before, back.champion_after) == ("rollback", strong, 1)
    assert track.alias_version(exp, "champion") == 1
    assert _run_of(exp, back.run_id).data.tags["sparkzoo.decision"] == "rollback"
    assert client.get_model_version("gate_cnn", "1").tags[track.DECISION_TAG] == "rollback"
    with pytest.raises(RegistryError, match=r"no version 99 .*versions: v1, v2, v3"):
        promote.rollback(exp, 99)

    # the same through the console script, as an operator does it
    sets = [a for o in exp_overrides(workspace, "mlflow.model_name=gate_cnn") for a in ("--set", o)]
    proc = run_cli("promote", "--conf", str(CONF), *sets, "--rollback-to", str(strong))
    assert proc.returncode == 0, proc.stderr
    assert f"champion is v{strong}" in proc.stdout and track.alias_version(exp, "champion") == strong


def test_promote_without_candidate_names_the_fix(make_exp, trained):
    with pytest.raises(RegistryError, match="no 'candidate' version.*sparkzoo train"):
        promote.run(make_exp("mlflow.model_name=never_trained"))


# ---- the baseline registry ---------------------------------------------------------------------------

def test_every_task_names_a_registered_baseline_or_none():
    from sparkzoo.models.tasks import TASKS
    from sparkzoo.pipelines.baselines import BASELINES

    named = {cls.baseline for cls in TASKS.values()} - {None}
    assert named and named <= set(BASELINES)
    assert BASELINES["pca"].model_probe is not None   # the autoencoder's own probe rides with PCA


def test_the_baseline_is_the_one_the_task_class_names(monkeypatch):
    from sparkzoo.models.tasks import task_class
    from sparkzoo.pipelines.baselines import BASELINES, baseline_of

    assert baseline_of("lenet") == ("logistic_regression", BASELINES["logistic_regression"])
    assert baseline_of("bigru")[0] == "tfidf_logistic_regression" and baseline_of("vae")[0] == "pca"
    assert baseline_of("fcn")[0] == "colour_threshold"
    monkeypatch.setattr(task_class("classification"), "baseline", "pca")   # no name list: the class decides
    assert baseline_of("lenet")[0] == "pca"
    monkeypatch.setattr(task_class("classification"), "baseline", "nearest_centroid")
    with pytest.raises(TrainingError, match="names baseline 'nearest_centroid'.*registered: colour_threshold"):
        baseline_of("lenet")


def test_a_family_whose_task_has_no_baseline_is_a_config_error(make_exp):
    from sparkzoo.pipelines import baselines

    with pytest.raises(ConfigError, match="ctc_bilstm is a ctc model and ctc declares no baseline"):
        baselines.baseline_of("ctc_bilstm")
    with pytest.raises(ConfigError, match="declares no baseline"):   # before any Spark or dataset work
        baselines.run(make_exp("model.name=seq2seq_attention"))
