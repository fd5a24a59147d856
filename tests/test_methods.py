import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.fit import FitConfig, Runtime
from msifusion.methods import METHODS, MethodOptions, fuse, fuse_many, infer_scale

QUICK = MethodOptions(FitConfig(max_epochs=5, patience=0), Runtime(seed=0, quiet=True))


def test_infer_scale():
    assert infer_scale((40, 60), (4, 6)) == 10
    for guide, ion in (((40, 61), (4, 6)), ((40, 60), (4, 5)), ((30, 60), (3, 3))):
        with pytest.raises(ValueError, match="not an integer multiple"):
            infer_scale(guide, ion)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_keeps_shape_and_units(small_pair, method):
    guide, ion, scale = small_pair
    base = fuse(guide, ion, method, QUICK)
    big = fuse(guide, ion * 1000.0, method, QUICK)
    assert base.image.shape == guide.shape[:2] and base.image.dtype == np.float32
    assert np.all(np.isfinite(base.image))
    np.testing.assert_allclose(big.image, base.image * 1000.0, rtol=1e-4, atol=1e-3 * float(np.abs(base.image).max()))
    assert base.scale == scale and base.intensity_scale == pytest.approx(float(ion.max()))


def test_lcrn_is_reproducible_for_a_seed(small_pair):
    guide, ion, _ = small_pair
    a = fuse(guide, ion, "lcrn", QUICK).image
    b = fuse(guide, ion, "lcrn", QUICK).image
    c = fuse(guide, ion, "lcrn", MethodOptions(QUICK.fit, Runtime(seed=1, quiet=True))).image
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bilinear_consistency_is_reported(small_pair):
    guide, ion, _ = small_pair
    result = fuse(guide, ion, "bilinear")
    assert 0 < result.consistency_error < 0.2
    assert result.fit.history == [] and result.fit.epochs == 0


def test_bad_problems(small_pair):
    guide, ion, _ = small_pair
    with pytest.raises(InputError, match="unknown method"):
        fuse(guide, ion, "nope")
    with pytest.raises(InputError, match="all zero"):
        fuse(guide, ion * 0, "bilinear")
    with pytest.raises(InputError, match="NaN or inf"):
        fuse_many(guide, np.stack([ion, np.where(ion > ion.mean(), np.nan, ion)]))
    with pytest.raises(InputError, match="integer multiple"):
        fuse(guide[:-1], ion, "bilinear")
    with pytest.raises(InputError, match="at least 2"):
        fuse(guide[:8, :12], ion, "bilinear")
