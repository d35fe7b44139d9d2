"""What a person sees after `sparkzoo train`: a real `sparkzoo ui` (mlflow server on a temporary SQLite
store), a short real training logged to it over HTTP, its artefacts, and the experiment, run and model
pages rendered by headless Chromium, read from the DOM after the React app has drawn them.

Screenshots land in test-artifacts/ui/ (or $SPARKZOO_TEST_ARTIFACTS/ui); with SPARKZOO_DOC_IMAGES=docs/img
they also refresh the README's pictures.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from sparkzoo import __version__

from .conftest import CONF, ROOT, exp_overrides, free_port, run_cli

ARTIFACTS = Path(os.environ.get("SPARKZOO_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "ui"
DOC_IMAGES = os.environ.get("SPARKZOO_DOC_IMAGES")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ML = "workflowType=machine_learning"   # MLflow 3 opens experiments in its GenAI view otherwise
MODEL = "fashion_mnist_cnn"


@contextmanager
def mlflow_ui(workspace: Path) -> Iterator[str]:
    """`sparkzoo ui` as a user starts it, in its own process group so every worker goes with it."""
    port = free_port()
    log = open(workspace / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "sparkzoo"), "ui", "--conf", str(CONF),
                             "--set", f"workspace={workspace}", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"sparkzoo ui did not come up on {url}:\n{(workspace / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)   # the group we started: the server and its uvicorn worker
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        log.close()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory) -> Iterator[str]:
    with mlflow_ui(tmp_path_factory.mktemp("mlflow_server")) as url:
        yield url


@pytest.fixture(scope="module")
def ui_run(ui_server, prepared, workspace) -> dict:
    """A tiny real training (1 epoch, 5 steps, 2 Horovod ranks) logged to the server over HTTP."""
    sets = exp_overrides(workspace, "train.epochs=1", "train.max_steps_per_epoch=5",
                         f"mlflow.tracking_uri={ui_server}")
    proc = run_cli("train", "--conf", str(CONF), *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", proc.stdout).group(1)
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", proc.stdout).group(1))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=ui_server, registry_uri=ui_server)
    run = client.get_run(run_id)
    return {"url": ui_server, "run_id": run_id, "accuracy": accuracy, "stdout": proc.stdout, "client": client,
            "run": run, "experiment_id": run.info.experiment_id, "dataset_version": prepared.version}


def test_train_summary_names_run_metric_and_calibration(ui_run):
    assert "calibration error (ECE)" in ui_run["stdout"]
    assert f"registered model {MODEL} version 1 aliases candidate, champion" in ui_run["stdout"]


def test_run_hygiene_name_tags_and_model_description(ui_run):
    run = ui_run["run"]
    assert re.fullmatch(rf"{MODEL}-\d{{8}}-\d{{6}}", run.info.run_name), run.info.run_name
    tags = run.data.tags
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["sparkzoo.dataset_version"] == ui_run["dataset_version"]
    assert tags["sparkzoo.git_commit"] == commit and tags["sparkzoo.version"] == __version__
    assert tags["sparkzoo.world_size"] == "2" and tags["sparkzoo.backend"] == "horovod_spark"
    assert ui_run["dataset_version"] in tags["mlflow.note.content"]
    mv = ui_run["client"].get_model_version(MODEL, "1")
    assert mv.run_id == ui_run["run_id"]
    for needle in ("lenet", "fashion_mnist", ui_run["dataset_version"], "2 ranks", ui_run["run_id"], "test_accuracy"):
        assert needle in mv.description, (needle, mv.description)


def test_run_artifacts_have_plots_config_manifest_and_report(ui_run, tmp_path):
    client, run_id = ui_run["client"], ui_run["run_id"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"plots", "report.html", "config.yaml", "history.json", "dataset"} <= top
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {f"plots/{n}.png" for n in ("curves", "confusion_matrix", "reliability", "test_samples", "grad_norms")}
    assert {a.path for a in client.list_artifacts(run_id, "dataset")} == {"dataset/manifest.json"}
    local = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    for png in plots:
        assert (local / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (local / png).stat().st_size > 5000
    config = yaml.safe_load((local / "config.yaml").read_text())
    assert config["model"]["name"] == "lenet" and config["train"]["max_steps_per_epoch"] == 5
    ece = ui_run["run"].data.metrics["test_ece"]
    assert 0.0 <= ece <= 1.0 and "val_ece" in ui_run["run"].data.metrics
    report = (local / "report.html").read_text(encoding="utf-8")
    assert report.count("data:image/png;base64,") == 5            # every plot embedded: it travels alone
    assert f"{ece:.4f}" in report and ui_run["run_id"] in report and ui_run["dataset_version"] in report
    for png in plots:
        assert f'href="{png}"' in report
    shutil.copy(local / "report.html", _artifact_dir() / "report.html")


# ---- the browser ----------------------------------------------------------------------------------

def _artifact_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("headless Chromium is missing: apt-get install chromium chromium-driver (scripts/setup.sh does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="sparkzoo-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,950"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver, url: str, *texts: str, timeout: float = 90) -> str:
    """Load a page of the SPA and wait until the rendered body shows every text; returns that text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: all(t in body(d) for t in texts))
    except TimeoutException:
        pytest.fail(f"{url} never showed {texts}; it shows:\n{body(driver)[:2000]}")
    if "MLflow Assistant" in body(driver):   # the side panel hides half the page in a screenshot
        for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):
            if button.is_displayed():
                button.click()
        time.sleep(1)
    return body(driver)


