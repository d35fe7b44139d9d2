"""Small scoring jobs, command to exit: where the seconds go, beside the same work without Spark.

Sides (seconds from starting the command to its exit, medians of interleaved repeats):
  ours          `sparkzoo score` as a user runs it (a new process, the config's local master, score.engine
                auto: these small inputs score in process, with no JVM), on 3,000 raw-text rows (the
                BiLSTM polarity model tokenises them), 10,000 images and 100 images (the LeNet-like CNN);
                its own phase line gives the breakdown (process start and imports, model download, input
                checks, the scoring pass, drift profile, commit)
  spark         the same command with --set score.engine=spark: the job on local Spark (JVM and session,
                Python workers, read-back counts), as every job ran before the in-process engine
  plain         the same registered model with no Spark: a new Python process that loads it with
                `mlflow.pyfunc.load_model`, reads the same Parquet with pyarrow, predicts in one call and
                writes Parquet; the floor for a small job on one machine

    .venv/bin/python bench/latency.py [--repeats 3]

Uses the models that bench/scoring.py and bench/scoring_sequence.py train (trains them when missing).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

from _common import ROOT, machine

BIN = os.path.dirname(sys.executable)
BENCH_WS = ROOT / "workspace" / "bench"

PLAIN = r"""
import sys, time
import mlflow, pyarrow as pa, pyarrow.parquet as pq
uri, model, src, out, column = sys.argv[1:6]
mlflow.set_tracking_uri(uri)
m = mlflow.pyfunc.load_model(model)
frame = pq.read_table(src).to_pandas()
pred = m.predict(frame[[column]])
pred.insert(0, "id", frame["id"].to_numpy())
pq.write_table(pa.Table.from_pandas(pred, preserve_index=False), out)
print("rows", len(pred))
"""


def inputs(rows_text: int) -> dict[str, tuple]:
    """(conf, overrides, Parquet input, model URI, tracking URI, input column) per small job."""
    import scoring
    import scoring_sequence

    from sparkzoo.pipelines import track
    from sparkzoo.pipelines.session import get_spark

    from _common import prepared

    jobs = {}
    for bench, label, col, sizes in ((scoring_sequence, "raw-text rows", "text", (rows_text,)),
                                     (scoring, "images", "image", (10_000, 100))):
        exp = bench.bench_exp()
        ds = prepared(exp)
        spark = get_spark(exp)
        version = bench.registered_version(exp, spark)
        for n in sizes:
            # one small Parquet file (copies of the test split), as a user's small nightly table often is
            path = scoring.replicated_input(spark, ds, n, ("id", col, *(["label"] if col == "image" else [])),
                                            name=f"latency_{col}")
            sets = [f"workspace={bench.BENCH_WS}", f"name={exp.name}", f"mlflow.model_name={bench.MODEL}",
                    f"mlflow.experiment={exp.mlflow.experiment}", f"score.input_path={path}",
                    f"score.output={bench.BENCH_WS / f'latency_pred_{col}_{n}'}", "score.run_date=2026-01-01",
                    f"score.model_uri=models:/{bench.MODEL}/{version}"]
            conf = bench.CONF if hasattr(bench, "CONF") else "conf/fashion_mnist_cnn.yaml"
            jobs[f"{n:,} {label}"] = (conf, sets, path, f"models:/{bench.MODEL}/{version}",
                                      track.tracking_uri(exp), col)
        spark.stop()
    return jobs


def run_ours(conf: str, sets: list[str], engine: str = "auto") -> tuple[float, str]:
    cmd = [os.path.join(BIN, "sparkzoo"), "score", "-c", str(ROOT / conf)]
    for s in [*sets, f"score.engine={engine}"]:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"sparkzoo score failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    # a console run keeps INFO lines in its log file (workspace/logs/score-*.log), not on the terminal
    logs = sorted((BENCH_WS / "logs").glob("score-*.log"), key=os.path.getmtime)
    found = re.search(r"score phases: (.*)", logs[-1].read_text()) if logs else None
    return secs, found.group(1).strip() if found else "(no phase line)"


def run_plain(model: str, uri: str, src: str, col: str) -> float:
    out = str(ROOT / "workspace" / "bench" / "latency_plain.parquet")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN, uri, model, src, out, col], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--text-rows", type=int, default=3000)
    args = ap.parse_args()
    jobs = inputs(args.text_rows)
    print(f"== small scoring jobs, command to exit: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    ours: dict[str, list[float]] = {k: [] for k in jobs}
    spark: dict[str, list[float]] = {k: [] for k in jobs}
    plain: dict[str, list[float]] = {k: [] for k in jobs}
    phases: dict[str, list[str]] = {k: [] for k in jobs}
    for rep in range(args.repeats):   # interleaved: CPU steal hits every side alike
        for name, (conf, sets, src, model, uri, col) in jobs.items():
            secs, line = run_ours(conf, sets)
            ours[name].append(secs)
            phases[name].append(line)
            spark[name].append(run_ours(conf, sets, "spark")[0])
            plain[name].append(run_plain(model, uri, src, col))
            print(f"   repeat {rep + 1}, {name}: ours {secs:.1f}s, spark {spark[name][-1]:.1f}s, "
                  f"plain {plain[name][-1]:.1f}s; phases: {line}", flush=True)
    print(f"== medians of {args.repeats} (seconds, command to exit)")
    for name in jobs:
        o, s, p = (statistics.median(v[name]) for v in (ours, spark, plain))
        print(f"   {name:22s} ours {o:6.1f}s   spark {s:6.1f}s   plain pyfunc {p:6.1f}s   ratio ours / spark "
              f"{o / s:.2f}x   ours / plain {o / p:.2f}x   raw ours {[round(v, 1) for v in ours[name]]} spark "
              f"{[round(v, 1) for v in spark[name]]} plain {[round(v, 1) for v in plain[name]]}")
        print(f"   {'':22s} phases (median run): {phases[name][ours[name].index(o)] if o in ours[name] else phases[name][0]}")


if __name__ == "__main__":
    main()
