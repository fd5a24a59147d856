"""Metrics: known answers on constructed pairs, masks, and the edge loss's normalisation."""

import numpy as np
import pytest

from msifusion.metrics import Scores, edge_loss, mse, psnr, score, ssim
from msifusion.measurement import block_mean


def _ramp(h: int = 24, w: int = 32) -> np.ndarray:
    return np.linspace(0, 1, h * w, dtype=np.float64).reshape(h, w)


def test_identical_images_score_perfectly():
    truth = _ramp()
    assert mse(truth, truth) == 0
    assert psnr(truth, truth) == float("inf")
    assert ssim(truth, truth) == pytest.approx(1.0)


def test_known_mse_and_psnr():
    truth = _ramp()  # data range exactly 1
    fused = truth + 0.1
    assert mse(fused, truth) == pytest.approx(0.01)
    assert psnr(fused, truth) == pytest.approx(20.0)
    truth3 = truth * 3  # data range 3, error 0.3 → same PSNR
    assert psnr(truth3 + 0.3, truth3) == pytest.approx(20.0)


def test_ssim_drops_for_a_different_image():
    rng = np.random.default_rng(0)
    truth = _ramp()
    assert ssim(truth + rng.normal(0, 0.2, truth.shape), truth) < 0.5


def test_ssim_is_scikit_images_map_averaged_with_its_border():
    """The mean of scikit-image's full map (border included); scikit-image's own mean crops (7 − 1) // 2 pixels."""
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    truth = _ramp(40, 60)
    fused = truth + rng.normal(0, 0.05, truth.shape)
    mean, full = structural_similarity(truth, fused, data_range=1.0, full=True)
    assert ssim(fused, truth) == pytest.approx(float(full.mean()), abs=1e-12)
    assert mean == pytest.approx(float(full[3:-3, 3:-3].mean()), abs=1e-12)


def test_mask_restricts_error_and_survives_inf_truth():
    truth = _ramp()
    fused = truth.copy()
    truth[:4, :5] = np.inf  # Middlebury: no truth here
    fused[:4, :5] = 123.0
    mask = np.isfinite(truth)
    assert psnr(fused, truth, mask) == float("inf")
    assert ssim(fused, truth, mask) == pytest.approx(1.0)
    fused[10, 10] += 0.5
    n = mask.sum()
    assert mse(fused, truth, mask) == pytest.approx(0.25 / n)
    rng = truth[mask].max() - truth[mask].min()
    assert psnr(fused, truth, mask) == pytest.approx(10 * np.log10(rng**2 * n / 0.25))


def test_mask_must_select_something():
    truth = _ramp()
    with pytest.raises(ValueError):
        mse(truth, truth, np.zeros(truth.shape, bool))


def test_constant_truth_has_no_psnr():
    with pytest.raises(ValueError):
        psnr(np.ones((8, 8)), np.zeros((8, 8)))


def test_ssim_on_images_smaller_than_its_window():
    truth = _ramp(5, 6)
    assert ssim(truth, truth) == pytest.approx(1.0)


def test_block_constant_upsampling_is_consistent():
    rng = np.random.default_rng(1)
    measured = rng.random((6, 8)).astype(np.float32)
    fused = np.kron(measured, np.ones((4, 4), np.float32))
    guide = rng.random((24, 32, 3)).astype(np.float32)
    s = score(fused, fused, measured, 4, guide)
    assert isinstance(s, Scores)
    assert s.consistency == 0.0
    assert s.psnr == float("inf")
    off = score(fused * 1.5, fused, measured, 4, guide)
    assert off.consistency == pytest.approx(0.5, rel=1e-6)


def test_edge_loss_is_zero_against_matching_grey_guide_after_normalisation():
    rng = np.random.default_rng(2)
    c = rng.random((24, 32)).astype(np.float32) * 0.8
    c[:4, :4] = 1.0  # a block at the maximum: max|measured| = 5 below
    guide = np.repeat(c[..., None], 3, axis=2)  # luminance of grey = grey
    fused = 5 * c
    measured = block_mean(fused, 4)
    assert edge_loss(fused, guide, norm=5.0) == pytest.approx(0.0, abs=1e-10)
    assert score(fused, fused, measured, 4, guide).edge == pytest.approx(0.0, abs=1e-10)
    other = rng.random((24, 32)).astype(np.float32)
    assert edge_loss(other, guide) > 0.01
    assert edge_loss(7 * other, guide, norm=7.0) == pytest.approx(edge_loss(other, guide), rel=1e-5)
