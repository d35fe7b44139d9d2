"""What a user's terminal shows: sparkzoo's lines only, every library's lines in <workspace>/logs.

Real runs, no mocks: ``sparkzoo run`` on the CI subsample through pipes (as cron or CI sees it), then
``sparkzoo train`` inside a real terminal (Debian's tmux, read back with ``capture-pane``), where the
training bar must be drawn in place and reach 100%.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import CONF, ROOT, SUBSAMPLE, run_cli

# The third-party lines issue 22 saw on the console, as regular expressions on one line.
THIRD_PARTY = {
    "Spark loopback hostname": r"resolves to a loopback address",
    "SPARK_LOCAL_IP": r"Set SPARK_LOCAL_IP if you need to bind",
    "Spark default log level": r"Setting default log level",
    "Hadoop NativeCodeLoader": r"NativeCodeLoader|Unable to load native-hadoop",
    "MLflow table creation": r"Creating initial MLflow database tables",
    "MLflow integer-column hint": r"Hint: Inferred schema contains integer column",
    "MLflow CloudPickle warning": r"[Cc]loud[Pp]ickle",
    "MLflow input example": r"Validating input example",
    "MLflow artefact bars": r"Downloading artifacts",
    "MLflow registration notes": r"Successfully registered model|Created version '",
    "Horovod rank prefix": r"<std(err|out)>:",
    "setuptools": r"BuildBackendWarning",
    "Spark console progress bar": r"\[Stage \d+:",
}
# Of those, the ones a run still produces, which the log file must therefore hold (the rest are fixed at
# their cause: SPARK_LOCAL_IP, conf/log4j2.properties, MLflow's env settings, the model signature).
ROUTED = ["MLflow table creation", "MLflow registration notes", "Horovod rank prefix"]


def _sets(ws: Path, *extra: str) -> list[str]:
    sets = [f"workspace={ws}", "spark.master=local[2]", f"data.max_records={SUBSAMPLE}", "train.epochs=2",
            "spark.conf.spark.ui.enabled=false", *extra]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    """``sparkzoo run`` with stdout and stderr as pipes, plain progress lines every second."""
    ws = tmp_path_factory.mktemp("console")
    started = time.time()
    proc = run_cli("run", "-c", str(CONF), *_sets(ws), env={"SPARKZOO_PROGRESS_SECONDS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ws, proc, time.time() - started


def _offending(text: str) -> list[str]:
    return [f"{name}: {line}" for line in text.splitlines() for name, rx in THIRD_PARTY.items() if re.search(rx, line)]


def test_run_console_holds_only_sparkzoo_lines_and_the_log_holds_the_rest(piped_run):
    ws, proc, _ = piped_run
    console = proc.stdout + proc.stderr
    assert not _offending(console), _offending(console)
    logs = list((ws / "logs").glob("run-*.log"))
    assert len(logs) == 1, logs
    text = logs[0].read_text()
    for name in ROUTED:
        assert re.search(THIRD_PARTY[name], text), f"{name} is neither on the console nor in {logs[0]}"
    assert f"log: {logs[0]}" in proc.stderr
    # one summary, and the summary is also in the log, so the log tells the whole story
    assert proc.stdout.count("sparkzoo run: done") == 1 and "sparkzoo run: done" in text


def test_piped_progress_is_plain_lines_one_display_per_stage(piped_run):
    _, proc, _ = piped_run
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr        # no redrawing in a pipe
    for stage, unit in (("prepare", "tasks"), ("train", "steps"), ("score", "tasks")):
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{stage}: ")]
        assert lines, f"no progress line for {stage}:\n{proc.stderr}"
        assert all(re.match(rf"{stage}: \d+/\d+ {unit}", ln) for ln in lines), lines
        assert re.match(rf"{stage}: (\d+)/\1 {unit} \(100%\)", lines[-1]), lines[-1]
    epochs = [ln for ln in proc.stderr.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in epochs] == ["epoch 1/2", "epoch 2/2"], proc.stderr
    assert "checkpoint" not in "\n".join(epochs)   # the checkpoint path is a detail for the log


def test_verbose_shows_everything_again_and_quiet_only_the_summary(piped_run):
    ws, _, _ = piped_run
    loud = run_cli("prepare", "-c", str(CONF), "-v", *_sets(ws))        # already prepared: no Spark started
    assert loud.returncode == 0, loud.stderr
    assert "[sparkzoo] dataset fashion_mnist version" in loud.stderr and "nothing to do" in loud.stderr
    default = run_cli("prepare", "-c", str(CONF), *_sets(ws))
    assert "[sparkzoo]" not in default.stderr and "already prepared" in default.stdout
    quiet = run_cli("prepare", "-c", str(CONF), "-q", *_sets(ws))
    assert quiet.stderr == "" and "already prepared" in quiet.stdout


def _tmux(*args: str) -> str:
    """tmux on its own server socket: a user's (or another test's) tmux server is never touched."""
    return subprocess.run(["tmux", "-L", "sparkzoo-test", *args], capture_output=True, text=True, check=True).stdout


def test_train_in_a_real_terminal_draws_one_live_bar_to_100_percent(piped_run, tmp_path):
    """tmux gives the command a real pty; capture-pane reads what a user would see."""
    assert shutil.which("tmux"), "tmux is missing: scripts/setup.sh installs it (apt)"
    ws, _, _ = piped_run
    session = f"sparkzoo-test-{tmp_path.name[-20:]}"
    exe = Path(sys.executable).parent / "sparkzoo"
    cmd = " ".join([str(exe), "train", "-c", str(CONF), *_sets(ws, "train.epochs=3")]) + "; echo EXIT=$?; sleep 600"
    _tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "50", "-c", str(ROOT), cmd)
    frames: list[str] = []
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            frames.append(_tmux("capture-pane", "-p", "-t", session))
            if "EXIT=" in frames[-1]:
                break
            time.sleep(0.3)
    finally:
        subprocess.run(["tmux", "-L", "sparkzoo-test", "kill-session", "-t", session], capture_output=True)
    final = frames[-1]
    assert "EXIT=0" in final, final
    bar_lines = [ln for ln in final.splitlines() if ln.startswith("train:")]
    assert len(bar_lines) == 1, final                                   # redrawn in place, not a line per update
    assert re.match(r"train: 100%\|.*\| (\d+)/\1 ", bar_lines[0]), bar_lines[0]
    partial = [m.group(1) for f in frames for m in re.finditer(r"train:\s+(\d+)%\|", f) if m.group(1) != "100"]
    assert partial, "the bar was never seen below 100%: not live"
    assert [ln.split(":")[0] for ln in final.splitlines() if ln.startswith("epoch ")] == \
        ["epoch 1/3", "epoch 2/3", "epoch 3/3"], final
    assert not _offending(final), _offending(final)
    assert "trained fashion_mnist_cnn: test accuracy" in final
