"""The per-rank loader: disjoint shards that cover a split, equal steps on uneven shards, exact counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkzoo.pipelines.dataset import open_prepared
from sparkzoo.pipelines.errors import DataError
from sparkzoo.pipelines.train.data import ShardReader, rebatch, shard, shard_rows, steps_per_epoch


def _reader(ds, rank, size, reader="pyarrow", split="train", batch=64):
    files = ds.split_files(split)
    return ShardReader(files, rank, size, shape=ds.manifest["shape"], batch_size=batch, seed=1, shuffle_buffer=512,
                       reader=reader, dataset_dir=ds.split_dir(split))


def _ids(ds, pieces):
    out = []
    for p in pieces:
        out += pq.ParquetFile(p.path).read_row_group(p.row_group, columns=["id"]).column("id").to_pylist()
    return out


@pytest.mark.parametrize("size", [2, 3])
def test_shards_are_disjoint_and_cover_the_split(prepared, make_exp, size):
    ds = open_prepared(make_exp())
    files = ds.split_files("train")
    shards = [_ids(ds, shard(files, r, size)) for r in range(size)]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == ds.rows("train")
    assert [len(s) for s in shards] == shard_rows(files, size)


@pytest.mark.parametrize("reader", ["pyarrow", "petastorm"])
def test_full_pass_reads_exactly_the_shard(prepared, make_exp, reader):
    ds = open_prepared(make_exp())
    for rank in range(2):
        r = _reader(ds, rank, 2, reader=reader)
        batches = list(r.full_pass(batch_size=100))
        labels = np.concatenate([b["label"] for b in batches])
        images = np.concatenate([b["image"] for b in batches])
        assert len(labels) == r.expected_rows and images.shape == (r.expected_rows, 28, 28, 1)
        assert images.dtype == np.uint8 and 0 <= labels.min() and labels.max() < 10


def test_epochs_are_shuffled_deterministically_with_equal_steps(prepared, make_exp):
    ds = open_prepared(make_exp())
    files = ds.split_files("train")
    steps = steps_per_epoch(files, 2, 64)
    a = [b["label"] for b in _reader(ds, 0, 2).epoch(0, steps=steps)]
    b = [b["label"] for b in _reader(ds, 0, 2).epoch(0, steps=steps)]
    c = [b["label"] for b in _reader(ds, 0, 2).epoch(1, steps=steps)]
    other = [b["label"] for b in _reader(ds, 1, 2).epoch(0, steps=steps)]
    assert len(a) == len(other) == steps and all(len(x) == 64 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_uneven_row_groups_give_equal_steps(tmp_path):
    # 5 row groups of different sizes over 2 ranks: 300+100+50 vs 200+120
    path = tmp_path / "part-0.parquet"
    writer = None
    for n in (300, 200, 100, 120, 50):
        t = pa.table({"image": pa.array([bytes(4)] * n, pa.binary()), "label": pa.array(np.zeros(n, np.int64))})
        writer = writer or pq.ParquetWriter(path, t.schema)
        writer.write_table(t)
    writer.close()
    files = [{"path": str(path), "row_groups": [300, 200, 100, 120, 50]}]
    assert shard_rows(files, 2) == [450, 320]
    steps = steps_per_epoch(files, 2, 32)
    assert steps == 320 // 32
    shape = {"height": 2, "width": 2, "channels": 1}
    for rank in range(2):
        r = ShardReader(files, rank, 2, shape=shape, batch_size=32, shuffle_buffer=64)
        assert len(list(r.epoch(0, steps=steps))) == steps


def test_reader_that_loses_rows_fails_loudly(prepared, make_exp):
    ds = open_prepared(make_exp())
    files = ds.split_files("train")
    lying = [{"path": files[0]["path"], "row_groups": [n + 5 for n in files[0]["row_groups"]]}]
    r = ShardReader(lying, 0, 1, shape=ds.manifest["shape"], batch_size=64)
    with pytest.raises(DataError, match="manifest says"):
        list(r.full_pass())


def test_rebatch_keeps_every_row_once_without_drop():
    chunks = [{"x": np.arange(i * 10, i * 10 + 10)} for i in range(7)]
    out = list(rebatch(iter(chunks), 16, shuffle_buffer=32, rng=np.random.default_rng(0), drop_last=False))
    seen = np.concatenate([b["x"] for b in out])
    assert sorted(seen.tolist()) == list(range(70))
    assert [len(b["x"]) for b in out[:-1]] == [16] * (len(out) - 1)


def _sequence_parquet(tmp_path, n: int = 300, n_mels: int = 4):
    """A real Parquet file in the text/audio contract: list<int> token ids and float32 frame bytes."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 30, n)
    tokens = [[1000 + i] + list(rng.integers(4, 100, k - 1).astype(np.int32)) for i, k in enumerate(lengths)]   # unique
    frames = [rng.normal(size=(k * 2, n_mels)).astype(np.float32) for k in lengths]
    table = pa.table({"id": [f"r{i}" for i in range(n)], "token_ids": pa.array(tokens, pa.list_(pa.int32())),
                      "features": pa.array([f.tobytes() for f in frames], pa.binary()),
                      "label": pa.array(rng.integers(0, 2, n), pa.int64())})
    path = str(tmp_path / "seq.parquet")
    pq.write_table(table, path, row_group_size=64)
    files = [{"path": path, "row_groups": [pq.ParquetFile(path).metadata.row_group(i).num_rows
                                           for i in range(pq.ParquetFile(path).num_row_groups)]}]
    return files, tokens, frames


def test_sequences_decode_padded_with_true_lengths_and_bucket_by_length(tmp_path):
    files, tokens, frames = _sequence_parquet(tmp_path)
    by_len = {}
    for t, f in zip(tokens, frames):
        by_len.setdefault(tuple(t), f)

    def read(sort_key):
        r = ShardReader(files, 0, 1, shape={"n_mels": 4}, batch_size=16, columns=("token_ids", "features", "label"),
                        seed=5, shuffle_buffer=128, sort_key=sort_key)
        return list(r.epoch(0, steps=steps_per_epoch(files, 1, 16)))

    plain, bucketed = read(None), read("token_ids__len")
    for batches in (plain, bucketed):
        seen = 0
        for b in batches:
            for row, n, feats, nf in zip(b["token_ids"], b["token_ids__len"], b["features"], b["features__len"]):
                real = tuple(int(v) for v in row[:n])
                assert np.all(row[n:] == 0) and real in by_len          # ids intact, padding is 0
                assert nf == 2 * n and np.array_equal(feats[:nf], by_len[real]) and not feats[nf:].any()
                seen += 1
        assert seen == 16 * len(batches)

    def padding(batches):
        return sum(int(b["token_ids__len"].max()) * len(b["token_ids__len"]) - int(b["token_ids__len"].sum())
                   for b in batches)

    assert padding(bucketed) < 0.5 * padding(plain)     # similar lengths share a batch
    first = [tuple(b["token_ids__len"][:3]) for b in bucketed[:4]]
    assert first != sorted(first)                        # but the batches come in random order
