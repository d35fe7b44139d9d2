"""Drift in the pipeline: the training reference, the nightly check, its MLflow run and its report page.

``log_reference`` runs on the driver after training registered a version (pipelines/train): the model
scores the validation split in Spark once and the profile of inputs + predictions goes to the run as
``drift/reference.json``. ``check`` runs at the end of each scoring job: it profiles the scored input and
the written predictions on the reference's bins, compares them, logs the figures to a run of its own in
the ``<experiment>-monitoring`` experiment (one run per model and scoring date, so the MLflow UI plots the
nights side by side) and writes a self-contained HTML page beside the partition.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import tempfile
from typing import Any

from . import drift, paths, scoring, track
from .config import Experiment

log = logging.getLogger("sparkzoo.monitoring")

REPORT = "_drift_report.html"   # leading underscore: Spark and Arrow readers skip it


def log_reference(exp: Experiment, spark, run_id: str, name: str, version: int, ds) -> dict[str, Any] | None:
    """The reference profile of the data this version was trained for, logged on its training run."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    split = next((s for s in ("val", "test", "train") if ds.rows(s)), None)
    if split is None:
        return None
    with scoring.shipped_model(spark, exp, name, version) as shipped:
        good = scoring.fitting_rows(spark.read.parquet(ds.split_dir(split)), ds.split_dir(split), shipped.spec)
        predictions = None
        if shipped.is_classifier:
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(exp.score.batch_size))
            predictions = (scoring.score_frame(good, shipped, scoring.worker_options(exp), [])
                           .select("prediction", F.col("confidence")).persist(StorageLevel.DISK_ONLY))
        try:
            ref = drift.profile(good, predictions, shipped.spec, model=(shipped.file, shipped.key),
                                rows=ds.rows(split))
        finally:
            if predictions is not None:
                predictions.unpersist()
    ref.update({"split": split, "dataset": ds.manifest.get("dataset"), "dataset_version": ds.version,
                "model": f"models:/{name}/{version}"})
    track.log_dict(exp, run_id, ref, drift.REFERENCE_ARTIFACT)
    log.info("drift reference: %d %s rows, %d features logged on run %s", ref.get("rows", 0), split,
             len(ref["features"]), run_id)
    return ref


def load_reference(exp: Experiment, run_id: str) -> dict[str, Any] | None:
    """The reference a version's training run logged; None for versions trained before drift existed."""
    import mlflow
    from mlflow.exceptions import MlflowException

    track.client(exp)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=drift.REFERENCE_ARTIFACT,
                                                        dst_path=tmp)
            with open(local) as fh:
                return json.load(fh)
    except (MlflowException, OSError):
        return None


def check(exp: Experiment, *, inputs, predictions, spec: dict[str, Any], run_id: str, name: str, version: int,
          run_date: str, partition: str, where: str, model: tuple[str, str] | None = None,
          rows: int = 0) -> dict[str, Any] | None:
    """Profile tonight's input and predictions, compare with the reference, log and report.

    Returns the manifest's ``drift`` block (None when drift is off or the version has no reference).
    """
    if not exp.score.drift:
        return None
    import time

    started = time.perf_counter()
    ref = load_reference(exp, run_id)
    if ref is None:
        log.info("drift: %s v%d has no reference profile (trained before drift profiles); not compared", name, version)
        return None
    current = drift.profile(inputs, predictions, spec, drift.edges_of(ref), model=model, rows=rows,
                            directions=ref.get("embedding_directions"))
    return report(exp, ref, current, run_id=run_id, name=name, version=version, run_date=run_date,
                  partition=partition, where=where, seconds=time.perf_counter() - started)


def report(exp: Experiment, ref: dict[str, Any], current: dict[str, Any], *, run_id: str, name: str, version: int,
           run_date: str, partition: str, where: str, seconds: float) -> dict[str, Any]:
    """Tonight's profile against the reference: compared, written as the report page beside the
    partition, logged as the monitoring run; ``seconds``: what profiling cost the job. Both engines end
    here (the in-process one builds ``current`` with pipelines/drift_stream.py)."""
    result = drift.compare(ref, current, exp.score.drift_flag_above)
    block = {"reference_run": run_id, "reference_split": ref.get("split"), "reference_rows": ref.get("rows"),
             "rows": current.get("rows"), **result, "profile": current,
             "profile_seconds": round(seconds, 2)}
    report = paths.join(partition, REPORT)
    page = render_report(block, ref, name=name, version=version, run_date=run_date, where=where)
    _write_text(report, page)
    block["report"] = report
    block["monitoring_run"] = _log_monitoring_run(exp, block, page, name=name, version=version, run_date=run_date,
                                                  where=where)
    if result["moved"]:
        log.warning("%s", drift.moved_line(result))
    else:
        log.info("drift: no feature moved (PSI <= %g for all %d)", exp.score.drift_flag_above, len(result["features"]))
    return block


def _write_text(path: str, text: str) -> None:
    fs, inner = paths.filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as fh:
        fh.write(text.encode("utf-8"))


def monitoring_experiment(exp: Experiment) -> str:
    return f"{exp.mlflow.experiment}-monitoring"


