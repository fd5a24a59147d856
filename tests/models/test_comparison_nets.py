"""The paper's comparison networks (three-layer CNN, multi-stage U-Net): shapes, recipe, units."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from msifusion.fit import FitConfig
from msifusion.runtime import Runtime
from msifusion.methods import METHODS, MethodOptions, fuse
from msifusion.models.cnn3 import CNN3
from msifusion.models.unet import UNet, UNetRecipe, correlation_loss

FAST = MethodOptions(FitConfig(max_epochs=4), Runtime(seed=3, quiet=True))


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    return rng.random((24, 32, 3)).astype(np.float32), rng.random((6, 8)).astype(np.float32) + 0.1


def test_cnn3_is_srcnn_9_1_5_and_keeps_size():
    net = CNN3()
    shapes = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert shapes == [(64, 3, 9, 9), (32, 64, 1, 1), (1, 32, 5, 5)]
    assert net(torch.zeros(1, 3, 13, 17)).shape == (1, 1, 13, 17)


@pytest.mark.parametrize("size", [(24, 32), (22, 30), (13, 17)])
def test_unet_keeps_any_size(size):
    assert UNet()(torch.zeros(1, 3, *size)).shape == (1, 1, *size)


def test_stage_epochs_split_and_cap():
    recipe = UNetRecipe()
    assert recipe.stage_epochs(2000) == (200, 100, 100)
    assert recipe.stage_epochs(100) == (50, 25, 25)
    assert recipe.stage_epochs(1) == (1, 1, 1)


def test_correlation_loss_known_values():
    a = torch.arange(12.0).view(1, 1, 3, 4)
    assert correlation_loss(a, 2 * a + 1).item() == pytest.approx(0.0, abs=1e-6)
    assert correlation_loss(a, -a).item() == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("method", ["cnn3", "unet"])
def test_network_method_shape_units_and_seed(tiny, method):
    guide, ion = tiny
    assert METHODS[method].trains
    out = fuse(guide, ion, method, FAST)
    assert out.image.shape == (24, 32) and np.all(np.isfinite(out.image))
    again = fuse(guide, ion, method, FAST)
    np.testing.assert_array_equal(again.image, out.image)
    scaled = fuse(guide, ion * 1000, method, FAST).image
    np.testing.assert_allclose(scaled, out.image * 1000, rtol=1e-4, atol=1e-4 * 1000 * np.abs(out.image).max())
    assert out.fit.history and all({"epoch", "mse", "edge", "total", "seconds"} <= r.keys() for r in out.fit.history)


def test_cnn3_propagates_mse_only(tiny):
    guide, ion = tiny
    fused = fuse(guide, ion, "cnn3", FAST)
    fit = fused.fit
    assert fit.history and all(r["total"] == pytest.approx(r["mse"]) for r in fit.history)
    assert all(r["edge"] > 0 for r in fit.history)  # measured, not trained on
    edge_weighted = replace(FAST, fit=replace(FAST.fit, w_edge=5.0))
    np.testing.assert_array_equal(fuse(guide, ion, "cnn3", edge_weighted).image, fused.image)  # the weight is unused


def test_unet_runs_three_stages_with_their_losses(tiny):
    guide, ion = tiny
    fit = fuse(guide, ion, "unet", FAST).fit
    assert fit.epochs == 4
    assert [r["stage"] for r in fit.history] == [1, 1, 2, 3]
    assert "corr" not in fit.history[0] and "rec" not in fit.history[2]
    last = fit.history[-1]
    assert last["total"] == pytest.approx(last["mse"] + last["corr"] + last["rec"], rel=1e-5)
