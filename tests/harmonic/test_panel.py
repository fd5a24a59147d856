"""Guided harmonic fusion: many ions through a shared basis."""

from __future__ import annotations

import numpy as np
import pytest

from msifusion.harmonic import (
    HarmonicConfig,
    HarmonicReport,
    LadderSettings,
    PlateSettings,
    SpreadSettings,
    TextureSettings,
    fuse_harmonic_many,
    residual_whiteness,
    shared_basis,
)
from msifusion.runtime import Runtime
from msifusion.methods import MethodOptions, fuse_many
from msifusion.measurement import block_mean, consistency_error
from msifusion.metrics import psnr


def test_an_all_zero_panel_fuses_to_zero():
    guide = np.random.default_rng(0).random((128, 128, 3)).astype(np.float32)
    out = fuse_harmonic_many(guide, np.zeros((4, 32, 32), np.float32), 4)
    assert np.isfinite(out).all() and not out.any()


@pytest.fixture(scope="module")
def panel(cells_like):
    """A 128×128 cells guide at ×4 (32×32 ions): 23 mixtures of three cell chemistries with 2 % noise, and last an
    ion of its own (a ramp no mixture makes). Normalised ions, and the truths in the same units."""
    rng = np.random.default_rng(11)
    ions, noise = 24, 0.02
    guide, chemistries, f = cells_like(seed=5, shape=(128, 128), scale=4, chemistries=3)
    ramp = np.repeat(np.linspace(0.05, 1.0, 128)[:, None], 128, 1)[None]
    truths = np.concatenate([np.einsum("kc,chw->khw", rng.dirichlet(np.full(3, 0.5), ions - 1), chemistries), ramp])
    measured = block_mean(truths.astype(np.float32), f)
    measured = np.clip(measured + noise * rng.standard_normal(measured.shape) * measured.max(axis=(1, 2), keepdims=True), 0, None)
    peak = measured.max(axis=(1, 2), keepdims=True)
    return guide, (truths / peak).astype(np.float32), (measured / peak).astype(np.float32), f


def test_whiteness_tells_noise_from_structure():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((1, 64, 64))
    smooth = np.cumsum(np.cumsum(rng.standard_normal((1, 64, 64)), 1), 2)
    rho = residual_whiteness(np.concatenate([noise, smooth, np.zeros((1, 64, 64))]))
    assert abs(rho[0]) < 0.05 and rho[1] > 0.9 and rho[2] == 0


def test_shared_basis_explains_mixtures_and_leaves_the_odd_ion_alone(panel):
    _, _, measured, _ = panel
    shared = shared_basis(measured, HarmonicConfig())
    assert shared is not None and len(shared.basis) == 3
    assert shared.alone.tolist() == [len(measured) - 1]
    mixtures = measured[:-1].reshape(len(measured) - 1, -1)
    left = shared.coefficients[:-1] @ shared.basis.reshape(3, -1) - mixtures  # what the basis leaves: the noise
    assert np.sqrt(np.mean(left**2)) < 1.2 * 0.02  # measured 0.018, under the 0.02 (of each ion's peak) noise added
    assert np.all(np.abs(shared.basis).reshape(3, -1).max(1) == pytest.approx(1.0))
    assert shared_basis(measured[:3], HarmonicConfig()) is None  # too few ions to share
    assert shared_basis(measured[:5], HarmonicConfig()) is None  # 3 basis images for 5 ions: not worth it
    assert shared_basis(measured[:, :16, :16], HarmonicConfig()) is None  # too few pixels to judge noise


