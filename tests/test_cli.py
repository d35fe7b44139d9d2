"""The CLI as a user and a scheduler see it: --help everywhere, one-line errors, non-zero exit codes."""

from __future__ import annotations

import gzip
import shutil

import pytest

from .conftest import CONF, FASHION, ROOT, run_cli

COMMANDS = ["prepare", "train", "score", "promote", "run", "ui"]


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

    for cmd in COMMANDS:
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
