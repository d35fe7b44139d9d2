"""Config: validated at load; every mistake names the key, the file and the fix."""

from __future__ import annotations

import pytest

from sparkzoo.pipelines import config
from sparkzoo.pipelines.errors import ConfigError

from .conftest import CONF


def test_loads_defaults_and_experiment():
    exp = config.load(CONF)
    assert exp.name == "fashion_mnist_cnn"
    assert exp.model.name == "lenet"
    assert exp.train.num_proc == 2
    assert exp.model_name == "fashion_mnist_cnn"
    assert exp.mlflow.tracking_uri.startswith("sqlite:///")


def test_set_overrides_keep_types():
    exp = config.load(CONF, ["train.epochs=7", "train.lr=0.01", "train.fp16_compression=true"])
    assert exp.train.epochs == 7 and exp.train.lr == 0.01 and exp.train.fp16_compression is True


def test_unknown_key_names_key_file_and_choices(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  epocs: 3\n")
    with pytest.raises(ConfigError) as err:
        config.load(bad)
    msg = str(err.value)
    assert "train.epocs" in msg and str(bad) in msg and "did you mean 'epochs'" in msg


def test_wrong_type_names_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size.*bad\.yaml"):
        config.load(bad)


def test_out_of_range_value():
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        config.load(CONF, ["data.val_fraction=1.5"])


def test_unknown_model_lists_choices():
    with pytest.raises(ConfigError) as err:
        config.load(CONF, ["model.name=lenett"])
    msg = str(err.value)
    assert "unknown model 'lenett'" in msg and "did you mean 'lenet'" in msg and "mlp" in msg


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        config.load(CONF, ["train.epochs"])


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        config.load("conf/nope.yaml")


def test_spark_conf_override_keeps_dotted_key():
    exp = config.load(CONF, ["spark.conf.spark.sql.shuffle.partitions=3", "score.run_date=2026-01-02"])
    assert exp.spark.conf["spark.sql.shuffle.partitions"] == "3"
    assert exp.score.run_date == "2026-01-02"


def test_test_slices_label_rows_and_reject_bad_names():
    exp = config.load(CONF, ["train.test_slices={column: speaker, groups: {held_out: [en_GB, fr]}, others: seen}"])
    s = exp.train.test_slices
    assert s.names() == ["held_out", "seen"]
    assert s.labels(["en", "en_GB", "fr", "espeak:en-us"]).tolist() == [1, 0, 0, 1]
    assert config.load(CONF, ["train.test_slices={column: c, groups: {a: [x]}, others: null}"]).train.test_slices.labels(
        ["x", "y"]).tolist() == [0, -1]
    with pytest.raises(ConfigError, match=r"train\.test_slices.*metric name"):
        config.load(CONF, ["train.test_slices={column: speaker, groups: {held out: [en_GB]}}"])
    with pytest.raises(ConfigError, match=r"train\.test_slices.*new slice name"):
        config.load(CONF, ["train.test_slices={column: speaker, groups: {seen: [en]}, others: seen}"])


def test_spark_env_names_are_checked():
    assert config.load(CONF, ["spark.env.MY_VAR=1"]).spark.env["MY_VAR"] == "1"
    with pytest.raises(ConfigError, match=r"spark\.env: '1BAD' is not an environment variable name"):
        config.load(CONF, ["spark.env.1BAD=x"])
