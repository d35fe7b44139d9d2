"""Every registered family builds, runs forward on a tiny input and gives one logit per class."""

from __future__ import annotations

import pytest
import torch

from sparkzoo import models
from sparkzoo.models.registry import UnknownModelError


@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8)])
def test_family_forward(name, shape):
    spec = models.InputSpec(*shape, num_classes=10)
    net = models.get_model(name, spec)
    out = net(torch.randn(4, *shape))
    assert out.shape == (4, 10)
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
