"""The zoo's bookkeeping: spec validation, bars against values, baselines and other entries, and the
table section it rewrites (the training itself is covered by tests/test_vision_families.py)."""

from __future__ import annotations

import json

import pytest

from sparkzoo.pipelines import zoo
from sparkzoo.pipelines.errors import ConfigError


@pytest.mark.parametrize("family", ["vision", "sequence"])
def test_zoo_spec_loads_and_every_experiment_config_is_valid(family):
    from sparkzoo.pipelines import config
    from sparkzoo.models import list_models

    spec = zoo.load_spec(family)
    ids = [e.id for e in spec.entries]
    assert len(ids) == len(set(ids))
    for e in spec.entries:
        exp = config.load(zoo.ROOT / e.conf, e.set)
        for bar in e.bars:
            assert bar.entry is None or ids.index(bar.entry) < ids.index(e.id)   # compared with a finished entry
        assert exp.model.name in list_models()
    with pytest.raises(ConfigError, match="choose one of: sequence, vision"):
        zoo.load_spec("nope")


def _spec() -> zoo.ZooSpec:
    return zoo.ZooSpec.model_validate({"family": "t", "table": "docs/T.md", "entries": [
        {"id": "small", "family": "S", "conf": "c.yaml", "headline": "test_accuracy"},
        {"id": "big", "family": "B", "conf": "c.yaml", "headline": "test_accuracy", "baseline": True, "bars": [
            {"metric": "test_accuracy", "op": ">=", "value": 0.9},
            {"metric": "test_accuracy", "op": ">", "entry": "small"},
            {"metric": "test_mse", "op": "<", "baseline_metric": "test_mse"}]}]})


def test_bars_compare_with_values_baselines_and_other_entries():
    spec = _spec()
    results = {"small": zoo.EntryResult("small", "d", {"test_accuracy": 0.8}),
               "big": zoo.EntryResult("big", "d", {"test_accuracy": 0.91, "test_mse": 0.02}, baseline={"test_mse": 0.03})}
    zoo.evaluate(spec, results)
    assert results["big"].checks == [("test_accuracy >= 0.9", True), ("test_accuracy > small", True),
                                     ("test_mse < baseline test_mse", True)]
    results["big"].baseline = {"test_mse": 0.01}
    results["small"].metrics["test_accuracy"] = 0.95
    zoo.evaluate(spec, results)
    assert [ok for _, ok in results["big"].checks] == [True, False, False]
    assert not results["big"].passed and results["small"].passed


def test_a_bar_can_compare_two_metrics_of_the_same_run():
    spec = zoo.ZooSpec.model_validate({"family": "t", "entries": [
        {"id": "g2p", "family": "G", "conf": "c.yaml", "headline": "test_error_rate", "show": ["test_error_rate_beam4"],
         "bars": [{"metric": "test_error_rate_beam4", "op": "<=", "same_run_metric": "test_error_rate"}]}]})
    results = {"g2p": zoo.EntryResult("g2p", "d", {"test_error_rate": 0.12, "test_error_rate_beam4": 0.11})}
    zoo.evaluate(spec, results)
    assert results["g2p"].checks == [("test_error_rate_beam4 <= test_error_rate", True)]
    assert "error_rate_beam4 0.1100" in zoo.table(spec, list(results.values()))
    results["g2p"].metrics["test_error_rate_beam4"] = 0.13
    zoo.evaluate(spec, results)
    assert not results["g2p"].passed


def test_table_section_is_replaced_and_earlier_entries_are_kept(tmp_path):
    spec = _spec()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "T.md").write_text("# T\n\nintro\n<!-- zoo:t:start -->\nold\n<!-- zoo:t:end -->\ntail\n")
    first = {"small": zoo.EntryResult("small", "d", {"test_accuracy": 0.8}, run_id="a" * 32, measured_at="2026-11-25 10:00 UTC")}
    zoo.evaluate(spec, first)
    zoo.write(spec, list(first.values()), [], root=tmp_path)
    kept = zoo.read_records(spec, root=tmp_path)
    assert [r.id for r in kept] == ["small"] and kept[0].metrics == {"test_accuracy": 0.8}
    both = {r.id: r for r in kept}
    both["big"] = zoo.EntryResult("big", "d", {"test_accuracy": 0.7}, baseline={"test_mse": 0.1}, run_id="b" * 32)
    zoo.evaluate(spec, both)
    zoo.write(spec, list(both.values()), [], root=tmp_path)
    text = (tmp_path / "docs" / "T.md").read_text()
    assert "old" not in text and text.startswith("# T\n\nintro\n") and text.rstrip().endswith("tail")
    assert "**0.8000**" in text and "**0.7000**" in text and "1/2 entries clear every bar" in text
    assert len(json.loads((tmp_path / "docs" / "zoo" / "t.json").read_text())) == 2
