"""The vision families through the real pipeline: Spark prepare, Horovod training (2 ranks), MLflow
registration, Spark scoring of each task's columns, and the classical baselines beside them.

Short runs on real subsamples with reduced bars that still catch a broken model; the full bars are
measured by `make zoo-vision` (docs/MODEL_ZOO.md)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def _weights(exp, name: str, version: int) -> dict:
    import torch

    from sparkzoo.pipelines import track

    files = track.download_model_files(exp, name, version, tempfile.mkdtemp())
    return torch.load(os.path.join(files, "weights.pt"), weights_only=True)


def test_autoencoder_trains_scores_codes_and_beats_the_mean_image(spark, pipeline, prepared):
    from sparkzoo.pipelines import baselines, score

    # its own predictions folder: the session's "predictions" holds the classifier's rows, and reading a
    # folder of two schemas depends on which file Spark samples first
    ae = pipeline(CONF / "fashion_mnist_autoencoder.yaml", "train.epochs=2", "score.output=predictions_autoencoder")
    exp, result = ae.exp(), ae.trained
    std2 = prepared.manifest["stats"]["std"] ** 2   # the MSE of answering every pixel with the mean
    assert result.test["mse"] < 0.5 * std2, result.test
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]

    scored = score.run(exp, spark)
    assert scored.scored_rows == prepared.rows["test"] and scored.rejected_rows == 0
    out = spark.read.parquet(scored.output).select("code", "error").limit(50).toPandas()
    assert all(len(c) == 10 for c in out["code"])
    assert (out["error"] >= 0).all() and out["error"].mean() < std2

    base = baselines.run(exp, spark)
    assert base.kind == "pca"
    assert 0 < base.metrics["test_mse"] < std2
    assert base.metrics["test_probe_accuracy"] > 0.5            # 10 classes: chance is 0.1
    assert base.model_probe is not None and base.model_probe["test_probe_accuracy"] > 0.4
    assert base.model_probe["run_id"] == result.run_id


def test_fcn_segments_pasted_stamps_and_scoring_writes_masks(spark, pipeline):
    from sparkzoo.pipelines import baselines, score

    fcn = pipeline(CONF / "tuxpaint_masks.yaml", "data.max_records=200", "score.output=predictions_fcn",
                   "data.image.variants=2", "data.image.height=32", "data.image.width=32", "train.epochs=4",
                   "train.batch_size=16")
    exp, p, result = fcn.exp(), fcn.prepared, fcn.trained
    assert p.manifest["task"] == "segmentation" and p.rows["test"] > 0
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    base = baselines.run(exp, spark)
    assert 0 < base.metrics["test_iou"] < 1 and base.params["thresholds_tried"] == exp.baseline.thresholds
    # Reduced bar: a broken net predicts all or nothing; after 4 short epochs it must find objects.
    assert result.test["iou"] > 0.35, result.test
    assert result.test["pixel_accuracy"] > 0.7

    scored = score.run(exp, spark)
    assert scored.scored_rows == p.rows["test"]
    rows = spark.read.parquet(scored.output).select("mask", "foreground").limit(20).toPandas()
    for mask, share in zip(rows["mask"], rows["foreground"]):
        m = np.frombuffer(mask, np.uint8)
        assert m.size == 32 * 32 and set(np.unique(m)) <= {0, 1}
        assert share == pytest.approx(m.mean(), abs=1e-6)


def test_resnet_trunk_transfers_to_digits_with_a_tenth_of_the_labels(pipeline):
    from sparkzoo.pipelines import track

    resnet = pipeline(CONF / "sklearn_digits_resnet.yaml", "data.max_records=null")   # 1,797 8x8 digits
    src_exp, source, src = resnet.exp(), resnet.prepared, resnet.trained
    assert sum(source.rows.values()) == 1797 and source.manifest["shape"] == {"channels": 1, "height": 20, "width": 20}
    assert src.test["accuracy"] > 0.4, src.test                   # 10 classes: chance is 0.1

    full = pipeline(CONF / "opencv_digits_scratch.yaml", "data.max_records=null", "data.train_fraction=1.0",
                    train=False).prepared
    transfer = (CONF / "opencv_digits_transfer.yaml", "data.max_records=null", "train.epochs=1",
                "train.max_steps_per_epoch=2", "model.freeze=[features]", f"model.init_from=models:/{src.model_name}@champion")
    tenth = pipeline(*transfer, train=False).prepared
    assert tenth.rows["test"] == full.rows["test"] and tenth.rows["val"] == full.rows["val"]
    assert 0.07 < tenth.rows["train"] / full.rows["train"] < 0.13
    assert tenth.manifest["unused_train_rows"] + tenth.rows["train"] == full.rows["train"]

    tuned_run = pipeline(*transfer)
    exp, tuned = tuned_run.exp(), tuned_run.trained
    params = track.client(exp).get_run(tuned.run_id).data.params
    assert params["model.init_from_name"] == src.model_name
    assert params["model.init_from_version"] == str(src.model_version)   # the alias, pinned to the version it named
    before, after = _weights(src_exp, src.model_name, src.model_version), _weights(exp, tuned.model_name, tuned.model_version)
    trunk = [k for k in after if k.startswith("features.") and "running" not in k and "num_batches" not in k]
    assert len(trunk) == 27 and all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in trunk)   # every conv + BN weight: copied, then frozen
    assert after["head.3.weight"].shape[0] == 10 and not np.array_equal(
        before["head.3.weight"].numpy(), after["head.3.weight"].numpy())   # init_exclude: [head] starts it fresh


def test_pixel_csv_source_reads_rows_and_quarantines_malformed_lines(spark, make_exp, tmp_path):
    from sparkzoo.pipelines import prepare

    rng = np.random.default_rng(0)
    lines = [",".join(str(v) for v in [*rng.integers(0, 17, 16), i % 3]) for i in range(60)]
    lines[7] = "1,2,3"                                   # too few values
    lines[11] = ",".join(["20"] * 16 + ["1"])            # a pixel above max_value
    (tmp_path / "px.csv").write_text("\n".join(lines) + "\n")
    exp = make_exp(f"data.source.path={tmp_path / 'px.csv'}", "data.dataset=px_test", "data.source.height=4",
                   "data.source.width=4", "data.source.pad=1", "data.source.label_names=[a,b,c]",
                   "prepare.max_bad_fraction=0.1", conf=CONF / "sklearn_digits_resnet.yaml")
    ds = prepare.run(exp, spark)
    assert sum(ds.rows.values()) == 58 and ds.manifest["quarantined"] == 2
    assert ds.manifest["shape"] == {"channels": 1, "height": 20, "width": 20}
    assert ds.manifest["label_names"] == ["a", "b", "c"]


def test_a_family_on_data_it_cannot_use_fails_before_any_rank_starts(make_exp, prepared):
    from sparkzoo.pipelines import train
    from sparkzoo.pipelines.errors import TrainingError

    with pytest.raises(TrainingError, match="has no mask column"):
        train.run(make_exp("model.name=fcn", "mlflow.model_name=never_trained"))


def test_classification_baseline_is_logistic_regression_on_the_same_split(spark, make_exp, prepared):
    from sparkzoo.pipelines import baselines, track

    exp = make_exp("baseline.max_iter=30", conf=CONF / "fashion_mnist_mlp.yaml")
    base = baselines.run(exp, spark)
    assert base.kind == "logistic_regression"
    assert 0.6 < base.metrics["test_accuracy"] < 1.0
    run = track.client(exp).get_run(base.run_id)
    assert run.info.experiment_id == track.experiment_id(exp)     # beside the nets in the MLflow UI
    assert run.data.tags["sparkzoo.dataset_version"] == prepared.version


@pytest.mark.parametrize("conf, check", [
    ("fashion_mnist_mlp.yaml", lambda t, std2: t["accuracy"] > 0.6),                 # chance is 0.1
    ("fashion_mnist_denoising_autoencoder.yaml", lambda t, std2: t["mse"] < 0.8 * std2),
    ("fashion_mnist_vae.yaml", lambda t, std2: t["mse"] < 0.8 * std2 and t["kl"] > 0),
])
def test_every_other_family_trains_and_registers_on_a_subsample(pipeline, make_exp, prepared, conf, check):
    from sparkzoo.pipelines import track

    result = pipeline(CONF / conf, "train.epochs=1").trained
    assert check(result.test, prepared.manifest["stats"]["std"] ** 2), result.test
    assert track.alias_version(make_exp(conf=CONF / conf), "candidate") == result.model_version
