"""The CLI as a user and a scheduler see it: --help everywhere, one-line errors, non-zero exit codes."""

from __future__ import annotations

import gzip
import shutil

import pytest

from .conftest import CONF, FASHION, ROOT, run_cli

STAGES = ["prepare", "replicate", "train", "score", "promote", "run", "ui"]   # each has jobs/<name>.py
COMMANDS = STAGES + ["doctor"]


def _assert_clean_failure(proc, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("sparkzoo: error:")]
    assert len(err_lines) == 1, proc.stderr
    for needle in needles:
        assert needle in err_lines[0], err_lines[0]


def test_top_level_help():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in COMMANDS:
        assert cmd in proc.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    proc = run_cli(cmd, "--help")
    assert proc.returncode == 0 and "--conf" in proc.stdout and "--set" in proc.stdout


def test_spark_submit_entry_points_have_help():
    import subprocess
    import sys

    for cmd in STAGES:
        proc = subprocess.run([sys.executable, str(ROOT / "jobs" / f"{cmd}.py"), "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "--conf" in proc.stdout


def test_wrong_flag_is_one_line_and_exit_2():
    proc = run_cli("train", "--epochs", "3")
    assert proc.returncode == 2 and "unrecognized arguments: --epochs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_key_in_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONF.read_text() + "\ntrain:\n  epochz: 3\n")
    _assert_clean_failure(run_cli("prepare", "--conf", str(bad)), "train.epochz", str(bad), "epochs")


def test_wrong_type_in_yaml():
    _assert_clean_failure(run_cli("train", "--conf", str(CONF), "--set", "train.num_proc=two"), "train.num_proc")


def test_unknown_model_name():
    _assert_clean_failure(run_cli("train", "--conf", str(CONF), "--set", "model.name=resnt"),
                          "unknown model 'resnt'", "choose one of")


def test_missing_data_path(tmp_path):
    _assert_clean_failure(run_cli("prepare", "--conf", str(CONF), "--set", "data.source.path=/no/such/dir",
                                  "--set", f"workspace={tmp_path}"),
                          "/no/such/dir", "does not exist", "dataset-fashion-mnist")


@pytest.mark.slow   # a real prepare: Spark starts
def test_truncated_idx_file(tmp_path):
    src = tmp_path / "fmnist"
    shutil.copytree(FASHION, src)
    with gzip.open(src / "t10k-labels-idx1-ubyte.gz") as fh:
        head = fh.read(8 + 500)
    with gzip.open(src / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(head)
    proc = run_cli("prepare", "--conf", str(CONF), "--set", f"data.source.path={src}", "--set", f"workspace={tmp_path}",
                   "--set", "data.max_records=2000", "--set", "spark.master=local[2]",
                   "--set", "spark.conf.spark.ui.enabled=false")
    _assert_clean_failure(proc, "t10k-labels-idx1-ubyte.gz", "truncated_file", "max_bad_fraction")


def test_not_prepared_yet(tmp_path):
    _assert_clean_failure(run_cli("train", "--conf", str(CONF), "--set", f"workspace={tmp_path}"),
                          "no prepared dataset", "sparkzoo prepare")


def test_score_without_a_model(tmp_path):
    _assert_clean_failure(run_cli("score", "--conf", str(CONF), "--set", f"workspace={tmp_path}"),
                          "fashion_mnist_cnn", "champion", "train it first")


def test_bad_flag_value_is_one_line_and_exit_2():
    proc = run_cli("doctor", "--min-free-gb", "lots")
    assert proc.returncode == 2 and "--min-free-gb" in proc.stderr and "'lots' is not a number" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_doctor_passes_on_this_machine(tmp_path):
    proc = run_cli("doctor", "--conf", str(CONF), "--set", f"workspace={tmp_path}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = {line.split()[1]: line.split()[0] for line in proc.stdout.splitlines()[1:-1] if line.startswith("  ")}
    for name in ("python", "java", "spark", "horovod", "mlflow", "disk"):
        assert status.get(name) == "ok", proc.stdout
    assert "gloo" in proc.stdout and "torch extension" in proc.stdout and "ready" in proc.stdout.splitlines()[-1]


def test_doctor_names_what_is_missing_and_how_to_fix_it(tmp_path):
    import socket

    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli("doctor", "--conf", str(CONF), "--set", f"workspace={tmp_path}", "--set", "train.num_proc=two",
                   "--set", f"mlflow.tracking_uri=http://127.0.0.1:{port}", "--min-free-gb", "1e9")
    # the bad value is reported as a failed check, and the other checks still run (on the defaults)
    _assert_clean_failure(proc, "2 required check(s) failed", "config", "disk")
    assert "train.num_proc" in proc.stdout
    # the unreachable server cannot be checked here: a broken config falls back to the defaults' sqlite store
    assert "MISSING  disk" in proc.stdout and "fix: free some space" in proc.stdout
    proc = run_cli("doctor", "--conf", str(CONF), "--set", f"workspace={tmp_path}",
                   "--set", f"mlflow.tracking_uri=http://127.0.0.1:{port}")
    _assert_clean_failure(proc, "1 required check(s) failed", "tracking store")
    assert f"http://127.0.0.1:{port}/health unreachable" in proc.stdout and "fix: start the server" in proc.stdout


def test_stage_summaries_show_throughput():
    from sparkzoo.jobs.cli import _score_summary
    from sparkzoo.pipelines.score import ScoreResult

    line = _score_summary(ScoreResult("m", 3, 10000, 9990, 10, "/out", "/out_rejects", 0.9, 4.0, "2026-11-25"))
    assert "scored 9990 rows with m v3 in 4.0s (2500 rows/s), accuracy 0.9000; rejected 10" in line
    fast = _score_summary(ScoreResult("m", 3, 10000, 10000, 0, "/out", "/out_rejects", 0.9, 2.0, "2026-11-25",
                                      optimize="int8_static"))
    assert "scored 10000 rows with m v3 (inference path int8_static) in 2.0s (5000 rows/s)" in fast


def test_config_prints_the_merged_validated_config():
    import yaml

    proc = run_cli("config", "-c", str(CONF), "--set", "train.epochs=7", "--set", "spark.master=local[3]")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"# sparkzoo config: {CONF} (with --set train.epochs=7")
    tree = yaml.safe_load(proc.stdout)
    assert tree["train"]["epochs"] == 7 and tree["spark"]["master"] == "local[3]"
    assert tree["model"]["name"] == "lenet" and "num_proc" in tree["train"]     # the file and the defaults too
    _assert_clean_failure(run_cli("config", "-c", str(CONF), "--set", "train.epochz=7"), "train.epochz")


def test_conf_is_a_deprecated_alias_of_config():
    old = run_cli("config", "--conf", str(CONF))
    new = run_cli("config", "--config", str(CONF))
    assert old.returncode == new.returncode == 0 and old.stdout == new.stdout
    assert "--conf is deprecated" in old.stderr and "-c/--config" in old.stderr
    assert "deprecated" not in new.stderr


@pytest.mark.parametrize("stage", ["prepare", "train", "score", "promote", "run", "replicate", "baseline"])
def test_dry_run_says_what_it_would_do_and_starts_nothing(stage, tmp_path):
    proc = run_cli(stage, "-c", str(CONF), "--set", f"workspace={tmp_path}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"sparkzoo {stage} --dry-run: {CONF}")
    for what in ("read:", "write:", "launch:"):
        assert any(what in ln for ln in lines), proc.stdout
    assert str(tmp_path) in proc.stdout and "local[*]" in proc.stdout
    assert list(tmp_path.iterdir()) == []          # no log, no MLflow store, no dataset: nothing started


def test_zoo_is_a_maintainer_script_not_a_user_command():
    import subprocess
    import sys

    proc = run_cli("zoo", "--family", "vision")
    assert proc.returncode == 2 and "invalid choice: 'zoo'" in proc.stderr
    script = subprocess.run([sys.executable, str(ROOT / "scripts" / "zoo.py"), "--help"], capture_output=True, text=True)
    assert script.returncode == 0 and "--family" in script.stdout and "docs/MODEL_ZOO.md" in script.stdout


@pytest.mark.slow   # spark-submit starts a JVM
def test_spark_submit_conf_wins_over_the_yaml_for_the_same_key(tmp_path):
    """spark-submit --conf k=v and the YAML's spark.conf k: the operator's command line wins; the YAML
    still sets what spark-submit left alone."""
    import subprocess
    import sys
    from pathlib import Path

    probe = tmp_path / "probe.py"
    probe.write_text(
        "from sparkzoo.pipelines import config\n"
        "from sparkzoo.pipelines.session import get_spark\n"
        f"exp = config.load({str(CONF)!r}, ['spark.conf.spark.sql.shuffle.partitions=8',\n"
        "    'spark.conf.spark.sql.files.maxPartitionBytes=64m', 'spark.conf.spark.ui.enabled=false'])\n"
        "spark = get_spark(exp)\n"
        "print('shuffle', spark.conf.get('spark.sql.shuffle.partitions'))\n"
        "print('maxbytes', spark.conf.get('spark.sql.files.maxPartitionBytes'))\n"
        "spark.stop()\n")
    import os

    import pyspark

    env = {**os.environ, "SPARK_HOME": str(Path(pyspark.__file__).parent), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    proc = subprocess.run([str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]",
                           "--conf", "spark.sql.shuffle.partitions=3", str(probe)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shuffle 3" in proc.stdout.splitlines(), proc.stdout        # spark-submit's value
    assert "maxbytes 64m" in proc.stdout.splitlines(), proc.stdout     # the YAML's, nobody else set it


@pytest.mark.slow   # starts a JVM of its own
def test_the_started_jvm_gets_spark_env_and_a_fixed_heap(tmp_path):
    """spark.env reaches the JVM sparkzoo starts and its Python workers; the default heap is fixed from the
    start (-Xms = spark.driver.memory), so a long job's footprint does not grow with its length."""
    import os
    import subprocess
    import sys

    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n"
        "from sparkzoo.pipelines import config\n"
        "from sparkzoo.pipelines.session import get_spark\n"
        f"exp = config.load({str(CONF)!r}, ['spark.master=local[1]', 'spark.env.SPARKZOO_PROBE=seen',\n"
        "    'spark.conf.spark.ui.enabled=false'])\n"
        "spark = get_spark(exp)\n"
        "jvm = spark.sparkContext._jvm\n"
        "runtime = jvm.java.lang.Runtime.getRuntime()\n"
        "print('jvm', jvm.java.lang.System.getenv('SPARKZOO_PROBE'), jvm.java.lang.System.getenv('MALLOC_ARENA_MAX'))\n"
        "print('worker', spark.sparkContext.parallelize([0], 1).map(lambda _: os.environ.get('SPARKZOO_PROBE')).first())\n"
        "print('heap', runtime.totalMemory() / runtime.maxMemory())\n"
        "spark.stop()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SPARKZOO_PROBE", "MALLOC_ARENA_MAX")}
    proc = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "jvm seen 4" in lines, proc.stdout
    assert "worker seen" in lines, proc.stdout
    heap = float(next(line for line in lines if line.startswith("heap ")).split()[1])
    assert heap > 0.95, proc.stdout     # committed heap = its maximum from the start
