"""One pass over Arrow batches of the scoring input: per-row reject reasons, the model, the output files.

Why a module of its own: two places run this loop without Spark's JVM between the files and the model:
the in-process engine (pipelines/score_in_process.py, one process, no JVM) and the Spark workers that
read and write their own Parquet files (``score.file_io``, pipelines/score_files.py). A Python worker
imports this module before its first row, so it imports numpy and pyarrow only: the scoring library,
MLflow and the config stay on the driver.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

_ARROW_TYPES = {"tinyint": pa.int8(), "smallint": pa.int16(), "int": pa.int32(), "integer": pa.int32(),
                "bigint": pa.int64(), "long": pa.int64(), "float": pa.float32(), "double": pa.float64(),
                "boolean": pa.bool_(), "string": pa.string(), "binary": pa.binary()}


def reject_reasons(batch: pa.RecordBatch, spec: dict[str, Any], inputs: list[str] | None = None) -> np.ndarray:
    """Per row: None when it fits the model, else why not; ``scoring.reject_reason``'s rules and words
    (its first matching rule wins, so they are applied here from the last to the first). ``inputs``: the
    model's input columns (``scoring.model_input_columns``)."""
    import pyarrow.compute as pc

    names = batch.schema.names
    col = lambda c: batch.column(names.index(c))   # noqa: E731
    null = lambda c: col(c).is_null().to_numpy(zero_copy_only=False)   # noqa: E731
    rules: list[tuple[np.ndarray, Any]] = [(null("id"), "null_id")]
    if inputs is None:   # the driver passes them to the workers, who need not import the scoring library
        from .scoring import model_input_columns

        inputs = model_input_columns(spec, names)
    if inputs == ["token_ids"]:
        ids = col("token_ids")
        lengths = pc.fill_null(pc.list_value_length(ids), -1).to_numpy(zero_copy_only=False)
        holes = np.zeros(len(ids), dtype=bool)
        flat_nulls = ids.flatten().is_null().to_numpy(zero_copy_only=False)
        if flat_nulls.any():
            holes[pc.list_parent_indices(ids).to_numpy()[flat_nulls]] = True
        rules += [(null("token_ids"), "null_token_ids"), (lengths == 0, "empty_sequence: no tokens"),
                  (holes, "null_token: a token id is null")]
    elif inputs == ["text"]:
        blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim(col("text"), " ")), 0), False).to_numpy(zero_copy_only=False)
        rules += [(null("text"), "null_text"), (blank, "empty_text")]
    elif inputs == ["features"]:
        per = 4 * int(spec["shape"]["n_mels"])
        size = pc.fill_null(pc.binary_length(col("features")), 0).to_numpy()
        rules += [(null("features"), "null_features"), (size == 0, "empty_features: no frames"),
                  (size % per != 0, lambda i: f"wrong_size: {size[i]} bytes are not whole frames of {per // 4} "
                                              f"float32 values")]
    else:
        shape = spec["shape"]
        per = shape["height"] * shape["width"] * shape["channels"]
        size = pc.fill_null(pc.binary_length(col("image")), per).to_numpy()
        rules += [(null("image"), "null_image"),
                  (size != per, lambda i: f"wrong_size: {size[i]} bytes, model expects {per}")]
        dims = [c for c in ("height", "width", "channels") if c in names]
        if dims:
            values = {c: col(c).to_pylist() for c in dims}
            wrong = np.array([any(values[c][i] is None or values[c][i] != shape[c] for c in dims)
                              for i in range(batch.num_rows)], dtype=bool)
            expected = "x".join(str(shape[c]) for c in dims)
            rules.append((wrong, lambda i: "wrong_shape: " + "x".join(
                "null" if values[c][i] is None else str(values[c][i]) for c in dims) + f", model expects {expected}"))
    reasons = np.full(batch.num_rows, None, dtype=object)
    for hit, why in reversed(rules):
        for i in np.flatnonzero(hit):
            reasons[i] = why(i) if callable(why) else why
    return reasons


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth a Parquet dictionary: not the row id, floats, lists or bytes, whose values
    rarely repeat. A dictionary on every column (pyarrow's default, and Spark's) tried and abandoned one
    for the id, the confidence and the probabilities of each row: 0.63 us a scored row against 0.20 us,
    and files 74 bytes a row against 50 (Fashion-MNIST predictions, 120,000 rows)."""
    def repeats(field: pa.Field) -> bool:
        t = field.type
        return field.name != "id" and not (pa.types.is_floating(t) or pa.types.is_list(t)
                                            or pa.types.is_large_list(t) or pa.types.is_binary(t)
                                            or pa.types.is_large_binary(t) or pa.types.is_fixed_size_list(t))

    return [f.name for f in schema if repeats(f)]


class BatchFile:
    """One Parquet file, created at the first non-empty batch (no rows: no file, as Spark leaves it)."""

    def __init__(self, filesystem, folder: str, schema: pa.Schema, prefix: str = "part-00000") -> None:
        self.fs, self.folder, self.schema, self.prefix = filesystem, folder, schema, prefix
        self.writer, self.rows, self.name = None, 0, None

    def write(self, batch: pa.RecordBatch) -> None:
        import pyarrow.parquet as pq

        if batch.num_rows == 0:
            return
        if self.writer is None:
            self.fs.create_dir(self.folder, recursive=True)
            self.name = f"{self.prefix}-{uuid.uuid4()}.c000.snappy.parquet"
            self.writer = pq.ParquetWriter(f"{self.folder}/{self.name}", self.schema, filesystem=self.fs,
                                           compression="snappy", use_dictionary=dictionary_columns(self.schema))
        self.writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> str | None:
        """The file's name in its folder, or None when no row came."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return self.name