@pytest.mark.parametrize("ions, blocks, why", [
    (slice(0, 3), 32, "a panel of fewer than 4 ions shares no basis"),
    (slice(0, 5), 32, "a shared basis would not halve the solves"),
    (slice(None), 16, "fewer than 1024 MSI pixels: too few to tell the basis's leftover noise from structure"),
])
def test_a_panel_fused_ion_by_ion_says_why(ions, blocks, why, panel):
    guide, _, measured, f = panel
    config = HarmonicConfig(ladder=LadderSettings(((99.9, 0),)), texture=TextureSettings.off())
    report = HarmonicReport()
    panel = measured[ions, :blocks, :blocks]
    fuse_harmonic_many(guide[:blocks * f, :blocks * f], panel, f, config, report=report)
    assert [n["fused_alone"] for n in report.notes] == [why] * len(panel)
    single = HarmonicReport()
    fuse_harmonic_many(guide, measured[:1], f, config, report=single)
    assert "fused_alone" not in single.notes[0]  # one ion is no panel


def test_panel_through_the_shared_basis_is_exact_and_as_good_as_alone(panel):
    guide, truths, measured, f = panel
    config = HarmonicConfig(ladder=LadderSettings(((99.9, 0), (50.0, 1))))
    report = HarmonicReport()
    panel = fuse_harmonic_many(guide, measured, f, config, report=report)
    assert report.notes[-1]["fused_alone"] == "the panel's basis leaves structure in this ion"
    assert all(n["shared_basis"]["rank"] == 3 for n in report.notes[:-1])
    gaps = []
    for k in [0, 1, 2, 3, len(measured) - 1]:
        assert consistency_error(panel[k], measured[k], f) < 1e-6
        assert panel[k].min() >= 0
        alone = fuse_harmonic_many(guide, measured[k:k + 1], f, config)[0]
        gaps.append(psnr(panel[k], truths[k]) - psnr(alone, truths[k]))
    assert np.mean(gaps) > -0.05 and min(gaps) > -0.2
    assert gaps[-1] == 0  # the odd ion was fused alone


def test_fuse_many_reports_which_ions_went_through_the_basis(panel):
    guide, _, measured, f = panel
    units = measured * np.geomspace(0.01, 100, len(measured))[:, None, None].astype(np.float32)
    results = fuse_many(guide, units, "guided-harmonic", MethodOptions(runtime=Runtime(quiet=True)))
    assert all(r.consistency_error < 1e-6 for r in results)
    assert all("basis of 3" in r.fit.stop_reason and "κ at q" in r.fit.stop_reason for r in results[:-1])
    assert "basis" not in results[-1].fit.stop_reason and results[-1].fit.details["fused_alone"]
    assert "coarse_mse" in results[0].fit.details  # each ion's own choice of setting, tested through the basis
    assert results[0].fit.details["shared_basis"]["rank"] == 3


