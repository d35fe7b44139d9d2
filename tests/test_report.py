"""Calibration, the plots and the per-run HTML report, on small arrays whose answers are known."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sparkzoo.pipelines.train.metrics import (CALIBRATION_BINS, calibration_sums, expected_calibration_error,
                                              plot_reliability, plot_samples)
from sparkzoo.pipelines.train.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def test_calibration_sums_bin_rows_confidence_and_hits():
    conf = np.array([0.05, 0.95, 0.95, 1.0])
    sums = calibration_sums(conf, np.array([True, True, False, True]), bins=10)
    assert sums.shape == (3, 10)
    assert sums[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 3]       # confidence 1.0 lands in the last bin
    assert sums[1, 9] == pytest.approx(2.9) and sums[2, 9] == 2


def test_ece_known_values():
    # 0.9 confident and right 90% of the time: calibrated
    calibrated = calibration_sums(np.full(10, 0.9), np.arange(10) < 9)
    assert expected_calibration_error(calibrated) == pytest.approx(0.0, abs=1e-12)
    # 0.9 confident, always wrong: off by 0.9
    assert expected_calibration_error(calibration_sums(np.full(4, 0.9), np.zeros(4, bool))) == pytest.approx(0.9)
    # two halves: |0.6-1| and |0.8-0|, weighted equally
    sums = calibration_sums(np.array([0.6, 0.6, 0.8, 0.8]), np.array([1, 1, 0, 0], bool))
    assert expected_calibration_error(sums) == pytest.approx((0.4 + 0.8) / 2)
    assert expected_calibration_error(calibration_sums(np.zeros(0), np.zeros(0))) == 0.0


def test_sums_from_two_shards_add_up_to_the_whole():
    rng = np.random.default_rng(0)
    conf, hit = rng.uniform(0.1, 1, 1000), rng.uniform(size=1000) < 0.7
    whole = calibration_sums(conf, hit)
    parts = calibration_sums(conf[:300], hit[:300]) + calibration_sums(conf[300:], hit[300:])
    assert np.allclose(whole, parts) and whole.shape == (3, CALIBRATION_BINS)


def test_plots_are_pngs(tmp_path):
    rng = np.random.default_rng(1)
    sums = calibration_sums(rng.uniform(0.1, 1, 500), rng.uniform(size=500) < 0.6)
    assert open(plot_reliability(sums, str(tmp_path / "r.png")), "rb").read(8) == PNG
    images = rng.integers(0, 255, (10, 28, 28, 1), dtype=np.uint8)
    path = plot_samples(images, np.arange(10) % 3, np.arange(10) % 2, rng.uniform(size=10), ["a", "b", "c"],
                        str(tmp_path / "s.png"), columns=4)
    assert open(path, "rb").read(8) == PNG


def test_report_is_self_contained_and_escapes(tmp_path):
    png = tmp_path / "curves.png"
    plot_reliability(calibration_sums(np.array([0.5]), np.array([True])), str(png))
    out = write_report(str(tmp_path / "report.html"), title="run <x>", meta={"run": "abc"},
                       final={"test_accuracy": 0.91234, "test_ece": 0.0312},
                       history=[{"epoch": 1, "train_loss": 0.5}], images=[(str(png), "plots/curves.png", "curves")],
                       config={"model": {"name": "lenet"}}, manifest={"dataset": "d", "version": "v1",
                                                                       "counts": {"test": {"rows": 7}}},
                       artifacts=["plots/curves.png", "config.yaml"])
    text = open(out, encoding="utf-8").read()
    assert "run &lt;x&gt;" in text and "<x>" not in text
    assert "0.9123" in text and "test_ece" in text and "name: lenet" in text
    assert text.count("data:image/png;base64,") == 1
    # nothing is fetched from elsewhere: every src is embedded
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]+)"', text))
    assert 'href="plots/curves.png"' in text
