"""Every registered family builds, runs forward on small inputs and fits its task's contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparkzoo import models
from sparkzoo.models.registry import UnknownModelError


# Image families only: sequence families (task ctc, seq2seq, ...) take a dict of tensors and have their
# own contract tests (tests/test_ctc_model.py).
IMAGE_FAMILIES = [n for n in models.list_models() if models.model_task(n) in models.TASKS]


@pytest.mark.parametrize("name", IMAGE_FAMILIES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8), (1, 20, 20)])
def test_family_forward_and_task_contract(name, shape):
    """Each family's output fits its task: loss is finite and backpropagates, every metric key is
    present, and scoring gets one output row per input row."""
    spec = models.InputSpec(*shape, num_classes=10)
    net = models.get_model(name, spec)
    task = models.make_task(models.model_task(name), 10, mean=0.3, std=0.35)
    batch = {"image": np.random.default_rng(0).integers(0, 256, (4, shape[1], shape[2], shape[0]), dtype=np.uint8),
             "label": np.arange(4, dtype=np.int64),
             "mask": (np.random.default_rng(1).random((4, shape[1], shape[2])) > 0.5).astype(np.uint8)}
    x, y = task.tensors(batch, torch.device("cpu"))
    out = task.as_float(net(x))
    if task.name == "classification":
        assert out.shape == (4, 10)
    elif task.name == "reconstruction":
        assert out["reconstruction"].shape == x.shape and out["code"].shape[0] == 4
    else:
        assert out.shape == (4, 1, shape[1], shape[2])
    loss = task.loss(out, y)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    sums = task.metric_sums(task.as_float(out, detach=True), y)
    assert set(sums) == set(task.empty_sums())
    assert task.metric in task.finish(sums)
    net.eval()
    with torch.no_grad():
        scored = net(x)
    cols = task.outputs(task.as_float(scored), x)
    assert all(len(v) == 4 for v in cols.values())
    assert models.count_parameters(net) > 0


def test_lenet_has_far_fewer_parameters_than_mlp_per_layer_width():
    spec = models.InputSpec(1, 28, 28, 10)
    lenet = models.count_parameters(models.get_model("lenet", spec))
    logreg = models.count_parameters(models.get_model("logreg", spec))
    assert logreg == 28 * 28 * 10 + 10
    assert lenet > logreg


def test_unknown_model_lists_choices():
    with pytest.raises(UnknownModelError, match="choose one of: .*lenet"):
        models.get_model("nope", models.InputSpec(1, 28, 28, 10))


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="registered twice"):
        models.registry.register("lenet", task="classification")(lambda spec: None)
