"""Which inference path a scoring job runs (``score.optimize``), decided on the driver before launch.

An optimised path is only worth it when it is both faster and right for this model on this machine:
static int8 made the LeNet-like CNN 4x faster on an AVX512-VNNI CPU, bf16 1.7x, while dynamic int8
and ``torch.compile`` bought little, and bf16 is slower than float32 on a CPU without native bf16. So
a named path is checked for accuracy against eager on labelled rows, and ``auto`` also times every
CPU path on those rows with the executors' thread count and keeps the fastest one that passes; its
timings are kept in the workspace per model version and machine, so a nightly job measures once and
later jobs only re-check the accuracy of the kept path. The calibration rows of a calibrated path travel to the workers as a broadcast, so every worker fixes the
same int8 scales and the job gives one answer whatever the partitioning; the first job that calibrates a
model version keeps those rows in the workspace (``score.optimize_calibration: kept``), so later jobs give
the same answer for the same row and their reused workers keep the int8 model they built.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import paths
from .config import Experiment
from .errors import ScoringError
from .scoring import ShippedModel, fitting_rows, model_input_columns

log = logging.getLogger("sparkzoo.score")

# What ``auto`` measures: the CPU paths that need no compiler and no warm-up beyond one pass.
AUTO_CANDIDATES = ("channels_last", "bf16", "int8", "int8_static")
_TIMED_PASSES = 2   # best of: these machines show CPU steal


@dataclass
class PathChoice:
    """The path the job runs, with what the check saw (logged and written to the partition manifest)."""

    path: str
    calibration: np.ndarray | None = None                       # uint8 pixel rows, for CALIBRATED paths
    accuracy: dict[str, float] = field(default_factory=dict)    # path -> accuracy on the check rows
    rows_per_s: dict[str, float] = field(default_factory=dict)  # path -> rows/s (auto only)
    rejected: dict[str, str] = field(default_factory=dict)      # path -> why auto passed it over
    measured_at: str = ""                                       # auto: when the timings were taken
    reused: bool = False                                        # auto: timings from an earlier job
    deferred: int = 0                                           # check rows left to the scoring tasks
    calibrated_ids: list[str] = field(default_factory=list)     # deferred: the calibration rows' ids
    calibrated_on: str = ""                                     # where the calibration rows came from

    def summary(self) -> dict[str, Any]:
        return {"path": self.path, "accuracy": self.accuracy, "rows_per_s": self.rows_per_s,
                "rejected": self.rejected, "measured_at": self.measured_at, "reused": self.reused,
                "checked_by": "the scoring tasks" if self.deferred else "the driver" if self.accuracy else None,
                "calibrated_on": self.calibrated_on or None}

    def worker_options(self, spark) -> dict[str, Any]:
        """What the shipped scoring function needs for this path: the calibration rows as a broadcast
        (one copy per executor, not one per task) and a digest of them for the worker's model cache."""
        if self.calibration is None:
            return {"optimize": self.path}
        return {"optimize": self.path, "calibration": spark.sparkContext.broadcast(self.calibration),
                "calibration_key": hashlib.sha1(self.calibration.tobytes()).hexdigest()}


