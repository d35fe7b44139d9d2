"""Per-rank loader throughput: sparkzoo's ShardReader vs plain pyarrow ``iter_batches`` vs petastorm.

All three read the same prepared Fashion-MNIST train split (rank 0 of 2, so each reads half) and
deliver uint8 image arrays plus labels ready for ``torch.from_numpy``. Also compares against what
the LeNet-like CNN consumes per second on one thread (from bench/overhead.py's plain loop).

    .venv/bin/python bench/loader.py [--repeats 5] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from _common import experiment, median_rate, prepared, report


def ours(ds, rank: int, size: int, batch: int, shuffle: bool) -> int:
    from sparkzoo.pipelines.train.data import ShardReader, steps_per_epoch

    files = ds.split_files("train")
    r = ShardReader(files, rank, size, shape=ds.manifest["shape"], batch_size=batch, seed=0, shuffle_buffer=4096,
                    prefetch_batches=8)
    n = 0
    it = r.epoch(0, steps=steps_per_epoch(files, size, batch)) if shuffle else r.full_pass(batch)
    for b in it:
        n += len(b["label"])
    return n


def plain_pyarrow(ds, rank: int, size: int, batch: int) -> int:
    """The obvious pyarrow loop over this rank's files, same decode to numpy, no shuffle, no prefetch."""
    import pyarrow.parquet as pq

    files = [f["path"] for f in ds.split_files("train")][rank::size]
    h, w, c = (ds.manifest["shape"][k] for k in ("height", "width", "channels"))
    n = 0
    for path in files:
        for rb in pq.ParquetFile(path).iter_batches(batch_size=batch, columns=["image", "label"]):
            img = np.frombuffer(b"".join(rb.column(0).to_pylist()), np.uint8).reshape(-1, h, w, c)
            lbl = rb.column(1).to_numpy()
            n += len(lbl)
            del img
    return n


def petastorm_default(ds, rank: int, size: int, batch: int) -> int:
    """petastorm's documented path: make_batch_reader (default thread pool) + TransformSpec + its DataLoader."""
    from petastorm import TransformSpec, make_batch_reader
    from petastorm.pytorch import DataLoader

    h, w, c = (ds.manifest["shape"][k] for k in ("height", "width", "channels"))

    def decode(frame):
        frame["image"] = [np.frombuffer(b, np.uint8).reshape(h, w, c) for b in frame["image"]]
        return frame

    spec = TransformSpec(decode, edit_fields=[("image", np.uint8, (h, w, c), False)])
    n = 0
    with make_batch_reader("file://" + ds.split_dir("train"), schema_fields=["image", "label"], cur_shard=rank,
                           shard_count=size, num_epochs=1, transform_spec=spec) as reader:
        for b in DataLoader(reader, batch_size=batch):
            n += len(b["label"])
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--consumes", type=float, default=0.0,
                    help="samples/s the LeNet-like CNN trains at on one thread (bench/overhead.py); 0 = skip")
    args = ap.parse_args()
    ds = prepared(experiment())
    b = args.batch_size
    sides = {"ours": lambda: ours(ds, 0, 2, b, shuffle=True), "seq": lambda: ours(ds, 0, 2, b, shuffle=False),
             "pyarrow": lambda: plain_pyarrow(ds, 0, 2, b), "petastorm": lambda: petastorm_default(ds, 0, 2, b)}
    raw: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.repeats):   # interleaved, so CPU steal hits every side alike
        for key, fn in sides.items():
            raw[key].append(median_rate(fn, 1)[0])
    med = {k: statistics.median(v) for k, v in raw.items()}
    ours_rate, ours_seq, pa_rate, ps_rate = med["ours"], med["seq"], med["pyarrow"], med["petastorm"]
    ours_all, pa_all, ps_all = raw["ours"], raw["pyarrow"], raw["petastorm"]
    report("loader, rank 0 of 2, Fashion-MNIST train split", ("sparkzoo ShardReader (shuffled epoch)", ours_rate),
           [("plain pyarrow iter_batches", pa_rate), ("petastorm DataLoader", ps_rate)])
    print(f"   sparkzoo ShardReader in file order (evaluation pass): {ours_seq:,.0f} samples/s")
    print(f"   raw rates: ours {[round(r) for r in ours_all]}, pyarrow {[round(r) for r in pa_all]}, "
          f"petastorm {[round(r) for r in ps_all]}")
    if args.consumes:
        print(f"   ours / LeNet consumption ({args.consumes:,.0f} samples/s) = {ours_rate / args.consumes:.1f}x")


if __name__ == "__main__":
    main()
