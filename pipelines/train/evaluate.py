"""Evaluation inside the ranks: every rank scores its shard of a split and the sums are added up.

Metric sums (not means) with fixed keys travel through one allreduce, so a rank whose shard ran dry
still takes part, and the figures are those of the whole split whatever the number of ranks.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def add(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Add a batch's sums (floats or fixed-shape arrays) into the running ones, key by key."""
    for k, v in more.items():
        into[k] = into[k] + v


def allreduce_sums(comm, sums: dict[str, float]) -> dict[str, float]:
    """One allreduce of every key, in sorted order (the same order on every rank)."""
    keys = sorted(sums)
    reduced = comm.allreduce_sum(np.array([sums[k] for k in keys]), name=f"sums.{len(keys)}")
    return dict(zip(keys, reduced.tolist()))


class Evaluator:
    """``evaluator(split, task)`` -> (metrics, ``EvalDetail``): the task's metrics summed over ranks, its
    arrays (confusion, calibration) and rank 0's first samples for the report's pictures.

    ``reader(split, extra_columns)`` opens this rank's shard; ``autocast`` is the training precision
    context. With ``sliced`` (test with ``train.test_slices``) each batch's rows are split by slice before
    the forward pass, so every slice gets its own sums and arrays; the overall figures are their sums.
    """

    def __init__(self, comm, model, reader: Callable[..., Any], device, autocast: Callable[[], Any], slices,
                 batch_size: int) -> None:
        self.comm, self.model, self.reader, self.device = comm, model, reader, device
        self.autocast, self.slices, self.batch_size = autocast, slices, batch_size

    def __call__(self, split: str, task, sliced: bool = False):
        import torch

        from .data import _rows, _take
        from .metrics import EvalDetail

        slices, comm = self.slices, self.comm
        net = comm.unwrap(self.model)   # no collectives inside the forward pass: shards may be uneven
        net.eval()
        names = slices.names() if sliced else []
        parts = {name: (task.empty_sums(), task.empty_arrays()) for name in names or [""]}
        samples = None
        rows_seen = {name: 0 for name in parts}
        extra = (slices.column,) if sliced else ()
        with torch.inference_mode():
            for batch in self.reader(split, extra).full_pass(batch_size=max(self.batch_size, 512)):
                if sliced:
                    label = slices.labels(batch.pop(slices.column))
                    groups = [(name, _take(batch, label == i)) for i, name in enumerate(names) if (label == i).any()]
                else:
                    groups = [("", batch)]
                for name, rows in groups:
                    x, y = task.tensors(rows, self.device)
                    with self.autocast():
                        out = task.as_float(task.predict(net, x))
                    add(parts[name][0], task.metric_sums(out, y))
                    add(parts[name][1], task.detail_arrays(out, y))
                    rows_seen[name] += _rows(rows)
                    if samples is None and comm.rank == 0:
                        samples = task.samples(out, rows, EvalDetail.SAMPLES)
        reduced = {}
        for name, (sums, arrays) in parts.items():   # same names in the same order on every rank
            total = allreduce_sums(comm, sums)
            arrays = {k: comm.allreduce_sum(v, name=f"detail.{name}.{k}").astype(v.dtype) for k, v in sorted(arrays.items())}
            reduced[name] = (total, arrays)
        if not sliced:
            total, arrays = reduced[""]
            return task.finish(total, arrays), EvalDetail(arrays=arrays, samples=samples)
        total, arrays = task.empty_sums(), task.empty_arrays()
        for part_sums, part_arrays in reduced.values():
            add(total, part_sums)
            add(arrays, part_arrays)
        metrics = task.finish(total, arrays)
        counts = comm.allreduce_sum(np.array([rows_seen[name] for name in names], dtype=np.float64), name="slice_rows")
        per_slice = {}
        for (name, (part_sums, part_arrays)), n in zip(reduced.items(), counts.tolist()):
            if n > 0:   # a slice with no test rows reports nothing
                metrics.update({f"{k}_{name}": v for k, v in task.finish(part_sums, part_arrays).items()})
                metrics[f"rows_{name}"] = n
                per_slice[name] = part_arrays
        return metrics, EvalDetail(arrays=arrays, samples=samples, slices=per_slice)