def choose(spark, exp: Experiment, shipped: ShippedModel, df, where: str, planned=None) -> PathChoice:
    """``score.optimize`` for this model: ``none`` as is, a named path after its accuracy check, ``auto``
    the fastest path that passes (or ``none`` when none is ``optimize_min_speedup`` times faster).

    ``planned``: the splits of a pass whose tasks read and write their own files (``score_files.plan``).
    Those tasks check the accuracy themselves (``accept_checked``), before anything is committed, so a
    path that needs no timing is checked on labelled input rows while they are scored, and the driver
    only reads the calibration rows, with pyarrow, from the first row groups. Its own check was 0.8-1.0 s
    of a 12 s int8 job at 240,000 rows, every core idle meanwhile."""
    wanted = exp.score.optimize
    if wanted == "none":
        return PathChoice("none")
    if not shipped.is_classifier:
        raise ScoringError(f"score.optimize={wanted} is checked against eager accuracy, so it is for classifiers; "
                           f"{shipped.name} is a {shipped.spec['task']} model: use score.optimize=none")
    if wanted == "auto" and exp.score.device == "cuda":
        raise ScoringError("score.optimize=auto times the paths on the driver's CPU, which says nothing about GPU "
                           "executors; with score.device=cuda name a path (bf16 or channels_last)")
    from .modelpack import CALIBRATED, Predictor

    earlier = _measured_before(exp, shipped) if wanted == "auto" else None
    if planned is not None and "label" in df.columns and (wanted != "auto" or earlier):
        choice = PathChoice(wanted if wanted != "auto" else earlier["path"])
        if earlier:
            _reuse(choice, earlier)
        if choice.path != "none":
            choice.deferred = exp.score.optimize_check_rows
            if choice.path in CALIBRATED:   # the tasks leave these rows out of the check
                choice.calibration, choice.calibrated_ids, choice.calibrated_on = _calibration(
                    exp, shipped, where, lambda: _calibration_rows(exp, shipped, df, where, planned))
        log.info("score.optimize=%s -> %s; accuracy checked on up to %d labelled rows as they are scored",
                 wanted, choice.path, choice.deferred)
        return choice
    calibration, frame = _check_rows(spark, exp, shipped, df, where)
    calibrated_on = ""
    if calibration is not None and (wanted == "auto" or wanted in CALIBRATED):
        calibration, _, calibrated_on = _calibration(exp, shipped, where, lambda: (calibration, []))

    eager = Predictor.from_dir(shipped.local_dir)
    batch, labels = eager.batch(frame), frame["label"].to_numpy()
    choice = PathChoice("none", accuracy={"none": _accuracy(eager, batch, labels)})
    if wanted != "auto" or (earlier and earlier["path"] != "none"):
        path = wanted if wanted != "auto" else earlier["path"]
        fast = Predictor.from_dir(shipped.local_dir, optimize=path, calibration=calibration)
        choice.accuracy[path] = _accuracy(fast, batch, labels)   # checked on every job, timings or not
        _judge(exp, path, choice.accuracy, len(labels), "")
        choice.path = path
        if earlier:
            _reuse(choice, earlier)
    elif earlier:   # measured before: eager was the fastest that passed
        _reuse(choice, earlier)
    else:
        _measure_all(exp, shipped, eager, calibration, batch, labels, choice)
        _remember(exp, shipped, choice)
    if choice.path in CALIBRATED:
        choice.calibration, choice.calibrated_on = calibration, calibrated_on
    log.info("score.optimize=%s -> %s; accuracy on %d check rows %s%s", wanted, choice.path, len(labels),
             ", ".join(f"{k} {v:.4f}" for k, v in choice.accuracy.items()),
             (f"; rows/s (1 worker{', measured ' + choice.measured_at if choice.reused else ''}) "
              + ", ".join(f"{k} {v:,.0f}" for k, v in choice.rows_per_s.items())) if choice.rows_per_s else "")
    return choice


def _judge(exp: Experiment, path: str, accuracy: dict[str, float], rows: int, after: str) -> None:
    """The accuracy check's verdict: a path that moves accuracy by more than the tolerance is refused."""
    if abs(accuracy[path] - accuracy["none"]) > exp.score.optimize_tolerance:
        raise ScoringError(f"score.optimize={path} changes accuracy on {rows} labelled rows from "
                           f"{accuracy['none']:.4f} (eager) to {accuracy[path]:.4f}, more than "
                           f"score.optimize_tolerance={exp.score.optimize_tolerance}{after}; use score.optimize=none "
                           f"or another path")


def accept_checked(exp: Experiment, choice: PathChoice, checks: list[dict[str, int]]) -> None:
    """The scoring tasks' accuracy check (``choose(planned=...)``), summed over the tasks Spark accepted,
    judged before the job commits: a refused path leaves tonight's partition unwritten."""
    rows = sum(c["rows"] for c in checks)
    if not rows:
        raise ScoringError(f"score.optimize={choice.path} is checked against eager accuracy on labelled rows, and "
                           f"the scoring input's label column held none; nothing was committed; set "
                           f"score.optimize=none")
    choice.accuracy = {"none": sum(c["eager"] for c in checks) / rows,
                       choice.path: sum(c["fast"] for c in checks) / rows}
    _judge(exp, choice.path, choice.accuracy, rows, "; nothing was committed")
    log.info("score.optimize=%s: accuracy on %d check rows %s", choice.path, rows,
             ", ".join(f"{k} {v:.4f}" for k, v in choice.accuracy.items()))


def _machine_key(exp: Experiment, shipped: ShippedModel) -> str:
    """What an auto measurement holds for: the model version, this CPU (model and instruction set), the
    torch build, the worker thread count and the rules of the choice."""
    import platform

    import torch

    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags"))]
        cpu = "".join(sorted(set(lines)))
    except OSError:
        cpu = platform.processor()
    facts = [shipped.key, cpu, torch.__version__, exp.score.threads_per_worker, exp.score.optimize_tolerance,
             exp.score.optimize_min_speedup, AUTO_CANDIDATES]
    return hashlib.sha1(repr(facts).encode()).hexdigest()[:16]


def _version_file(exp: Experiment, shipped: ShippedModel, suffix: str = "") -> str:
    """What the workspace keeps for one model version's inference path: auto's timings, the int8 rows."""
    return paths.join(paths.workspace(exp), "inference_paths", f"{shipped.name}-v{shipped.version}{suffix}.json")


