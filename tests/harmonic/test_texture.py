"""Guided harmonic fusion: the optical's fine texture, its noise, and when its strength β is taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msifusion.harmonic import (
    HarmonicConfig,
    HarmonicReport,
    LadderSettings,
    TextureSettings,
    fuse_harmonic_many,
    guide_noise,
    optical_detail,
    texture_snr_db,
)
from msifusion.measurement import block_mean, consistency_error
from msifusion.metrics import psnr


def test_optical_detail_is_the_density_minus_its_blur():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(2)
    guide = rng.uniform(0.05, 1.0, (40, 56, 3)).astype(np.float32)
    od = -np.log(guide.mean(-1) + 1e-3)
    expected = od - gaussian_filter(od, 1.5, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(optical_detail(torch.as_tensor(guide), 1.5, 1e-3).numpy(), expected, atol=1e-5)
    flat = optical_detail(torch.full((20, 20, 3), 0.7), 1.5, 1e-3)
    assert float(flat.abs().max()) < 1e-6


def test_guide_noise_is_the_pixel_noise_of_the_mean_colour():
    """Known answers: a colour ramp (which the mask cancels) with white noise of std 0.01 per channel gives
    0.01/√3 for the mean colour; without the noise, 0."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:200, :300]
    ramp = ((0.2 + 0.001 * yy + 0.002 * xx)[..., None] * np.ones(3)).astype(np.float32)
    noisy = ramp + 0.01 * rng.standard_normal(ramp.shape).astype(np.float32)
    assert guide_noise(noisy) == pytest.approx(0.01 / np.sqrt(3), rel=0.05)
    assert guide_noise(ramp) < 1e-6
    assert guide_noise(noisy[..., :1]) == pytest.approx(0.01, rel=0.05)  # one channel: its own noise
    framed = np.ones((400, 500, 3), np.float32)  # white glass clipped at 1 around it: its inside does not count
    framed[100:300, 100:400] = noisy
    # (its band within ONE_COLOUR_RADIUS of the section does: 12 % of the responses at 0 pull the median 17 % lower;
    # counting every window, the median was 0)
    assert guide_noise(framed) == pytest.approx(0.83 * 0.01 / np.sqrt(3), rel=0.05)


