"""The Ray Train side of bench/scaling.py: the same LeNet-like CNN trained data-parallel by Ray Train.

Runs in the Ray venv that bench/scoring.py builds (Ray is a bench tool, never a project dependency), so
it imports neither sparkzoo nor MLflow: the model comes as TorchScript of a freshly initialised network
and the rows as normalised tensors, both written by scaling.py. As Ray Train's docs show:
``TorchTrainer`` with ``prepare_model`` (DDP over gloo), ``--workers`` workers of one thread each, Adam,
each worker on its own slice of the rows. On 2 CPUs each worker asks for 0.5 CPU (Ray's own actors
need the rest to schedule). Prints one JSON line: samples/s over ``--steps`` steps after 10 warm-up
steps, all workers together (rank 0's clock, the steps start after a barrier).

    <ray venv>/bin/python bench/ray_training.py --data rows.pt --model lenet.pt --steps 300 --batch 64
"""

from __future__ import annotations

import argparse
import json
import os

WARM_UP_STEPS = 10


def train_loop(config: dict) -> None:
    import time

    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, size = ctx.get_world_rank(), ctx.get_world_size()
    x, y = torch.load(config["data"])
    x, y = x[rank::size], y[rank::size]
    model = ray.train.torch.prepare_model(torch.jit.load(config["model"]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch, steps = config["batch"], config["steps"]
    model.train()

    def step(i: int) -> None:
        lo = (i * batch) % (len(x) - batch)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[lo:lo + batch]), y[lo:lo + batch]).backward()
        opt.step()

    for i in range(WARM_UP_STEPS):
        step(i)
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(steps):
        step(WARM_UP_STEPS + i)
    dist.barrier()
    secs = time.perf_counter() - t0
    if rank == 0:   # Ray Train 2.60 keeps reported metrics only beside a checkpoint: rank 0 says it itself
        print(json.dumps({"samples_per_s": steps * batch * size / secs, "seconds": secs, "workers": size}),
              file=open(config["out"], "w"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--storage", required=True, help="Ray Train's run folder; the result lands in result.json there")
    args = ap.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    out = os.path.join(args.storage, "result.json")
    trainer = TorchTrainer(train_loop, train_loop_config={"data": args.data, "model": args.model, "steps": args.steps,
                                                          "batch": args.batch, "out": out},
                           scaling_config=ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": 0.5}),
                           run_config=RunConfig(storage_path=args.storage, name="bench_scaling_ray"))
    trainer.fit()
    with open(out) as f:
        print(f.read().strip(), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
