"""GPU: training samples/s per GPU and scoring rows/s on GPU, against the plain PyTorch limits; one run
writes its own section of bench/RESULTS.md (device, date, figures, the command).

Sides, same LeNet-like CNN, same Fashion-MNIST rows, same batch size:
  train, 1 GPU     sparkzoo engine (horovodrun, 1 rank on cuda:0, Parquet loader, bf16 autocast,
                   Horovod optimizer over NCCL) vs a plain single-GPU loop on the same rows already on the
                   GPU, bf16 autocast (goal: engine >= 0.9x); the plain loop with fp16 + GradScaler beside it
  train, all GPUs  the engine on every GPU of the machine (horovodrun, one rank per GPU): samples/s per GPU
                   against 1 GPU (skipped on a one-GPU machine)
  scoring          sparkzoo score.run (local[*], score.device=cuda: every Python worker on the GPU) vs the
                   eager limit on the GPU: one process, the test pixels already normalised on the GPU, best
                   batch of a sweep, softmax and the copy back to the host included

Sized to install, run and report within about 8 minutes on a GPU machine (setup with SPARKZOO_CUDA=12.x,
docs/GPU.md); nothing here is tuned on or claimed for a GPU until a run has written its figures.

    SPARKZOO_CUDA=12.4 bash scripts/setup.sh && .venv/bin/python bench/gpu.py [--steps 300] [--repeats 3]
        [--rows 200000] [--no-write]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time

from _common import ROOT, experiment, machine, prepared, train_tensors

BENCH_WS = ROOT / "workspace" / "bench"
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- bench/gpu.py: begin -->", "<!-- bench/gpu.py: end -->"
GOAL = 0.9


def plain_loop(x_all, y_all, steps: int, batch: int, dtype) -> float:
    """The reference: a bare single-GPU loop over rows already on the GPU; fp16 with a GradScaler."""
    import torch

    from sparkzoo.models import InputSpec, get_model

    dev = x_all.device
    model = get_model("lenet", InputSpec(1, 28, 28, 10)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    n_rows = len(y_all)

    def step(i: int) -> None:
        lo = (i * batch) % (n_rows - batch)
        with torch.autocast("cuda", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(x_all[lo:lo + batch]).float(), y_all[lo:lo + batch])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for i in range(10):   # warm-up: kernels chosen, allocator primed
        step(i)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def engine(steps: int, batch: int, ranks: int) -> float:
    """The engine's own samples/s (all ranks together) for its last epoch: the first epoch pays start-up."""
    from sparkzoo.pipelines import train

    exp = experiment(f"workspace={BENCH_WS}", "train.backend=horovodrun", f"train.num_proc={ranks}",
                     "train.epochs=2", f"train.max_steps_per_epoch={steps}", f"train.batch_size={batch}",
                     "train.progress=false", "train.threads_per_rank=4", "train.scale_lr_by_world_size=false",
                     f"name=bench_gpu_{ranks}", "train.device=cuda")
    return train.run(exp).history[-1]["samples_per_second"]


