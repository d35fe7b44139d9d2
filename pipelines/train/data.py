"""Parquet shard -> torch-ready numpy batches, for one rank, without ever holding the dataset.

The unit of work is a Parquet row group. Row groups are dealt to ranks round-robin from the manifest's
file list, so every rank knows its shard size before reading a byte, all ranks run the same number of
steps (the smallest shard sets it, so nobody waits at an allreduce for a rank that ran out), and each
rank checks that its reader delivered exactly the rows the manifest promises. A background thread
reads and decodes ahead; decoding takes the Arrow buffers as numpy views, with no per-row Python.

Two readers share this contract: ``pyarrow`` (default, measured faster) and ``petastorm``
(``make_batch_reader`` with ``cur_shard``/``shard_count``), for users who arrive with petastorm datasets.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Piece:
    """One row group of one file: the smallest shard unit."""

    path: str
    row_group: int
    rows: int


def all_pieces(files: list[dict[str, Any]]) -> list[Piece]:
    return [Piece(f["path"], i, int(n)) for f in files for i, n in enumerate(f["row_groups"])]


def shard(files: list[dict[str, Any]], rank: int, size: int) -> list[Piece]:
    """Row groups dealt round-robin: disjoint across ranks, together the whole split."""
    return all_pieces(files)[rank::size]


def shard_rows(files: list[dict[str, Any]], size: int) -> list[int]:
    return [sum(p.rows for p in shard(files, r, size)) for r in range(size)]


def steps_per_epoch(files: list[dict[str, Any]], size: int, batch_size: int, cap: int | None = None) -> int:
    """Steps every rank runs: the smallest shard's full batches (so ranks never wait on each other)."""
    steps = min(shard_rows(files, size)) // batch_size
    return min(steps, cap) if cap else steps


def _fixed_width(table: pa.Table, name: str, per: int, what: str) -> np.ndarray:
    """A binary column whose rows all hold ``per`` bytes -> uint8 (n, per), a view of the Arrow buffer."""
    col = table.column(name).combine_chunks()
    n = len(col)
    if col.null_count:
        raise DataError(f"{col.null_count} rows have a null {name}; the prepared data is damaged (or has no {name}s "
                        f"for this task), prepare it again")
    _, offsets_buf, data_buf = col.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=col.offset * 4)
    if n and not np.all(np.diff(offsets) == per):
        raise DataError(f"{name} sizes differ from the manifest's {what}; prepare the data again")
    return np.frombuffer(data_buf, dtype=np.uint8, count=n * per, offset=int(offsets[0])).reshape(n, per)


def decode_images(table: pa.Table, height: int, width: int, channels: int) -> Batch:
    """``image`` (and ``mask``) binary columns -> uint8 (n, h, w, c) and (n, h, w), views of Arrow data."""
    return decode_table(table, {"height": height, "width": width, "channels": channels})


def _padded_lists(table: pa.Table, name: str) -> Batch:
    """A list<int> column -> int64 (n, longest) padded with 0 (``<pad>``) plus the true lengths.

    One scatter through a boolean mask over the flat Arrow values: no per-row Python.
    """
    col = table.column(name).combine_chunks()
    if col.null_count:
        raise DataError(f"{col.null_count} rows have a null {name}; the prepared data is damaged, prepare it again")
    offsets = np.asarray(col.offsets)
    lengths = np.diff(offsets).astype(np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    values = np.asarray(col.values)[offsets[0]:offsets[-1]] if len(lengths) else np.zeros(0, np.int64)
    out = np.zeros((len(lengths), max(width, 1)), dtype=np.int64)
    out[np.arange(out.shape[1]) < lengths[:, None]] = values
    return {name: out, f"{name}__len": lengths}


def _padded_frames(table: pa.Table, name: str, n_mels: int) -> Batch:
    """A binary column of float32 (frames x n_mels) rows -> float32 (n, most frames, n_mels), 0-padded."""
    col = table.column(name).combine_chunks()
    if col.null_count:
        raise DataError(f"{col.null_count} rows have null {name}; the prepared data is damaged, prepare it again")
    _, offsets_buf, data_buf = col.buffers()
    n = len(col)
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=col.offset * 4).astype(np.int64)
    per_frame = 4 * n_mels
    nbytes = np.diff(offsets)
    if n and np.any(nbytes % per_frame):
        raise DataError(f"{name} rows are not whole frames of {n_mels} float32 values; prepare the data again")
    frames = nbytes // per_frame
    flat = np.frombuffer(data_buf, dtype=np.float32, count=int(nbytes.sum()) // 4, offset=int(offsets[0]))
    out = np.zeros((n, max(int(frames.max()) if n else 0, 1), n_mels), dtype=np.float32)
    out[np.arange(out.shape[1]) < frames[:, None]] = flat.reshape(-1, n_mels)
    return {name: out, f"{name}__len": frames}


def decode_table(table: pa.Table, shape: dict[str, int]) -> Batch:
    """Prepared columns -> numpy arrays by their Arrow type, whatever the modality.

    ``image``/``mask`` are fixed-size pixels (views of the Arrow buffer); ``features`` are log-mel frames;
    list<int> columns (``token_ids``, ``target_ids``, ``caption_ids``) are padded to the chunk's longest
    row, with the true lengths beside them as ``<name>__len``; strings stay Python objects (a slice column
    such as ``speaker``, read for evaluation only); everything else is a numeric column.
    Ragged arrays from different chunks are padded again when batches are assembled (``_concat``).
    """
    out: Batch = {}
    for name in table.column_names:
        kind = table.schema.field(name).type
        if name == "image":
            h, w, c = shape["height"], shape["width"], shape["channels"]
            out["image"] = _fixed_width(table, "image", h * w * c, f"{h}x{w}x{c}").reshape(-1, h, w, c)
        elif name == "mask":
            h, w = shape["height"], shape["width"]
            out["mask"] = _fixed_width(table, "mask", h * w, f"{h}x{w} mask").reshape(-1, h, w)
        elif name == "features":
            out.update(_padded_frames(table, name, int(shape["n_mels"])))
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            out.update(_padded_lists(table, name))
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):   # a grouping column (test slices)
            out[name] = table.column(name).to_numpy(zero_copy_only=False).astype(object)
        else:
            out[name] = table.column(name).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return out


