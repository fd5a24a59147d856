"""Closed-form methods: shapes, units, consistency, and each algorithm's known special cases."""

import cv2
import numpy as np
import pytest

from msifusion.classical import (
    DiffusionConfig,
    anisotropic_diffusion,
    guided_filter,
    optical_features,
    pls1,
    pls_fusion,
)
from msifusion.methods import MethodOptions, fuse
from msifusion.measurement import block_mean, consistency_error, upsample

CLOSED_FORM = ["bicubic", "guided", "bilinear-bp", "guided-bp", "diffusion", "pls"]


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    guide = rng.random((24, 32, 3)).astype(np.float32)
    ion = rng.random((6, 8)).astype(np.float32) + 0.1
    return guide, ion


@pytest.mark.parametrize("method", CLOSED_FORM)
def test_method_shape_finite_and_units(tiny, method):
    guide, ion = tiny
    out = fuse(guide, ion, method, MethodOptions()).image
    assert out.shape == (24, 32) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    scaled = fuse(guide, ion * 1000, method, MethodOptions()).image
    np.testing.assert_allclose(scaled, out * 1000, rtol=1e-4, atol=1e-4 * 1000 * np.abs(out).max())


@pytest.mark.parametrize("method", ["bilinear-bp", "guided-bp", "diffusion"])
def test_consistent_methods_match_the_measurement(tiny, method):
    guide, ion = tiny
    result = fuse(guide, ion, method, MethodOptions())
    assert result.consistency_error < 1e-6
    assert consistency_error(result.image, ion, 4) < 1e-6


def _box(img, r):
    return cv2.boxFilter(img, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("channels", [1, 3])
def test_guided_filter_with_constant_guide_is_box_smoothing(channels):
    src = np.random.default_rng(1).random((20, 30))
    guide = np.full((20, 30, channels), 0.4).squeeze()
    out = guided_filter(guide, src, 2, 1e-3)
    np.testing.assert_allclose(out, _box(_box(src, 2), 2), atol=1e-5)


def test_guided_filter_with_itself_as_guide_preserves_the_image():
    src = np.kron(np.random.default_rng(2).random((5, 6)), np.ones((4, 4)))  # sharp edges
    np.testing.assert_allclose(guided_filter(src, src, 2, 1e-8), src, atol=1e-3)
    colour = np.repeat(src[..., None], 3, axis=2)
    np.testing.assert_allclose(guided_filter(colour, src, 2, 1e-8), src, atol=1e-3)


def test_diffusion_keeps_constants_and_zero_background():
    guide = np.random.default_rng(5).random((24, 32, 3)).astype(np.float32)
    const = np.full((6, 8), 0.7, np.float32)
    np.testing.assert_allclose(anisotropic_diffusion(guide, const, 4), 0.7, atol=1e-5)
    ion = np.random.default_rng(6).random((6, 8)).astype(np.float32)
    ion[:, :3] = 0
    out = anisotropic_diffusion(guide, ion, 4, DiffusionConfig(iterations=50))
    assert out.min() >= 0
    assert np.all(out[:, :12] == 0)
    np.testing.assert_allclose(block_mean(out, 4), ion, atol=1e-6)


def test_diffusion_follows_a_guide_edge_inside_a_block():
    # truth: left half 1, right half 0, edge at column 10 (inside a 4-px block); guide shares it
    truth = np.zeros((16, 16), np.float32)
    truth[:, :10] = 1
    guide = np.repeat(truth[..., None], 3, axis=2)
    out = anisotropic_diffusion(guide, block_mean(truth, 4), 4)
    bilinear_err = np.abs(upsample(block_mean(truth, 4), 4) - truth).mean()
    assert np.abs(out - truth).mean() < 0.1 * bilinear_err


def test_pls1_recovers_an_exact_linear_relation():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(40, 5))
    beta = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    y = X @ beta + 4.0
    coef, intercept = pls1(X, y, 5)
    np.testing.assert_allclose(coef, beta, atol=1e-8)
    assert intercept == pytest.approx(4.0)


def test_pls1_with_one_component_is_the_covariance_direction():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(30, 3))
    y = rng.normal(size=30)
    coef, _ = pls1(X, y, 1)
    w = (X - X.mean(0)).T @ (y - y.mean())
    assert abs(np.dot(coef, w) / np.linalg.norm(coef) / np.linalg.norm(w)) == pytest.approx(1.0)


def test_pls_fusion_recovers_a_linear_optical_model(tiny):
    guide, _ = tiny
    features = optical_features(guide, 4)
    assert len(features) == 16
    fine = 0.3 * features[0] - 0.5 * features[1] + 0.2 * features[6] + 0.2
    out = pls_fusion(guide, block_mean(fine, 4), 4, n_components=16)
    np.testing.assert_allclose(out, fine, atol=1e-3)


def test_bilinear_reproduces_a_ramp_at_the_fine_pixel_centres():
    scale, (h, w) = 4, (8, 10)
    ion = (2.0 * np.arange(h)[:, None] + 3.0 * np.arange(w)[None, :] + 1.0).astype(np.float32)
    out = fuse(np.zeros((h * scale, w * scale, 3), np.float32), ion, "bilinear", MethodOptions()).image
    rows, cols = ((np.arange(n * scale) + 0.5) / scale - 0.5 for n in (h, w))  # fine centres in coarse pixels
    inner = slice(scale, -scale)  # the outer half pixel repeats the edge
    np.testing.assert_allclose(out[inner, inner], (2.0 * rows[:, None] + 3.0 * cols[None, :] + 1.0)[inner, inner],
                               atol=1e-4)


def _keys(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel, with OpenCV's a = -0.75."""
    x = np.abs(x)
    return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                    np.where(x < 2, a * (x**3 - 5 * x**2 + 8 * x - 4), 0.0))


def test_bicubic_is_cubic_convolution_at_the_fine_pixel_centres():
    scale, n = 4, 10
    profile = np.random.default_rng(3).random(n)
    ion = np.repeat(profile[:, None], 6, axis=1).astype(np.float32)
    out = fuse(np.zeros((n * scale, 6 * scale, 3), np.float32), ion, "bicubic", MethodOptions()).image
    centres = (np.arange(n * scale) + 0.5) / scale - 0.5
    expected = (_keys(centres[:, None] - np.arange(n)[None, :]) * profile).sum(axis=1)
    inner = slice(2 * scale, -2 * scale)  # the kernel reaches two coarse pixels; OpenCV replicates the border
    np.testing.assert_allclose(out[inner, 7], expected[inner], atol=1e-5)
    assert not np.allclose(out, fuse(np.zeros_like(out)[..., None].repeat(3, -1), ion, "bilinear").image, atol=1e-3)


def test_guided_is_the_guided_filter_of_the_bilinear_upsampling(tiny):
    guide, ion = tiny
    out = fuse(guide, ion, "guided", MethodOptions()).image
    expected = guided_filter(guide, upsample(ion, 4, "bilinear"), 4, 1e-3)  # radius = scale, eps 1e-3, as listed
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, upsample(ion, 4, "bilinear"), atol=1e-3)  # the guide changes it


def test_pls_fusion_by_default_takes_eight_components_and_nears_a_linear_model(tiny):
    guide, _ = tiny
    fine = 0.3 * optical_features(guide, 4)[0] + 0.2
    out = fuse(guide, block_mean(fine, 4), "pls", MethodOptions()).image
    np.testing.assert_allclose(out, pls_fusion(guide, block_mean(fine, 4), 4, n_components=8), rtol=1e-5)
    assert np.std(out - fine) < 0.2 * np.std(fine)  # 48 MSI pixels and 16 features: close, not exact
