"""Engine overhead: one rank, one thread, training through the whole sparkzoo engine (Parquet loader,
Horovod DistributedOptimizer, metrics, per-epoch checkpoint) vs a plain PyTorch loop over the same rows
already in memory as tensors, same LeNet-like model, optimizer and batch size: the machine's limit.

    .venv/bin/python bench/overhead.py [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import statistics
import time


from _common import ROOT, experiment, prepared, report, train_tensors, training_args


def plain_loop(ds, steps: int, batch: int, lr: float) -> float:
    """Samples/s of the bare loop: tensors in memory, no loader, no Horovod, no logging."""
    import torch

    from sparkzoo.models import InputSpec, get_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = steps * batch
    x_all, y_all = train_tensors(ds, n)
    model = get_model("lenet", InputSpec(1, 28, 28, 10))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    t0 = time.perf_counter()
    for i in range(steps):
        x, y = x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - t0)


def engine(steps: int, batch: int) -> float:
    """Samples/s of the second epoch's training loop of a real 1-rank horovodrun job."""
    from sparkzoo.pipelines import train

    exp = experiment(f"workspace={ROOT / 'workspace' / 'bench'}", "train.backend=horovodrun", "train.num_proc=1",
                     "train.threads_per_rank=1", "train.epochs=2", f"train.max_steps_per_epoch={steps}",
                     f"train.batch_size={batch}", "train.progress=false", "name=bench_overhead")
    result = train.run(exp)
    return result.history[-1]["samples_per_second"]


def main() -> None:
    args = training_args(__doc__, steps=300, batch_size=64)
    ds = prepared(experiment(f"workspace={ROOT / 'workspace' / 'bench'}"))
    ours, base = [], []
    for _ in range(args.repeats):   # interleaved, so CPU steal hits both sides alike
        base.append(plain_loop(ds, args.steps, args.batch_size, 1e-3))
        ours.append(engine(args.steps, args.batch_size))
    report("training overhead, 1 rank x 1 thread, LeNet-like CNN, batch %d" % args.batch_size,
           ("sparkzoo engine (Parquet loader + Horovod + metrics + checkpoints)", statistics.median(ours)),
           [("plain PyTorch loop over in-memory tensors", statistics.median(base))])
    print(f"   raw: engine {[round(r) for r in ours]}, plain {[round(r) for r in base]}")


if __name__ == "__main__":
    main()
