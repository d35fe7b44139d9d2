"""The task contract and its registry: one class per task, holding everything the pipeline asks of it.

A task turns a batch into tensors, computes its loss and metric sums, and writes its scored columns;
training, evaluation and the logged MLflow model all call the same object, so a model scored in Spark
sees exactly the pre-processing it was trained with. Beyond that, each class *declares* what the rest of
the pipeline needs to know, so no stage ever tests a task's name:

- ``modality`` and ``columns``: what prepared data it trains on (checked before any rank starts);
- ``classifier``: one class per row (scoring keeps labels, promotion compares accuracy, drift projects
  the penultimate layer, training needs two classes or more);
- ``writes_sequences``/``target_tokenizer``/``decode_top_k``: decoding settings for the logged spec;
- ``plots``: the report's pictures, by name (``pipelines.train.plots`` draws them);
- ``baseline``: the tuned non-neural baseline it is compared with (``pipelines.baselines``), if any;
- ``metric``/``higher_is_better``: the headline, early-stopping and promotion metric and its direction.

Adding a task is one class with ``@register_task`` in ``vision.py``, ``sequence.py`` or a module of its own.
Metric sums are sums, not means, with fixed keys (``empty_sums``), so ranks allreduce them and divide
once in ``finish``, and a rank whose shard ran dry still takes part in the allreduce.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

Batch = dict[str, np.ndarray]


def images_to_tensor(pixels: np.ndarray, mean: float, std: float, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W).

    With a ``device`` the uint8 pixels move first (a quarter of the float bytes) and are normalised there.
    The result keeps the NHWC memory order (channels-last strides), which is what oneDNN/cuDNN convolutions
    prefer anyway.
    """
    x = torch.from_numpy(np.require(pixels, requirements=["C", "W"]))
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float()   # a new tensor, so the steps below may work in place
    return x.div_(255.0).sub_(mean).div_(std)   # the same bits as (x / 255 - mean) / std, no temporaries


@dataclass(frozen=True)
class Task:
    """The contract the training loop, the evaluator and the scorer rely on (see the module docstring)."""

    num_classes: int
    mean: float = 0.0
    std: float = 1.0
    name: ClassVar[str] = "task"
    modality: ClassVar[str] = "image"        # what the prepared data must hold: image | text | audio
    data_hint: ClassVar[str] = "an image set"   # what to prepare, for the error when the data does not fit
    classifier: ClassVar[bool] = False       # one class per row (see the module docstring)
    writes_sequences: ClassVar[bool] = False   # decodes token sequences: the spec carries decode settings
    target_tokenizer: ClassVar[str | None] = None   # data.text key naming how targets are split (None: chars)
    decode_top_k: ClassVar[bool] = False     # scoring writes the beam's k best hypotheses
    plots: ClassVar[tuple[str, ...]] = ()    # report pictures by name (pipelines.train.plots)
    baseline: ClassVar[str | None] = None    # the non-neural baseline it is compared with (pipelines.baselines)
    metric: ClassVar[str] = "loss"            # watched for early stopping and reported as the headline
    higher_is_better: ClassVar[bool] = False
    columns: ClassVar[tuple[str, ...]] = ("image", "label")   # Parquet columns a rank reads
    needs: ClassVar[tuple[str, ...] | None] = None   # columns the prepared data must have (None: ``columns``)
    input_columns: ClassVar[tuple[str, ...]] = ("image",)     # what scoring needs of a row besides ``id``
    sort_key: ClassVar[str | None] = None    # a length column to bucket batches by (sequence tasks)
    output_schema: ClassVar[str] = ""        # Spark DDL of the columns scoring writes after ``id``

    @classmethod
    def required_columns(cls) -> tuple[str, ...]:
        return cls.columns if cls.needs is None else cls.needs

    def inputs(self, pixels: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        return images_to_tensor(pixels, self.mean, self.std, device)

    def tensors(self, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, out: Any, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, net: Any, x: Any) -> Any:
        """The outputs evaluation and scoring work from; decoding tasks add their decoded hypotheses."""
        return net(x)

    def empty_sums(self) -> dict[str, float]:
        raise NotImplementedError

    def metric_sums(self, out: Any, target: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def finish(self, sums: dict[str, float], arrays: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        raise NotImplementedError

    def metric_params(self) -> dict[str, str]:
        """Run parameters saying how the metrics were computed (sacreBLEU's signature); none by default."""
        return {}

    def empty_arrays(self) -> dict[str, np.ndarray]:
        """Fixed-shape evaluation sums beyond the metrics (confusion, calibration); none by default."""
        return {}

    def detail_arrays(self, out: Any, target: torch.Tensor) -> dict[str, np.ndarray]:
        return {}

    def samples(self, out: Any, batch: Batch, n: int) -> dict[str, np.ndarray]:
        """The first ``n`` rows with what the model made of them, for a picture in the report."""
        return {"image": np.array(batch["image"][:n])}

    def outputs(self, out: Any, inputs: torch.Tensor) -> dict[str, np.ndarray]:
        """The scored columns for a batch; ``inputs`` are the normalised tensors the model was given."""
        raise NotImplementedError

    @staticmethod
    def as_float(out: Any, detach: bool = False) -> Any:
        """Model output in float32 (out of bf16 autocast); a dict of tensors for autoencoders and sequence
        models, whose integer entries (decoded ids, lengths) stay integers."""
        def conv(t: torch.Tensor) -> torch.Tensor:
            t = t.detach() if detach else t
            return t.float() if t.is_floating_point() else t

        return {k: conv(v) for k, v in out.items()} if isinstance(out, dict) else conv(out)




TASKS: dict[str, type[Task]] = {}

def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task known by its ``name`` to families, training, scoring and the spec."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task '{cls.name}' is registered twice")
    TASKS[cls.name] = cls
    return cls


def unregister_task(name: str) -> None:
    """Forget a task (a plugin's, a test's); registering it again is allowed afterwards."""
    TASKS.pop(name, None)


def task_class(name: str) -> type[Task]:
    """The registered class for a task name, with a hint on a near miss."""
    if name not in TASKS:
        hint = difflib.get_close_matches(name, list(TASKS), n=1)
        more = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ValueError(f"unknown task '{name}'{more}; choose one of: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def make_task(task: str, num_classes: int, *, mean: float = 0.0, std: float = 1.0, **options: Any) -> Task:
    """The task object for a family's task name, normalising with the dataset's statistics.

    ``options`` are task fields (target vocabulary, beam width, decoding limit); those a task does not
    have are ignored, so one call site serves every task.
    """
    cls = task_class(task)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(num_classes=num_classes, mean=mean, std=std, **{k: v for k, v in options.items() if k in known})
