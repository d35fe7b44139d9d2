"""The MLflow tracking server stopped in the middle of a real training and started again: shared by the
outage tests on `sparkzoo ui` (SQLite; tests/test_reliability_faults.py) and on the production stack
(PostgreSQL + S3; tests/test_production_mlflow.py), so both exercise the same sequence."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable


def train_through_outage(exp, spark, viewer, kill: Callable[[], None], start: Callable[[], None], *,
                         down_s: float = 0.0) -> tuple[Any, str, list[int]]:
    """Train ``exp``; once epoch 1's val_accuracy is on the server, ``kill`` it, wait until rank 0 keeps a
    later epoch's metrics in the outbox (and ``down_s`` more), then ``start`` it again.

    Returns (TrainResult, run id, the steps that waited in the outbox). Training owns the main thread
    (Horovod sets signal handlers), the outage runs beside it; an error there is raised here."""
    import pyspark.ml.param  # noqa: F401  (see below)

    from sparkzoo.pipelines import track, train

    # mlflow's Param() looks at pyspark.ml.param whenever "pyspark.ml" is in sys.modules: if the training
    # (main thread) is importing pyspark.ml at that moment, the watcher's search_runs sees a half-imported
    # module and fails ("cannot access submodule 'ml'"). Imported here first, it is complete for both.
    seen: dict[str, Any] = {}
    stop = threading.Event()

    def outage() -> None:
        try:
            run_id = None
            while not stop.is_set() and (run_id is None or not viewer.get_metric_history(run_id, "val_accuracy")):
                time.sleep(0.2)
                found = viewer.get_experiment_by_name(exp.mlflow.experiment)
                runs = viewer.search_runs([found.experiment_id]) if found else []
                run_id = runs[0].info.run_id if runs else None
            kill()
            seen["run_id"] = run_id
            kept = Path(track.outbox(exp, run_id).dir) / "metrics.jsonl"
            while not stop.is_set() and not (kept.exists() and '"val_accuracy"' in kept.read_text()):
                time.sleep(0.2)
            time.sleep(down_s)          # training goes on meanwhile
            seen["steps_kept"] = sorted({json.loads(ln)["step"] for ln in kept.read_text().splitlines()})
            start()                     # the same stores, the same port
        except BaseException as exc:    # reported by the main thread
            seen["error"] = exc

    watcher = threading.Thread(target=outage, daemon=True)
    watcher.start()
    try:
        result = train.run(exp, spark)
    finally:
        stop.set()
        watcher.join(120)
    if "error" in seen:
        raise AssertionError(f"the outage beside the training failed: {seen['error']!r}") from seen["error"]
    return result, seen["run_id"], seen["steps_kept"]
