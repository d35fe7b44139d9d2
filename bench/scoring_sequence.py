"""Batch scoring throughput for a sequence model: the BiLSTM sentence-polarity classifier on replicated
Pang & Lee sentences, one SparkSession (the sequence half of issue 7's scoring bench; bench/scoring.py is
the CNN half and shares its helpers).

Sides (rows/s, medians of interleaved repeats):
  ours          sparkzoo score.run on prepared token ids: Parquet -> mapInPandas (model once per worker,
                Arrow batches of score.batch_size, packed sequences, inference_mode) -> partitioned Parquet
  ours+<path>   the same job with score.optimize=<path> (--paths: int8 = dynamic int8 LSTM + Linear, bf16 =
                bfloat16 weights and activations, auto = the scorer times the CPU paths and keeps the fastest
                that passes its accuracy check); named paths are accuracy-checked here first
  spark_udf     mlflow.pyfunc.spark_udf on the same registered version, as its docs show: the model's
                signature takes raw ``text`` (the pyfunc tokenises with the model's own vocabulary)
  row-at-a-time one forward per sentence in rdd.mapPartitions (Horovod TorchModel.transform's shape)
  eager limit   one process, torch threads = cores, the same sentences as padded id tensors already in
                memory, sorted by length (the least padding), best batch size of a sweep; also eager+<path>

    .venv/bin/python bench/scoring_sequence.py [--rows 1000000] [--repeats 3] [--row-udf-rows 20000]

Prepares Pang & Lee and trains a 2-epoch BiLSTM under workspace/bench when they are missing. The input
rows are copies of the 400-sentence test split (ids suffixed #copy): figures come from replicated data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np

from _common import ROOT, experiment, machine, prepared, print_medians
from scoring import registered_version, replicated_input, run_ours, run_spark_udf, timed

BENCH_WS = ROOT / "workspace" / "bench"
MODEL = "bench_scoring_bilstm"
CONF = "conf/pang_lee_polarity.yaml"


def bench_exp(*extra: str):
    return experiment(f"workspace={BENCH_WS}", "name=bench_scoring_text", f"mlflow.model_name={MODEL}",
                      "mlflow.experiment=bench_scoring", "train.epochs=2", "train.progress=false",
                      "train.early_stopping_patience=null",
                      "spark.conf.spark.ui.showConsoleProgress=false", "spark.conf.spark.sql.shuffle.partitions=2",
                      *extra, conf=CONF)


def run_row_udf(exp, spark, path: str, version: int, rows: int) -> float:
    import mlflow

    from sparkzoo.pipelines import track

    track.client(exp)
    model_dir = os.path.join(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version}"), "artifacts")

    def predict(it):
        import torch
        from pyspark.sql import Row

        from sparkzoo.pipelines.modelpack import Predictor

        torch.set_num_threads(1)
        p = Predictor.from_dir(model_dir)
        for row in it:
            ids = torch.tensor([list(row["token_ids"])])
            with torch.inference_mode():
                prob = torch.softmax(p.module({"tokens": ids, "lengths": torch.tensor([ids.shape[1]])}), 1)[0]
            yield Row(id=row["id"], prediction=int(prob.argmax()), confidence=float(prob.max()),
                      probability=prob.tolist(), label=row["label"])

    df = spark.read.parquet(path).limit(rows)
    schema = "id string, prediction long, confidence double, probability array<double>, label bigint"
    return rows / timed(lambda: spark.createDataFrame(df.rdd.mapPartitions(predict), schema)
                        .write.mode("overwrite").parquet(str(BENCH_WS / "pred_text_row_udf")))


def eager_rate(predictor, batch: dict[str, np.ndarray], reps: int, size: int) -> float:
    """Rows/s of the bare forward + softmax over in-memory id tensors sorted by length."""
    import torch

    order = np.argsort(batch["token_ids__len"], kind="stable")
    ids, lens = torch.from_numpy(batch["token_ids"][order]), torch.from_numpy(batch["token_ids__len"][order])
    chunks = []
    for i in range(0, len(lens), size):
        width = int(lens[i:i + size].max())
        chunks.append({"tokens": ids[i:i + size, :width].contiguous(), "lengths": lens[i:i + size]})
    with torch.inference_mode():
        for c in chunks[:2]:
            torch.softmax(predictor.module(c), 1)
        t0 = time.perf_counter()
        for _ in range(reps):
            for c in chunks:
                torch.softmax(predictor.module(c), 1)
    return reps * len(lens) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--row-udf-rows", type=int, default=20_000)
    ap.add_argument("--eager-copies", type=int, default=25, help="copies of the test split held in memory")
    ap.add_argument("--batch-sizes", default="64,256,1024,4096")
    ap.add_argument("--skip", default="", help="comma list of sides to skip: spark_udf,row_udf,opt")
    ap.add_argument("--paths", default="int8,bf16,auto", help="score.optimize paths to run as ours+<path> sides")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

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
    path = replicated_input(spark, ds, args.rows, ("id", "text", "token_ids", "label"), "scoring_text_input")
    print(f"== sequence scoring bench: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}, {args.rows:,} rows at {path}, "
          f"model {MODEL} v{version} (bilstm), Spark {spark.sparkContext.master}", flush=True)

    track.client(exp)
    local = os.path.join(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version}"), "artifacts")
    frame = pq.read_table(ds.split_dir("test"), columns=["token_ids", "label"]).to_pandas()
    eager = Predictor.from_dir(local)
    test_batch, labels = eager.batch(frame), frame["label"].to_numpy()
    acc_eager = float((eager.predict_batch(test_batch)["prediction"] == labels).mean())
    big = {k: np.concatenate([v] * args.eager_copies) for k, v in test_batch.items()}
    torch.set_num_threads(cores)
    sweep = {b: eager_rate(eager, big, 1, b) for b in map(int, args.batch_sizes.split(","))}
    best = max(sweep, key=sweep.get)
    print("   eager batch-size sweep (rows/s): " + ", ".join(f"{b}: {r:,.0f}" for b, r in sweep.items())
          + f" -> best {best}", flush=True)
    fast: dict[str, Predictor] = {}   # named opt-in paths that pass the scorer's accuracy check
    wanted = [] if "opt" in skip else [p for p in args.paths.split(",") if p]
    for opt in (p for p in wanted if p != "auto"):
        q = Predictor.from_dir(local, optimize=opt)
        acc_q = float((q.predict_batch(test_batch)["prediction"] == labels).mean())
        ok = abs(acc_q - acc_eager) <= exp.score.optimize_tolerance
        print(f"   {opt}: accuracy {acc_q:.4f} vs eager {acc_eager:.4f} ({'kept' if ok else 'refused'})", flush=True)
        if ok:
            fast[opt] = q
    ours_paths = [p for p in wanted if p in fast or p == "auto"]

    sides: dict[str, list[float]] = {"ours": [], "eager limit": []}
    for opt in ours_paths:
        sides[f"ours+{opt}"] = []
    for opt in fast:
        sides[f"eager+{opt}"] = []
    if "spark_udf" not in skip:
        sides["mlflow spark_udf (raw text)"] = []
    if "row_udf" not in skip:
        sides[f"row-at-a-time UDF ({args.row_udf_rows:,} rows)"] = []
    chosen: dict[str, list[str]] = {}
    for rep in range(args.repeats):
        torch.set_num_threads(cores)
        sides["eager limit"].append(eager_rate(eager, big, 2, best))
        for name, q in fast.items():
            sides[f"eager+{name}"].append(eager_rate(q, big, 2, best))
        torch.set_num_threads(1)
        sides["ours"].append(run_ours(exp, spark, path, args.rows, make_exp=bench_exp, out="pred_text_ours"))
        for name in ours_paths:
            sides[f"ours+{name}"].append(run_ours(exp, spark, path, args.rows, optimize=name, make_exp=bench_exp,
                                                  out="pred_text_ours", chosen=chosen.setdefault(name, [])))
        if "spark_udf" not in skip:
            sides["mlflow spark_udf (raw text)"].append(run_spark_udf(exp, spark, path, version, args.rows, MODEL,
                                                                      "text", "pred_text_spark_udf"))
        if "row_udf" not in skip:
            sides[f"row-at-a-time UDF ({args.row_udf_rows:,} rows)"].append(
                run_row_udf(exp, spark, path, version, args.row_udf_rows))
        print(f"   repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in sides.items()), flush=True)

    med = print_medians(sides, f"== medians of {args.repeats} (rows/s); score.batch_size={exp.score.batch_size}, "
                               f"eager batch {best}, {cores} threads eager, {cores} Spark workers x 1 thread")
    for name in ours_paths:
        print(f"   ratio ours+{name} / eager limit: {med[f'ours+{name}'] / med['eager limit']:.2f}x"
              + (f"; eager+{name} / eager limit: {med[f'eager+{name}'] / med['eager limit']:.2f}x" if name in fast
                 else f" (auto chose {sorted(set(chosen[name]))})"))
    for out in ("pred_text_ours", "pred_text_spark_udf", "pred_text_row_udf"):
        shutil.rmtree(BENCH_WS / out, ignore_errors=True)


if __name__ == "__main__":
    main()
