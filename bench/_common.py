"""Shared by the benchmarks: load the config, make sure the dataset exists, time things, print ratios."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RAY_VENV = ROOT / "workspace" / "bench" / "ray-venv"
# Ray 2.60 wants pyarrow >= 17, sparkzoo pins 14: Ray gets a venv of its own, built here, never a dependency
RAY_PINS = ("torch==2.13.0", "ray[data,train]==2.60.0", "pyarrow>=17", "numpy", "pandas")


def ray_python() -> str:
    """The Ray venv's interpreter (the Ray Data and Ray Train sides), built on first use: several minutes."""
    import subprocess

    python = RAY_VENV / "bin" / "python"
    if not python.exists():
        print(f"   building the Ray venv at {RAY_VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(RAY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *RAY_PINS], check=True)
    return str(python)


def experiment(*overrides: str, conf: str = "conf/fashion_mnist_cnn.yaml"):
    from sparkzoo.pipelines import config

    # the repository's workspace, whatever the current directory (later overrides win)
    return config.load(ROOT / conf, [f"workspace={ROOT / 'workspace'}", "spark.conf.spark.ui.showConsoleProgress=false",
                                     *overrides])


def prepared(exp):
    """The prepared dataset for this config; prepares it (Spark) only when it is missing."""
    from sparkzoo.pipelines import prepare
    from sparkzoo.pipelines.dataset import open_prepared

    prepare.run(exp)
    return open_prepared(exp)


def median_rate(fn: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
    """Run ``fn`` (returns items done) ``repeats`` times; median items/s and every rate."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), rates


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's high-water mark of a process's RSS (``VmHWM``), in MB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


def report(title: str, ours: tuple[str, float], baselines: list[tuple[str, float]], unit: str = "samples/s") -> None:
    name, value = ours
    print(f"== {title} ({machine()}, {time.strftime('%Y-%m-%d')})")
    print(f"   {name}: {value:,.0f} {unit}")
    for bname, bvalue in baselines:
        print(f"   {bname}: {bvalue:,.0f} {unit}   ratio ours/{bname} = {value / bvalue:.2f}x")


def print_medians(sides: dict[str, list[float]], header: str) -> dict[str, float]:
    """Median rows/s per side with its raw samples, then every side's ratio to ``ours``."""
    med = {k: statistics.median(v) for k, v in sides.items()}
    print(header)
    for k, v in med.items():
        print(f"   {k:40s} {v:>10,.0f}   raw {[round(r) for r in sides[k]]}")
    for k in med:
        if k != "ours":
            print(f"   ratio ours / {k}: {med['ours'] / med[k]:.2f}x")
    return med


def training_args(doc: str, *, steps: int, batch_size: int, repeats: int = 3, switches: dict[str, str] | None = None):
    """The flags every training benchmark takes; ``switches``: a bench's own on/off flags, with their help."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--repeats", type=int, default=repeats)
    for flag, text in (switches or {}).items():
        ap.add_argument(flag, action="store_true", help=text)
    return ap.parse_args()


def train_tensors(ds, rows: int | None = None):
    """The first ``rows`` train rows as normalised tensors in memory: the plain-loop baselines' input."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from sparkzoo.models.tasks import images_to_tensor

    table = pq.read_table(ds.split_dir("train"), columns=["image", "label"])
    if rows is not None:
        table = table.slice(0, rows)
    shape = ds.manifest["shape"]
    pixels = np.frombuffer(b"".join(table.column("image").to_pylist()), np.uint8).reshape(
        -1, shape["height"], shape["width"], shape["channels"])
    st = ds.manifest["stats"]
    return images_to_tensor(pixels, st["mean"], st["std"]), torch.from_numpy(table.column("label").to_numpy())
