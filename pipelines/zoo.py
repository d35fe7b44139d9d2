"""``scripts/zoo.py --family vision`` (``make zoo-vision``): train every family of a zoo spec to its bar and write the table.

A zoo spec (``conf/zoo/<family>.yaml``) lists experiments in order; each entry names its experiment
YAML, optional overrides, whether to run its classical baseline, and the bars it must clear: a fixed
value, its baseline's figure, or another entry's result (a transfer run must beat its from-scratch
twin, a CNN must beat the MLP). Every figure in the table comes from the runs just made, with their
MLflow run ids, and the table replaces its own section of ``docs/MODEL_ZOO.md``.
"""

from __future__ import annotations

import json
import logging
import operator
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

log = logging.getLogger("sparkzoo.zoo")
ROOT = Path(__file__).resolve().parent.parent
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


class Bar(BaseModel):
    """``metric op value``, or ``metric op`` the baseline's ``baseline_metric``, another entry's metric, or
    another metric of the same run (``same_run_metric``: beam search no worse than greedy)."""

    model_config = ConfigDict(extra="forbid")
    metric: str
    op: Literal[">=", ">", "<=", "<"]
    value: Optional[float] = None
    baseline_metric: Optional[str] = None
    entry: Optional[str] = None
    same_run_metric: Optional[str] = None

    def describe(self) -> str:
        other = (f"{self.value:g}" if self.value is not None else f"baseline {self.baseline_metric}"
                 if self.baseline_metric else self.same_run_metric if self.same_run_metric else f"{self.entry}")
        return f"{self.metric} {self.op} {other}"


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    family: str
    conf: str
    set: list[str] = Field(default_factory=list)
    baseline: bool = False
    headline: str                      # the metric shown in the table's result column
    show: list[str] = Field(default_factory=list)   # more of the run's test metrics, in brackets after it
    bars: list[Bar] = Field(default_factory=list)


class ZooSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: str
    table: str = "docs/MODEL_ZOO.md"
    entries: list[Entry]


@dataclass
class EntryResult:
    """One entry's measured figures; also its JSON record in docs/zoo/<family>.json."""

    id: str
    dataset: str
    metrics: dict[str, float]
    baseline: dict[str, float] = field(default_factory=dict)
    baseline_kind: str = ""
    parameters: int = 0
    train_seconds: float = 0.0
    run_id: str = ""
    baseline_run_id: str = ""
    model: str = ""
    measured_at: str = ""
    checks: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.checks)


def load_spec(family: str) -> ZooSpec:
    path = ROOT / "conf" / "zoo" / f"{family}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in (ROOT / "conf" / "zoo").glob("*.yaml"))
        raise ConfigError(f"no zoo spec for family '{family}' ({path}); choose one of: {', '.join(have)}")
    try:
        return ZooSpec.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def run(family: str, overrides: list[str] | None = None, only: list[str] | None = None,
        write_table: bool = True) -> list[EntryResult]:
    from . import baselines, config, prepare, train
    from .session import get_spark

    spec = load_spec(family)
    entries = [e for e in spec.entries if not only or e.id in only]
    if only and len(entries) != len(set(only)):
        unknown = set(only) - {e.id for e in spec.entries}
        raise ConfigError(f"zoo {family} has no entries {sorted(unknown)}; it has {[e.id for e in spec.entries]}")
    results: dict[str, EntryResult] = {}
    spark = None
    started = time.time()
    for i, entry in enumerate(entries, 1):
        exp = config.load(ROOT / entry.conf, [*entry.set, *(overrides or [])])
        spark = spark or get_spark(exp)
        log.info("zoo %s [%d/%d] %s: %s (%.0fs so far)", family, i, len(entries), entry.id, entry.conf,
                 time.time() - started)
        prepare.run(exp, spark)
        t = train.run(exp, spark)
        res = EntryResult(entry.id, exp.data.dataset, {f"test_{k}": v for k, v in t.test.items()},
                          parameters=t.parameters, train_seconds=t.train_seconds, run_id=t.run_id,
                          model=f"{t.model_name} v{t.model_version}", measured_at=_now())
        if entry.baseline:
            b = baselines.run(exp, spark)
            res.baseline, res.baseline_kind, res.baseline_run_id = b.metrics, b.kind, b.run_id
            if b.model_probe:
                res.metrics["test_probe_accuracy"] = b.model_probe["test_probe_accuracy"]
        results[entry.id] = res
    if write_table:   # entries measured earlier (another --only run) keep their rows
        results = {**{r.id: r for r in read_records(spec)}, **results}
    results = {e.id: results[e.id] for e in spec.entries if e.id in results}
    evaluate(spec, results)
    out = list(results.values())
    if write_table:
        write(spec, out, overrides or [])
    return [r for r in out if not only or r.id in only]


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _record_path(spec: ZooSpec, root: Path = ROOT) -> Path:
    return root / "docs" / "zoo" / f"{spec.family}.json"


