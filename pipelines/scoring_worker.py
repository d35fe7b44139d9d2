"""The scoring job's Python-worker side: the shipped model loaded once per worker, and the batch bodies.

Why a module of its own: Spark's Python workers import the module the batch function lives in, and
each worker pays for every import of that module before its first row. This one imports nothing at
the top beyond the standard library (torch, pyarrow and the model code load inside the functions), so
a worker never loads the MLflow client, pydantic or the config that the driver side (scoring.py) needs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Iterator

log = logging.getLogger("sparkzoo.score")

_LOADED: dict[tuple, Any] = {}   # per Python worker: (model key, device, optimisation, ...) -> Predictor
_SAID: set[str] = set()          # per Python worker: device lines already logged


def _device(choice: str, seen=None) -> str:
    """This task's device (pipelines/devices.py): the GPU Spark assigned it, else the executor's CUDA
    device, else CPU; logged once per worker and device, added to ``seen`` (an accumulator the driver
    reads for its one line) and reported where SPARKZOO_DEVICE_REPORT asks."""
    from . import devices

    picked = devices.for_score_task(choice)
    devices.report("score", picked, stage=devices.task_stage())
    if seen is not None:
        seen.add({devices.seen_as(picked)})
    said = picked.note.split(": ", 1)[-1]   # without "score task N"
    if said not in _SAID:
        _SAID.add(said)
        log.info("%s", picked.note)
    return picked.device


def _unpacked(model_file: str) -> str:
    """The shipped zip, unpacked once per executor next to it; concurrent workers race safely by rename."""
    import shutil
    import zipfile

    from pyspark import SparkFiles

    archive = SparkFiles.get(model_file)
    target = archive[: -len(".zip")] + ".unpacked"
    if not os.path.isdir(target):
        tmp = tempfile.mkdtemp(dir=os.path.dirname(archive), prefix=".unpacking-")
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        try:
            os.rename(tmp, target)
        except OSError:   # another worker of this executor got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(target, "artifacts")   # the executor's local copy


def worker_predictor(model_file: str, options: dict[str, Any]):
    """The shipped model on this worker's device, loaded once per Python worker and kept: registered
    versions are immutable, so (registry, name, version) names the weights, and a worker reused by the
    next job keeps its loaded (and, with optimize=compile, compiled) model."""
    from .modelpack import SEQUENCE_CHUNK, image_chunk_for

    device = _device(options["device"], options.get("device_seen"))
    chunk = int(options.get("chunk") or SEQUENCE_CHUNK)
    image_chunk = image_chunk_for(options["optimize"], options.get("image_chunk"))
    key = (options.get("model_key") or model_file, device, options["optimize"], chunk, image_chunk,
           options.get("calibration_key"))
    pred = _LOADED.get(key)
    if pred is None:
        import torch

        from . import plugins
        from .modelpack import Predictor

        plugins.load(options.get("plugins") or [], "the scoring job")   # a plugin task's model needs its class

        torch.set_num_threads(int(options["threads"]))
        calibration = options["calibration"].value if options.get("calibration") is not None else None
        folder = options.get("model_dir") or _unpacked(model_file)   # model_dir: the in-process engine's copy
        try:
            pred = _LOADED[key] = Predictor.from_dir(folder, device=device, optimize=options["optimize"],
                                                     chunk=chunk, image_chunk=image_chunk, calibration=calibration)
        except ValueError as exc:   # e.g. a model static quantisation cannot trace: one line on the driver
            if options["optimize"] == "none":
                raise
            from .errors import ScoringError

            raise ScoringError(f"score.optimize={options['optimize']}: {exc}") from None
    return pred


def eager_predictions(batch: Any, model_file: str, options: dict[str, Any]) -> Any:
    """The eager model's predictions for ``batch``, on the worker that scores it with an optimised path
    (its accuracy check, ``inference_path.choose(planned=...)``); the eager copy is loaded once per worker."""
    from .arrow_rows import input_batch

    eager = worker_predictor(model_file, {**options, "optimize": "none", "calibration": None,
                                          "calibration_key": None})
    return eager.predict_batch(input_batch(batch, eager.spec, eager.input_columns))["prediction"]


def score_batches(batches: Iterator[Any], model_file: str, keep: list[str],
                  options: dict[str, Any] | None = None) -> Iterator[Any]:
    """mapInPandas body: one model per worker, whole-batch inference, numpy outputs."""
    from .modelpack import outputs_frame

    options = options or {"device": "auto", "threads": 1, "optimize": "none"}
    predictor = worker_predictor(model_file, options)
    rejects = options.get("reject_counter")
    for frame in batches:
        if "_reject" in frame.columns:   # rows the native filter flagged: counted for the driver, not scored
            bad = frame["_reject"].notna().to_numpy()
            if bad.any():
                rejects.add(int(bad.sum()))
                frame = frame[~bad]
        if frame.empty:
            continue
        result = outputs_frame(predictor.predict_batch(predictor.batch(frame)))
        result.insert(0, "id", frame["id"].to_numpy())
        for col in keep:
            result[col] = frame[col].to_numpy()
        yield result


def score_arrow_batches(batches: Iterator[Any], model_file: str, keep: list[str], schema: Any,
                        options: dict[str, Any] | None = None) -> Iterator[Any]:
    """mapInArrow body: Arrow in, Arrow out (pipelines/arrow_rows.py), one model per worker.

    Pixels reach the model as a view of the Arrow buffer and the outputs leave as whole buffers, so the
    only per-row Python work left is what a task does per row itself (tokenising text, decoding
    sequences)."""
    import pyarrow.compute as pc

    from .arrow_rows import input_batch, output_batch

    options = options or {"device": "auto", "threads": 1, "optimize": "none"}
    predictor = worker_predictor(model_file, options)
    rejects = options.get("reject_counter")
    # ``observer``: (factory, its argument, accumulator) from the driver, e.g. tonight's drift profile
    # (drift_stream.PartitionProfile): it sees every scored batch, and what it finds goes back keyed by
    # partition. Handed in, not imported, so this module knows nothing of what observes it.
    observer = options.get("observer")
    profile = observer[0](observer[1]) if observer is not None else None
    for batch in batches:
        names = batch.schema.names
        if "_reject" in names:   # rows the native filter flagged: counted for the driver, not scored
            flag = batch.column(names.index("_reject"))
            if flag.null_count != len(flag):
                bad = len(flag) - flag.null_count
                rejects.add(bad)
                batch = batch.filter(pc.is_null(flag))
        if batch.num_rows == 0:
            continue
        out = predictor.predict_batch(input_batch(batch, predictor.spec, predictor.input_columns))
        if profile is not None:
            profile.add(batch, out)
        yield output_batch(out, batch.column(names.index("id")), [batch.column(names.index(c)) for c in keep],
                           schema)
    if profile is not None:   # keyed by partition: a task run again replaces its entry
        from pyspark import TaskContext

        observer[2].add({TaskContext.get().partitionId(): profile.finish()})

