"""Batch scoring throughput on replicated Fashion-MNIST, one SparkSession, one registered LeNet-like CNN.

Sides (rows/s, medians of interleaved repeats, because these machines show CPU steal):
  ours          sparkzoo score.run on Spark: its Python workers read their row groups with pyarrow, score
                Arrow batches of score.batch_size (model once per worker, inference_mode) and write their
                own files (score.file_io=auto -> pyarrow), reject pass, drift profile and checks included;
                each repeat's Spark sides start on warm workers (untimed 2,000-row jobs, warm_workers)
  ours (Spark file I/O)  the same job with score.file_io=spark: Spark's JVM reads the Parquet and hands the
                workers Arrow batches (mapInArrow), then writes what they return
  ours+<path>   the same job with score.optimize=<path>, the fastest path of the in-process check below
                that stays within 0.5 points of eager accuracy (the job checks accuracy again)
  ours+auto     the same job with score.optimize=auto: the driver times each CPU path on its check rows
                (first job; later jobs reuse the timings) and keeps the fastest within 0.5 points
  spark_udf     mlflow.pyfunc.spark_udf on the same registered version, as its docs show, same Parquet in
                and out, Spark's default Arrow batch (10,000 rows)
  row-at-a-time Horovod TorchModel.transform style: rdd.mapPartitions, model once per partition, one
                forward per row (on a subset of the rows: see --row-udf-rows)
  ours (pandas) the same job with score.batch_format=pandas: the former mapInPandas worker, beside the
                Arrow-native one (mapInArrow, pipelines/arrow_rows.py) that `ours` runs
  ray data      Ray Data (read_parquet -> map_batches, a pool of 2 actors with the model -> write_parquet) on
                the same Parquet and cores, the same model as TorchScript, from a venv the bench builds
                (bench/ray_scoring.py; batch sizes swept once, the best one timed each repeat)
  limit         the machine's in-memory limit for the same model: the same pixels already in memory as
                float tensors, the bare forward pass, the better of N processes x 1 thread and 1 process
                x N threads (N = cores) at every batch of a sweep, then in each repeat the best of the
                sweep's two fastest setups; the same for each optimised path (the int8 model in memory is
                the limit of the int8 side)

    .venv/bin/python bench/scoring.py [--rows 1000000] [--repeats 3] [--row-udf-rows 50000]
    .venv/bin/python bench/scoring.py --drift [--rows 1000000]   # what the drift profile costs (score.drift)

Prepares Fashion-MNIST and trains a 1-epoch model under workspace/bench when they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time

import numpy as np

from _common import ROOT, experiment, machine, prepared, print_medians, ray_python

BENCH_WS = ROOT / "workspace" / "bench"
MODEL = "bench_scoring_cnn"


def bench_exp(*extra: str):
    return experiment(f"workspace={BENCH_WS}", "name=bench_scoring", f"mlflow.model_name={MODEL}",
                      "mlflow.experiment=bench_scoring", "train.epochs=1", "train.progress=false",
                      "spark.conf.spark.ui.showConsoleProgress=false", "spark.conf.spark.sql.shuffle.partitions=2",
                      *extra)


def registered_version(exp, spark) -> int:
    from sparkzoo.pipelines import track, train

    version = track.alias_version(exp, "champion")
    if version is None:
        print(f"   training the bench model ({exp.train.epochs} epoch(s))...", flush=True)
        version = train.run(exp, spark).model_version
    return version


def replicated_input(spark, ds, rows: int, columns: tuple[str, ...] = ("id", "image", "label"),
                     name: str = "scoring_input") -> str:
    """The test split crossJoined with a range, new ids, written once as Parquet (8 files, no shuffle)."""
    from pyspark.sql import functions as F

    path = str(BENCH_WS / f"{name}_{rows}")
    if os.path.exists(os.path.join(path, "_SUCCESS")):
        return path
    test = spark.read.parquet(ds.split_dir("test")).select(*columns)
    n = test.count()
    copies = -(-rows // n)
    rep = (spark.range(copies, numPartitions=8).withColumnRenamed("id", "copy").crossJoin(F.broadcast(test))
           .withColumn("id", F.concat_ws("#", "id", F.col("copy").cast("string"))).drop("copy"))
    if copies * n != rows:
        rep = rep.limit(rows)   # one partition then; exact multiples of the test split keep 8 files
    rep.write.mode("overwrite").parquet(path)
    return path


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_ours(exp, spark, path: str, rows: int, optimize: str = "none", batch: int | None = None,
             make_exp=None, out: str = "pred_ours", chosen: list[str] | None = None) -> float:
    from sparkzoo.pipelines import score

    sets = [f"score.input_path={path}", f"score.output={BENCH_WS / out}", "score.run_date=2026-01-01",
            f"score.optimize={optimize}"] + ([f"score.batch_size={batch}"] if batch else [])
    e = (make_exp or bench_exp)(*sets)
    result = {}
    secs = timed(lambda: result.update(r=score.run(e, spark)))
    assert result["r"].scored_rows == rows, result["r"]
    if chosen is not None:
        chosen.append(result["r"].optimize)
    return rows / secs


WARM_ROWS = 2000


def warm_workers(exp, spark, path: str, optimize: str | None) -> None:
    """Untimed jobs on WARM_ROWS rows before the Spark sides (eager, then the optimised path), as the
    limit's processes load their model before their clock starts. The limit sides take about a minute,
    and Spark 3.5 ends a Python worker idle for 60 s (PythonWorkerFactory, not configurable), so without
    them the Spark sides of every repeat timed new workers importing torch and loading the model (~1.5 s
    a worker, 6% of a 240,000-row eager job) and a process's first int8_static build (1.8 s against
    0.4 s for a later one). The optimised side calibrates on the rows the version's first calibrated
    job kept (``score.optimize_calibration: kept``, the default), as a nightly job does after its first
    night; the timed job still checks the path's accuracy on its own labelled rows. A cold job's costs
    are bench/latency.py's subject."""
    loose = lambda *sets: bench_exp(*sets, "score.optimize_tolerance=1")   # noqa: E731  (2,000 rows: no verdict)
    for path_kind in ["none", *([optimize] if optimize else [])]:
        run_ours(exp, spark, path, WARM_ROWS, optimize=path_kind, make_exp=loose, out="pred_warm")


