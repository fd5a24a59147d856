"""A microscope's channels composed into one colour guide."""

import numpy as np
import pytest

from msifusion.io.channels import composite, composite_note, stretched


def test_a_channel_is_stretched_between_its_own_percentiles_and_a_flat_one_is_zero() -> None:
    channel = np.arange(1000, dtype=np.uint16)
    out = stretched(channel.reshape(10, 100))
    lo, hi = np.percentile(channel, (0.1, 99.9))
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    assert out.ravel()[500] == pytest.approx((500 - lo) / (hi - lo), rel=1e-6)
    assert not stretched(np.full((4, 5), 7, np.uint16)).any()


def test_two_or_three_channels_are_its_colours_each_at_its_own_scale() -> None:
    rng = np.random.default_rng(0)
    bright, faint = rng.integers(0, 4096, (2, 20, 30)).astype(np.uint16)
    faint //= 64  # a faint channel weighs as much as a bright one
    two = composite([bright, faint])
    assert two.shape == (20, 30, 3) and two.dtype == np.float32
    np.testing.assert_array_equal(two[..., 0], stretched(bright))
    np.testing.assert_array_equal(two[..., 1], stretched(faint))
    assert not two[..., 2].any() and two[..., 1].max() == 1
    np.testing.assert_array_equal(composite([bright, faint, bright])[..., 2], stretched(bright))
    with pytest.raises(ValueError):
        composite([bright])


def test_four_channels_keep_their_differences_in_three_principal_components() -> None:
    """Four channels of rank two (two of them copies): the composite's colour distances are the stretched channels'
    up to one common scale, and the third component is flat; the same channels give the same colours."""
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 16, 24))
    channels = [a, b, a.copy(), b.copy()]
    image = composite(channels)
    assert image.shape == (16, 24, 3) and image.min() >= 0 and image.max() <= 1
    assert np.ptp(image[..., 2]) < 1e-5 and np.ptp(image[..., 1]) >= np.ptp(image[..., 0])  # the first in green
    stacked = np.stack([stretched(c) for c in channels], -1).reshape(-1, 4).astype(np.float64)
    colours = image.reshape(-1, 3).astype(np.float64)
    pairs = rng.integers(0, len(colours), (200, 2))
    far = np.linalg.norm(stacked[pairs[:, 0]] - stacked[pairs[:, 1]], axis=1)
    near = np.linalg.norm(colours[pairs[:, 0]] - colours[pairs[:, 1]], axis=1)
    ratio = near[far > 0.1] / far[far > 0.1]
    assert np.ptp(ratio) < 1e-4 * ratio.mean()
    np.testing.assert_array_equal(composite(channels), image)


def test_the_note_names_the_channels_where_the_file_gives_them() -> None:
    two = list(np.random.default_rng(4).random((2, 8, 9)))
    assert composite_note("af.ome.tif", two, ["DAPI", "AF488"]) == (
        "af.ome.tif: its 2 channels (DAPI, AF488) are read as one colour image, each stretched to its own 0.1–99.9 "
        "percentile range, as red and green; to use one of them alone, keep that channel in an OME-TIFF")
    assert "its 5 channels are read" in composite_note("x.czi", two * 2 + two[:1], ["one"])  # names that do not match
    assert "as their three principal components in green, red and blue" in composite_note("x.czi", two * 2)


def test_a_channel_that_is_no_real_image_is_refused_and_a_sparse_one_kept() -> None:
    from msifusion.errors import InputError

    rng = np.random.default_rng(2)
    good = rng.random((20, 30)).astype(np.float32)
    for bad, said in ((np.where(np.arange(600).reshape(20, 30) == 7, np.nan, good), "contains NaN or inf .channel 2"),
                      (np.full((20, 30), np.inf, np.float32), "contains NaN or inf .channel 2"),
                      (good.astype(np.complex64), "channel 2 has non-real type complex64")):
        with pytest.raises(InputError, match=f"^af.tif: .*{said}"):
            composite([good, bad], "af.tif")
    np.testing.assert_array_equal(composite([good, good > 0.5])[..., 1], good > 0.5)  # bool: 0 and 1
    sparse = np.zeros((40, 50), np.uint16)
    sparse[3, 4] = 900  # lit in one pixel of 2000: its percentiles are equal, its extremes are not
    assert composite([rng.random((40, 50)), sparse])[3, 4, 1] == 1.0


def test_a_flat_channel_is_named() -> None:
    rng = np.random.default_rng(3)
    glow = rng.random((30, 40)) * (rng.random((30, 40)) > 0.6)  # tissue glowing over a dark background
    dead = np.zeros((30, 40))
    assert composite_note("af.tif", [glow, dead], ["DAPI", "dead"]).endswith(
        "as red and green; channel 2 (dead) is uniform and adds nothing; to use one of them alone, keep that channel "
        "in an OME-TIFF")
    assert "channels 1, 3 are uniform and add nothing" in composite_note("af.tif", [dead, glow, dead])
