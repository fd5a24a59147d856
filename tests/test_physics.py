import numpy as np
import pytest

from msifusion.physics import MeasurementModel, block_mean, consistency_error, upsample


def test_block_mean_known_answer():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(block_mean(image, 2), [[2.5, 4.5], [10.5, 12.5]])


def test_block_mean_rejects_non_multiple():
    with pytest.raises(ValueError):
        block_mean(np.zeros((5, 4)), 2)


def test_block_mean_of_nearest_upsampling_is_identity():
    ion = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    np.testing.assert_allclose(block_mean(upsample(ion, 3, "nearest"), 3), ion, rtol=1e-6)


def test_bilinear_upsampling_matches_opencv_half_pixel_convention():
    ion = np.array([[0.0, 1.0]], dtype=np.float32).repeat(2, axis=0)
    up = upsample(ion, 2)
    # half-pixel centres: outer fine pixels replicate the edge, inner ones interpolate 1/4, 3/4
    np.testing.assert_allclose(up[0], [0.0, 0.25, 0.75, 1.0])


def test_consistency_error_zero_for_block_constant_and_positive_otherwise():
    ion = np.random.default_rng(0).random((4, 6)).astype(np.float32) + 0.5
    assert consistency_error(np.kron(ion, np.ones((5, 5), np.float32)), ion, 5) == pytest.approx(0, abs=1e-7)
    assert consistency_error(upsample(ion, 5) * 1.1, ion, 5) > 0.05


def test_measurement_model_spot_blur_conserves_mean():
    fine = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    blurred = MeasurementModel(factor=10, spot_sigma_px=3.0).measure(fine)
    assert blurred.shape == (4, 4)
    assert blurred.mean() == pytest.approx(fine.mean(), rel=1e-3)
    np.testing.assert_allclose(MeasurementModel(factor=10).measure(fine), block_mean(fine, 10))


def test_consistency_error_is_measured_under_the_stated_model():
    fine = np.random.default_rng(3).random((40, 60)).astype(np.float32)
    measured = MeasurementModel(factor=10, spot_sigma_px=3.0).measure(fine)
    assert consistency_error(fine, measured, 10, spot_sigma_px=3.0) < 1e-6
    assert consistency_error(fine, measured, 10) > 1e-3  # the plain box average sees the spot's blur
