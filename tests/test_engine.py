"""Training engine: determinism, resume after a rank is killed, the three launch backends.

Short runs (a few steps per epoch) on the real Fashion-MNIST subsample, in a workspace of their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkzoo.pipelines import paths, track, train
from sparkzoo.pipelines.train import checkpoint
from sparkzoo.pipelines.errors import ConfigError, TrainingError

from .conftest import CONF

QUICK = ["train.epochs=3", "train.max_steps_per_epoch=12", "train.batch_size=32", "name=engine"]
TIMING = {"epoch_seconds", "samples_per_second"}


def _metrics(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.fixture(scope="module")
def engine_exp(pipeline):
    """Experiments in a workspace (and MLflow registry) of their own; the dataset is the session's."""
    return pipeline(CONF, *QUICK, ws="engine", train=False).exp


@pytest.fixture(scope="module")
def baseline(pipeline, engine_exp):
    return pipeline(CONF, *QUICK, ws="engine").trained


def test_same_seed_same_metrics(baseline, engine_exp, spark):
    assert {r["gradient_exchange"] for r in baseline.ranks} == {"shared_memory"}   # the CPU default, one host
    again = train.run(engine_exp(), spark)
    assert again.run_id != baseline.run_id
    assert _metrics(again.history) == _metrics(baseline.history)
    assert again.test == baseline.test