def test_a_panel_through_the_basis_holds_its_fused_images_once(panel):
    """The (K, H, W) output is the one large array: the basis's ions and those fused alone are written into it, not
    into arrays of their own copied over (a 416-ion panel at ×8 peaked at 12.5 GB for 4.8 GB of images)."""
    import tracemalloc

    guide, _, measured, f = panel
    config = HarmonicConfig(ladder=LadderSettings(((99.9, 0),)), texture=TextureSettings.off(),
                            spread=SpreadSettings.off(), plate=PlateSettings.off())  # no coarse test: its windows
    # would count
    report = HarmonicReport()
    fuse_harmonic_many(guide, measured, f, config, report=report)  # compiles what it needs, outside the count
    assert sum("shared_basis" in n for n in report.notes) == len(measured) - 1
    tracemalloc.start()
    try:
        out = fuse_harmonic_many(guide, measured, f, config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * out.nbytes


@pytest.mark.parametrize("K, h, w, r", [(7, 5, 9, 3), (20, 32, 17, 5), (5, 2, 2, 1)])
def test_what_a_basis_leaves_is_judged_without_forming_it(K, h, w, r):
    """The whiteness and the 'nothing left' test from products with the basis rows equal those of the leftover formed
    (rows need not be orthonormal); an ion the basis holds exactly leaves nothing, and is white."""
    from msifusion.harmonic.panel import _Leftover

    rng = np.random.default_rng(K)
    Y = rng.standard_normal((K, h * w))
    Y[1] = np.cumsum(Y[1])  # structure, far from white
    rows = rng.standard_normal((r, h * w))
    Y[2] = 0.5 * rows[0]  # held exactly when the rows are orthonormal: below
    leftover = Y - (Y @ rows.T) @ rows
    white, nothing_left = _Leftover(Y, (h, w)).of(rows)
    np.testing.assert_allclose(white, residual_whiteness(leftover.reshape(K, h, w)), atol=1e-12)
    assert not nothing_left.any()
    q = np.linalg.qr(rows.T)[0].T
    for k, noise in ((0, 1e-3), (3, 1e-8)):  # nearly held: above and below the 'nothing left' threshold of 1e-12
        Y[k] = 0.3 * q[-1] + noise * rng.standard_normal(h * w)
    formed = Y - (Y @ q.T) @ q
    white, nothing_left = _Leftover(Y, (h, w)).of(q)
    np.testing.assert_allclose(white, residual_whiteness(formed.reshape(K, h, w)), atol=1e-12)
    assert nothing_left.tolist() == ((formed**2).sum(1) <= 1e-12 * (Y**2).sum(1)).tolist()
    assert nothing_left[2] and nothing_left[3] and not nothing_left[0]


def test_the_coarse_test_through_a_basis_chooses_alike_in_groups_of_ions(panel, monkeypatch):
    """Through a basis the coarse test keeps the basis's solutions and tests the ions in groups that bound their
    per-block errors: one ion at a time gives the same choices, notes and images as all at once."""
    import msifusion.harmonic.selection as selection

    guide, _, measured, f = panel
    whole, grouped = HarmonicReport(), HarmonicReport()
    at_once = fuse_harmonic_many(guide, measured, f, report=whole)
    assert sum("shared_basis" in n for n in whole.notes) == len(measured) - 1
    assert len({tuple(n["chosen"]) for n in whole.notes}) > 1  # the walk took different steps for different ions
    monkeypatch.setattr(selection, "COARSE_ERRORS_BYTES", 1)  # groups of one batch
    np.testing.assert_array_equal(fuse_harmonic_many(guide, measured, f, report=grouped), at_once)
    assert grouped.notes == whole.notes and grouped.settings == whole.settings


def test_a_blurred_panel_through_the_basis_gets_its_spread_exact_and_as_good_as_alone(cells_like):
    """Mixtures of cell chemistries blurred by σ = 1.5 fine pixels at ×4: through the shared basis every ion takes a
    spread, stays exact and non-negative, and scores as it does fused alone."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    guide, chemistries, f = cells_like(seed=5, shape=(128, 128), scale=4, chemistries=3)
    chemistries = np.stack([gaussian_filter(c, 1.5) for c in chemistries])
    truths = np.einsum("kc,chw->khw", rng.dirichlet(np.full(3, 0.5), 8), chemistries).astype(np.float32)
    measured = block_mean(truths, f)
    peak = measured.max(axis=(1, 2), keepdims=True)
    measured, truths = measured / peak, truths / peak
    report = HarmonicReport()
    panel = fuse_harmonic_many(guide, measured, f, report=report)
    sharp = fuse_harmonic_many(guide, measured, f, HarmonicConfig(spread=SpreadSettings.off()))
    assert all("shared_basis" in n and n["spread_px"] > 0 for n in report.notes)
    for k in range(3):
        assert consistency_error(panel[k], measured[k], f) < 1e-6 and panel[k].min() >= 0
        alone = fuse_harmonic_many(guide, measured[k:k + 1], f)[0]
        assert abs(psnr(panel[k], truths[k]) - psnr(alone, truths[k])) < 0.1
        assert psnr(panel[k], truths[k]) > psnr(sharp[k], truths[k]) + 1.0  # the blur was applied