def _log_monitoring_run(exp: Experiment, block: dict[str, Any], page: str, *, name: str, version: int,
                        run_date: str, where: str) -> str:
    """One run per model and scoring date in ``<experiment>-monitoring``; a rerun of the date reuses it.

    Metrics carry the scoring date as their step (days since 1970) so the UI's chart of a metric over
    runs, or over steps, reads as a timeline of nights.
    """
    from mlflow.entities import Metric, Param, RunTag

    c = track.client(exp)
    exp_name = monitoring_experiment(exp)
    found = c.get_experiment_by_name(exp_name)
    exp_id = found.experiment_id if found else _create_experiment(c, exp_name, exp)
    runs = c.search_runs([exp_id], filter_string=f"tags.`sparkzoo.model_name` = '{name}' and "
                                                 f"tags.`sparkzoo.run_date` = '{run_date}'", max_results=1)
    if runs:
        run_id = runs[0].info.run_id
        c.update_run(run_id, status="RUNNING")
    else:
        run_id = c.create_run(exp_id, run_name=f"{name}-{run_date}", tags={
            "sparkzoo.model_name": name, "sparkzoo.run_date": run_date, "sparkzoo.kind": "drift"}).info.run_id
    day = (dt.date.fromisoformat(run_date) - dt.date(1970, 1, 1)).days
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    metrics = [Metric(f"{feat}.{k}", float(v), now, day) for feat, f in block["features"].items()
               for k, v in f.items() if k in ("psi", "js", "ks") and v is not None]
    metrics += [Metric("features_moved", float(len(block["moved"])), now, day),
                Metric("rows", float(block.get("rows") or 0), now, day)]
    params = [Param("model_version", str(version)), Param("input", where[:6000]),
              Param("reference_run", block["reference_run"]), Param("flag_above", str(block["flag_above"]))]
    existing = c.get_run(run_id).data.params
    params = [p for p in params if p.key not in existing]   # a rerun of the date keeps its first params
    tags = [RunTag("sparkzoo.model_version", str(version)),
            RunTag("mlflow.note.content", drift.moved_line(block) if block["moved"] else "no feature moved")]
    for i in range(0, len(metrics), 500):
        c.log_batch(run_id, metrics=metrics[i:i + 500], params=params if i == 0 else [], tags=tags if i == 0 else [])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, REPORT)
        with open(path, "w") as fh:
            fh.write(page)
        c.log_artifact(run_id, path)
    c.log_dict(run_id, {k: v for k, v in block.items() if k != "report"}, "drift.json")
    c.set_terminated(run_id, "FINISHED")
    return run_id


def _create_experiment(c, exp_name: str, exp: Experiment) -> str:
    location = track.experiment_artifact_location(exp)
    try:
        return c.create_experiment(exp_name, artifact_location=location.rstrip("/") + "-monitoring" if location else None)
    except Exception:   # created concurrently by another job
        return c.get_experiment_by_name(exp_name).experiment_id


def render_report(block: dict[str, Any], ref: dict[str, Any], *, name: str, version: int, run_date: str,
                  where: str) -> str:
    """One self-contained HTML page: the verdict, a table of figures and reference-vs-tonight bars."""
    e = html.escape
    rows, charts = [], []
    for feat, f in block["features"].items():
        state = "moved" if f["drifted"] else "ok"
        fmt = lambda v: "" if v is None else f"{v:.3f}"   # noqa: E731
        rows.append(f"<tr class='{state}'><td>{e(feat)}</td><td>{fmt(f['psi'])}</td><td>{fmt(f['js'])}</td>"
                    f"<td>{fmt(f['ks'])}</td><td>{state}</td></tr>")
        charts.append(_bars(feat, ref["features"][feat], block["profile"]["features"].get(feat)))
    verdict = drift.moved_line(block) if block["moved"] else f"no feature moved (PSI <= {block['flag_above']:g})"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>drift {e(name)} v{version} {e(run_date)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}td:first-child{{text-align:left}}
tr.moved td{{background:#fdd}}.verdict{{font-size:1.2em;padding:.5em;background:{'#fdd' if block['moved'] else '#dfd'}}}
.chart{{display:inline-block;margin:1em;vertical-align:top}}</style></head><body>
<h1>Drift: {e(name)} v{version}, run date {e(run_date)}</h1>
<p class="verdict">{e(verdict)}</p>
<p>input {e(where)} ({block.get('rows')} rows) vs reference: the {e(str(block.get('reference_split')))} split
({block.get('reference_rows')} rows) profiled at training, MLflow run {e(block['reference_run'])}.</p>
<table><tr><th>feature</th><th>PSI</th><th>Jensen-Shannon</th><th>KS</th><th></th></tr>{''.join(rows)}</table>
<h2>Reference (grey) vs this run (blue), share of rows per bin</h2>{''.join(charts)}
</body></html>
"""


def _bars(feat: str, ref: dict[str, Any], cur: dict[str, Any] | None) -> str:
    """An inline SVG of the two histograms (no external assets)."""
    if cur is None:
        return ""
    p, q = drift._aligned(ref, cur)
    p = p / max(p.sum(), 1)
    q = q / max(q.sum(), 1)
    n, w, h = len(p), 240, 90
    top = max(float(p.max(initial=0)), float(q.max(initial=0)), 1e-9)
    bw = w / max(n, 1) / 2
    bars = []
    for i in range(n):
        for j, (v, colour) in enumerate(((p[i], "#999"), (q[i], "#36c"))):
            bh = h * float(v) / top
            bars.append(f"<rect x='{i * 2 * bw + j * bw:.1f}' y='{h - bh:.1f}' width='{bw:.1f}' height='{bh:.1f}' "
                        f"fill='{colour}'/>")
    return (f"<div class='chart'><div>{html.escape(feat)}</div><svg width='{w}' height='{h}' "
            f">{''.join(bars)}</svg></div>")
