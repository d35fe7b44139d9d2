"""scale: the whole pipeline at 1,000,000 and 10,000,000 rows, each stage's rows/s and each process's peak RSS.

Fashion-MNIST (70,000 prepared rows) is grown with ``sparkzoo replicate`` (seeded crops, flips, noise; every
copy stays in its original's split) to about N rows, then one epoch of the LeNet-like CNN is trained on it
with 2 Horovod ranks, and every row (train, val and test) is scored with the registered version. Each stage
is the CLI a user runs, in a process of its own, so a stage's peaks are its own and its time includes the
JVM start. A sampler reads the kernel's high-water mark (``VmHWM``) of every process under the stage's
command twice a second and groups them by role (the driver's Python, the JVM that runs the driver and, on
``local[2]``, the executor tasks, Spark's Python workers, Horovod's ranks and task processes).

The comparison is the larger run against the smallest (``--rows`` in that order): rows/s of each stage and
each role's peak RSS, as ratios. The issue's bars: rows/s at 10M >= 0.9x that at 1M, peak RSS at 10M <=
1.2x that at 1M.

    python bench/scale.py --rows 100000                  # a smoke run (about 3 minutes)
    python bench/scale.py --rows 1000000 10000000        # the issue's run (about 1.5-2 hours on 2 cores)
    python bench/scale.py --rows 1000000 10000000 --stages score --score-version 3   # one stage again
    python bench/scale.py --rows 1000000 10000000 --report                           # what was measured

Each finished stage is appended to ``workspace/bench/scale/results.jsonl`` at once, so a run cut short
keeps what it measured. The replicated sets and predictions stay in ``workspace/bench/scale`` (about 0.8 GB
per million rows) until ``--clean``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import ROOT, experiment, machine, peak_rss_mb

SCALE_WS = ROOT / "workspace" / "bench" / "scale"
RESULTS = SCALE_WS / "results.jsonl"
MODEL = "bench_scale_cnn"
SAMPLE_EVERY_S = 0.5
STAGES = ("replicate", "train", "score")
HELPER_MB = 16.0


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc (a process that exits between the listing and the read is skipped)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def role(pid: int, root: int) -> str | None:
    """What a process under a stage's command is, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    line = " ".join(argv)
    if pid == root:
        return "driver python"
    if os.path.basename(argv[0]) == "java":
        return "JVM (driver + local executor tasks)"
    if "spark_daemon" in line or "pyspark.daemon" in line or "pyspark.worker" in line:
        return "Spark python workers"
    if "horovod" in line or "multiprocessing" in line:
        return "Horovod ranks and task processes"
    return f"other ({os.path.basename(argv[0]) or '?'})"


class PeakRss:
    """Peak RSS per process under ``root``, sampled until ``stop``; ``by_role()`` = max and count per role."""

    def __init__(self, root: int, dump: Path | None = None) -> None:
        self.root, self.dump = root, dump      # dump: the peaks so far, rewritten every 10 s (a run cut short)
        self.peaks: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_dump = time.monotonic()
        while not self._stop.is_set():
            if self.dump is not None and time.monotonic() - last_dump > 10:
                self.dump.write_text(json.dumps(self.by_role()))
                last_dump = time.monotonic()
            tree, todo, seen = _children(), [self.root], set()
            while todo:
                pid = todo.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                todo.extend(tree.get(pid, []))
                # the role is read again each time: spark-submit's bash script becomes the JVM by exec
                label, mb = role(pid, self.root), peak_rss_mb(pid)
                if label and mb is not None:
                    self.peaks[pid] = (label, max(mb, self.peaks.get(pid, (label, 0.0))[1]))
            self._stop.wait(SAMPLE_EVERY_S)

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        return self.by_role()

    def by_role(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for label, mb in self.peaks.values():
            slot = out.setdefault(label, {"max_mb": 0.0, "processes": 0})
            slot["max_mb"] = round(max(slot["max_mb"], mb), 1)
            slot["processes"] += 1
        return out


def run_stage(name: str, args: list[str], log: Path) -> tuple[str, float, dict]:
    """One CLI stage in its own process: its output (also shown live), wall seconds and peak RSS by role."""
    cmd = [str(Path(sys.executable).parent / "sparkzoo"), *args]
    print(f"-- {name}: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    sampler = PeakRss(proc.pid, dump=log.with_suffix(".peaks.json"))
    lines = []
    with log.open("w") as out:
        for line in proc.stdout:
            lines.append(line)
            out.write(line)
            print(f"   {line}", end="", flush=True)
    code = proc.wait()
    seconds = time.perf_counter() - started
    peaks = sampler.stop()
    text = "".join(lines)
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}); its output is in {log}")
    return text, seconds, peaks


