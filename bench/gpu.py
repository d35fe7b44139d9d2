"""GPU: per-GPU training samples/s of the sparkzoo engine (1 rank, cuda:0, bf16 AMP, Parquet loader,
Horovod optimizer) vs a plain single-GPU PyTorch loop with the same AMP over the same rows already on
the GPU, same LeNet-like model and batch size. Needs a CUDA device; exits with a message otherwise.

    .venv/bin/python bench/gpu.py [--steps 400] [--batch-size 512] [--repeats 3]
"""

from __future__ import annotations

import statistics
import sys
import time


from _common import ROOT, experiment, prepared, report, train_tensors, training_args


def plain_loop(ds, steps: int, batch: int) -> float:
    import torch

    from sparkzoo.models import InputSpec, get_model

    dev = torch.device("cuda:0")
    x_all, y_all = (t.to(dev) for t in train_tensors(ds))
    model = get_model("lenet", InputSpec(1, 28, 28, 10)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n_rows = len(y_all)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        lo = (i * batch) % (n_rows - batch)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x_all[lo:lo + batch]).float(), y_all[lo:lo + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def engine(steps: int, batch: int) -> float:
    from sparkzoo.pipelines import train

    exp = experiment(f"workspace={ROOT / 'workspace' / 'bench'}", "train.backend=horovodrun", "train.num_proc=1",
                     "train.epochs=2", f"train.max_steps_per_epoch={steps}", f"train.batch_size={batch}",
                     "train.progress=false", "train.threads_per_rank=4", "name=bench_gpu")
    return train.run(exp).history[-1]["samples_per_second"]


def main() -> None:
    import torch

    args = training_args(__doc__, steps=100, batch_size=512)
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA device; none is visible here")
    ds = prepared(experiment(f"workspace={ROOT / 'workspace' / 'bench'}"))
    ours, base = [], []
    for _ in range(args.repeats):
        base.append(plain_loop(ds, args.steps, args.batch_size))
        ours.append(engine(args.steps, args.batch_size))
    report(f"GPU training, 1 rank on {torch.cuda.get_device_name(0)}, bf16 AMP, batch {args.batch_size}",
           ("sparkzoo engine", statistics.median(ours)), [("plain single-GPU loop, data on GPU", statistics.median(base))])
    print(f"   raw: engine {[round(r) for r in ours]}, plain {[round(r) for r in base]}")


if __name__ == "__main__":
    main()
