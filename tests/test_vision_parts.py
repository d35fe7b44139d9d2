"""The vision families' parts without Spark: task metrics on hand-made cases, the autoencoder variants'
train/eval behaviour, the FCN on odd sizes, and the textured paste that makes segmentation data."""

from __future__ import annotations

import glob

import numpy as np
import pytest
import torch

from sparkzoo import models
from sparkzoo.models.evaluation import mask_iou_sums
from sparkzoo.pipelines.prepare.images import transform_image

STAMPS = sorted(glob.glob("/usr/share/tuxpaint/stamps/animals/**/*.png", recursive=True))


def test_mask_iou_sums_on_a_hand_made_case():
    pred = np.zeros((2, 4, 4), np.uint8)
    truth = np.zeros((2, 4, 4), np.uint8)
    pred[0, :2, :2] = 1          # 4 pixels
    truth[0, :2, :] = 1          # 8 pixels, 4 shared -> IoU 0.5
    # image 1: both empty -> IoU 1 by definition
    s = mask_iou_sums(pred, truth)
    assert s["intersection"] == 4 and s["union"] == 8
    assert s["image_iou"] == pytest.approx(1.5)
    assert s["pixel_correct"] == 32 - 4 and s["pixels"] == 32


def test_segmentation_task_iou_is_one_for_a_perfect_prediction_and_zero_for_the_inverse():
    task = models.make_task("segmentation", 2)
    mask = (np.random.default_rng(0).random((3, 8, 8)) > 0.5).astype(np.uint8)
    target = torch.from_numpy(mask).unsqueeze(1).float()
    perfect = task.finish(task.metric_sums(target * 20 - 10, target))
    inverse = task.finish(task.metric_sums(10 - target * 20, target))
    assert perfect["iou"] == 1.0 and perfect["pixel_accuracy"] == 1.0
    assert inverse["iou"] == 0.0


def test_reconstruction_mse_is_reported_on_the_pixel_scale():
    std = 0.5
    task = models.make_task("reconstruction", 10, mean=0.0, std=std)
    x = torch.zeros(2, 1, 4, 4)
    out = {"reconstruction": x + 0.2, "code": torch.zeros(2, 10)}   # 0.2 normalised = 0.1 on the pixel scale
    assert task.finish(task.metric_sums(out, x))["mse"] == pytest.approx(0.01)


def test_denoising_noise_only_while_training_and_vae_code_is_the_mean():
    spec = models.InputSpec(1, 8, 8, 10)
    torch.manual_seed(0)
    dae = models.get_model("denoising_autoencoder", spec, noise_std=1.0)
    x = torch.randn(3, 1, 8, 8)
    dae.train()
    assert not torch.equal(dae(x)["reconstruction"], dae(x)["reconstruction"])   # fresh noise each call
    dae.eval()
    assert torch.equal(dae(x)["reconstruction"], dae(x)["reconstruction"])
    vae = models.get_model("vae", spec, beta=2.0).eval()
    out = vae(x)
    assert torch.equal(out["penalty"], 2.0 * out["kl"]) and (out["kl"] >= 0).all()
    assert torch.equal(vae(x)["code"], out["code"])


@pytest.mark.parametrize("size", [(48, 48), (37, 29)])
def test_fcn_answers_per_pixel_at_any_size(size):
    net = models.get_model("fcn", models.InputSpec(3, 48, 48, 2)).eval()
    assert net(torch.randn(2, 3, *size)).shape == (2, 1, *size)


def test_resnet_trunk_is_input_size_free_so_it_transfers():
    a = models.get_model("resnet", models.InputSpec(1, 28, 28, 10)).state_dict()
    b = models.get_model("resnet", models.InputSpec(1, 20, 20, 5)).state_dict()
    same = [k for k in a if a[k].shape == b[k].shape]
    assert set(a) == set(b) and set(a) - set(same) == {"head.3.weight", "head.3.bias"}