def read_records(spec: ZooSpec, root: Path = ROOT) -> list[EntryResult]:
    path = _record_path(spec, root)
    if not path.exists():
        return []
    known = {e.id for e in spec.entries}
    fields = set(EntryResult.__dataclass_fields__) - {"checks"}
    return [EntryResult(**{k: v for k, v in rec.items() if k in fields})
            for rec in json.loads(path.read_text()) if rec.get("id") in known]


def evaluate(spec: ZooSpec, results: dict[str, EntryResult]) -> None:
    """Each result's bars, against values, its baseline, or other entries' results."""
    by_id = {e.id: e for e in spec.entries}
    for res in results.values():
        res.checks = [(bar.describe(), _check(bar, res, results)) for bar in by_id[res.id].bars]


def _check(bar: Bar, res: EntryResult, results: dict[str, EntryResult]) -> bool:
    mine = res.metrics.get(bar.metric)
    if bar.value is not None:
        other = bar.value
    elif bar.baseline_metric:
        other = res.baseline.get(bar.baseline_metric)
    elif bar.same_run_metric:
        other = res.metrics.get(bar.same_run_metric)
    else:
        other = results[bar.entry].metrics.get(bar.metric) if bar.entry in results else None
    return mine is not None and other is not None and OPS[bar.op](mine, other)


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def table(spec: ZooSpec, results: list[EntryResult]) -> str:
    lines = ["| family | data | metric | bar | result | baseline | params | train time | MLflow run |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_id = {e.id: e for e in spec.entries}
    for r in results:
        e = by_id[r.id]
        bars = "; ".join(f"{d} {'✅' if ok else '❌'}" for d, ok in r.checks) or "none (reference)"
        extra = [f"{k.removeprefix('test_')} {_fmt(v)}" for k, v in r.metrics.items()
                 if k != e.headline and k in ("test_probe_accuracy", "test_mean_image_iou", "test_ece", *e.show)]
        result = f"**{_fmt(r.metrics.get(e.headline))}**" + (f" ({', '.join(extra)})" if extra else "")
        base = ""
        if r.baseline:
            base = f"{r.baseline_kind}: " + ", ".join(f"{k.removeprefix('test_')} {_fmt(v)}" for k, v in r.baseline.items()
                                                       if k.startswith("test_"))
        lines.append(f"| {e.family} (`{e.id}`) | {r.dataset} | {e.headline.removeprefix('test_')} | {bars} | {result} | "
                     f"{base} | {r.parameters:,} | {r.train_seconds:.0f}s | `{r.run_id[:12]}` |")
    return "\n".join(lines)


def write(spec: ZooSpec, results: list[EntryResult], overrides: list[str], root: Path = ROOT) -> Path:
    """Replace this family's section of the zoo table; keep a JSON record beside it in docs/zoo/."""
    import os
    import platform

    path = root / spec.table
    start, end = f"<!-- zoo:{spec.family}:start -->", f"<!-- zoo:{spec.family}:end -->"
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"
    passed = sum(r.passed for r in results)
    dates = sorted({r.measured_at[:10] for r in results if r.measured_at})
    section = "\n".join([
        start,
        f"Measured {' to '.join(dict.fromkeys([dates[0], dates[-1]])) if dates else ''} on {machine} by "
        f"`scripts/zoo.py --family {spec.family}` (`make zoo-{spec.family}`)"
        + (f", last run with `{' '.join('--set ' + o for o in overrides)}`" if overrides else "") + ". "
        f"{passed}/{len(results)} entries clear every bar. Train time is the ranks' training loop; "
        f"run ids are the MLflow runs in the local store that run wrote.",
        "", table(spec, results), end])
    text = path.read_text() if path.exists() else "# Model zoo\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
    record = _record_path(spec, root)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps([{k: v for k, v in r.__dict__.items()} for r in results], indent=2))
    log.info("zoo %s: %d/%d entries clear their bars; table in %s", spec.family, passed, len(results), path)
    return path