def test_texture_snr_does_not_depend_on_how_much_glass_of_one_colour_frames_the_section():
    """Noisy halves as in the next test (192×256, 2.3 dB) framed by white glass 48, 96 or 192 px wide: the frame's
    inside counts neither in the noise (its windows would make the median 0) nor in the means (it would dilute the
    detail), so the gate still keeps β out (10 dB); counting every window, the frames read 26 to 28 dB."""
    rng = np.random.default_rng(0)
    H, W = 192, 256
    halves = (np.where(np.arange(W) < W // 2, 0.2, 0.6)[None, :, None]
              + 0.02 * rng.standard_normal((H, W, 3))).astype(np.float32)
    snr = []
    for m in (48, 96, 192):
        framed = np.ones((H + 2 * m, W + 2 * m, 3), np.float32)
        framed[m:m + H, m:m + W] = halves
        snr.append(texture_snr_db(framed, 1.5, 1e-3))
    assert snr[0] == pytest.approx(snr[1], abs=1e-4) and snr[0] == pytest.approx(snr[2], abs=1e-4)
    assert texture_snr_db(halves, 1.5, 1e-3) < snr[0] < 10  # the section's outline against white adds its detail


def test_texture_is_not_tried_where_the_optical_texture_is_mostly_its_noise(cells):
    """Two flat halves of the optical with 2 % pixel noise: its fine texture is the camera's noise and one
    edge (4 dB above the noise), which β would copy into the ion, so β is not tried; the cells' dark walls
    stand far above their 1 % noise, and β is tried there. White noise alone is its own detail (−0.5 dB)."""
    rng = np.random.default_rng(0)
    H, W, f = 96, 128, 8
    left = np.arange(W) < W // 2
    halves = (np.where(left, 0.2, 0.6)[None, :, None] + 0.02 * rng.standard_normal((H, W, 3))).astype(np.float32)
    truth = np.broadcast_to(np.where(left, 1.0, 0.3), (H, W)).astype(np.float32)
    cell_guide, cell_truth, _ = cells
    for guide, ion, tried in ((halves, truth, False), (cell_guide, cell_truth, True)):
        report = HarmonicReport()
        measured = block_mean(ion, f)
        fuse_harmonic_many(guide, (measured / measured.max())[None], f, HarmonicConfig(ladder=LadderSettings(((50.0, 1),))), report=report)
        note = report.notes[0]
        assert note["texture_tested"] is tried and len(note["texture_coarse_mse"]) == (4 if tried else 1)
        assert (note["optical_texture_snr_db"] > 10) is tried
    flat = (0.4 + 0.02 * rng.standard_normal((200, 200, 3))).astype(np.float32)
    # white noise alone: the detail keeps 1 − 2·w₀ + Σw² ≈ 0.89 of its variance (Gaussian taps w, σ = 1.5 px): −0.5 dB
    assert texture_snr_db(flat, 1.5, 1e-3) == pytest.approx(-0.5, abs=0.1)  # measured −0.48 to −0.52 over seeds


def test_texture_is_taken_where_the_ion_follows_the_optical_grain():
    """Regions whose amount and colour both follow a fine grain (1.2 px): β > 0 is chosen, and it helps.

    (The cells' walls of the fixture, which hold 40 % of their cells' amount, no longer serve: at their
    setting β = 0.5 gains 0.2 dB, but β = 2 loses 11 dB, significantly worse than none at the coarse level
    too, and the ordered walk then takes no strength; at a refined setting β = 0.5 alone loses 4 dB.)"""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    H, W, f = 128, 192, 8
    points = rng.uniform(0, 1, (12, 2)) * [H, W]
    yy, xx = np.mgrid[:H, :W]
    label = ((yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2).argmin(-1)
    grain = ndimage.gaussian_filter(rng.standard_normal((H, W)), 1.2)
    grain = (grain - grain.min()) / np.ptp(grain)
    truth = (rng.uniform(0.3, 1, 12)[label] * (0.6 + 0.4 * grain)).astype(np.float32)
    guide = (rng.uniform(0.3, 0.9, (12, 3))[label] * (0.7 + 0.3 * grain[..., None])).astype(np.float32)
    measured = block_mean(truth, f)
    y = (measured / measured.max())[None]
    report = HarmonicReport()
    out = fuse_harmonic_many(guide, y, f, report=report)[0] * measured.max()
    plain = fuse_harmonic_many(guide, y, f, HarmonicConfig(texture=TextureSettings.off()))[0] * measured.max()
    assert report.notes[0]["texture"] > 0 and report.notes[0]["optical_texture_snr_db"] > 10
    assert consistency_error(out, measured, f) < 1e-6 and out.min() >= 0
    assert psnr(out, truth) > psnr(plain, truth) + 1.0


def test_texture_is_not_tried_for_an_ion_that_stays_at_the_first_setting(cells):
    """The same walls as above, but a ladder whose step up can never win (no block majority is enough):
    the ion keeps the first setting, so the optical is not trusted and its texture is not used either."""
    guide, truth, f = cells
    y = (block_mean(truth, f) / block_mean(truth, f).max())[None]
    report = HarmonicReport()
    fuse_harmonic_many(guide, y, f, HarmonicConfig(ladder=LadderSettings(((80.0, 0), (50.0, 1)), sign_significance=1e6)),
                       report=report)
    assert report.notes[0]["chosen"] == [80.0, 0] and report.notes[0]["texture"] == 0.0
    assert report.notes[0]["texture_tested"] is False
    assert report.notes[0]["texture_coarse_mse"][1] < report.notes[0]["texture_coarse_mse"][0]  # it would have won


def test_a_fixed_texture_strength_is_applied_and_stays_exact(cells):
    guide, truth, f = cells
    measured = block_mean(truth, f)
    report = HarmonicReport()
    out = fuse_harmonic_many(guide, (measured / measured.max())[None], f, HarmonicConfig(texture=TextureSettings((1.0,))),
                               report=report)[0]
    assert report.notes[0]["texture"] == 1.0
    assert consistency_error(out * measured.max(), measured, f) < 1e-6 and out.min() >= 0
    plain = fuse_harmonic_many(guide, (measured / measured.max())[None], f,
                               HarmonicConfig(texture=TextureSettings.off()))[0]
    detail = optical_detail(torch.tensor(guide), 1.5, 1e-3).numpy()  # positive on the thin dark walls
    ratio = out / np.maximum(plain, 1e-6)
    walls, interiors = detail > np.percentile(detail, 90), detail < np.percentile(detail, 50)
    assert ratio[walls].mean() < 0.65 and ratio[interiors].mean() > 1.05  # the walls darkened, the cells made up for it


def test_texture_is_left_out_where_the_ion_is_even_across_the_walls(cells):
    guide, _, f = cells
    H, W = guide.shape[:2]
    yy, xx = np.mgrid[:H, :W] / 30.0
    truth = (1.5 + np.sin(yy) * np.cos(1.3 * xx)).astype(np.float32)
    measured = block_mean(truth, f)
    report = HarmonicReport()
    fuse_harmonic_many(guide, (measured / measured.max())[None], f, report=report)
    assert report.notes[0]["texture"] == 0.0
