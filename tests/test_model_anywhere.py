"""The registered model loads anywhere MLflow and torch do (issue #18): a Python that cannot import
sparkzoo, started outside the checkout, loads the champion by ``models:/`` URI with plain MLflow and
gives ``sparkzoo score``'s predictions, in process and through ``mlflow.pyfunc.spark_udf`` on local
Spark (whose Python workers cannot import sparkzoo either). A text model scores raw sentences there
the same way (its tokeniser travels in the logged code). Logging says nothing about cloudpickle or
integer columns, and the requirements are ones a package index serves.

Real training (the session's ``trained`` champion), real SQLite registry, real subprocess, real Spark."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from sparkzoo.pipelines import score, track
from sparkzoo.pipelines.dataset import open_prepared

# Installed as sitecustomize.py on the child's PYTHONPATH: every Python it starts (Spark's workers too,
# which inherit PYTHONPATH) refuses sparkzoo, whatever the venv's editable install offers.
_GUARD = '''import sys


class _NoSparkzoo:
    """Refuses sparkzoo and its subpackages: the model must load without them."""

    def find_spec(self, name, path=None, target=None):
        if name == "sparkzoo" or name.startswith("sparkzoo."):
            raise ImportError(f"{name} is made unimportable for this test")
        return None


sys.meta_path.insert(0, _NoSparkzoo())
'''

_CHILD = '''import json
import sys

import mlflow
import pandas as pd
from mlflow import MlflowClient

args = json.loads(sys.argv[1])
try:
    import sparkzoo  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("sparkzoo is importable in the child")
mlflow.set_tracking_uri(args["tracking"])
mlflow.set_registry_uri(args["registry"])
uri = f"models:/{args['name']}@champion"
report = {"champion": int(MlflowClient().get_model_version_by_alias(args["name"], "champion").version)}

frame = pd.read_parquet(args["test"], columns=["id", "image"])
out = mlflow.pyfunc.load_model(uri).predict(frame[["image"]])
out.insert(0, "id", frame["id"].to_numpy())
out.to_parquet(args["out"] + "/pyfunc.parquet")
text = mlflow.pyfunc.load_model(args["text_uri"]).predict(pd.DataFrame({"text": args["sentences"]}))
text.to_parquet(args["out"] + "/text.parquet")

from pyspark.sql import SparkSession  # noqa: E402

spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()


def probe(batches):
    for _ in batches:
        try:
            import sparkzoo  # noqa: F401
        except ImportError:
            yield pd.DataFrame({"importable": [False]})
        else:
            yield pd.DataFrame({"importable": [True]})


rows = spark.range(0, 2, numPartitions=2).mapInPandas(probe, "importable boolean").collect()
report["workers_importable"] = [r.importable for r in rows]
udf = mlflow.pyfunc.spark_udf(spark, uri)   # result type from the logged output signature
test = spark.read.parquet(args["test"])
test.select("id", udf("image").alias("p")).select("id", "p.*").write.parquet(args["out"] + "/udf")
spark.stop()
print("REPORT " + json.dumps(report))
'''

SENTENCES = ["A moving, beautifully acted film.", "dull , lifeless and far too long .", "Ｗｉｄｅ  FILM"]


def _text_model(make_exp) -> tuple[str, pd.DataFrame, list[str]]:
    """An (untrained) BiLSTM text classifier with its vocabulary, logged and registered through sparkzoo's
    own ``track`` calls under its own name and experiment; returns its URI, what sparkzoo's predictor
    says for ``SENTENCES``, and every warning the logging raised (log records and ``warnings``)."""
    import torch

    from sparkzoo.pipelines.modelpack import Predictor
    from sparkzoo.pipelines.modelspec import build_module, build_spec

    exp = make_exp("mlflow.experiment=model_anywhere", "mlflow.model_name=anywhere_bilstm")
    vocab = ["<pad>", "<unk>", "<bos>", "<eos>", "a", "film", ".", ",", "dull", "long", "wide", "moving"]
    spec = build_spec(family="bilstm", params={}, task="text_classification", shape={"max_length": 16},
                      stats={"mean": 0.0, "std": 1.0}, label_names=["neg", "pos"], dataset="anywhere",
                      dataset_version="1", vocab={"text": vocab},
                      text={"tokenizer": "word", "lowercase": True, "max_length": 16})
    torch.manual_seed(0)
    module = build_module(spec)
    expected = Predictor(spec, module).predict_frame(pd.DataFrame({"text": SENTENCES}))
    run_id = track.start_run(exp, dataset_version="1", world_size=1)
    with warnings.catch_warnings(record=True) as caught, _log_records() as records:
        warnings.simplefilter("always")
        uri = track.log_model(exp, run_id, spec, {k: v.detach() for k, v in module.state_dict().items()},
                              pd.DataFrame({"text": ["a moving film .", "dull"]}))
    noise = [f"{r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.WARNING]
    noise += [f"{w.category.__name__}: {w.message}" for w in caught]
    version = track.register(exp, uri, run_id, "model_anywhere text check")
    track.end_run(exp, run_id)
    return f"models:/{exp.model_name}/{version}", expected, noise


@contextlib.contextmanager
def _log_records() -> Iterator[list[logging.LogRecord]]:
    """Every record of the root logger and of MLflow's own, which does not propagate to the root (so
    pytest's ``caplog`` never sees MLflow's warnings)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append   # type: ignore[method-assign]
    loggers = [logging.getLogger(), logging.getLogger("mlflow")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def _guarded_env(guard_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=str(guard_dir), PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    return env


def test_champion_loads_and_scores_without_sparkzoo(trained, make_exp, spark, tmp_path):
    exp = make_exp(f"score.output={tmp_path / 'ours'}")
    ours = score.run(exp, spark)
    mine = (spark.read.parquet(ours.output).filter(f"model_version = {ours.model_version}")
            .select("id", "prediction", "probability").toPandas())
    text_uri, text_expected, noise = _text_model(make_exp)
    assert noise == [], noise   # no cloudpickle warning, no "integer column(s)" hint, nothing else either

    # the logged model: code travels with it, requirements an index serves, no sparkzoo among them
    track.client(exp)
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{exp.model_name}/{ours.model_version}",
                                                      dst_path=str(tmp_path / "logged")))
    pyfunc = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc.get("code") and pyfunc.get("model_code_path") and not (folder / "python_model.pkl").exists()
    requirements = (folder / "requirements.txt").read_text().split()
    assert requirements and not [r for r in requirements if "sparkzoo" in r.lower() or "+" in r], requirements
    assert {r.split("==")[0] for r in requirements} >= {"torch", "mlflow", "numpy", "pandas", "pyarrow"}

    with tempfile.TemporaryDirectory(prefix="model-anywhere-") as outside:   # not under the checkout
        work = Path(outside)
        (work / "guard").mkdir()
        (work / "guard" / "sitecustomize.py").write_text(_GUARD)
        (work / "child.py").write_text(_CHILD)
        (work / "out").mkdir()
        args = {"tracking": track.tracking_uri(exp), "registry": track.registry_uri(exp), "name": exp.model_name,
                "test": open_prepared(exp).split_dir("test"), "out": str(work / "out"), "text_uri": text_uri,
                "sentences": SENTENCES}
        child = subprocess.run([sys.executable, str(work / "child.py"), json.dumps(args)], cwd=work,
                               env=_guarded_env(work / "guard"), capture_output=True, text=True, timeout=600)
        assert child.returncode == 0, child.stderr[-6000:]
        report = json.loads(child.stdout.split("REPORT ", 1)[1])
        assert report["champion"] == ours.model_version
        assert report["workers_importable"] == [False, False]
        assert "mismatches between the model's dependencies" not in child.stderr, child.stderr[-3000:]
        theirs = pd.read_parquet(work / "out" / "pyfunc.parquet")
        udf = pd.read_parquet(work / "out" / "udf")
        text = pd.read_parquet(work / "out" / "text.parquet")

    for other in (theirs, udf):
        joined = mine.merge(other, on="id", suffixes=("", "_theirs"))
        assert len(joined) == len(mine) == ours.scored_rows
        assert (joined["prediction"] == joined["prediction_theirs"]).all()
        diff = np.abs(np.stack(joined["probability"]) - np.stack(joined["probability_theirs"]))
        assert diff.max() <= 1e-6, diff.max()
    assert (text["prediction"].to_numpy() == text_expected["prediction"].to_numpy()).all()
    assert np.abs(np.stack(text["probability"]) - np.stack(text_expected["probability"])).max() <= 1e-6


