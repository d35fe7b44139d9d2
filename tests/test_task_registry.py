"""A task and a model family added from outside sparkzoo: one class and one builder, registered from THIS
module (for the test's length only, see ``toy``), named in the experiment's ``plugins:`` so every process of the job (driver, Spark workers, the
Horovod ranks) imports it, then trained by the real pipeline with no edit to pipeline code.

The toy task regresses an image's mean brightness (in the normalised input space): it reads only the
``image`` column of the session's prepared Fashion-MNIST subsample, declares its own metric (``mae``,
lower is better), its scored column, no plots and no baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn as nn

from sparkzoo.models.registry import InputSpec, list_models, register, unregister
from sparkzoo.models.tasks import TASKS, Batch, Task, register_task, unregister_task
from sparkzoo.pipelines.plugins import PATH_PREFIX

TOY = "toy_brightness"


@dataclass(frozen=True)
class BrightnessTask(Task):
    """Predict the mean of the normalised pixels: a target any image set has, so no prepare change."""

    name: ClassVar[str] = TOY
    metric: ClassVar[str] = "mae"
    higher_is_better: ClassVar[bool] = False
    columns: ClassVar[tuple[str, ...]] = ("image",)
    output_schema: ClassVar[str] = "brightness float"

    def tensors(self, batch: Batch, device: torch.device):
        x = self.inputs(batch["image"]).to(device)
        return x, x.mean(dim=(1, 2, 3))

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out, target)

    def empty_sums(self) -> dict[str, float]:
        return {"loss": 0.0, "abs_err": 0.0, "count": 0.0}

    def metric_sums(self, out: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {"loss": float(nn.functional.mse_loss(out, target, reduction="sum")),
                "abs_err": float((out - target).abs().sum()), "count": float(target.numel())}

    def finish(self, sums: dict[str, float], arrays: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        count = max(sums["count"], 1.0)
        return {"loss": sums["loss"] / count, "mae": sums["abs_err"] / count}

    def outputs(self, out: torch.Tensor, inputs: torch.Tensor) -> dict[str, np.ndarray]:
        return {"brightness": out.float().cpu().numpy().astype(np.float32)}


class Brightness(nn.Module):
    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(spec.channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def _register() -> None:
    register_task(BrightnessTask)
    if TOY not in list_models():
        register(TOY, task=TOY)(Brightness)


if __name__.startswith(PATH_PREFIX):   # imported by a job's process (a Horovod rank) as its plugin
    _register()


@pytest.fixture()
def toy():
    """Registered for this test only: pytest imports every test module before running any, and sparkzoo's
    own lists (README, docs, contract tests) must not see a test's toy."""
    _register()
    yield TOY
    unregister_task(TOY)
    unregister(TOY)


def test_registered_from_this_module(toy):
    assert TASKS[TOY] is BrightnessTask and TOY in list_models()


@pytest.mark.slow
def test_toy_task_trains_and_scores_through_the_pipeline_with_no_pipeline_edit(toy, pipeline, spark):
    """Prepared data of the session, the toy family on 2 Horovod ranks: the ranks import this file as a
    plugin, the loop, evaluation and finish work from the task class alone, and the model learns; then
    the score stage's Python workers import it too and write the task's own column."""
    from sparkzoo.pipelines import score

    run = pipeline("fashion_mnist_cnn", f"plugins=['{__file__}']", f"model.name={TOY}", "model.params={}",
                   "train.epochs=2", "train.max_steps_per_epoch=40", "train.lr=0.01", f"mlflow.model_name={TOY}",
                   "score.output=predictions_toy", ws="toy_task")
    history, test = run.trained.history, run.trained.test
    assert [h["epoch"] for h in history] == [1, 2]
    guess = _constant_guess_mae(run)
    assert test["mae"] < 0.5 * guess, (test, guess)   # learnt, not a constant
    assert history[-1]["val_mae"] < history[0]["val_mae"] * 1.05

    scored = score.run(run.exp(), spark)
    assert scored.scored_rows == run.prepared.rows["test"] and scored.rejected_rows == 0
    out = spark.read.parquet(scored.output).select("id", "brightness").toPandas()
    assert len(out) == scored.scored_rows and np.isfinite(out["brightness"]).all() and out["brightness"].std() > 0


def _constant_guess_mae(run) -> float:
    """MAE of always answering the train split's mean brightness, on the test split (small: a subsample)."""
    import pyarrow.parquet as pq

    m = run.manifest
    shape, stats = m["shape"], m["stats"]

    def brightness(split: str) -> np.ndarray:
        table = pq.read_table(f"{run.prepared.path}/{split}", columns=["image"])
        pixels = np.stack([np.frombuffer(b, dtype=np.uint8) for b in table.column("image").to_pylist()])
        return ((pixels / 255.0 - stats["mean"]) / stats["std"]).mean(axis=1)

    assert shape["channels"] >= 1
    return float(np.abs(brightness("test") - brightness("train").mean()).mean())
