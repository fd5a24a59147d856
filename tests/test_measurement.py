import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from msifusion.measurement import (Measurement, MeasurementModel, block_mean, consistency_error, project_consistent,
                                   upsample)


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


def _spot(fine: np.ndarray, factor: int, sigma: float) -> np.ndarray:
    return Measurement(fine.shape, factor, sigma).A(torch.as_tensor(fine, dtype=torch.float64)).numpy()


def test_spot_operator_is_scipy_gaussian_blur_then_block_mean():
    # an outside reference: scipy's reflect-mode Gaussian (truncated at 4 σ), then the box average
    fine = np.random.default_rng(0).random((40, 60))
    reference = block_mean(gaussian_filter(fine, 3.0, mode="reflect", truncate=4.0), 10)
    np.testing.assert_allclose(_spot(fine, 10, 3.0), reference, rtol=1e-5)
    np.testing.assert_allclose(MeasurementModel(3.0).apply(fine, 10), reference, rtol=1e-5)  # the model's own form
    np.testing.assert_array_equal(MeasurementModel().apply(fine, 10), block_mean(fine, 10))


def test_torch_gaussian_blur_is_scipys_with_replicated_borders():
    from msifusion.measurement import gaussian_blur_t

    fine = np.random.default_rng(2).random((2, 30, 50))
    ours = gaussian_blur_t(torch.as_tensor(fine), 2.5).numpy()
    for k in range(2):
        np.testing.assert_allclose(ours[k], gaussian_filter(fine[k], 2.5, mode="nearest", truncate=3.0), atol=1e-12)


def test_gaussian_block_means_are_the_block_means_of_the_blurred_image():
    from msifusion.measurement import block_mean_t, gaussian_block_mean_t, gaussian_blur_t

    rng = np.random.default_rng(3)
    for f, sigma in ((8, 3.0), (4, 0.5), (20, 10.0), (8, 17.0)):  # the last reaches past the image
        x = torch.as_tensor(rng.random((2, 4 * f, 6 * f)))
        np.testing.assert_allclose(gaussian_block_mean_t(x, f, sigma).numpy(),
                                   block_mean_t(gaussian_blur_t(x, sigma), f).numpy(), atol=1e-12)


def test_spot_operator_conserves_mass_and_its_adjoint_is_exact():
    op = Measurement((40, 30), 10, 2.5)
    rng = np.random.default_rng(1)
    x, r = torch.as_tensor(rng.random((40, 30))), torch.as_tensor(rng.random((4, 3)))
    np.testing.assert_allclose(op.A(torch.ones(40, 30, dtype=torch.float64)).numpy(), 1.0, rtol=1e-12)
    assert float((op.A(x) * r).sum()) == pytest.approx(float((x * op.At(r)).sum()), rel=1e-12)


def test_consistency_error_is_measured_under_the_stated_model():
    fine = np.random.default_rng(3).random((40, 60)).astype(np.float32)
    measured = _spot(fine, 10, 3.0)
    assert consistency_error(fine, measured, 10, spot_sigma_px=3.0) < 1e-6
    assert consistency_error(fine, measured, 10) > 1e-3  # the plain box average sees the spot's blur


# ----------------------------------------------------------------------------- projection


def test_projection_is_exact_on_random_data_and_smooth():
    rng = np.random.default_rng(3)
    x = rng.random((50, 60)).astype(np.float32)
    y = rng.random((5, 6)).astype(np.float32) * 3
    out = project_consistent(x, y, 10)
    assert out.shape == x.shape and out.dtype == np.float32
    assert consistency_error(out, y, 10) < 1e-6
    # the correction is a bilinear field, not block-constant: no jump at block borders beyond the data's own
    corr = out - x
    jumps = np.abs(np.diff(corr, axis=1))
    assert jumps.max() < 0.5 * np.abs(np.diff(block_mean(corr, 10), axis=1)).max()


def test_projection_keeps_consistent_images_and_handles_stacks():
    rng = np.random.default_rng(4)
    y = rng.random((3, 4, 5))
    x = np.repeat(np.repeat(y, 4, axis=1), 4, axis=2)
    out = project_consistent(x, y, 4)
    np.testing.assert_allclose(out, x, atol=1e-12)


