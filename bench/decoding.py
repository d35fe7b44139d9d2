"""Greedy vs beam search for a registered seq2seq model on a prepared split.

Why: training evaluates with one beam width (``model.beam``), but the issue asks that beam search be
no worse than greedy, and a recipe must be chosen on val and reported on test. This re-decodes one
split of the prepared dataset with each width, through the same task code (``metric_sums`` /
``finish``) and the same loader the training loop uses, so the numbers match the run's own metrics.

    .venv/bin/python bench/decoding.py --conf conf/cmudict_g2p.yaml --version 1 --split val --beams 1 4
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

from _common import experiment


def evaluate(exp, version: int, split: str, beams: list[int], batch_size: int) -> list[dict[str, float]]:
    """One row of metrics per beam width: error_rate (token), sequence_error_rate, bleu, words/s."""
    import numpy as np
    import torch

    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.dataset import open_prepared
    from sparkzoo.pipelines.modelpack import Predictor
    from sparkzoo.pipelines.train.data import ShardReader

    torch.set_num_threads(exp.train.threads_per_rank)
    data = open_prepared(exp)
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor.from_dir(track.download_model_files(exp, exp.model_name, version, tmp))
    files = [{"path": os.path.join(data.path, f["path"]), "row_groups": f["row_groups"]}
             for f in data.manifest["splits"][split]["files"]]
    rows = []
    for beam in beams:
        task = dataclasses.replace(predictor.task, beam=beam)
        reader = ShardReader(files, 0, 1, shape=data.manifest["shape"], batch_size=batch_size, columns=task.columns,
                             sort_key=task.sort_key)
        sums, arrays, n, t0 = task.empty_sums(), task.empty_arrays(), 0, time.perf_counter()
        with torch.inference_mode():
            for batch in reader.full_pass():
                x, y = task.tensors(batch, "cpu")
                out = task.predict(predictor.module, x)
                for k, v in task.metric_sums(out, y).items():
                    sums[k] += v
                for k, v in task.detail_arrays(out, y).items():
                    arrays[k] = arrays[k] + v
                n += len(y)
        metrics = task.finish(sums, {k: np.asarray(v) for k, v in arrays.items()})
        rows.append({"beam": beam, "rows": n, **metrics, "rows_per_second": n / (time.perf_counter() - t0)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", required=True)
    p.add_argument("--version", type=int, required=True, help="registered model version (mlflow.model_name or name)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    args = p.parse_args(argv)
    exp = experiment(*args.set, conf=args.conf)
    for r in evaluate(exp, args.version, args.split, args.beams, args.batch_size):
        extra = f" bleu={r['bleu']:.4f}" if "bleu" in r else ""
        print(f"{exp.model_name} v{args.version} {args.split} beam={r['beam']}: rows={r['rows']} "
              f"error_rate={r['error_rate']:.4f} sequence_error_rate={r['sequence_error_rate']:.4f}{extra} "
              f"({r['rows_per_second']:.0f} rows/s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