def _pad_to(a: np.ndarray, width: int) -> np.ndarray:
    if a.ndim < 2 or a.shape[1] == width:
        return a
    pad = [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad)


def _concat(parts: list[Batch]) -> Batch:
    """Stack chunks; ragged (padded) sequence arrays are padded to the widest chunk first."""
    out: Batch = {}
    for k in parts[0]:
        arrays = [p[k] for p in parts]
        if arrays[0].ndim >= 2 and k not in ("image", "mask"):
            width = max(a.shape[1] for a in arrays)
            arrays = [_pad_to(a, width) for a in arrays]
        out[k] = np.concatenate(arrays)
    return out


def _take(batch: Batch, idx: np.ndarray | slice) -> Batch:
    return {k: v[idx] for k, v in batch.items()}


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))


class Rebatcher:
    """Decoded chunks in, fixed-size batches out, optionally mixing rows inside a seeded buffer.

    A class rather than one generator so a resume can start it in the middle of an epoch: its whole
    state is the rows held back (``pending``), their count, the batches emitted and the generator
    ``rng``, all of which ``ShardReader.epoch(..., skip=k)`` rebuilds without re-reading what came before.

    ``sort_key`` (a length column) buckets by length: the shuffled buffer is sorted by it, cut into
    batches, and the batches are yielded in a seeded random order, so a batch pads to similar lengths
    while the epoch still mixes short and long sequences.
    """

    def __init__(self, batch_size: int, *, shuffle_buffer: int = 0, rng: np.random.Generator | None = None,
                 drop_last: bool = True, max_batches: int | None = None, sort_key: str | None = None) -> None:
        self.batch_size, self.shuffle_buffer, self.rng = batch_size, shuffle_buffer, rng
        self.drop_last, self.max_batches, self.sort_key = drop_last, max_batches, sort_key
        self.pending: list[Batch] = []
        self.held = 0
        self.emitted = 0
        self.fill = max(shuffle_buffer, batch_size)

    def done(self) -> bool:
        return self.max_batches is not None and self.emitted >= self.max_batches

    def feed(self, chunk: Batch) -> Iterator[Batch]:
        self.pending.append(chunk)
        self.held += _rows(chunk)
        if self.held >= self.fill:
            yield from self._drain(final=False)

    def finish(self) -> Iterator[Batch]:
        if self.held and not self.done():
            yield from self._drain(final=True)

    def _drain(self, final: bool) -> Iterator[Batch]:
        held, batch_size = self.held, self.batch_size
        buf = _concat(self.pending)
        if self.rng is not None and self.shuffle_buffer:
            buf = _take(buf, self.rng.permutation(held))
        usable = held if final else held - held % batch_size
        starts = list(range(0, usable, batch_size))
        if self.sort_key is not None and self.rng is not None:
            order = np.argsort(buf[self.sort_key][:usable], kind="stable")
            buf = {k: np.concatenate([v[:usable][order], v[usable:]]) for k, v in buf.items()}
            starts = [starts[i] for i in self.rng.permutation(len(starts))]
        for start in starts:
            if self.done():
                return
            end = start + batch_size
            if end > usable and self.drop_last:
                continue
            self.emitted += 1
            yield _take(buf, slice(start, min(end, usable)))
        rest = held - usable if not final else 0
        self.pending = [_take(buf, slice(held - rest, held))] if rest else []
        self.held = rest