def common_sets() -> list[str]:
    return [f"workspace={SCALE_WS}", "name=bench_scale", "mlflow.experiment=bench_scale",
            f"mlflow.model_name={MODEL}", "spark.conf.spark.ui.showConsoleProgress=false"]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def one_size(rows: int, conf: str, stages: list[str], score_version: int | None = None) -> dict:
    """Replicate to about ``rows``, train one epoch, score everything (the ``stages`` asked for, in that
    order); each stage's figures. Without ``replicate`` the set an earlier run replicated is used; without
    ``train`` scoring needs ``score_version``."""
    from sparkzoo.pipelines.dataset import open_prepared

    logs = SCALE_WS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_stage("prepare (the 70,000 real rows; once)", ["prepare", "-c", conf, *_sets(common_sets())], logs / "prepare.log")
    base = open_prepared(experiment(*common_sets()))
    base_rows = sum(base.rows(s) for s in ("train", "val", "test"))
    factor = max(1, round(rows / base_rows))
    dataset = f"{base.manifest['dataset']}_x{factor}"
    record = {"target_rows": rows, "factor": factor, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

    if "replicate" in stages:
        # a replicated set left by an earlier run would make replicate a no-op and its figures meaningless
        shutil.rmtree(SCALE_WS / "data" / dataset, ignore_errors=True)
        text, secs, peaks = run_stage("replicate", ["replicate", "-c", conf, *_sets(common_sets() + [f"replicate.factor={factor}"])],
                                      logs / f"replicate-{rows}.log")
        record["replicate"] = {"seconds": round(secs, 1), "peak_rss": peaks}
    versions = [d.name for d in (SCALE_WS / "data" / dataset).iterdir() if not d.name.startswith(".")]
    if len(versions) != 1:
        raise SystemExit(f"expected one replicated version of {dataset}, found {versions}: run the replicate stage")
    data = [f"data.dataset={dataset}", f"data.version={versions[0]}"]
    replicated = open_prepared(experiment(*common_sets(), *data))
    split_rows = {s: replicated.rows(s) for s in ("train", "val", "test")}
    total = record["rows"] = sum(split_rows.values())
    if "replicate" in record:
        record["replicate"]["rows_per_s"] = round(total / record["replicate"]["seconds"], 1)
        _append(record)

    model_version = score_version
    if "train" in stages:
        text, secs, peaks = run_stage("train", ["train", "-c", conf, *_sets(common_sets() + data + [
            "train.epochs=1", "train.num_proc=2", "train.resume=never"])], logs / f"train-{rows}.log")
        loop = float(re.search(r"training time [\d.]+s, ([\d.]+) samples/s", text).group(1))   # the summary, not a progress line
        model_version = int(re.search(rf"registered model {MODEL} version (\d+)", text).group(1))
        accuracy = float(re.search(r"test accuracy ([\d.]+)", text).group(1))
        record["train"] = {"seconds": round(secs, 1), "rows_per_s": round(split_rows["train"] / secs, 1),
                           "loop_samples_per_s": loop, "test_accuracy": accuracy, "model_version": model_version,
                           "peak_rss": peaks}
        _append(record)

    if "score" in stages:
        if model_version is None:
            raise SystemExit("scoring without the train stage needs --score-version (a registered version of "
                             f"{MODEL})")
        out = SCALE_WS / f"predictions_{rows}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(f"{out}_rejects", ignore_errors=True)
        text, secs, peaks = run_stage("score", ["score", "-c", conf, *_sets(common_sets() + data + [
            f"score.model_uri=models:/{MODEL}/{model_version}",
            f"score.input_path={replicated.path}/{{train,val,test}}",
            f"score.output={out}", "score.run_date=2026-01-01"])], logs / f"score-{rows}.log")
        scored = int(re.search(r"scored (\d+) rows", text).group(1))
        if scored != total:
            raise SystemExit(f"score wrote {scored} rows, the replicated set has {total}")
        record["score"] = {"seconds": round(secs, 1), "rows_per_s": round(total / secs, 1), "model_version": model_version,
                           "peak_rss": peaks}
        _append(record)
    return record


def recorded() -> dict[int, dict]:
    """Every size's latest figures per stage, merged over the runs in results.jsonl (stages may be run apart)."""
    merged: dict[int, dict] = {}
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            rec = json.loads(line)
            merged.setdefault(rec["target_rows"], {}).update(rec)
    return merged


def _append(record: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _roles(peaks: dict[str, dict[str, float]]) -> list[tuple[str, dict[str, float]]]:
    """The roles worth a line: short-lived helpers (chmod, jspawnhelper: 1-2 MB) are left out."""
    return sorted((label, peak) for label, peak in peaks.items() if peak["max_mb"] >= HELPER_MB)


def compare(small: dict, big: dict) -> None:
    """The bars: rows/s at the larger size >= 0.9x the smaller, peak RSS per role <= 1.2x."""
    print(f"== scale: {big['rows']:,} rows vs {small['rows']:,} rows ({machine()}, {time.strftime('%Y-%m-%d')})")
    for stage in STAGES:
        if stage not in small or stage not in big:
            print(f"   {stage:9s} not measured at both sizes")
            continue
        a, b = small[stage], big[stage]
        print(f"   {stage:9s} {b['rows_per_s']:>9,.0f} rows/s vs {a['rows_per_s']:>9,.0f}   ratio = "
              f"{b['rows_per_s'] / a['rows_per_s']:.2f}x (bar >= 0.9x)   [{b['seconds']:.0f} s vs {a['seconds']:.0f} s]")
        for label, peak in _roles(b["peak_rss"]):
            before = a["peak_rss"].get(label)
            ratio = f"{peak['max_mb'] / before['max_mb']:.2f}x (bar <= 1.2x)" if before else "(not at the smaller size)"
            print(f"      peak RSS {label:38s} {peak['max_mb']:>7,.0f} MB vs "
                  f"{before['max_mb'] if before else 0:>7,.0f} MB   {ratio}   [{peak['processes']} processes]")


def show(record: dict) -> None:
    print(f"== {record['rows']:,} rows (x{record['factor']} of Fashion-MNIST)")
    for stage in STAGES:
        if stage not in record:
            print(f"   {stage:9s} not measured")
            continue
        s = record[stage]
        extra = f"; loop {s['loop_samples_per_s']:,.0f} samples/s, test accuracy {s['test_accuracy']:.4f}" \
            if stage == "train" else ""
        print(f"   {stage:9s} {s['seconds']:>8.1f} s  {s['rows_per_s']:>9,.0f} rows/s{extra}")
        for label, peak in _roles(s["peak_rss"]):
            print(f"      peak RSS {label:38s} {peak['max_mb']:>7,.0f} MB   [{peak['processes']} processes]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000],
                    help="sizes to run, smallest first; the others are compared with the first")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                    help="run only these stages (always in pipeline order); the figures of stages run "
                         "earlier stay in results.jsonl and are shown beside")
    ap.add_argument("--score-version", type=int, help=f"the {MODEL} version to score with when train is not run")
    ap.add_argument("--report", action="store_true", help="print what results.jsonl holds for --rows; run nothing")
    ap.add_argument("--conf", default="conf/fashion_mnist_cnn.yaml")
    ap.add_argument("--clean", action="store_true", help="delete workspace/bench/scale first")
    args = ap.parse_args()
    if args.clean:
        shutil.rmtree(SCALE_WS, ignore_errors=True)
    if not args.report:
        for rows in args.rows:
            one_size(rows, args.conf, [s for s in STAGES if s in args.stages], args.score_version)
    merged = recorded()
    records = [merged[rows] for rows in args.rows if rows in merged]
    for record in records:
        show(record)
    for record in records[1:]:
        compare(records[0], record)


if __name__ == "__main__":
    main()