def run_spark_udf(exp, spark, path: str, version: int, rows: int, model: str = MODEL, column: str = "image",
                  out: str = "pred_spark_udf") -> float:
    """``mlflow.pyfunc.spark_udf`` as its docs show, on the model's signature column."""
    import mlflow

    from sparkzoo.pipelines import track

    track.client(exp)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")   # Spark's default
    udf = mlflow.pyfunc.spark_udf(spark, f"models:/{model}/{version}",
                                  result_type="prediction long, confidence float, probability array<float>")
    df = spark.read.parquet(path)
    job = df.select("id", udf(column).alias("p"), "label").select("id", "p.*", "label")
    return rows / timed(lambda: job.write.mode("overwrite").parquet(str(BENCH_WS / out)))


def run_row_udf(exp, spark, path: str, version: int, rows: int) -> float:
    """Horovod ``TorchModel._transform``'s shape: rdd.mapPartitions, model per partition, a forward per row."""
    import mlflow

    from sparkzoo.pipelines import track

    track.client(exp)
    local = mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version}")
    model_dir = os.path.join(local, "artifacts")

    def predict(it):
        import torch
        from pyspark.sql import Row

        from sparkzoo.models.tasks import images_to_tensor
        from sparkzoo.pipelines.modelpack import Predictor

        torch.set_num_threads(1)
        p = Predictor.from_dir(model_dir)
        st = p.spec["stats"]
        for row in it:
            x = images_to_tensor(np.frombuffer(row["image"], np.uint8).reshape(1, 28, 28, 1), st["mean"], st["std"])
            with torch.inference_mode():
                prob = torch.softmax(p.module(x), 1)[0]
            yield Row(id=row["id"], prediction=int(prob.argmax()), confidence=float(prob.max()),
                      probability=prob.tolist(), label=row["label"])

    df = spark.read.parquet(path).limit(rows)
    out = str(BENCH_WS / "pred_row_udf")
    schema = "id string, prediction long, confidence double, probability array<double>, label bigint"
    return rows / timed(lambda: spark.createDataFrame(df.rdd.mapPartitions(predict), schema)
                        .write.mode("overwrite").parquet(out))


