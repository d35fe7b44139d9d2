"""What a killed rank costs: step checkpoints every 30 s (the default), every 5 s, and at epoch ends only.

Two real runs of the demo model (conf/fashion_mnist_cnn.yaml, full Fashion-MNIST, 2 ranks on local[2],
`horovod.spark.run`), each with rank 1 SIGKILLed at the same step of epoch 2 (the test fault hook; it
fires once per run). Each run heals itself in the same command; the figures come from the kill marker
(time and position of the kill), the checkpoint it resumed from and the ranks' own timings:

- time lost: from the kill to the first training step after the restart (detection + relaunch);
- samples lost: work done between the resumed checkpoint and the kill, trained again;
- checkpoint cost: seconds rank 0 spent in step checkpoints (gather every rank's state, write, prune)
  as a share of the training time (the other rank waits for it at the next allreduce).

The demo epoch takes 20-40 s on 2 cores, about the default interval, so a third run with 5 s shows what
step checkpoints buy when epochs are long next to the interval (and bounds their cost from above).

    .venv/bin/python bench/recovery.py [--epochs 3] [--kill-step 350]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import ROOT, experiment, machine, prepared


def one_run(label: str, kill_step: int, epochs: int, *overrides: str) -> dict[str, float]:
    """Train with rank 1 killed at ``kill_step`` of epoch 2; what the restart cost."""
    from sparkzoo.pipelines import paths, track, train
    from sparkzoo.pipelines.session import get_spark
    from sparkzoo.pipelines.train import checkpoint

    exp = experiment(f"workspace={ROOT / 'workspace'}", f"train.epochs={epochs}", "train.progress=false",
                     "train.resume=never", f"name=bench_recovery_{label}", *overrides)
    prepared(exp)
    spark = get_spark(exp)
    t0 = time.time()
    r = train.run(exp, spark, fault=(1, 2, kill_step))
    wall = time.time() - t0
    assert len(r.restarts) == 1, r.restarts
    folder = paths.checkpoint_dir(exp, r.run_id)
    kill = paths.read_json(paths.join(folder, checkpoint.FAULT_MARKER))
    start_epoch, start_step = r.ranks[0]["resumed_at"]
    done_at_kill = kill["epoch"] * kill["steps_per_epoch"] + kill["step"]
    resumed_at = start_epoch * kill["steps_per_epoch"] + start_step
    metrics = track.client(exp).get_run(r.run_id).data.metrics
    train_seconds = r.train_seconds
    return {"label": label, "run_id": r.run_id, "wall_seconds": wall,
            "time_lost_seconds": r.ranks[0]["first_step_at"] - kill["killed_at"],
            "restart_lost_seconds": metrics.get("restart_lost_seconds", float("nan")),
            "samples_lost": (done_at_kill - resumed_at) * kill["global_batch"],
            "steps_lost": done_at_kill - resumed_at, "resumed_from": r.restarts[0].resumed_from.rsplit("/", 1)[-1]
            if r.restarts[0].resumed_from else "start",
            "step_checkpoints_after_restart": r.ranks[0]["step_checkpoints"],
            "checkpoint_share": r.ranks[0]["step_checkpoint_seconds"] / train_seconds if train_seconds else 0.0,
            "checkpoint_seconds_each": (r.ranks[0]["step_checkpoint_seconds"] / r.ranks[0]["step_checkpoints"]
                                        if r.ranks[0]["step_checkpoints"] else 0.0),
            "train_seconds": train_seconds, "steps_per_epoch": kill["steps_per_epoch"],
            "val_accuracy": r.history[-1]["val_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--kill-step", type=int, default=350, help="step of epoch 2 at which rank 1 is killed")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = [one_run("every30s", args.kill_step, args.epochs, "train.checkpoint_every_seconds=30"),
            one_run("every5s", args.kill_step, args.epochs, "train.checkpoint_every_seconds=5"),
            one_run("epochonly", args.kill_step, args.epochs, "train.checkpoint_every_seconds=null")]
    print(f"== recovery from one killed rank ({machine()}, {started})")
    for r in runs:
        print(f"   {r['label']}: resumed from {r['resumed_from']}; time lost {r['time_lost_seconds']:.1f}s (kill to first "
              f"step after restart), restart_lost_seconds {r['restart_lost_seconds']:.1f}s, samples lost "
              f"{r['samples_lost']:,} ({r['steps_lost']} steps of {r['steps_per_epoch']}); step checkpoints after the "
              f"restart {r['step_checkpoints_after_restart']}, {r['checkpoint_seconds_each'] * 1000:.0f} ms each, "
              f"{r['checkpoint_share'] * 100:.2f}% of {r['train_seconds']:.0f}s training; wall {r['wall_seconds']:.0f}s")
    by = {r["label"]: r for r in runs}
    for label in ("every30s", "every5s"):
        mine, base = by[label], by["epochonly"]
        print(f"   ratio epoch-only / {label}: samples lost {base['samples_lost'] / max(mine['samples_lost'], 1):.1f}x, "
              f"restart_lost_seconds {base['restart_lost_seconds'] / mine['restart_lost_seconds']:.2f}x")
    runs_json = runs
    print(json.dumps(runs_json, indent=1))


if __name__ == "__main__":
    main()
