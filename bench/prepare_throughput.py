"""prepare throughput: the Spark job on local[2] vs a plain single-process Python loop, same files, same work.

Both sides call the same per-file transform (``images.transform_image``: Pillow decode, alpha
composite, resize/pad to 64x64 RGB; ``audio.transform_audio``: soundfile decode, mono, resample to
16 kHz, log-mel 40). The Spark side is the prepare read path itself: the driver's listing dealt into
even tasks (``files.listed_paths``, each task reads its own files), ``mapInPandas`` decode, and an
aggregation that forces every row. Sides are interleaved and medians reported, because these
machines show CPU steal.

    python bench/prepare_throughput.py                      # Tux Paint x8 and KLettres x4, 3 rounds

The 588 KLettres clips are read 4 times so the audio side is about as much work as the image side (9 s
vs 6 s on one core); read once (--audio-repeats 1, 2.3 s of work) Spark's fixed per-job cost decides
the ratio (bench/RESULTS.md shows both).
    python bench/prepare_throughput.py --million            # also: 1,000,000-row replicated image set
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mb
from sparkzoo.pipelines import config
from sparkzoo.pipelines.dataset import source_listing
from sparkzoo.pipelines.prepare import audio, images
from sparkzoo.pipelines.prepare.sources import files
from sparkzoo.pipelines.session import get_spark

ROOT = Path(__file__).resolve().parent.parent


def _exp(conf: str, ws: str, *extra: str):
    return config.load(ROOT / "conf" / conf, [f"workspace={ws}", "spark.master=local[2]",
                                              "spark.conf.spark.ui.showConsoleProgress=false", *extra])


def loop_images(paths: list[str], repeats: int, settings: dict) -> int:
    n = 0
    for _ in range(repeats):
        for p in paths:
            with open(p, "rb") as fh:
                images.transform_image(fh.read(), "png", settings, p)
            n += 1
    return n


def loop_audio(paths: list[str], repeats: int, settings: dict) -> int:
    n = 0
    for _ in range(repeats):
        for p in paths:
            with open(p, "rb") as fh:
                try:
                    audio.transform_audio(fh.read(), os.path.splitext(p)[1][1:], settings)
                except Exception:   # the Spark side quarantines the same files; both count them
                    pass
            n += 1
    return n


def spark_job(spark, exp, chosen: list[dict], repeats: int, modality: str) -> int:
    """The prepare read path (path groups from the listing, mapInPandas decode), ``repeats`` times over."""
    from pyspark.sql import functions as F

    src = exp.data.source
    if modality == "image":
        ctx = images.decode_context(exp, src.path, sidecars=True, needs_label=src.label_level is not None)
        body, schema = (lambda it: images.decode_files(it, ctx)), images.ROW_SCHEMA
    else:
        ctx = {"source": src.model_dump(mode="json"), "dataset": "b", "audio": exp.data.audio.model_dump(mode="json"),
               "val_fraction": 0.1, "test_fraction": 0.1, "needs_label": False, "needs_transcript": False,
               "root": src.path, "tree": True}
        body, schema = (lambda it: audio.decode_files(it, ctx)), audio.ROW_SCHEMA
    # as the job plans it (files.listed_paths), over the listing repeated: the loop reads each file
    # ``repeats`` times, so does this job
    tasks, fn = files.listed_paths(spark, chosen * repeats, exp.prepare, body)
    r = tasks.mapInPandas(fn, schema).agg(F.count("*").alias("n"), F.sum("stat_count").alias("c")).collect()[0]  # small: one row
    return int(r["n"])


def compare(spark, name: str, exp, modality: str, repeats: int, rounds: int) -> dict:
    src = exp.data.source
    chosen = files.matching(source_listing(exp), src.path, src.extensions, src.include, src.exclude)
    local_paths = [files.local(f["path"]) for f in chosen]
    settings = (exp.data.image if modality == "image" else exp.data.audio).model_dump(mode="json")
    loop = loop_images if modality == "image" else loop_audio
    spark_job(spark, exp, chosen[:50], 1, modality)          # warm the Python workers once
    ours, base = [], []
    for r in range(rounds):
        t = time.perf_counter()
        n_loop = loop(local_paths, repeats, settings)
        base.append(n_loop / (time.perf_counter() - t))
        t = time.perf_counter()
        n_spark = spark_job(spark, exp, chosen, repeats, modality)
        ours.append(n_spark / (time.perf_counter() - t))
        assert n_spark == n_loop, (n_spark, n_loop)
        print(f"  {name} round {r + 1}: loop {base[-1]:.1f} rows/s, spark local[2] {ours[-1]:.1f} rows/s", flush=True)
    out = {"name": name, "files": len(chosen), "rows": n_loop, "loop": statistics.median(base),
           "spark": statistics.median(ours)}
    out["ratio"] = out["spark"] / out["loop"]
    print(f"{name}: {len(chosen)} files x {repeats} = {n_loop} rows; median loop {out['loop']:.1f} rows/s, "
          f"spark {out['spark']:.1f} rows/s, ratio {out['ratio']:.2f}x", flush=True)
    return out


def jvm_peak_rss_mb() -> float:
    """Peak RSS (VmHWM) of the driver JVM this Python process started (local mode: it runs the tasks too)."""
    import psutil

    best = 0.0
    for child in psutil.Process().children(recursive=True):
        if "java" in child.name():
            best = max(best, peak_rss_mb(child.pid) or 0.0)
    return best


def million(spark, ws: str, factor: int) -> None:
    from sparkzoo.pipelines import prepare
    from sparkzoo.pipelines.prepare import replicate

    exp = _exp("opencv_digits.yaml", ws, f"replicate.factor={factor}", "data.max_records=null")
    prepare.run(exp, spark)
    t = time.perf_counter()
    r = replicate.run(exp, spark)
    secs = time.perf_counter() - t
    rows = sum(r.rows.values())
    py_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"replicated opencv_digits x{factor}: {rows} rows in {secs:.1f}s = {rows / secs:.0f} rows/s; "
          f"driver Python peak RSS {py_peak:.0f} MB, driver JVM peak RSS {jvm_peak_rss_mb():.0f} MB "
          f"(local[2]: the JVM also runs the executor tasks)\n  {r.path}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image-repeats", type=int, default=8)
    ap.add_argument("--audio-repeats", type=int, default=4)
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--million", action="store_true", help="also replicate OpenCV digits x200 = 1,000,000 rows")
    ap.add_argument("--factor", type=int, default=200)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both sides' experiments, e.g. prepare.tasks_per_core=1")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sparkzoo-bench-") as ws:
        exp_img = _exp("tuxpaint_stamps.yaml", ws, *args.set)
        exp_aud = _exp("klettres_letters.yaml", ws, "data.source.include=['*/alpha/*.ogg']",
                       "data.source.label_regex=null", *args.set)
        spark = get_spark(exp_img)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, spark {spark.version} local[2]", flush=True)
        if not args.skip_compare:
            compare(spark, "tuxpaint 64x64", exp_img, "image", args.image_repeats, args.rounds)
            compare(spark, "klettres log-mel", exp_aud, "audio", args.audio_repeats, args.rounds)
        if args.million:
            million(spark, ws, args.factor)
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