def test_textured_paste_is_seeded_and_its_mask_is_the_alpha():
    from PIL import Image

    settings = {"height": 48, "width": 48, "channels": 3, "resize": "fit", "background": "texture",
                "paste_scale_min": 0.5}
    content = open(STAMPS[0], "rb").read()
    a, mask_a = transform_image(content, "png", settings, "k1", 7, "alpha")
    again, mask_again = transform_image(content, "png", settings, "k1", 7, "alpha")
    b, _ = transform_image(content, "png", settings, "k2", 7, "alpha")
    assert np.array_equal(a, again) and np.array_equal(mask_a, mask_again)
    assert not np.array_equal(a, b)
    assert a.shape == (48, 48, 3) and set(np.unique(mask_a)) <= {0, 1}
    assert 0 < mask_a.mean() < 1
    alpha = np.asarray(Image.open(STAMPS[0]).convert("RGBA").getchannel("A"))
    assert mask_a.sum() <= 48 * 48 * (alpha > 127).mean() + 48   # the object never grows past its alpha share
    # the background differs from a solid colour: many distinct colours outside the mask
    outside = a[mask_a == 0].reshape(-1, 3)
    assert len(np.unique(outside, axis=0)) > 50


@pytest.mark.parametrize("values", [64 * 64 * 3, 300 * 300])   # uint32 sums, and a row wide enough for uint64
def test_pixel_statistics_are_exact_on_the_unit_scale(values):
    from sparkzoo.pipelines.prepare.images import pixel_sums

    flat = np.random.default_rng(values).integers(0, 256, (5, values), dtype=np.uint8)
    flat[0] = 255                     # the largest sum of squares a row can hold
    total, squares = pixel_sums(flat)
    as_float = flat.astype(np.float64) / 255.0
    np.testing.assert_allclose(total, as_float.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(squares, (as_float ** 2).sum(axis=1), rtol=1e-12)


def test_the_forward_pass_size_follows_the_inference_path_unless_the_config_sets_it():
    """score.image_chunk unset: 128 rows for float32 and channels_last, 256 for the lighter bf16 and
    int8_static passes (the measured sweeps); set, it wins on every path."""
    from sparkzoo.pipelines import config
    from sparkzoo.pipelines.modelpack import Predictor

    spec = {"task": "classification", "family": "lenet", "params": {}, "num_classes": 3,
            "stats": {"mean": 0.5, "std": 0.25}, "shape": {"height": 16, "width": 16, "channels": 1}}
    module = models.get_model("lenet", models.InputSpec(1, 16, 16, 3))
    assert config.ScoreConfig().image_chunk is None
    sizes = {path: Predictor(spec, module, optimize=path).image_chunk for path in ("none", "channels_last", "bf16")}
    assert sizes == {"none": 128, "channels_last": 128, "bf16": 256}
    assert Predictor(spec, module, optimize="bf16", image_chunk=64).image_chunk == 64


@pytest.mark.parametrize("family,task", [("lenet", "classification"), ("fcn", "segmentation")])
def test_scoring_in_chunks_gives_the_one_pass_answers(family, task):
    """On CPU the Predictor runs image models in chunks of rows per forward pass (faster per row than a
    whole Arrow batch); rows must come back in order with the one-pass answers."""
    from sparkzoo.pipelines.modelpack import Predictor

    spec = {"task": task, "family": family, "params": {}, "num_classes": 3 if task == "classification" else 2,
            "stats": {"mean": 0.5, "std": 0.25}, "shape": {"height": 16, "width": 16, "channels": 1}}
    torch.manual_seed(0)
    module = models.get_model(family, models.InputSpec(1, 16, 16, spec["num_classes"]))
    pixels = np.random.default_rng(0).integers(0, 256, (100, 16, 16, 1), dtype=np.uint8)
    whole = Predictor(spec, module, image_chunk=1000).predict_arrays(pixels)
    chunked = Predictor(spec, module, image_chunk=16).predict_arrays(pixels)
    assert set(chunked) == set(whole)
    for key, value in whole.items():
        assert len(chunked[key]) == 100
        if value.dtype.kind == "f":
            np.testing.assert_allclose(chunked[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
        else:
            assert np.mean(chunked[key] == value) > 0.99, key   # integer outputs: argmax may flip on an exact tie