def export_torchscript(predictor, x) -> str:
    """The registered model's network as TorchScript: what the Ray venv (no sparkzoo, no MLflow) loads."""
    import torch

    path = BENCH_WS / "ray" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.jit.trace(predictor.module.eval(), x[:8]).save(str(path))
    return str(path)


def run_ray(path: str, model: str, spec: dict, batches: list[int]) -> dict[int, float]:
    """Ray Data's rows/s per batch size (bench/ray_scoring.py in the Ray venv, one Ray instance)."""
    shape = spec["shape"]
    cmd = [ray_python(), str(ROOT / "bench" / "ray_scoring.py"), "--input", path, "--output", str(BENCH_WS / "pred_ray"),
           "--model", model, "--mean", str(spec["stats"]["mean"]), "--std", str(spec["stats"]["std"]),
           "--shape", f"{shape['height']},{shape['width']},{shape['channels']}",
           "--batch-sizes", ",".join(map(str, batches)), "--cpus", str(os.cpu_count() or 1)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {r["batch"]: r["rows_per_s"] for r in map(json.loads, filter(None, out.splitlines()))
            if r.get("rows_per_s")}


def eager_rate(predictor, x, reps: int, batch: int) -> float:
    """Rows/s of the bare forward + softmax over in-memory float tensors (``x``, reused ``reps`` times)."""
    import torch

    n = x.shape[0]
    task = predictor.task
    with torch.inference_mode():
        for i in range(0, min(n, 2 * batch), batch):   # warm-up (and the compile, for the compiled path)
            task.outputs(predictor.module(x[i:i + batch]), x[i:i + batch])
        t0 = time.perf_counter()
        for _ in range(reps):
            for i in range(0, n, batch):
                task.outputs(predictor.module(x[i:i + batch]), x[i:i + batch])
    return reps * n / (time.perf_counter() - t0)


def _limit_worker(local: str, kind: str, calibration, x, batch: int, reps: int, start, results) -> None:
    """One process of the N x 1-thread limit: its own model copy, waiting at ``start`` so all run together."""
    import torch

    from sparkzoo.pipelines.modelpack import Predictor

    torch.set_num_threads(1)
    p = Predictor.from_dir(local, optimize=kind, calibration=calibration)
    xk = x.contiguous(memory_format=torch.channels_last) if kind in ("channels_last", "compile") else x
    eager_rate(p, xk, 0, batch)   # warm-up only (reps=0)
    start.wait()
    t0 = time.perf_counter()
    eager_rate(p, xk, reps, batch)
    results.put((reps * x.shape[0], t0, time.perf_counter()))


def processes_rate(local: str, kind: str, calibration, x, batch: int, reps: int, procs: int) -> float:
    """Rows/s of ``procs`` processes x 1 thread, each over its own copy of ``x``: all rows / the span from
    the first start to the last finish."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")   # a fork after torch ran threads can hang; spawn starts clean
    start, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_limit_worker, args=(local, kind, calibration, x, batch, reps, start, results))
               for _ in range(procs)]
    for w in workers:
        w.start()
    got = [results.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return sum(g[0] for g in got) / (max(g[2] for g in got) - min(g[1] for g in got))


def limit_setup(local: str, kind: str, calibration, x, batches: list[int], reps: int, cores: int, finalists: int = 2):
    """Every (layout, batch) of the sweep for one path -> ``(label, rate function)``: the function measures
    the sweep's ``finalists`` fastest setups and returns the best of them. One sweep sample per setup is
    noisy on these machines (a setup that won the sweep by 3% lost in every repeat after it), so each
    repeat takes the best of the finalists: the limit errs high, against us."""
    import torch

    from sparkzoo.pipelines.modelpack import Predictor

    p = Predictor.from_dir(local, optimize=kind, calibration=calibration)
    xk = x.contiguous(memory_format=torch.channels_last) if kind in ("channels_last", "compile") else x
    rates: dict[tuple[str, int], float] = {}
    torch.set_num_threads(cores)
    for b in batches:
        rates[("threads", b)] = eager_rate(p, xk, reps, b)
    if cores > 1:
        for b in batches:
            rates[("processes", b)] = processes_rate(local, kind, calibration, x, b, reps, cores)
    torch.set_num_threads(1)
    best = sorted(rates, key=rates.get, reverse=True)[:finalists]
    print(f"   limit sweep {kind}: " + "; ".join(f"{lay} {b}: {r:,.0f}" for (lay, b), r in rates.items())
          + " -> finalists " + ", ".join(f"{lay} batch {b}" for lay, b in best), flush=True)

    def named(layout: str) -> str:
        return f"{cores} processes x 1 thread" if layout == "processes" else f"1 process x {cores} threads"

    def rate(layout: str, batch: int, reps_now: int) -> float:
        if layout == "processes":
            return processes_rate(local, kind, calibration, x, batch, reps_now, cores)
        torch.set_num_threads(cores)
        try:
            return eager_rate(p, xk, reps_now, batch)
        finally:
            torch.set_num_threads(1)

    def measure(reps_now: int) -> float:
        return max(rate(layout, b, reps_now) for layout, b in best)

    return "best of " + " and ".join(f"{named(lay)}, batch {b}" for lay, b in best), measure


def worker_chunk_sweep(local: str, pixels, calibration, sizes=(32, 64, 128, 256, 1024)) -> None:
    """What one Spark worker sees: one torch thread, the Predictor's own decode-to-probabilities path
    over the 10,000 test rows, per ``score.image_chunk``; how IMAGE_CHUNK was chosen."""
    import torch

    from sparkzoo.pipelines.modelpack import Predictor

    torch.set_num_threads(1)
    for kind in ("none", "bf16", "int8_static"):
        rates = []
        for size in sizes:
            p = Predictor.from_dir(local, optimize=kind, image_chunk=size, calibration=calibration)
            p.predict_arrays(pixels[:2000])
            best = min(timed(lambda: p.predict_arrays(pixels)) for _ in range(2))
            rates.append(f"{size}: {len(pixels) / best:,.0f}")
        print(f"   one worker (1 thread), {kind}, rows/s per score.image_chunk: " + ", ".join(rates), flush=True)


def compare_batch(args) -> None:
    """Our job at several score.batch_size values vs spark_udf, interleaved: how score.batch_size was chosen."""
    from sparkzoo.pipelines.session import get_spark

    exp = bench_exp()
    ds = prepared(exp)
    spark = get_spark(exp)
    version = registered_version(exp, spark)
    path = replicated_input(spark, ds, args.rows)
    sizes = [int(b) for b in args.compare_batch.split(",")]
    res: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        for b in sizes:
            res.setdefault(f"ours score.batch_size={b}", []).append(run_ours(exp, spark, path, args.rows, batch=b))
        res.setdefault("mlflow spark_udf", []).append(run_spark_udf(exp, spark, path, version, args.rows))
        print(f"   repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in res.items()), flush=True)
    for k, v in res.items():
        print(f"   {k:40s} {statistics.median(v):>10,.0f}   raw {[round(r) for r in v]}")


def compare_drift(args) -> None:
    """Scoring with and without the drift profile (score.drift), interleaved: what profiling costs.

    The profile is counted in the scoring pass (each task's bins, pipelines/drift_stream.py) and compared on
    the driver; the issue's bar (21) is under 10% of the scoring job's time at 1,000,000 rows.
    """
    from sparkzoo.pipelines import monitoring, track
    from sparkzoo.pipelines.session import get_spark

    exp = bench_exp()
    ds = prepared(exp)
    spark = get_spark(exp)
    version = registered_version(exp, spark)
    run_id = track.client(exp).get_model_version(MODEL, str(version)).run_id
    ref = monitoring.load_reference(exp, run_id)
    if ref is None or "embedding_directions" not in ref:   # trained before drift profiles (or embedding directions)
        monitoring.log_reference(exp, spark, run_id, MODEL, version, ds)
    path = replicated_input(spark, ds, args.rows)
    print(f"== drift profiling cost: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}, {args.rows:,} rows, "
          f"model {MODEL} v{version}, Spark {spark.sparkContext.master}", flush=True)
    from sparkzoo.pipelines import score

    secs: dict[str, list[float]] = {"score.drift=false": [], "score.drift=true": []}
    inside: list[float] = []   # the drift check's own seconds, timed inside the job that ran it
    for rep in range(args.repeats):
        for side in secs:
            e = bench_exp(f"score.input_path={path}", f"score.output={BENCH_WS / 'pred_ours'}",
                          "score.run_date=2026-01-01", f"score.drift={side.split('=')[1]}")
            r = score.run(e, spark)
            assert r.scored_rows == args.rows, r
            secs[side].append(r.seconds)
            if r.drift:
                inside.append(r.drift["profile_seconds"] / r.seconds)
        print(f"   repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in secs.items())
              + (f"; drift check {100 * inside[-1]:.1f}% of its job" if inside else ""), flush=True)
    off, on = (statistics.median(v) for v in secs.values())
    print(f"   medians: without {off:.1f}s, with {on:.1f}s: difference {on - off:+.1f}s = {100 * (on - off) / off:+.1f}%; "
          f"drift check timed inside its job: median {100 * statistics.median(inside):.1f}% of the job   raw {secs}")
    shutil.rmtree(BENCH_WS / "pred_ours", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--row-udf-rows", type=int, default=50_000)
    ap.add_argument("--eager-reps", type=int, default=10, help="passes over the 10,000 in-memory test tensors")
    ap.add_argument("--batch-sizes", default="32,64,128,256,1024,4096",
                    help="the limit's batch sweep (each layout, each path that gets a limit)")
    ap.add_argument("--skip", default="", help="comma list of sides to skip: spark_udf,row_udf,opt,ray,pandas,auto,spark_io")
    ap.add_argument("--ray-batch-sizes", default="256,1024,4096", help="the Ray Data side's batch sweep")
    ap.add_argument("--chunk-sweep", action="store_true",
                    help="only sweep score.image_chunk for one worker (1 thread) per inference path")
    ap.add_argument("--compare-batch", default="",
                    help="only compare our job at these score.batch_size values (e.g. 2048,10000) with spark_udf")
    ap.add_argument("--drift", action="store_true",
                    help="only time our job with and without the drift profile (score.drift), interleaved")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.compare_batch:
        compare_batch(args)
        return
    if args.drift:
        compare_drift(args)
        return

    import mlflow
    import pyarrow.parquet as pq
    import torch

    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.modelpack import Predictor
    from sparkzoo.pipelines.session import get_spark

    cores = os.cpu_count() or 1
    exp = bench_exp()
    ds = prepared(exp)
    spark = get_spark(exp)
    version = registered_version(exp, spark)
    path = replicated_input(spark, ds, args.rows)
    print(f"== scoring bench: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}, {args.rows:,} rows at {path}, "
          f"model {MODEL} v{version}, Spark {spark.sparkContext.master}", flush=True)

    # The limit: same pixels, already normalised float tensors in memory, the bare forward pass.
    track.client(exp)
    local = os.path.join(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version}"), "artifacts")
    frame = pq.read_table(ds.split_dir("test"), columns=["image", "label"]).to_pandas()
    eager = Predictor.from_dir(local)
    pixels, labels = eager.decode(frame["image"]), frame["label"].to_numpy()
    st = eager.spec["stats"]
    from sparkzoo.models.tasks import images_to_tensor

    x = images_to_tensor(pixels, st["mean"], st["std"]).contiguous()
    acc_eager = float((eager.predict_arrays(pixels)["prediction"] == labels).mean())
    # int8_static calibrates on the first rows of the training split (the scorer uses its input's)
    calibration = eager.decode(pq.read_table(ds.split_dir("train"), columns=["image"]).slice(0, 512)
                               .to_pandas()["image"])
    if args.chunk_sweep:
        worker_chunk_sweep(local, pixels, calibration)
        return
    batches = [int(b) for b in args.batch_sizes.split(",")]
    sweep_reps = max(1, args.eager_reps // 3)
    limits = {"none": limit_setup(local, "none", calibration, x, batches, sweep_reps, cores)}

    # Optimised paths, accuracy checked against eager on the 10,000 labelled rows; the fastest that keeps
    # accuracy gets a limit of its own (its model in memory, both layouts, swept batches).
    opt_rates, opt_acc = {}, {}
    best_opt = None
    if "opt" not in skip:
        torch.set_num_threads(cores)
        for kind in ("channels_last", "bf16", "int8", "int8_static", "compile"):
            p = Predictor.from_dir(local, optimize=kind, calibration=calibration)
            xk = x.contiguous(memory_format=torch.channels_last) if kind in ("channels_last", "compile") else x
            opt_acc[kind] = float((p.predict_arrays(pixels)["prediction"] == labels).mean())
            opt_rates[kind] = eager_rate(p, xk, sweep_reps, 256)
            print(f"   in memory, {kind}: {opt_rates[kind]:,.0f} rows/s (1 process x {cores} threads, batch 256), "
                  f"accuracy {opt_acc[kind]:.4f} vs eager {acc_eager:.4f}", flush=True)
        torch.set_num_threads(1)
        passing = {k: r for k, r in opt_rates.items() if abs(opt_acc[k] - acc_eager) <= 0.005}
        best_opt = max(passing, key=passing.get) if passing else None
        if best_opt:
            limits[best_opt] = limit_setup(local, best_opt, calibration, x, batches, sweep_reps, cores)
    print(f"   chosen optimisation: {best_opt}", flush=True)

    torch.set_num_threads(1)
    sides: dict[str, list[float]] = {"ours": [], "limit": []}
    if "spark_io" not in skip:
        sides["ours (Spark file I/O)"] = []
    if "pandas" not in skip:
        sides["ours (pandas batches)"] = []
    chosen: list[str] = []   # what score.optimize=auto picked on each repeat
    if best_opt:
        sides[f"ours+{best_opt}"], sides[f"limit {best_opt}"] = [], []
        if "auto" not in skip:
            sides["ours+auto"] = []
        # auto times the paths on its first job and keeps the timings per model version and machine (as a
        # nightly job would); start without them, so repeat 1 pays the measurement and later ones do not.
        # The int8 calibration rows kept there go too: repeat 1's untimed warm-up job calibrates and keeps them
        shutil.rmtree(BENCH_WS / "inference_paths", ignore_errors=True)
    if "spark_udf" not in skip:
        sides["mlflow spark_udf"] = []
    if "row_udf" not in skip:
        sides[f"row-at-a-time UDF ({args.row_udf_rows:,} rows)"] = []
    ray_batch = None
    if "ray" not in skip:
        ray_model = export_torchscript(eager, x)
        sweep = run_ray(path, ray_model, eager.spec, [int(b) for b in args.ray_batch_sizes.split(",")])
        ray_batch = max(sweep, key=sweep.get)
        print("   ray data sweep: " + "; ".join(f"batch {b}: {r:,.0f}" for b, r in sweep.items())
              + f" -> batch {ray_batch}", flush=True)
        sides[f"ray data (batch {ray_batch})"] = []
    pandas_exp = lambda *sets: bench_exp("score.batch_format=pandas", *sets)   # noqa: E731
    spark_io_exp = lambda *sets: bench_exp("score.file_io=spark", *sets)   # noqa: E731
    warm = replicated_input(spark, ds, WARM_ROWS)
    for rep in range(args.repeats):    # interleaved, so CPU steal hits every side alike
        began = time.perf_counter()
        sides["limit"].append(limits["none"][1](args.eager_reps))
        if best_opt:
            sides[f"limit {best_opt}"].append(limits[best_opt][1](args.eager_reps))
        print(f"   repeat {rep + 1}: the limit sides took {time.perf_counter() - began:.0f} s", flush=True)
        warm_workers(exp, spark, warm, best_opt)
        sides["ours"].append(run_ours(exp, spark, path, args.rows))
        if "spark_io" not in skip:
            sides["ours (Spark file I/O)"].append(run_ours(exp, spark, path, args.rows, make_exp=spark_io_exp))
        if "pandas" not in skip:
            sides["ours (pandas batches)"].append(run_ours(exp, spark, path, args.rows, make_exp=pandas_exp))
        if best_opt:
            sides[f"ours+{best_opt}"].append(run_ours(exp, spark, path, args.rows, optimize=best_opt))
            if "auto" not in skip:
                sides["ours+auto"].append(run_ours(exp, spark, path, args.rows, optimize="auto", chosen=chosen))
        if "spark_udf" not in skip:
            sides["mlflow spark_udf"].append(run_spark_udf(exp, spark, path, version, args.rows))
        if "row_udf" not in skip:
            sides[f"row-at-a-time UDF ({args.row_udf_rows:,} rows)"].append(
                run_row_udf(exp, spark, path, version, args.row_udf_rows))
        if ray_batch is not None:
            sides[f"ray data (batch {ray_batch})"].append(run_ray(path, ray_model, eager.spec, [ray_batch])[ray_batch])
        print(f"   repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in sides.items()), flush=True)

    med = print_medians(sides, f"== medians of {args.repeats} (rows/s); score.batch_size={exp.score.batch_size}, "
                               f"{cores} Spark workers x 1 thread; limit: {limits['none'][0]}"
                               + (f"; limit {best_opt}: {limits[best_opt][0]}" if best_opt else ""))
    udf = med.get("mlflow spark_udf", float("nan"))
    print(f"   ratio ours / limit: {med['ours'] / med['limit']:.2f}x; ours / mlflow spark_udf: {med['ours'] / udf:.2f}x; "
          f"ours / ours (pandas batches): {med['ours'] / med.get('ours (pandas batches)', float('nan')):.2f}x; "
          f"ours / ours (Spark file I/O): {med['ours'] / med.get('ours (Spark file I/O)', float('nan')):.2f}x; "
          f"ours (Spark file I/O) / limit: {med.get('ours (Spark file I/O)', float('nan')) / med['limit']:.2f}x")
    if best_opt:
        if chosen:
            print(f"   score.optimize=auto chose: {', '.join(chosen)} (repeat 1 timed the paths, later repeats reused it)")
        for side in [f"ours+{best_opt}", *(["ours+auto"] if "auto" not in skip else [])]:
            print(f"   ratio {side} / limit {best_opt}: {med[side] / med[f'limit {best_opt}']:.2f}x; "
                  f"{side} / mlflow spark_udf: {med[side] / udf:.2f}x")
    if ray_batch is not None:
        print(f"   ratio ours / ray data: {med['ours'] / med[f'ray data (batch {ray_batch})']:.2f}x")
    for out in ("pred_ours", "pred_spark_udf", "pred_row_udf", "pred_ray"):
        shutil.rmtree(BENCH_WS / out, ignore_errors=True)


if __name__ == "__main__":
    main()