def _measured_before(exp: Experiment, shipped: ShippedModel) -> dict[str, Any] | None:
    """An earlier job's auto timings for this model version on this kind of machine: the nightly job
    times the paths once (3-4 s of the driver's time, measured) instead of every night."""
    where = _version_file(exp, shipped)
    try:
        return paths.read_json(where).get(_machine_key(exp, shipped)) if paths.exists(where) else None
    except (OSError, ValueError) as exc:   # unreadable or half-written: measure again and rewrite it
        log.warning("score.optimize=auto: ignoring %s (%s); measuring again", where, exc)
        return None


def _reuse(choice: PathChoice, earlier: dict[str, Any]) -> None:
    choice.rows_per_s, choice.rejected = earlier["rows_per_s"], earlier.get("rejected", {})
    choice.measured_at, choice.reused = earlier["measured_at"], True


def _remember(exp: Experiment, shipped: ShippedModel, choice: PathChoice) -> None:
    import datetime as dt

    choice.measured_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    where = _version_file(exp, shipped)
    try:
        known = paths.read_json(where) if paths.exists(where) else {}
    except (OSError, ValueError):
        known = {}
    known[_machine_key(exp, shipped)] = {"path": choice.path, "rows_per_s": choice.rows_per_s,
                                         "rejected": choice.rejected, "measured_at": choice.measured_at}
    try:
        paths.write_json(where, known)
    except OSError as exc:   # a read-only workspace costs the next job a measurement, not this job
        log.warning("score.optimize=auto: cannot keep the measurement in %s (%s)", where, exc)


def _calibration(exp: Experiment, shipped: ShippedModel, where: str,
                 fresh) -> tuple[np.ndarray | None, list[str], str]:
    """The calibration rows (pixels, ids) and where they came from. ``kept``: the rows the first job that
    calibrated this model version kept in the workspace, or this job's rows (``fresh()``), kept for the
    next. Calibrating on each job's own first rows gave the same row slightly different int8 scores from
    one night to the next, and a new key for the workers' model cache, so every job on reused workers
    rebuilt its int8 model (0.4 s a worker, 4% of a 240,000-row int8 job). The tasks' accuracy check still
    judges the kept scales on every job's own rows."""
    if exp.score.optimize_calibration == "per_job":
        pixels, ids = fresh()
        return pixels, ids, f"this job's input ({where})"
    kept_at = _version_file(exp, shipped, f"-calibration-{exp.score.optimize_calibration_rows}")
    try:
        if paths.exists(kept_at):
            kept = paths.read_json(kept_at)
            pixels = np.frombuffer(base64.b64decode(kept["pixels"]), np.uint8).reshape(kept["shape"]).copy()
            log.info("score.optimize: int8 scales from the calibration rows kept at %s", kept_at)
            return pixels, list(kept["ids"]), f"rows kept at {kept_at} from {kept['source']} on {kept['kept_at']}"
    except (OSError, ValueError, KeyError, TypeError) as exc:   # unreadable or half-written: calibrate again
        log.warning("score.optimize: ignoring %s (%s); calibrating on this job's input", kept_at, exc)
    pixels, ids = fresh()
    if pixels is not None:
        import datetime as dt

        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        try:
            paths.write_json(kept_at, {"shape": list(pixels.shape), "ids": ids, "source": where, "kept_at": now,
                                       "pixels": base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode()})
            log.info("score.optimize: int8 scales from this job's first %d labelled rows, kept at %s for later "
                     "jobs (delete it to calibrate again)", len(pixels), kept_at)
        except OSError as exc:   # a read-only workspace: the next job calibrates on its own rows again
            log.warning("score.optimize: cannot keep the calibration rows in %s (%s)", kept_at, exc)
    return pixels, ids, f"this job's input ({where}), kept at {kept_at}"