def _screenshot(driver, name: str) -> Path:
    path = _artifact_dir() / name
    assert driver.save_screenshot(str(path)) and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if DOC_IMAGES:
        Path(DOC_IMAGES).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(DOC_IMAGES) / name)
    return path


def test_browser_experiment_page_shows_the_run_and_its_metrics(ui_run, browser):
    url, eid = ui_run["url"], ui_run["experiment_id"]
    run_name = ui_run["run"].info.run_name
    text = _open(browser, f"{url}/#/experiments/{eid}/runs?{ML}&compareRunsMode=CHART",
                 run_name, "test_accuracy", "test_ece")
    assert "1 matching run" in text
    _screenshot(browser, "mlflow_experiment.png")


def test_browser_run_page_shows_the_metric_value(ui_run, browser):
    url, eid, run_id = ui_run["url"], ui_run["experiment_id"], ui_run["run_id"]
    text = _open(browser, f"{url}/#/experiments/{eid}/runs/{run_id}?{ML}", "test_accuracy", "test_ece", "Parameters")
    lines = text.splitlines()
    shown = float(lines[lines.index("test_accuracy") + 1])    # the metrics table: name, then value
    assert shown == pytest.approx(ui_run["accuracy"], abs=1e-4)
    assert ui_run["dataset_version"] in text                   # the run description
    _screenshot(browser, "mlflow_run.png")


def test_browser_model_page_shows_champion(ui_run, browser):
    text = _open(browser, f"{ui_run['url']}/#/models/{MODEL}?{ML}", "Version 1", "@ champion")
    lines = text.splitlines()
    row = lines[lines.index("Version 1"):]
    assert "@ candidate" in row[:12] and "@ champion" in row[:12]    # both aliases on the version 1 row
    _screenshot(browser, "mlflow_model.png")


def test_browser_renders_the_run_report(ui_run, browser):
    from selenium.webdriver.common.by import By

    url, eid, run_id = ui_run["url"], ui_run["experiment_id"], ui_run["run_id"]
    _open(browser, f"{url}/#/experiments/{eid}/runs/{run_id}/artifacts/report.html?{ML}", "report.html", "plots")
    from selenium.webdriver.support.ui import WebDriverWait

    frame = WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))[0]
    browser.switch_to.frame(frame)
    try:
        WebDriverWait(browser, 60).until(lambda d: "Test metrics" in d.find_element(By.TAG_NAME, "body").text)
        images = browser.find_elements(By.TAG_NAME, "img")
        assert len(images) == 5 and all(browser.execute_script("return arguments[0].naturalWidth", i) > 100
                                        for i in images)
    finally:
        browser.switch_to.default_content()
    _screenshot(browser, "mlflow_report.png")