def with_columns(batch: pa.RecordBatch, extra: dict[str, pa.Array], schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([*batch.columns, *extra.values()], schema=schema)


def stream(batches: Iterator[pa.RecordBatch], spec: dict[str, Any], inputs: list[str], keep: list[str],
           out_schema: pa.Schema, options: dict[str, Any], writers, name: str, stamp, profile,
           done: Callable[[int], None], model_file: str = "", check: dict[str, int] | None = None) -> tuple[int, int]:
    """Check, score and write every batch (id first, then ``inputs``, ``keep`` and any shape columns),
    calling ``done`` with the rows handled so far; ``writers``: (scored, rejects), each with ``schema``
    and ``write``. Returns (right, labelled): the predictions that match a label, and the rows that have
    one (a null label counts in neither, as Spark's ``avg`` of the comparison skips it). ``model_file``:
    the model Spark shipped (``options["model_dir"]`` names an unpacked copy instead). ``check``: the
    optimised path's accuracy check (``inference_path.accept_checked``): the first ``budget`` scored rows
    also go through the eager model, and ``rows``, ``fast`` and ``eager`` count the labelled ones and
    each model's matches."""
    import pyarrow.compute as pc

    from .scoring_worker import score_arrow_batches

    scored_writer, rejects_writer = writers
    right = labelled = handled = 0
    for batch in batches:
        handled += batch.num_rows
        ids = batch.column(0)
        if not pa.types.is_string(ids.type):
            batch = pa.RecordBatch.from_arrays([pc.cast(ids, pa.string()), *batch.columns[1:]],
                                               names=batch.schema.names)
        reasons = reject_reasons(batch, spec, inputs)
        bad = np.array([r is not None for r in reasons], dtype=bool)
        if bad.any():
            rows = batch.filter(pa.array(bad))
            rejects_writer.write(pa.RecordBatch.from_arrays(
                [rows.column(0), pa.array(reasons[bad].tolist(), pa.string()),
                 pa.repeat(pa.scalar(name, pa.string()), rows.num_rows)], schema=rejects_writer.schema))
            batch = batch.filter(pa.array(~bad))
        if batch.num_rows == 0:
            done(handled)
            continue
        for got in score_arrow_batches(iter([batch]), model_file, keep, out_schema, options):
            n = got.num_rows
            scored_writer.write(with_columns(got, {"model_name": pa.repeat(pa.scalar(name, pa.string()), n),
                                                   "scored_at": pa.repeat(stamp, n)}, scored_writer.schema))
            names = got.schema.names
            outputs = {c: got.column(names.index(c)).to_numpy(zero_copy_only=False)
                       for c in ("prediction", "confidence") if c in names}
            if keep and "prediction" in outputs:
                label = got.column(names.index("label"))
                known = label.is_valid().to_numpy(zero_copy_only=False)
                values = label.to_numpy(zero_copy_only=False)
                right += int((outputs["prediction"][known] == values[known]).sum())
                labelled += int(known.sum())
                if check is not None and check["budget"] > 0:
                    _count_checked(check, batch, got, known, values, outputs["prediction"], model_file, options)
            if profile is not None:
                profile.add(batch, outputs)
        done(handled)
    return right, labelled


def _count_checked(check: dict[str, Any], batch: pa.RecordBatch, got: pa.RecordBatch, known: np.ndarray,
                   labels: np.ndarray, fast: np.ndarray, model_file: str, options: dict[str, Any]) -> None:
    """The first rows of ``batch`` that have a label and did not calibrate the path, up to the check's
    budget, scored by the eager model too: each model's matches added to ``check``."""
    import pyarrow.compute as pc

    from .scoring_worker import eager_predictions

    sure = known.copy()
    if check.get("skip") is not None:   # the calibration rows: not checked on
        sure &= ~pc.is_in(got.column(0), value_set=check["skip"]).to_numpy(zero_copy_only=False)
    k = min(len(sure), int(np.searchsorted(np.cumsum(sure), check["budget"])) + 1)
    sure = sure[:k]
    eager = eager_predictions(batch.slice(0, k), model_file, options)
    check["budget"] -= int(sure.sum())
    check["rows"] += int(sure.sum())
    check["fast"] += int((fast[:k][sure] == labels[:k][sure]).sum())
    check["eager"] += int((eager[sure] == labels[:k][sure]).sum())


def arrow_schema(ddl: str) -> pa.Schema:
    """Spark DDL of scalars and arrays of them (a task's ``output_schema``) -> the Arrow schema Spark's
    ``mapInArrow`` would use."""
    def kind(text: str) -> pa.DataType:
        text = text.strip()
        if text.startswith("array<") and text.endswith(">"):
            return pa.list_(kind(text[len("array<"):-1]))
        return _ARROW_TYPES[text]

    return pa.schema([pa.field(n, kind(t)) for n, t in (part.strip().split(" ", 1) for part in ddl.split(","))])


def task_columns(types: dict[str, str], inputs: list[str], keep: list[str]) -> list[str]:
    """What a task reads: id, the model's inputs, the kept columns and the shape columns the checks use."""
    dims = [c for c in ("height", "width", "channels") if c in types and "image" in inputs]
    return ["id", *inputs, *keep, *dims]


def output_schemas(spec: dict[str, Any], types: dict[str, str], keep: list[str]):
    """(the model's output schema, the predictions file's schema, the rejects file's schema), in Arrow."""
    import datetime as dt

    from .score_job import REJECT_SCHEMA
    from .scoring import output_schema

    out_schema = arrow_schema(output_schema(spec, types, keep))
    scored = out_schema.append(pa.field("model_name", pa.string())).append(
        pa.field("scored_at", pa.timestamp("us", tz="UTC")))
    stamp = pa.scalar(dt.datetime.now(dt.timezone.utc), type=pa.timestamp("us", tz="UTC"))
    return out_schema, scored, arrow_schema(REJECT_SCHEMA.rsplit(", model_version", 1)[0]), stamp


def group_rows(parquet, group: int, lo: int, hi: int, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Rows ``lo``..``hi`` of one row group of an open ``pq.ParquetFile``, in batches: a split given a range
    of a group keeps only that range, and reading stops at its end (a group may hold a million rows)."""
    at = 0   # this group's rows so far
    for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns):
        start, end = max(lo - at, 0), min(hi - at, batch.num_rows)
        at += batch.num_rows
        if end > start:
            yield batch if (start, end) == (0, batch.num_rows) else batch.slice(start, end - start)
        if at >= hi:
            break


def score_files_task(parts: Iterator[list[tuple[str, int, int, int]]], job: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One Spark task of the pass that reads and writes its own files (pipelines/score_files.py): its row
    groups read with pyarrow, scored by the in-process engine's loop, written into this attempt's own
    staging folder; yields one summary for the driver (rows, counts, the file names).

    The drift profile is kept per task and sent back keyed by partition, as ``score_arrow_batches`` does."""
    import time

    import pyarrow.parquet as pq
    from pyspark import TaskContext

    began = time.time()
    ctx = TaskContext.get()
    task = ctx.partitionId()
    fs, staging = job["staging"]
    folder = f"{staging}/task-{task:05d}-{ctx.attemptNumber()}"
    writers = (BatchFile(fs, f"{folder}/scored", job["scored_schema"], prefix=f"part-{task:05d}"),
               BatchFile(fs, f"{folder}/rejects", job["rejects_schema"], prefix=f"part-{task:05d}"))
    options = dict(job["options"])
    observer = options.pop("observer", None)
    profile = observer[0](observer[1]) if observer is not None else None
    read = [0]

    def batches():
        for groups in parts:
            handles: dict[str, Any] = {}
            opened: dict[str, Any] = {}
            try:
                for path, group, lo, hi in groups:
                    if path not in opened:
                        handles[path] = job["input_fs"].open_input_file(path)
                        opened[path] = pq.ParquetFile(handles[path])
                    yield from group_rows(opened[path], group, lo, hi, job["columns"], job["batch_size"])
            finally:
                for handle in handles.values():
                    handle.close()

    check = ({"budget": job["check_rows"], "rows": 0, "fast": 0, "eager": 0, "skip": job.get("check_skip")}
             if job.get("check_rows") else None)
    right, labelled = stream(batches(), job["spec"], job["inputs"], job["keep"], job["out_schema"], options,
                             writers, job["name"], job["stamp"], profile, lambda n: read.__setitem__(0, n),
                             model_file=job["model_file"], check=check)
    names = [w.close() for w in writers]
    from . import faults

    faults.maybe_kill("score.files")   # tests only: dies with its files written, so the retry must not add them twice
    if profile is not None:
        observer[2].add({task: profile.finish()})
    yield {"folder": folder, "scored_file": names[0], "rejects_file": names[1], "rows": read[0],
           "began": began, "ended": time.time(),
           "scored": writers[0].rows, "rejected": writers[1].rows, "right": right, "labelled": labelled,
           "check": {k: v for k, v in check.items() if k != "skip"} if check else None}
