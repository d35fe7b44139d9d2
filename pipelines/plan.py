"""``--dry-run``: what a stage would read, write and launch, computed from the config alone.

Why: before a long job on someone else's cluster a user wants to see the resolved paths, the model it
would load, the Spark master and how many ranks, without starting a JVM, a rank or an MLflow run. Every
line here comes from the same helpers the stage uses (paths, dataset versions, tracking URIs), so the
plan cannot drift from the run. Nothing is created: the only reads are the source listing (for the
dataset version) and the prepared manifest, both cheap.
"""

from __future__ import annotations

from typing import Callable

from . import paths
from .config import Experiment
from .secrets import mask_text


def _dataset(exp: Experiment) -> tuple[str, bool]:
    """The prepared folder this config names and whether it is complete already."""
    from .dataset import dataset_version

    try:
        target = paths.dataset_dir(exp, dataset_version(exp))
    except Exception as exc:   # an unreadable source: say so, the real run fails with the full message
        return f"{paths.datasets_root(exp)}/<version> (cannot list the source: {exc})", False
    return target, paths.is_complete(target)


def _spark(exp: Experiment) -> str:
    conf = ", ".join(f"{k}={v}" for k, v in sorted(exp.spark.conf.items()))
    return f"Spark master {exp.spark.master} (spark-submit's --master wins); conf: {conf or 'none'}"


def _mlflow(exp: Experiment) -> str:
    from . import track

    return f"MLflow store {mask_text(track.tracking_uri(exp))}, experiment {exp.mlflow.experiment}"


def prepare(exp: Experiment) -> list[str]:
    src = exp.data.source
    target, done = _dataset(exp)
    return [f"read:   {src.kind} source {getattr(src, 'path', '')}"
            + (f" (at most {exp.data.max_records} records per split)" if exp.data.max_records else ""),
            f"write:  {target} (splits, manifest.json, quarantine/)" + (" - already prepared, nothing to do" if done
                                                                        else ""),
            f"launch: {_spark(exp)}"]


def train(exp: Experiment) -> list[str]:
    target, done = _dataset(exp)
    tc = exp.train
    return [f"read:   {target}" + ("" if done else " (not prepared yet: run prepare first)"),
            f"write:  {_mlflow(exp)}; registered model {exp.model_name} (alias candidate); checkpoints under "
            f"{paths.join(paths.resolve(exp, tc.checkpoint_dir), exp.name)}",
            f"launch: {tc.num_proc} {tc.backend} ranks of model {exp.model.name}, {tc.epochs} epochs, batch "
            f"{tc.batch_size} per rank, device {tc.device}; {_spark(exp)}"]


def _score_input(exp: Experiment) -> str:
    s = exp.score
    if s.input_table:
        return f"table {s.input_table}"
    if s.input_path:
        return paths.resolve(exp, s.input_path)
    target, _ = _dataset(exp)
    return f"{target} split {s.input_split}"


def score(exp: Experiment) -> list[str]:
    model = exp.score.model_uri or f"models:/{exp.model_name}@champion"
    run_date = exp.score.run_date or "<today, UTC>"
    out = paths.predictions_dir(exp)
    return [f"read:   model {model} from {_mlflow(exp)}; rows of {_score_input(exp)}",
            f"write:  {out}/model_version=<N>/run_date={run_date}; rejects {out}_rejects",
            f"launch: {_spark(exp)}; inference path {exp.score.optimize}, device {exp.score.device}"]


def promote(exp: Experiment) -> list[str]:
    target, _ = _dataset(exp)
    return [f"read:   models:/{exp.model_name}@candidate and @champion; {target} split test",
            f"write:  alias champion (only if the candidate wins by {exp.mlflow.promote_margin}); a decision run in "
            f"{_mlflow(exp)}",
            f"launch: {_spark(exp)}"]


def replicate(exp: Experiment) -> list[str]:
    target, _ = _dataset(exp)
    name = exp.replicate.dataset or f"{exp.data.dataset}_x{exp.replicate.factor}"
    return [f"read:   {target}", f"write:  {paths.join(paths.resolve(exp, exp.data.root), name)}/<version>",
            f"launch: {_spark(exp)}"]


def baseline(exp: Experiment) -> list[str]:
    target, _ = _dataset(exp)
    return [f"read:   {target}", f"write:  a baseline run in {_mlflow(exp)}", f"launch: {_spark(exp)} (Spark ML)"]


def run(exp: Experiment) -> list[str]:
    return [f"{stage}: {line}" for stage, plan in (("prepare", prepare), ("train", train), ("score", score))
            for line in plan(exp)]


PLANS: dict[str, Callable[[Experiment], list[str]]] = {
    "prepare": prepare, "replicate": replicate, "train": train, "score": score, "promote": promote,
    "run": run, "baseline": baseline,
}


def describe(command: str, exp: Experiment) -> str:
    """The dry-run text of one command."""
    lines = PLANS[command](exp)
    return "\n".join([f"sparkzoo {command} --dry-run: {exp.source_file}", *(f"  {line}" for line in lines),
                      "  (nothing was started; drop --dry-run to run it)"])