def test_killed_rank_restarts_in_the_same_run_and_matches(baseline, engine_exp, spark):
    """Rank 1 is SIGKILLed at step 5 of epoch 2; the same train.run call relaunches both ranks from the
    step checkpoint after step 4 (mid-epoch) and ends with the uninterrupted run's numbers: same batches."""
    exp = engine_exp("train.checkpoint_every_steps=4")
    r = train.run(exp, spark, fault=(1, 2, 5))
    assert r.run_id != baseline.run_id and len(r.restarts) == 1
    restart = r.restarts[0]
    assert "rank 1" in restart.reason and "SIGKILL" in restart.reason, restart.reason
    assert restart.resumed_from.endswith("step-0001-000004.pt")   # epoch 2 (0-based 1), after 4 steps
    assert r.ranks[0]["resumed_at"] == (1, 4) and restart.world_size == 2
    run = track.client(exp).get_run(r.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sparkzoo.restarts"] == "1"
    assert "rank 1 exited" in run.data.tags["sparkzoo.restart.1"]
    assert run.data.metrics["restarts"] == 1 and run.data.metrics["restart_lost_seconds"] > 0
    final, expected = r.history[-1], baseline.history[-1]
    assert len(r.history) == 3
    for key in ("val_loss", "val_accuracy", "train_loss", "train_accuracy"):
        assert abs(final[key] - expected[key]) <= 1e-6, key
    assert r.test == pytest.approx(baseline.test, abs=1e-6)
    steps = [m.step for m in track.client(exp).get_metric_history(r.run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2, 3]   # epoch 2 logged once, after the restart
    folder = paths.checkpoint_dir(exp, r.run_id)
    assert len(list(Path(folder).glob("*.pt"))) == exp.train.keep_checkpoints   # the newest 3 are kept
    assert checkpoint.latest(folder).endswith("epoch-0002.pt")


def test_failure_budget_spent_fails_clearly(engine_exp, spark):
    """train.max_failures=0: the same kill ends the command with one TrainingError that names the rank."""
    exp = engine_exp("train.max_failures=0", "train.epochs=1", "train.max_steps_per_epoch=4")
    with pytest.raises(TrainingError) as err:
        train.run(exp, spark, fault=(0, 1, 2))
    assert "train.max_failures=0" in str(err.value) and "rank 0" in str(err.value) and "resume" in str(err.value)
    failed = track.find_unfinished_run(exp)
    assert failed is not None and track.client(exp).get_run(failed).info.status == "FAILED"
    fresh = train.run(engine_exp("train.max_failures=0", "train.epochs=1", "train.max_steps_per_epoch=4", "train.resume=never"), spark)
    assert fresh.run_id != failed   # --fresh: a new run although an unfinished one of this config exists
    resumed = train.run(engine_exp("train.max_failures=0", "train.epochs=1", "train.max_steps_per_epoch=4", "train.resume=require"), spark)
    assert resumed.run_id == failed and resumed.restarts == []
    with pytest.raises(ConfigError, match="train.resume=require but there is no unfinished run"):
        train.run(engine_exp("train.max_failures=0", "train.epochs=1", "train.max_steps_per_epoch=4", "train.resume=require"), spark)


def test_horovodrun_backend_matches_horovod_on_spark(baseline, engine_exp):
    r = train.run(engine_exp("train.backend=horovodrun"))
    assert _metrics(r.history) == _metrics(baseline.history)


def test_horovod_gradient_exchange_matches_ddp(baseline, engine_exp, spark):
    """Horovod's own allreduce stays selectable; it sums in another order, so metrics agree closely, not bitwise."""
    r = train.run(engine_exp("train.gradient_exchange=horovod"), spark)
    assert {x["gradient_exchange"] for x in r.ranks} == {"horovod"}
    assert r.history[-1]["val_loss"] == pytest.approx(baseline.history[-1]["val_loss"], abs=0.02)
    assert abs(r.test["accuracy"] - baseline.test["accuracy"]) < 0.02


def test_torch_distributor_backend_trains(baseline, engine_exp, spark):
    r = train.run(engine_exp("train.backend=torch_distributor"), spark)
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.test["accuracy"] > 0.5
    assert abs(r.test["accuracy"] - baseline.test["accuracy"]) < 0.1


def test_gradient_accumulation_and_fp16_compression(engine_exp, spark):
    r = train.run(engine_exp("train.backward_passes_per_step=2", "train.fp16_compression=true",
                             "train.warmup_epochs=1"), spark)
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"] and r.test["accuracy"] > 0.5


def test_early_stopping_stops(engine_exp, spark):
    # a learning rate too small to move the weights: val accuracy never improves after epoch 1
    r = train.run(engine_exp("train.epochs=6", "train.early_stopping_patience=1", "train.lr=1e-12",
                             "train.optimizer=sgd"), spark)
    assert len(r.history) == 2


def test_a_rank_imports_no_mlflow_before_training():
    """Every rank process imports the training loop and rebuilds its model from the spec; MLflow (about a
    second to import) is only needed by rank 0 when it logs, so it must stay off that path."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from sparkzoo.models import get_model, model_task\n"
            "from sparkzoo.pipelines import config\n"
            "from sparkzoo.pipelines.modelspec import input_spec, make_spec_task\n"
            "from sparkzoo.pipelines.train import loop\n"
            f"exp = config.load({str(CONF)!r})\n"
            "manifest = {'shape': {'height': 28, 'width': 28, 'channels': 1}, 'stats': {'mean': 0.3, 'std': 0.3},\n"
            "            'label_names': list('abcdefghij'), 'dataset': 'd', 'version': 'v'}\n"
            "spec = loop.build_model_spec(exp, manifest, model_task(exp.model.name))   # as train_rank does\n"
            "get_model(exp.model.name, input_spec(spec), **exp.model.params); make_spec_task(spec)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def _where_pyspark_came_from() -> str:
    import sys

    return sys.modules["pyspark"].__file__   # Horovod's rank entry point imported it before this line


def test_ranks_on_a_local_master_import_the_installed_pyspark(spark):
    """Spark's Python workers have Spark's pyspark.zip first on PYTHONPATH; Python compiles a zip's modules
    again in every process, 0.6 s a rank before its first line. On a local master the ranks Horovod starts
    get the driver's PYTHONPATH instead and import the installed, compiled pyspark."""
    import horovod.spark

    from sparkzoo.pipelines.train.launcher import executor_python, rank_environment

    executable = executor_python(spark)
    env = rank_environment(spark, executable)
    assert env is not None and "pyspark.zip" not in env["PYTHONPATH"]
    seen = horovod.spark.run(_where_pyspark_came_from, num_proc=2, use_gloo=True, executable=executable, env=env,
                             start_timeout=120)
    assert len(seen) == 2 and all(".zip" not in path and path.endswith("pyspark/__init__.py") for path in seen), seen


def test_the_local_python_daemon_is_empty_when_a_spawned_middleman_imports_it(spark):
    """Horovod's middleman process is spawned, and re-imports its parent's main module (the Spark Python
    daemon) as ``__mp_main__``; pyspark's own daemon imports most of pyspark there, compiled again from
    Spark's zip. The session's daemon on a local master is sparkzoo's, which imports nothing that way,
    and it serves Python tasks as pyspark's does."""
    import subprocess
    import sys

    module = spark.conf.get("spark.python.daemon.module")
    assert module == "sparkzoo.pipelines.spark_daemon"
    code = (f"import runpy, sys; runpy.run_module({module!r}, run_name='__mp_main__'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    assert spark.sparkContext.parallelize(range(100), 2).map(lambda x: x * 2).sum() == 9900