def eager_gpu_rate(predictor, x, reps: int, batch: int) -> float:
    """Rows/s of forward + softmax on the GPU and the outputs back on the host, rows already on the GPU."""
    import torch

    def run(count: int) -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(count):
                for i in range(0, x.shape[0], batch):
                    prob = torch.softmax(predictor.module(x[i:i + batch]).float(), dim=1)
                    conf, pred = prob.max(1)
                    prob.cpu(), conf.cpu(), pred.cpu()

    run(1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run(reps)
    torch.cuda.synchronize()
    return reps * x.shape[0] / (time.perf_counter() - t0)


def score_rates(rows: int, repeats: int) -> tuple[float, float, int]:
    """(sparkzoo rows/s, eager limit rows/s, best eager batch) on the GPU."""
    import os

    import mlflow
    import pyarrow.parquet as pq
    import torch

    from scoring import MODEL, bench_exp, registered_version, replicated_input, run_ours
    from sparkzoo.models.tasks import images_to_tensor
    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.modelpack import Predictor
    from sparkzoo.pipelines.session import get_spark

    exp = bench_exp()
    ds = prepared(exp)
    spark = get_spark(exp)
    version = registered_version(exp, spark)
    path = replicated_input(spark, ds, rows)
    track.client(exp)
    local = os.path.join(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version}"), "artifacts")
    eager = Predictor.from_dir(local, device="cuda:0")
    frame = pq.read_table(ds.split_dir("test"), columns=["image"]).to_pandas()
    st = eager.spec["stats"]
    x = images_to_tensor(eager.decode(frame["image"]), st["mean"], st["std"]).to("cuda:0")
    sweep = {b: eager_gpu_rate(eager, x, 3, b) for b in (1024, 4096, 10000)}
    best = max(sweep, key=sweep.get)
    ours, limit = [], []
    for _ in range(repeats):
        limit.append(eager_gpu_rate(eager, x, 20, best))
        ours.append(run_ours(exp, spark, path, rows, make_exp=lambda *s: bench_exp(*s, "score.device=cuda"),
                             out="pred_gpu"))
    spark.stop()
    return statistics.median(ours), statistics.median(limit), best


def write_section(text: str) -> None:
    """Replace this bench's section of RESULTS.md (between its markers), or append one."""
    body = RESULTS.read_text()
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    if BEGIN in body and END in body:
        body = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(body)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per epoch (2 epochs, the last timed)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=200_000, help="rows the scoring job scores")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA device; none is visible here (bench/RESULTS.md keeps 'not run')")
    started = time.time()
    gpus = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    ds = prepared(experiment(f"workspace={BENCH_WS}"))
    x_all, y_all = (t.to("cuda:0") for t in train_tensors(ds))

    plain_bf16, plain_fp16, ours1 = [], [], []
    for _ in range(args.repeats):   # interleaved, so a slow moment hits every side alike
        plain_bf16.append(plain_loop(x_all, y_all, args.steps, args.batch_size, torch.bfloat16))
        plain_fp16.append(plain_loop(x_all, y_all, args.steps, args.batch_size, torch.float16))
        ours1.append(engine(args.steps, args.batch_size, 1))
    del x_all, y_all
    torch.cuda.empty_cache()
    med = {k: statistics.median(v) for k, v in (("bf16", plain_bf16), ("fp16", plain_fp16), ("ours", ours1))}
    ratio = med["ours"] / med["bf16"]
    all_gpus = engine(args.steps, args.batch_size, gpus) if gpus > 1 else None
    scored, limit, best_batch = score_rates(args.rows, args.repeats)

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"## GPU (`bench/gpu.py`) — {when}, {gpus} x {name}, torch {torch.__version__} (CUDA {torch.version.cuda})",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python bench/gpu.py --steps {args.steps} --batch-size "
        f"{args.batch_size} --repeats {args.repeats} --rows {args.rows}` ({time.time() - started:.0f} s).",
        "",
        "| side | rate | ratio |",
        "|---|---|---|",
        f"| plain single-GPU loop, bf16 autocast, rows on the GPU | {med['bf16']:,.0f} samples/s "
        f"(raw {[round(r) for r in plain_bf16]}) | 1.00x |",
        f"| plain single-GPU loop, fp16 + GradScaler | {med['fp16']:,.0f} samples/s (raw {[round(r) for r in plain_fp16]}) "
        f"| {med['fp16'] / med['bf16']:.2f}x |",
        f"| **sparkzoo engine, 1 rank on cuda:0, bf16** | **{med['ours']:,.0f} samples/s** "
        f"(raw {[round(r) for r in ours1]}) | **{ratio:.2f}x** (goal >= {GOAL}x: {'met' if ratio >= GOAL else 'NOT met'}) |",
    ]
    if all_gpus is not None:
        lines.append(f"| sparkzoo engine, {gpus} ranks on {gpus} GPUs | {all_gpus:,.0f} samples/s, "
                     f"{all_gpus / gpus:,.0f} per GPU | {all_gpus / gpus / med['ours']:.2f}x per GPU vs 1 GPU |")
    else:
        lines.append("| sparkzoo engine on all GPUs | not run: this machine has one GPU | |")
    lines += [
        f"| eager limit: forward + softmax on the GPU, rows already there, batch {best_batch} | {limit:,.0f} rows/s | 1.00x |",
        f"| **sparkzoo score.run, local[*], score.device=cuda, {args.rows:,} rows** | **{scored:,.0f} rows/s** | "
        f"**{scored / limit:.2f}x** the eager limit |",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    if not args.no_write:
        write_section(text)
        print(f"wrote the GPU section of {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
