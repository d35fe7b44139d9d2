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
    cols = inputs
    if cols == ["token_ids"]:
        ids = col("token_ids")
        lengths = pc.fill_null(pc.list_value_length(ids), -1).to_numpy(zero_copy_only=False)
        holes = np.zeros(len(ids), dtype=bool)
        flat_nulls = ids.flatten().is_null().to_numpy(zero_copy_only=False)
        if flat_nulls.any():
            holes[pc.list_parent_indices(ids).to_numpy()[flat_nulls]] = True
        rules += [(null("token_ids"), "null_token_ids"), (lengths == 0, "empty_sequence: no tokens"),
                  (holes, "null_token: a token id is null")]
    elif cols == ["text"]:
        blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim(col("text"), " ")), 0), False).to_numpy(zero_copy_only=False)
        rules += [(null("text"), "null_text"), (blank, "empty_text")]
    elif cols == ["features"]:
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
                                           compression="snappy")
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
           done: Callable[[int], None], model_file: str = "") -> tuple[int, int]:
    """Check, score and write every batch (id first, then ``inputs``, ``keep`` and any shape columns),
    calling ``done`` with the rows handled so far; ``writers``: (scored, rejects), each with ``schema``
    and ``write``. Returns (right, labelled): the predictions that match a label, and the rows that have
    one (a null label counts in neither, as Spark's ``avg`` of the comparison skips it). ``model_file``:
    the model Spark shipped (``options["model_dir"]`` names an unpacked copy instead)."""
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
            if profile is not None:
                profile.add(batch, outputs)
        done(handled)
    return right, labelled