def rebatch(chunks: Iterator[Batch], batch_size: int, *, shuffle_buffer: int = 0, rng: np.random.Generator | None = None,
            drop_last: bool = True, max_batches: int | None = None, sort_key: str | None = None,
            state: Rebatcher | None = None, drop: int = 0) -> Iterator[Batch]:
    """Turn decoded chunks into fixed-size batches (see ``Rebatcher``).

    ``state``: continue a rebatcher rebuilt for a resume (its settings win); ``drop``: batches made but not
    yielded, the part of a resumed epoch already trained.
    """
    rb = state or Rebatcher(batch_size, shuffle_buffer=shuffle_buffer, rng=rng, drop_last=drop_last,
                            max_batches=max_batches, sort_key=sort_key)

    def out(batches: Iterator[Batch]) -> Iterator[Batch]:
        nonlocal drop
        for b in batches:
            if drop > 0:
                drop -= 1
                continue
            yield b

    for chunk in chunks:
        if rb.done():
            return
        yield from out(rb.feed(chunk))
    yield from out(rb.finish())


def prefetch(gen: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run a generator in a background thread, ``depth`` items ahead; errors surface in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in gen:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer thread
            q.put(exc)

    thread = threading.Thread(target=work, name="sparkzoo-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class ShardReader:
    """Reads one rank's shard of one split as batches; see the module docstring for the contract."""

    def __init__(self, files: list[dict[str, Any]], rank: int, size: int, *, shape: dict[str, int],
                 batch_size: int, columns: tuple[str, ...] = ("image", "label"), seed: int = 0,
                 shuffle_buffer: int = 0, prefetch_batches: int = 4, reader: str = "pyarrow",
                 dataset_dir: str | None = None, sort_key: str | None = None) -> None:
        self.files, self.rank, self.size = files, rank, size
        self.sort_key = sort_key
        self.pieces = shard(files, rank, size)
        self.expected_rows = sum(p.rows for p in self.pieces)
        self.shape = shape
        self.batch_size = batch_size
        self.columns = columns
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.prefetch_batches = prefetch_batches
        self.reader = reader
        self.dataset_dir = dataset_dir
        self.pieces_read = 0   # row groups read since the last epoch() call (resume cost, tests)
        self._decode: Callable[[pa.Table], Batch] = lambda t: decode_table(t, shape)

    # -- raw chunks ------------------------------------------------------------------------------
    def _pyarrow_chunks(self, order: list[Piece]) -> Iterator[Batch]:
        from .. import paths

        handles: dict[str, pq.ParquetFile] = {}
        try:
            for piece in order:
                pf = handles.get(piece.path)
                if pf is None:
                    fs, inner = paths.filesystem(piece.path)
                    pf = handles[piece.path] = pq.ParquetFile(fs.open_input_file(inner))
                self.pieces_read += 1
                yield self._decode(pf.read_row_group(piece.row_group, columns=list(self.columns)))
        finally:
            for pf in handles.values():
                pf.close()

    def _petastorm_chunks(self, epoch: int, shuffle: bool) -> Iterator[Batch]:
        from petastorm import make_batch_reader

        from .. import paths

        url = self.dataset_dir if paths.is_uri(self.dataset_dir or "") else "file://" + str(self.dataset_dir)
        with make_batch_reader(url, schema_fields=list(self.columns), cur_shard=self.rank, shard_count=self.size,
                               shuffle_row_groups=shuffle, seed=self.seed + epoch, num_epochs=1,
                               reader_pool_type="dummy") as reader:
            for nt in reader:
                cols = {name: getattr(nt, name) for name in self.columns}
                table = pa.table({name: pa.array(list(v)) if name in ("image", "mask", "features") else pa.array(
                    [list(x) for x in v] if getattr(v, "dtype", None) == object else v) for name, v in cols.items()})
                yield self._decode(table)

    def _checked(self, chunks: Iterator[Batch], expected: int) -> Iterator[Batch]:
        """Guard against readers that end early or late (petastorm's empty-shard trap)."""
        seen = 0
        for chunk in chunks:
            seen += _rows(chunk)
            yield chunk
        if seen != expected:
            raise DataError(f"rank {self.rank} read {seen} rows from its shard but the manifest says {expected}; "
                            f"the reader lost or duplicated data (reader={self.reader}); refusing to train on it")

    def chunks(self, epoch: int, shuffle: bool) -> Iterator[Batch]:
        if self.reader == "petastorm":
            expected = self._petastorm_expected()
            return self._checked(self._petastorm_chunks(epoch, shuffle), expected)
        return self._checked(self._pyarrow_chunks(self._order(epoch, shuffle)), self.expected_rows)

    def _order(self, epoch: int, shuffle: bool) -> list[Piece]:
        """This rank's pieces in the order of ``epoch``: fixed by (seed, epoch, rank), so a resume knows it."""
        order = list(self.pieces)
        if shuffle:
            rng = np.random.default_rng([self.seed, epoch, self.rank])
            order = [order[i] for i in rng.permutation(len(order))]
        return order

    def _petastorm_expected(self) -> int:
        """petastorm deals row groups the same way (index modulo shard_count over the sorted pieces)."""
        return self.expected_rows

    # -- batches ---------------------------------------------------------------------------------
    def epoch(self, epoch: int, *, steps: int | None, skip: int = 0) -> Iterator[Batch]:
        """Shuffled training batches, exactly ``steps`` of them; ``skip``: start after the first ``skip``.

        The batches after a skip are the very ones an uninterrupted epoch yields there (same rows, same
        order): a resumed run trains on what it would have seen. See ``_resume_at`` for what is read.
        """
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        self.pieces_read = 0
        if skip and self._can_jump():
            order = self._order(epoch, shuffle=True)
            first, state, rest = self._resume_at(order, rng, steps, skip)
            chunks = self._checked(self._pyarrow_chunks(order[first:]), sum(p.rows for p in order[first:]))
            gen = rebatch(chunks, self.batch_size, state=state, drop=skip - rest)
        else:
            gen = rebatch(self.chunks(epoch, shuffle=True), self.batch_size, shuffle_buffer=self.shuffle_buffer,
                          rng=rng, drop_last=True, max_batches=steps, sort_key=self.sort_key, drop=skip)
        return prefetch(gen, self.prefetch_batches)

    FIXED_COLUMNS = frozenset({"image", "mask", "label"})

    def _can_jump(self) -> bool:
        """Jumping needs fixed-width rows (ragged columns pad to the buffer's widest row, which a rebuilt
        buffer would not reproduce) and no length bucketing (it sorts on decoded lengths): images."""
        return self.reader == "pyarrow" and self.sort_key is None and set(self.columns) <= self.FIXED_COLUMNS

    def _resume_at(self, order: list[Piece], rng: np.random.Generator, steps: int | None,
                   skip: int) -> tuple[int, Rebatcher, int]:
        """Where to start reading for a resume at batch ``skip``, without decoding what came before.

        The epoch is replayed on row numbers only (an int per row; no Parquet read): the rebatcher's
        random draws depend only on row counts, so the replay meets the same drains. The last point
        before the piece whose drain yields batch ``skip`` gives the piece to read from, the generator
        state, and which rows the shuffle buffer held back then; only the pieces holding those rows are
        read (just those rows kept). Returns (first piece to read, the rebuilt rebatcher, batches it
        had emitted).
        """
        import copy

        sim = Rebatcher(self.batch_size, shuffle_buffer=self.shuffle_buffer, rng=rng, drop_last=True,
                        max_batches=steps)
        offsets = np.cumsum([0] + [p.rows for p in order])
        first, snap = 0, copy.deepcopy(sim)
        for k, piece in enumerate(order):
            if sim.emitted > skip or sim.done():
                break
            first, snap = k, copy.deepcopy(sim)
            for _ in sim.feed({"__row": np.arange(offsets[k], offsets[k + 1])}):
                pass
        held_back = np.concatenate([c["__row"] for c in snap.pending]) if snap.pending else np.zeros(0, np.int64)
        if len(held_back):
            where = np.searchsorted(offsets, held_back, side="right") - 1
            needed = sorted(set(where.tolist()))
            decoded = {k: chunk for k, chunk in zip(needed, self._pyarrow_chunks([order[k] for k in needed]))}
            base, at = {}, 0
            for k in needed:
                base[k], at = at, at + order[k].rows
            big = _concat([decoded[k] for k in needed])
            positions = np.array([base[k] for k in where.tolist()]) + (held_back - offsets[where])
            snap.pending = [_take(big, positions)]
        return first, snap, snap.emitted

    def full_pass(self, batch_size: int | None = None) -> Iterator[Batch]:
        """Every row of the shard once, in order, last batch partial: for evaluation."""
        gen = rebatch(self.chunks(0, shuffle=False), batch_size or self.batch_size, drop_last=False)
        return prefetch(gen, self.prefetch_batches)