@pytest.mark.parametrize("ddl, expected", [
    ("prediction long, confidence float, probability array<float>",
     '[{"type": "long", "name": "prediction", "required": true}, {"type": "float", "name": "confidence", '
     '"required": true}, {"type": "array", "items": {"type": "float"}, "name": "probability", "required": true}]'),
    ("mask binary, foreground float",
     '[{"type": "binary", "name": "mask", "required": true}, {"type": "float", "name": "foreground", '
     '"required": true}]'),
])
def test_task_output_schemas_become_mlflow_schemas(ddl, expected):
    from sparkzoo.pipelines.model_bundle import output_schema

    assert output_schema(ddl).to_json() == expected


def test_every_task_output_schema_has_an_mlflow_type():
    from sparkzoo.models.tasks import TASKS
    from sparkzoo.pipelines.model_bundle import output_schema

    for name, task in TASKS.items():
        assert output_schema(task.output_schema).input_names(), name


@pytest.mark.parametrize("path, source, complaint", [
    ("pipelines/modelpack.py", "from .config import Experiment\n", "pipelines.config"),
    ("pipelines/modelspec.py", "def f():\n    from ..jobs import cli\n", "jobs"),
    ("models/cnn.py", "from . import missing\n", "models.missing"),
    ("pipelines/textnorm.py", "from sparkzoo.models import get_model\n", "relatively"),
])
def test_bundle_refuses_code_it_does_not_carry(path, source, complaint):
    from sparkzoo.pipelines.model_bundle import _check_self_contained

    with pytest.raises(ValueError, match=complaint):
        _check_self_contained(path, source, {"models", "models/cnn", "pipelines", "pipelines/modelpack"})


def test_bundle_is_importable_while_logging_and_gone_after(tmp_path):
    import importlib

    from sparkzoo.pipelines.model_bundle import BUNDLE_PREFIX, MODEL_FILE, bundle

    before = list(sys.path)
    with bundle(str(tmp_path)) as (code_paths, model_file):
        name = Path(code_paths[0]).name
        assert name.startswith(BUNDLE_PREFIX) and Path(model_file).name == MODEL_FILE
        assert f"from {name}.pipelines.modelpack import SparkzooPyfunc" in Path(model_file).read_text()
        pack = importlib.import_module(f"{name}.pipelines.modelpack")
        assert pack.SparkzooPyfunc.__module__ == f"{name}.pipelines.modelpack"
        assert (Path(code_paths[0]) / "pipelines" / "__init__.py").read_text() == ""
    assert sys.path == before
    assert not [m for m in sys.modules if m.startswith(name)]
