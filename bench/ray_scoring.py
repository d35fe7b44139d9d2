"""The Ray Data side of bench/scoring.py: the same Parquet scored by the same model with Ray Data.

Runs in a venv of its own that bench/scoring.py builds (Ray 2.60 needs pyarrow >= 17; sparkzoo pins 14;
Ray is a bench tool, never a project dependency), so it imports neither sparkzoo nor MLflow: the model
comes as TorchScript that scoring.py exported from the registered version, with its normalisation.

As Ray's docs show for batch inference: ``read_parquet`` -> ``map_batches`` with a callable class (the
model loaded once per actor, a fixed pool of ``--actors``) -> ``write_parquet``. On 2 CPUs each actor
asks for ``num_cpus=0.5`` (with 1 CPU each the read tasks find no CPU and the pipeline hangs). The
batch is Arrow; the image column is read as a view of its data buffer, as ours does. Prints one JSON
line per batch size: rows/s from the read to the last file written (``ray.init`` excluded, as the Spark
session is for ours).

    <ray venv>/bin/python bench/ray_scoring.py --input P --output O --model M.pt --mean m --std s \
        --shape 28,28,1 --batch-sizes 256,1024,4096
"""

from __future__ import annotations

import argparse
import json
import shutil
import time


class Scorer:
    """One actor: the TorchScript model, one thread, Arrow batch in, Arrow batch out."""

    def __init__(self, model: str, mean: float, std: float, shape: tuple[int, int, int], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = torch.jit.load(model).eval()
        self.mean, self.std, self.shape = mean, std, shape

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa

        torch = self.torch
        images = batch.column("image").combine_chunks()
        h, w, c = self.shape
        offsets = np.frombuffer(images.buffers()[1], dtype=np.int32, count=len(images) + 1, offset=images.offset * 4)
        data = np.frombuffer(images.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
        pixels = data.reshape(len(images), h, w, c)
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0).sub_(self.mean).div_(self.std)
        with torch.inference_mode():
            probs = torch.softmax(self.model(x), dim=1)
            best, label = probs.max(dim=1)
        return pa.table({"id": batch.column("id"), "prediction": pa.array(label.numpy().astype(np.int32)),
                         "probability": pa.array(best.numpy())})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mean", type=float, required=True)
    ap.add_argument("--std", type=float, required=True)
    ap.add_argument("--shape", required=True, help="h,w,c")
    ap.add_argument("--batch-sizes", default="256,1024,4096")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    shape = tuple(int(v) for v in args.shape.split(","))
    rows = ray.data.read_parquet(args.input, columns=["id"]).count()   # metadata only: not timed
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        shutil.rmtree(args.output, ignore_errors=True)
        t0 = time.perf_counter()
        (ray.data.read_parquet(args.input, columns=["id", "image"])
         .map_batches(Scorer, batch_size=batch, batch_format="pyarrow", concurrency=args.actors, num_cpus=0.5,
                      fn_constructor_args=(args.model, args.mean, args.std, shape, 1))
         .write_parquet(args.output))
        secs = time.perf_counter() - t0
        print(json.dumps({"batch": batch, "rows": rows, "seconds": secs, "rows_per_s": rows / secs}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