def _calibration_rows(exp: Experiment, shipped: ShippedModel, df, where: str,
                      planned) -> tuple[np.ndarray | None, list[str]]:
    """The first ``optimize_calibration_rows`` labelled rows that fit the model, as uint8 pixels, and their
    ids: read with pyarrow from the planned splits' row groups in order, no Spark job (0.3 s of one)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .arrow_pass import group_rows, reject_reasons, task_columns
    from .modelpack import Predictor

    n_cal = exp.score.optimize_calibration_rows
    inputs = model_input_columns(shipped.spec, df.columns)
    if "image" not in inputs:   # only pixel models calibrate (modelpack.CALIBRATED)
        return None, []
    columns = task_columns(dict(df.dtypes), inputs, ["label"])
    splits, _, fs = planned
    kept: list[pa.RecordBatch] = []
    have = 0
    for path, group, lo, hi in (g for s in splits for g in s.row_groups):
        with fs.open_input_file(path) as handle:
            for part in group_rows(pq.ParquetFile(handle), group, lo, hi, columns, n_cal):
                fits = np.array([r is None for r in reject_reasons(part, shipped.spec, inputs)], dtype=bool)
                fits &= part.column(columns.index("label")).is_valid().to_numpy(zero_copy_only=False)
                part = part.filter(pa.array(fits)).slice(0, n_cal - have)
                kept.append(part)
                have += part.num_rows
                if have >= n_cal:
                    break
        if have >= n_cal:
            break
    if have < n_cal:
        raise ScoringError(f"score.optimize={exp.score.optimize} needs {n_cal} labelled rows to calibrate on; "
                           f"{where} has {have}; set score.optimize=none")
    rows = pa.Table.from_batches(kept)
    pixels = Predictor.decode_pixels(rows.column("image").to_pandas(), shipped.spec)
    return pixels, pc.cast(rows.column("id"), pa.string()).to_pylist()


def _check_rows(spark, exp: Experiment, shipped: ShippedModel, df, where: str):
    """Calibration pixels and the labelled check frame: from the scoring input when it is labelled,
    else from the prepared test split; calibration rows come first and are not checked on."""
    from pyspark.sql import functions as F

    from .dataset import open_prepared

    if "label" in df.columns:
        sample_df = df
    else:
        try:
            sample_df = spark.read.parquet(open_prepared(exp).split_dir("test"))
        except Exception as exc:
            raise ScoringError(f"score.optimize={exp.score.optimize} needs labelled rows to check accuracy; {where} "
                               f"has no label column and the prepared test split cannot be read ({exc}); set "
                               f"score.optimize=none") from None
    good = fitting_rows(sample_df, where, shipped.spec)
    cols = model_input_columns(shipped.spec, good.columns)
    n_cal = exp.score.optimize_calibration_rows
    frame = (good.filter(F.col("label").isNotNull()).select(*cols, "label")   # calibration + check rows:
             .limit(n_cal + exp.score.optimize_check_rows).toPandas())    # small: a few thousand at most
    if len(frame) <= n_cal:
        raise ScoringError(f"score.optimize={exp.score.optimize} needs more than {n_cal} labelled rows (calibration, "
                           f"then the accuracy check); {where} has {len(frame)}; set score.optimize=none")
    from .modelpack import Predictor

    calibration = Predictor.decode_pixels(frame["image"].iloc[:n_cal], shipped.spec) if "image" in cols else None
    return calibration, frame.iloc[n_cal:].reset_index(drop=True)


def _accuracy(predictor, batch: dict[str, np.ndarray], labels: np.ndarray) -> float:
    return float((predictor.predict_batch(batch)["prediction"] == labels).mean())


def _measure_all(exp: Experiment, shipped: ShippedModel, eager, calibration, batch, labels, choice: PathChoice) -> None:
    """Time eager and each candidate with the executors' thread count; keep the fastest that passes."""
    import torch

    from .modelpack import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(exp.score.threads_per_worker)
    try:
        choice.rows_per_s["none"] = _rate(eager, batch)
        for path in AUTO_CANDIDATES:
            try:
                fast = Predictor.from_dir(shipped.local_dir, optimize=path, calibration=calibration)
            except ValueError as exc:   # e.g. a model static quantisation cannot trace
                choice.rejected[path] = str(exc)
                continue
            choice.accuracy[path] = _accuracy(fast, batch, labels)
            choice.rows_per_s[path] = _rate(fast, batch)
            if abs(choice.accuracy[path] - choice.accuracy["none"]) > exp.score.optimize_tolerance:
                choice.rejected[path] = (f"accuracy {choice.accuracy[path]:.4f} vs eager {choice.accuracy['none']:.4f}"
                                         f" (tolerance {exp.score.optimize_tolerance})")
    finally:
        torch.set_num_threads(threads)
    passing = {p: r for p, r in choice.rows_per_s.items() if p != "none" and p not in choice.rejected}
    best = max(passing, key=passing.get) if passing else None
    if best and passing[best] >= exp.score.optimize_min_speedup * choice.rows_per_s["none"]:
        choice.path = best
    elif best:
        choice.rejected[best] = (f"{passing[best]:,.0f} rows/s is under score.optimize_min_speedup="
                                 f"{exp.score.optimize_min_speedup} x eager {choice.rows_per_s['none']:,.0f}")


def _rate(predictor, batch: dict[str, np.ndarray]) -> float:
    """Best of a few timed passes over the check rows, after one untimed pass (first-call set-up)."""
    n = len(next(iter(batch.values())))
    predictor.predict_batch(batch)
    best = float("inf")
    for _ in range(_TIMED_PASSES):
        t0 = time.perf_counter()
        predictor.predict_batch(batch)
        best = min(best, time.perf_counter() - t0)
    return n / max(best, 1e-9)
