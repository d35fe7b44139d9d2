"""Greedy versus beam search for a registered captioning model, without retraining it.

Training evaluates with the config's ``model.beam``; this decodes the prepared val and test splits again
with each width given, using the registered weights and the model's own task (the same BLEU-4 code the
run logged), so the one training run yields both numbers. Choose the width on val, report test.

    .venv/bin/python bench/caption_beam.py --conf conf/fashion_compositions_captions.yaml --version 1 --beam 1 3 5
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np


def bleu_of(pred, split_dir: str, beam: int, batch_size: int = 256) -> dict[str, float]:
    """Corpus BLEU-4, token accuracy and exact captions of one split, decoded with ``beam``."""
    import pyarrow.dataset as pads
    import torch

    from sparkzoo.pipelines.train.data import decode_images

    task = dataclasses.replace(pred.task, beam=beam, top_k=1)
    shape = pred.spec["shape"]
    sums, arrays = task.empty_sums(), task.empty_arrays()
    scanner = pads.dataset(split_dir, format="parquet").scanner(columns=["image", "caption_ids"], batch_size=batch_size)
    with torch.inference_mode():
        for rb in scanner.to_batches():   # one batch at a time: a split never sits in memory whole
            if rb.num_rows == 0:
                continue
            import pyarrow as pa

            table = pa.Table.from_batches([rb])
            batch = decode_images(table, shape["height"], shape["width"], shape["channels"])
            ids = table.column("caption_ids").to_pylist()
            width = max(len(r) for r in ids)
            batch["caption_ids"] = np.array([r + [0] * (width - len(r)) for r in ids], dtype=np.int64)
            batch["caption_ids__len"] = np.array([len(r) for r in ids], dtype=np.int64)
            x, y = task.tensors(batch, torch.device("cpu"))
            out = task.as_float(task.predict(pred.module, x))
            for k, v in task.metric_sums(out, y).items():
                sums[k] += v
            for k, v in task.detail_arrays(out, y).items():
                arrays[k] = arrays[k] + v
    got = task.finish(sums, arrays)
    got["exact"] = 1.0 - got.get("sequence_error_rate", 1.0)
    return got


def main() -> None:
    import mlflow
    import torch

    from sparkzoo.pipelines import config, track
    from sparkzoo.pipelines.dataset import open_prepared
    from sparkzoo.pipelines.modelpack import SPEC_FILE, Predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conf", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--version", required=True, help="registered model version (or an alias such as champion)")
    ap.add_argument("--beam", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    exp = config.load(args.conf, args.set)
    mlflow.set_tracking_uri(track.tracking_uri(exp))
    mlflow.set_registry_uri(track.registry_uri(exp))
    ref = f"models:/{exp.model_name}@{args.version}" if not args.version.isdigit() else f"models:/{exp.model_name}/{args.version}"
    local = mlflow.artifacts.download_artifacts(ref)
    import glob
    import os

    spec_dir = os.path.dirname(glob.glob(os.path.join(local, "**", SPEC_FILE), recursive=True)[0])
    pred = Predictor.from_dir(spec_dir)
    ds = open_prepared(exp)
    for split in args.splits:
        for beam in args.beam:
            t0 = time.time()
            m = bleu_of(pred, ds.split_dir(split), beam)
            print(f"{ref} {split} beam={beam}: bleu={m.get('bleu', 0.0):.4f} token_accuracy={m['token_accuracy']:.4f} "
                  f"exact={m['exact']:.4f} ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