def test_positive_projection_keeps_empty_blocks_zero():
    rng = np.random.default_rng(5)
    y = rng.random((4, 4)).astype(np.float32)
    y[1, 2] = 0.0
    x = rng.normal(size=(24, 24)).astype(np.float32)
    out = project_consistent(x, y, 6, positive=True)
    assert out.min() >= 0
    assert np.all(out[6:12, 12:18] == 0)
    assert consistency_error(out, y, 6) < 1e-6
    signed = y - 0.5  # a stack: each image is made non-negative where its own measurement is
    stack = project_consistent(np.stack([x, x]), np.stack([y, signed]), 6, positive=True)
    np.testing.assert_array_equal(stack[0], out)
    np.testing.assert_array_equal(stack[1], project_consistent(x, signed, 6))


def test_spot_measurement_projection_is_exact():
    rng = np.random.default_rng(6)
    y = rng.random((4, 5))
    x = rng.random((32, 40))
    out = project_consistent(x, y, 8, spot_sigma_px=2.0)
    op = Measurement((32, 40), 8, 2.0)
    np.testing.assert_allclose(op.A(torch.as_tensor(out)).numpy(), y, atol=1e-9)


@pytest.mark.parametrize("spot", [0.0, 2.0])
def test_projection_keeps_the_images_dtype_for_a_float64_measurement(spot):
    rng = np.random.default_rng(7)
    y = torch.as_tensor(rng.random((4, 5)))  # float64
    x = torch.as_tensor(rng.random((32, 40)), dtype=torch.float32)
    op = Measurement((32, 40), 8, spot)
    out = op.project(x, y)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(op.A(out).numpy(), y.numpy(), atol=1e-6)


def test_positive_projection_under_a_spot_is_exact_and_tends_to_the_box_models_as_the_spot_narrows():
    rng = np.random.default_rng(8)
    fine = rng.random((40, 48)) ** 4  # sparse bright pixels: a plain projection goes far below zero
    x = rng.normal(0.2, 0.3, (40, 48))
    box = project_consistent(x, block_mean(fine, 8), 8, positive=True)
    for sigma in (0.2, 1.0, 4.0):
        y = _spot(fine, 8, sigma)
        out = project_consistent(x, y, 8, spot_sigma_px=sigma, positive=True)
        plain = project_consistent(x, y, 8, spot_sigma_px=sigma)
        np.testing.assert_allclose(_spot(out, 8, sigma), y, atol=1e-9)
        assert out.min() > 0.1 * plain.min()  # measured: 3 %, 8 % at σ = 1, 4 px
        if sigma < 0.5:  # a spot this narrow barely reaches the next pixel: the box model's answer
            np.testing.assert_allclose(out, box, atol=1e-5)
            assert out.min() > -1e-5 * y.max()


def test_projection_is_the_limit_of_irani_peleg_back_projection():
    # back-projection adds the bilinearly upsampled residual until it vanishes; the projection is its limit
    rng = np.random.default_rng(7)
    measured = rng.random((6, 8))
    x = upsample(measured.astype(np.float32), 4).astype(np.float64) + rng.normal(0, 0.1, (24, 32))
    start = x.copy()
    for _ in range(200):
        x += upsample((measured - block_mean(x, 4)).astype(np.float32), 4)
    np.testing.assert_allclose(project_consistent(start, measured, 4), x, atol=1e-5)


@pytest.mark.parametrize("spot", [0.0, 2.0])
def test_null_projection_is_orthogonal_onto_what_the_measurement_cannot_see(spot):
    """A(P v) = 0, P P v = P v, and v − P v is orthogonal to P v; v itself is left unchanged."""
    v = torch.as_tensor(np.random.default_rng(3).standard_normal((32, 40)))
    before = v.clone()
    op = Measurement((32, 40), 8, spot)
    pv = op.null_project(v)
    assert torch.equal(v, before)
    np.testing.assert_allclose(op.A(pv).numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(op.null_project(pv).numpy(), pv.numpy(), atol=1e-12)
    assert abs(float(((v - pv) * pv).sum())) < 1e-9
