"""Scaling on one machine: training samples/s with 2 ranks x 1 thread vs 1 rank x 1 thread (and 1 rank x
2 threads for reference), Horovod on Spark, same data, model and batch size per rank; plus the time from
job start to the first training step, Horovod on Spark vs Spark's TorchDistributor; and the machine's
own ceiling for 2x1/1x1: two plain training loops run at once with nothing exchanged, vs one alone; and
Ray Train 2x1 (TorchTrainer, DDP over gloo, the same network and batch, rows already in memory) from the
Ray venv (bench/ray_training.py; `--skip-ray` leaves it out).

    .venv/bin/python bench/scaling.py [--steps 300] [--repeats 3]
    .venv/bin/python bench/scaling.py --first-step-only --repeats 5   # launch to first step alone, with its phases
"""

from __future__ import annotations

import statistics
import time

from _common import ROOT, experiment, machine, prepared, ray_python, report, train_tensors, training_args


def run(spark, steps: int, batch: int, procs: int, threads: int, backend: str = "horovod_spark"):
    from sparkzoo.pipelines import train

    exp = experiment(f"workspace={ROOT / 'workspace' / 'bench'}", f"train.backend={backend}",
                     f"train.num_proc={procs}", f"train.threads_per_rank={threads}", "train.epochs=2",
                     f"train.max_steps_per_epoch={steps}", f"train.batch_size={batch}", "train.progress=false",
                     "spark.master=local[2]", f"name=bench_scaling_{procs}x{threads}_{backend}")
    return train.run(exp, spark)


def ray_train_rate(ds, steps: int, batch: int, workers: int = 2) -> float:
    """Ray Train's samples/s, ``workers`` x 1 thread: the same LeNet (TorchScript of a fresh one, seed 0)
    and batch per worker, each worker on its own ``steps * batch`` rows in memory."""
    import json
    import os
    import subprocess

    import torch

    from sparkzoo.models import InputSpec, get_model

    folder = ROOT / "workspace" / "bench" / "ray_train"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = train_tensors(ds, steps * batch * workers)
    torch.save((x.contiguous(), y), folder / "rows.pt")
    torch.manual_seed(0)
    # traced in training mode, as it trains (dropout on); check_trace would compare two random dropouts
    torch.jit.trace(get_model("lenet", InputSpec(1, 28, 28, 10)), x[:8], check_trace=False).save(str(folder / "lenet.pt"))
    out = subprocess.run([ray_python(), str(ROOT / "bench" / "ray_training.py"), "--data", str(folder / "rows.pt"),
                          "--model", str(folder / "lenet.pt"), "--steps", str(steps), "--batch", str(batch),
                          "--workers", str(workers), "--cpus", str(os.cpu_count() or 1), "--storage", str(folder)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["samples_per_s"]


def _paired_loop(ds, steps: int, batch: int, barrier, results) -> None:
    barrier.wait()   # both processes have their tensors in memory: start the timed loops together
    from overhead import plain_loop

    results.put(plain_loop(ds, steps, batch, 1e-3))


def machine_ceiling(ds, steps: int, batch: int) -> tuple[float, float]:
    """One plain 1-thread training loop alone, and the sum of two run at once with nothing exchanged:
    what this machine's two cores give two independent ranks of this model, the bound on 2x1/1x1 before
    any gradient is sent (shared caches, memory bandwidth and the hypervisor's scheduling all count)."""
    import multiprocessing as mp

    from overhead import plain_loop

    alone = plain_loop(ds, steps, batch, 1e-3)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_paired_loop, args=(ds, steps, batch, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    both = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return alone, sum(both)


def first_step_only(spark, repeats: int, batch: int) -> None:
    """Launch to first training step, 2 ranks x 1 thread, Horovod on Spark and TorchDistributor interleaved;
    with rank 0's own marks (seconds from the launch): entered the rank code (Python, launcher and torch
    imported), process group ready, model/readers/optimizer built, first step."""
    first: dict[str, list[float]] = {"horovod_spark": [], "torch_distributor": []}
    marks: dict[str, list[dict[str, float]]] = {k: [] for k in first}
    for _ in range(repeats):
        for backend in first:
            r = run(spark, 10, batch, 2, 1, backend=backend)
            first[backend].append(r.first_step_seconds)
            marks[backend].append(r.ranks[0]["startup_seconds"])
    med = {k: statistics.median(v) for k, v in first.items()}
    print(f"== launch to first training step, 2x1, medians of {repeats} ({machine()}, {time.strftime('%Y-%m-%d')})")
    for backend, values in first.items():
        phases = {k: statistics.median(m[k] for m in marks[backend]) for k in marks[backend][0]}
        print(f"   {backend:18s} {med[backend]:.2f}s   raw {[round(v, 2) for v in values]}   phases (median s) {phases}")
    print(f"   ratio Horovod on Spark / TorchDistributor: {med['horovod_spark'] / med['torch_distributor']:.2f}x")


def main() -> None:
    args = training_args(__doc__, steps=300, batch_size=64,
                         switches={"--first-step-only": "only the launch-to-first-step comparison",
                                   "--skip-ray": "leave out the Ray Train side"})
    exp = experiment(f"workspace={ROOT / 'workspace' / 'bench'}", "spark.master=local[2]")
    ds = prepared(exp)
    from sparkzoo.pipelines.session import get_spark

    spark = get_spark(exp)
    if args.first_step_only:
        first_step_only(spark, args.repeats, args.batch_size)
        return
    rates = {"2x1": [], "1x1": [], "1x2": []} | ({} if args.skip_ray else {"ray_train_2x1": []})
    first = {"horovod_spark": [], "torch_distributor": []}
    ceiling: list[float] = []
    for _ in range(args.repeats):
        alone, pair = machine_ceiling(ds, args.steps, args.batch_size)
        ceiling.append(pair / alone)
        for key, (p, t) in {"2x1": (2, 1), "1x1": (1, 1), "1x2": (1, 2)}.items():
            r = run(spark, args.steps, args.batch_size, p, t)
            rates[key].append(r.history[-1]["samples_per_second"])
            if key == "2x1":
                first["horovod_spark"].append(r.first_step_seconds)
        r = run(spark, max(10, args.steps // 10), args.batch_size, 2, 1, backend="torch_distributor")
        first["torch_distributor"].append(r.first_step_seconds)
        if not args.skip_ray:
            rates["ray_train_2x1"].append(ray_train_rate(ds, args.steps, args.batch_size))
    med = {k: statistics.median(v) for k, v in rates.items()}
    report("scaling, Horovod on Spark, LeNet-like CNN, batch %d per rank" % args.batch_size,
           ("2 ranks x 1 thread", med["2x1"]), [("1 rank x 1 thread", med["1x1"]), ("1 rank x 2 threads", med["1x2"])]
           + ([] if args.skip_ray else [("Ray Train 2 workers x 1 thread", med["ray_train_2x1"])]))
    hs, td = statistics.median(first["horovod_spark"]), statistics.median(first["torch_distributor"])
    print(f"   time from job start to first training step: Horovod on Spark {hs:.1f}s, TorchDistributor {td:.1f}s, "
          f"ratio {hs / td:.2f}x")
    print(f"   machine ceiling: two plain 1-thread loops at once, nothing exchanged, vs one alone: "
          f"{statistics.median(ceiling):.2f}x (raw {[round(c, 2) for c in ceiling]}); 2x1/1x1 cannot pass it")
    print(f"   raw: {rates}, first step {first}")


if __name__ == "__main__":
    main()
