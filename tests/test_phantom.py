"""The synthetic tissue phantom: deterministic, well-formed, and its measurement is the block mean."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from msifusion.io.images import luminance
from msifusion.phantom import IONS, KIND_TISSUES, TISSUES, PhantomConfig, Tissue, make_phantom
from msifusion.measurement import block_mean


@pytest.fixture(scope="module")
def leaf():
    return make_phantom(PhantomConfig())


@pytest.fixture(scope="module")
def by_ion(leaf):
    """The default leaf with each ion (the optical and the cells are the same for all)."""
    return {ion: leaf if ion == leaf.config.ion else make_phantom(PhantomConfig(ion=ion)) for ion in IONS}


def with_noise(phantom, **noise):
    """The same drawn section measured with other noise settings."""
    return dataclasses.replace(phantom, config=dataclasses.replace(phantom.config, **noise))


@pytest.fixture(scope="module")
def stem():
    return make_phantom(PhantomConfig(kind="stem", ion="sucrose"))


def test_same_seed_gives_identical_arrays(leaf):
    again = make_phantom(PhantomConfig())
    for name in ("guide", "truth", "labels", "cells"):
        np.testing.assert_array_equal(getattr(again, name), getattr(leaf, name), err_msg=name)
    np.testing.assert_array_equal(again.measure(10), leaf.measure(10))


def test_different_seed_gives_different_cells(leaf):
    other = make_phantom(PhantomConfig(seed=1))
    assert np.mean(other.labels != leaf.labels) > 0.05
    both = (other.cells > 0) & (leaf.cells > 0)
    assert np.mean(other.cells[both] != leaf.cells[both]) > 0.9
    assert not np.allclose(other.truth, leaf.truth)


def test_shapes_and_dtypes(leaf):
    assert leaf.guide.shape == (320, 800, 3) and leaf.guide.dtype == np.float32
    assert leaf.truth.shape == (320, 800) and leaf.truth.dtype == np.float32
    assert leaf.labels.shape == (320, 800) and leaf.labels.dtype == np.uint8
    assert leaf.cells.shape == (320, 800) and leaf.cells.dtype == np.int32
    assert leaf.measure(10).shape == (32, 80) and leaf.measure(10).dtype == np.float32
    assert leaf.measure(20).shape == (16, 40)


def test_tall_shape_turns_the_section():
    tall = make_phantom(PhantomConfig(fine_shape=(400, 160), seed=3))
    wide = make_phantom(PhantomConfig(fine_shape=(160, 400), seed=3))
    assert tall.guide.shape == (400, 160, 3) and tall.measure(20).shape == (20, 8)
    np.testing.assert_array_equal(tall.labels, wide.labels.T)
    np.testing.assert_array_equal(tall.truth, wide.truth.T)


def test_value_ranges(leaf):
    assert leaf.guide.min() >= 0 and leaf.guide.max() <= 1
    assert leaf.truth.min() >= 0 and leaf.truth.max() == pytest.approx(1.0)
    background = leaf.labels == Tissue.BACKGROUND
    assert luminance(leaf.guide)[background].mean() > 0.8  # bright slide
    assert luminance(leaf.guide)[~background].mean() < luminance(leaf.guide)[background].mean() - 0.1


@pytest.mark.parametrize("kind", ["leaf", "stem"])
def test_every_tissue_label_is_present(kind, leaf, stem):
    phantom = leaf if kind == "leaf" else stem
    assert set(np.unique(phantom.labels).tolist()) == {int(t) for t in KIND_TISSUES[kind]}
    assert set(phantom.tissues) <= set(TISSUES)


def test_measure_is_block_mean_of_truth_within_the_noise(leaf):
    clean = block_mean(leaf.truth, 10)
    np.testing.assert_array_equal(with_noise(leaf, noise=0.0).measure(10), clean)

    diff = with_noise(leaf, noise=0.02).measure(10) - clean
    bright = clean > 0.1  # far enough from 0 that the clip at 0 does not bias the noise
    assert bright.sum() > 100
    assert diff[bright].std() == pytest.approx(0.02, rel=0.25)
    assert abs(diff[bright].mean()) < 0.01
    assert leaf.measure(10).min() >= 0
    # each scale draws its own noise at the stated level (not the ×10 noise averaged), deterministically
    clean20 = block_mean(leaf.truth, 20)
    bright20 = clean20 > 0.1
    assert bright20.sum() > 50
    assert (leaf.measure(20) - clean20)[bright20].std() == pytest.approx(0.02, rel=0.3)
    np.testing.assert_array_equal(leaf.measure(20), leaf.measure(20))


def test_unclipped_noise_is_signed_and_unbiased_where_the_clipped_reads_high(leaf):
    clean = block_mean(leaf.truth, 10)
    background = clean == 0
    assert background.sum() > 100
    clipped, signed = leaf.measure(10), with_noise(leaf, noise=0.02, clip=False).measure(10)
    np.testing.assert_array_equal(np.clip(signed, 0, None), clipped)  # one draw: the clip is the only difference
    assert abs(signed[background].mean()) < 0.003 and signed.min() < -0.03
    assert clipped[background].mean() == pytest.approx(0.02 / np.sqrt(2 * np.pi), rel=0.25)  # half a Gaussian's mean
    assert np.mean(clipped[background] == 0) == pytest.approx(0.5, abs=0.1)


def test_measure_through_a_laser_spot_is_scipys_gaussian_blur_then_the_block_mean(leaf):
    clean = with_noise(leaf, noise=0.0)
    blurred = ndimage.gaussian_filter(leaf.truth.astype(np.float64), 3.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(clean.measure(10, spot_sigma_px=3.0), block_mean(blurred, 10), atol=1e-6)
    assert np.abs(clean.measure(10, spot_sigma_px=3.0) - clean.measure(10)).max() > 0.01


def test_shot_noise_grows_with_signal(leaf):
    clean = block_mean(leaf.truth, 10)
    diff = with_noise(leaf, noise=0.0, shot=0.05).measure(10) - clean
    assert np.all(diff[clean == 0] == 0)
    bright, dim = clean > 0.1, (clean > 0.003) & (clean < 0.02)
    assert diff[bright].std() > 1.5 * diff[dim].std()


@pytest.mark.parametrize("kind", ["leaf", "stem"])
def test_walls_are_darker_than_cell_interiors(kind, leaf, stem):
    phantom = leaf if kind == "leaf" else stem
    cells = phantom.cells
    wall = np.zeros(cells.shape, bool)
    wall[:, 1:] = (cells[:, 1:] != cells[:, :-1]) & (cells[:, 1:] > 0) & (cells[:, :-1] > 0)
    lo = ndimage.minimum_filter(cells, size=7)
    hi = ndimage.maximum_filter(cells, size=7)
    interior = (lo == hi) & (cells > 0)
    lum = luminance(phantom.guide)
    for tissue in (Tissue.EPIDERMIS, Tissue.XYLEM, Tissue.PITH if kind == "stem" else Tissue.SPONGY):
        here = phantom.labels == tissue
        assert lum[wall & here].mean() < lum[interior & here].mean() - 0.05, TISSUES[tissue]


@pytest.mark.parametrize("ion", sorted(IONS))
def test_truth_is_zero_off_tissue_and_the_optical_does_not_depend_on_the_ion(ion, leaf, by_ion):
    p = by_ion[ion]
    off = np.isin(p.labels, [Tissue.BACKGROUND, Tissue.AIR])
    assert np.all(p.truth[off] == 0)
    assert p.truth[~off].mean() > 0.02
    np.testing.assert_array_equal(p.guide, leaf.guide)
    np.testing.assert_array_equal(p.labels, leaf.labels)


def tissue_mean(p, tissue: Tissue) -> float:
    return float(p.truth[p.labels == tissue].mean())


def test_chemistry_follows_tissue_and_cell(by_ion):
    a, ph, su, gr = by_ion["apigenin"], by_ion["pheophytin"], by_ion["sucrose"], by_ion["gradient"]
    assert tissue_mean(a, Tissue.EPIDERMIS) > 3 * tissue_mean(a, Tissue.SPONGY)
    assert tissue_mean(a, Tissue.CAVITY) > 3 * tissue_mean(a, Tissue.SPONGY)
    assert tissue_mean(ph, Tissue.PALISADE) > 5 * tissue_mean(ph, Tissue.EPIDERMIS)
    assert tissue_mean(su, Tissue.PHLOEM) > 3 * tissue_mean(su, Tissue.PALISADE)
    # the gradient ion rises along the section, whatever the tissue
    cols = np.arange(gr.truth.shape[1])
    on = gr.truth.sum(0) / np.maximum((gr.truth > 0).sum(0), 1)
    assert np.corrcoef(cols[on > 0], on[on > 0])[0, 1] > 0.7
    # per-cell amounts vary within one tissue: chemistry the stain does not show
    epi = a.labels == Tissue.EPIDERMIS
    ids, inv = np.unique(a.cells[epi], return_inverse=True)
    per_cell = np.bincount(inv, a.truth[epi]) / np.bincount(inv)
    assert per_cell.std() / per_cell.mean() > 0.2


def test_finer_pixels_give_more_cells(leaf):
    fine = make_phantom(PhantomConfig(fine_pixel_um=2.0))
    assert fine.cells.max() > 2.5 * leaf.cells.max()


@pytest.mark.parametrize("bad", [dict(kind="root"), dict(ion="caffeine"), dict(fine_shape=(32, 400)),
                                 dict(noise=-0.1), dict(fine_pixel_um=0.0)])
def test_bad_config_is_refused(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name.replace("_", "[_ ]")):  # the message names the setting
        PhantomConfig(**bad)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["leaf", "stem"])
def test_ginkgo_sized_phantom_is_complete(kind):
    p = make_phantom(PhantomConfig(fine_shape=(980, 2700), kind=kind))  # 4–7 s on the 2-core machine
    assert set(np.unique(p.labels).tolist()) == {int(t) for t in KIND_TISSUES[kind]}
    assert p.measure(20).shape == (49, 135)
