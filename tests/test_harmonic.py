"""Guided harmonic fusion: exact consistency, projection, selection, many ions, tiles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from msifusion.harmonic import (
    CoarseTest,
    HarmonicConfig,
    HarmonicReport,
    LadderSettings,
    PanelSettings,
    SolverSettings,
    TextureSettings,
    edge_scales,
    fuse_harmonic_many,
    guide_noise,
    optical_detail,
    residual_whiteness,
    shared_basis,
    texture_snr_db,
)
from msifusion.fit import Runtime, resolve_device
from msifusion.losses import edge_map, edge_perceptual_loss, luminance
from msifusion.methods import MethodOptions, fuse, fuse_many
from msifusion.measurement import Measurement, MeasurementModel, block_mean, consistency_error, project_consistent, upsample
from msifusion.metrics import psnr


# ----------------------------------------------------------------------------- the method


def test_single_ion_is_consistent_and_beats_bilinear(cells):
    guide, truth, f = cells
    measured = block_mean(truth, f)
    result = fuse(guide, measured, "guided-harmonic", MethodOptions(runtime=Runtime(quiet=True)))
    out = result.image
    assert out.shape == truth.shape and out.dtype == np.float32
    assert consistency_error(out, measured, f) < 1e-4
    assert out.min() >= 0
    bilinear_bp = project_consistent(upsample(measured, f), measured, f)
    assert psnr(out, truth) > psnr(bilinear_bp, truth) + 2.0  # the optical's walls are the cells' edges
    assert "κ at q" in result.fit.stop_reason


def test_fuse_many_equals_fusing_each_ion_alone_in_its_units(cells):
    guide, truth, f = cells
    ions = np.stack([block_mean(truth, f) * 1000, block_mean(truth[::-1].copy(), f) * 0.01])
    options = MethodOptions(runtime=Runtime(quiet=True))
    many = fuse_many(guide, ions, "guided-harmonic", options)
    for ion, result in zip(ions, many):
        alone = fuse(guide, ion, "guided-harmonic", options)
        np.testing.assert_allclose(result.image, alone.image, rtol=1e-5, atol=1e-6 * float(ion.max()))
        assert result.consistency_error < 1e-4 and result.intensity_scale == pytest.approx(float(ion.max()))


def test_unrelated_optical_falls_back_to_smooth_interpolation():
    """A guide full of texture the ion does not follow: the coarse-level test keeps the bottom of the ladder."""
    rng = np.random.default_rng(7)
    H, W, f = 96, 128, 8
    yy, xx = np.mgrid[:H, :W] / 40.0
    truth = (1.5 + np.sin(yy) * np.cos(1.3 * xx)).astype(np.float32)
    guide = rng.random((H, W, 3)).astype(np.float32)
    measured = block_mean(truth, f)
    report = HarmonicReport()
    out = fuse_harmonic_many(guide, (measured / measured.max())[None], f, report=report)[0] * measured.max()
    assert report.settings[0] == HarmonicConfig().ladder.settings[0]
    assert report.notes[0]["texture"] == 0.0
    assert consistency_error(out, measured, f) < 1e-4
    assert psnr(out, truth) > psnr(upsample(measured, f), truth)


def test_ladder_step_needs_a_significant_mean_gain_on_significantly_most_blocks():
    """The walk's sign test: a mean gain carried by a few blocks while most get worse does not climb, nor
    does one that wins on barely more blocks than it loses."""
    from msifusion.harmonic import _walk

    rng = np.random.default_rng(0)
    base = torch.tensor(1.0 + 0.01 * rng.random(400))
    broad = base - 0.05  # every block better
    few = base + 0.01  # most blocks slightly worse ...
    few[:40] -= 1.0  # ... ten per cent much better: the mean gains 0.09, z ≈ 6
    ties = base.clone()
    ties[:100] -= 0.05  # unchanged blocks (empty background) count on neither side
    split = base.clone()
    split[:210] -= 0.2  # 210 blocks better, 190 worse: a majority by 1 binomial standard deviation
    split[210:] += 0.05
    assert _walk([base, broad], 4.0, 2.0) == 1
    assert _walk([base, few], 4.0) == 1
    assert _walk([base, few], 4.0, 0.0) == 0
    assert _walk([base, ties], 4.0, 2.0) == 1
    assert _walk([base, few, broad], 4.0, 2.0) == 2  # a rejected rung does not end the walk
    assert _walk([base, split], 4.0, 0.0) == 1  # any majority
    assert _walk([base, split], 4.0, 2.0) == 0  # not a significant one: (210 − 190) / √400 = 1
    even = base.clone()
    even[:200] -= 0.3  # 200 better, 200 worse (the mean still gains): no majority at all
    even[200:] += 0.05
    assert _walk([base, even], 4.0, 0.0) == 0
    mostly_ties = base.clone()
    mostly_ties[:25] -= 0.05  # 25 better, 375 unchanged: 25 / √25 = 5 deviations, ties counting for neither
    assert _walk([base, mostly_ties], 4.0, 2.0) == 1


def test_an_ordered_walk_stops_at_a_strength_that_hurts():
    """For β (one strength, increasing), a step significantly worse than the current choice ends the walk, so
    a stronger value the test happens to like is not taken past it; a flat step does not end it. Where the
    strongest value is significantly worse than none, a gain at a weaker one is not taken either."""
    from msifusion.harmonic import _walk

    rng = np.random.default_rng(1)
    base = torch.tensor(1.0 + 0.01 * rng.random(400))
    worse, flat, better = base + 0.05, base + 0.0005 * torch.tensor(rng.standard_normal(400)), base - 0.05
    assert _walk([base, worse, better], 2.0) == 2  # the ladder's walk looks past a rejected rung
    assert _walk([base, worse, better], 2.0, ordered=True) == 0
    assert _walk([base, flat, better], 2.0, ordered=True) == 2
    assert _walk([base, better, worse, better - 0.05], 2.0, ordered=True) == 1
    assert _walk([base, better, worse], 2.0, ordered=True) == 0  # the strongest is worse than none: an overshoot
    assert _walk([base, better, worse], 2.0) == 1
    assert _walk([base, better, flat], 2.0, ordered=True) == 1  # the strongest levels off near none: kept


def test_the_ladder_turns_back_one_rung_where_its_curve_turns_up():
    """Past the walk's choice, a sharper rung significantly worse than it: one rung back (never to the first rung,
    which would undo the trust the walk found); a curve still falling or flat there keeps its choice."""
    from msifusion.harmonic import _walk

    rng = np.random.default_rng(2)
    base = torch.tensor(1.0 + 0.01 * rng.random(400))
    flat = 0.0005 * torch.tensor(rng.standard_normal(400))
    better, best = base - 0.05, base - 0.1
    assert _walk([base, better, best, base], 4.0, back=True) == 1
    assert _walk([base, better, best, base], 4.0) == 2
    assert _walk([base, better, best, best + flat], 4.0, back=True) == 2
    assert _walk([base, better, best + 0.2], 4.0, back=True) == 1  # a turn right after the first step keeps it
    assert _walk([base, best, better, best - 0.05], 4.0, back=True) == 3  # still falling at the sharpest rung


def test_cells_whose_interiors_carry_a_texture_turn_back_to_a_smoother_setting(cells_like):
    """Light cells with dark walls, each cell's colour mottled (5 % brightness noise, blurred like an optical's
    texture) that the ion does not follow: one scale coarser the test prefers the sharper (50, 1), whose cuts
    through the mottle cost 1 dB at the measured scale; its curve turns up past it, and the ladder turns back."""
    from scipy import ndimage as ndi

    guide, truth, f = cells_like(0, (128, 192), 4)
    rng = np.random.default_rng(0)
    mottled = guide * (1 + 0.05 * rng.standard_normal((*guide.shape[:2], 1)))
    guide = ndi.gaussian_filter(mottled, (0.7, 0.7, 0)).clip(0, 1).astype(np.float32)
    y = block_mean(truth, f)
    quiet = Runtime(quiet=True)
    turned = fuse(guide, y, options=MethodOptions(runtime=quiet))
    kept = fuse(guide, y, options=MethodOptions(runtime=quiet, harmonic=HarmonicConfig(ladder=LadderSettings(turn_back=False))))
    assert (turned.fit.details["chosen"], kept.fit.details["chosen"]) == ([65.0, 1], [50.0, 1])
    assert psnr(turned.image, truth) > psnr(kept.image, truth) + 0.8  # 26.44 against 25.44 dB


def test_winsorised_walk_is_not_stopped_by_a_few_outlying_blocks():
    from msifusion.harmonic import _walk

    rng = np.random.default_rng(1)
    base = torch.tensor(1.0 + 0.1 * rng.random(1000))
    better = base - 0.02 - 0.01 * torch.tensor(rng.random(1000))  # every block a little better ...
    better[:3] += torch.tensor([40.0, -40.0, 40.0])  # ... but three hot blocks swing wildly either way
    assert _walk([base, better], 4.0, 2.0) == 0  # their spread hides the gain: z ≈ 0.5
    assert _walk([base, better], 4.0, 2.0, winsor=2.0) == 1
    assert _walk([base, base - 0.02], 4.0, 2.0, winsor=2.0) == 1


def test_a_few_hot_pixels_do_not_make_the_method_ignore_the_optical(cells_like):
    guide, truth, f = cells_like(shape=(192, 256))
    measured = block_mean(truth, f)
    hot = measured.copy()
    hot.flat[[5, 300, 611]] = 20 * np.percentile(measured, 99)  # three instrument hot spots among 768 pixels
    options = MethodOptions(runtime=Runtime(quiet=True))
    ladder = [list(s) for s in HarmonicConfig().ladder.settings]
    rungs = [ladder.index(fuse(guide, y, "guided-harmonic", options).fit.details["chosen"]) for y in (measured, hot)]
    assert rungs[0] >= 2 and abs(rungs[1] - rungs[0]) <= 1  # without the winsorising: the bottom rung


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
    assert texture_snr_db(flat, 1.5, 1e-3) == pytest.approx(-0.5, abs=0.5)


def test_the_ladder_walk_uses_the_configured_sign_test(cells):
    """On the cells the walk climbs; a sign test no step can pass keeps it at the bottom."""
    guide, truth, f = cells
    y = (block_mean(truth, f) / block_mean(truth, f).max())[None]
    climbed, kept = HarmonicReport(), HarmonicReport()
    fuse_harmonic_many(guide, y, f, report=climbed)
    fuse_harmonic_many(guide, y, f, HarmonicConfig(ladder=LadderSettings(sign_significance=1e6)), report=kept)
    assert climbed.settings[0] != HarmonicConfig().ladder.settings[0]
    assert kept.settings[0] == HarmonicConfig().ladder.settings[0]


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
    plain = fuse_harmonic_many(guide, y, f, HarmonicConfig(texture=TextureSettings((0.0,))))[0] * measured.max()
    assert report.notes[0]["texture"] > 0 and report.notes[0]["optical_texture_snr_db"] > 10
    assert consistency_error(out, measured, f) < 1e-4 and out.min() >= 0
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
    assert consistency_error(out * measured.max(), measured, f) < 1e-4 and out.min() >= 0


def test_texture_is_left_out_where_the_ion_is_even_across_the_walls(cells):
    guide, _, f = cells
    H, W = guide.shape[:2]
    yy, xx = np.mgrid[:H, :W] / 30.0
    truth = (1.5 + np.sin(yy) * np.cos(1.3 * xx)).astype(np.float32)
    measured = block_mean(truth, f)
    report = HarmonicReport()
    fuse_harmonic_many(guide, (measured / measured.max())[None], f, report=report)
    assert report.notes[0]["texture"] == 0.0


def test_deterministic_on_cpu(cells):
    guide, truth, f = cells
    y = block_mean(truth, f)[None]
    config, cpu = HarmonicConfig(ladder=LadderSettings(((99.9, 0), (50.0, 1)))), Runtime(device="cpu")
    a = fuse_harmonic_many(guide, y, f, config, cpu)
    b = fuse_harmonic_many(guide, y, f, config, cpu)
    np.testing.assert_array_equal(a, b)


def test_many_ions_match_single_ion(cells):
    guide, truth, f = cells
    rng = np.random.default_rng(8)
    ions = np.stack([block_mean(truth, f), block_mean(truth[::-1].copy(), f),
                     block_mean(truth * rng.uniform(0.5, 1.5, truth.shape).astype(np.float32), f)])
    ions = ions / ions.max(axis=(1, 2), keepdims=True)
    config = HarmonicConfig(ladder=LadderSettings(((99.9, 0), (50.0, 1))), panel=PanelSettings(ion_batch=2),
                            texture=TextureSettings((0.0, 1.0)))
    # batching changes no result: on the CPU to rounding (bit for bit here); CUDA's kernels round differently by
    # batch size, and the solver stops at its relative tolerance, 1e-3 (H100: 2.4e-5 of the maximum seen)
    tolerance = 1e-6 if resolve_device("auto").type == "cpu" else config.tolerance
    together = HarmonicReport()
    many = fuse_harmonic_many(guide, ions, f, config, report=together)
    for k in range(3):
        by_itself = HarmonicReport()
        alone = fuse_harmonic_many(guide, ions[k:k + 1], f, config, report=by_itself)[0]
        assert consistency_error(many[k], ions[k], f) < 1e-4
        note, note_alone = together.notes[k], by_itself.notes[0]
        assert note["chosen"] == note_alone["chosen"] and note["texture"] == note_alone["texture"]
        # each ion's own scores, not the batch's: β = 0 scores what the chosen rung scored
        np.testing.assert_allclose(note["texture_coarse_mse"], note_alone["texture_coarse_mse"], rtol=1e-4)
        assert note["texture_coarse_mse"][0] == note["coarse_mse"][config.ladder.settings.index(tuple(note["chosen"]))]
        assert np.max(np.abs(many[k] - alone)) <= tolerance * np.abs(alone).max()


def test_tiles_stay_exact_and_agree_with_one_piece(cells):
    guide, truth, f = cells
    y = (block_mean(truth, f) / truth.max())[None]
    config = HarmonicConfig(ladder=LadderSettings(((50.0, 0),)))
    whole = fuse_harmonic_many(guide, y, f, config)[0]
    tiled = fuse_harmonic_many(guide, y, f, replace(config, solver=SolverSettings(tile_pixels=64 * 64, halo_blocks=2)))[0]
    assert consistency_error(tiled, y[0], f) < 1e-4
    assert psnr(tiled, truth / truth.max()) > psnr(whole, truth / truth.max()) - 0.3


def test_tiles_stay_exact_under_the_laser_spot_model(cells):
    guide, truth, f = cells
    op = Measurement(truth.shape, f, 1.0)
    y = op.A(torch.tensor(truth, dtype=torch.float64)).numpy()
    ions = np.stack([y, y[::-1].copy()]).astype(np.float32) / y.max()
    config = HarmonicConfig(panel=PanelSettings(ion_batch=2), solver=SolverSettings(tile_pixels=64 * 64, halo_blocks=2))
    out = fuse_harmonic_many(guide, ions, f, config, measurement=MeasurementModel(1.0))  # footprints cross the seams
    for k in range(2):
        assert consistency_error(out[k], ions[k], f, spot_sigma_px=1.0) < 1e-6


def test_nonnegativity_is_decided_on_the_whole_ion(cells):
    guide, truth, f = cells
    y = block_mean(truth, f) / truth.max()
    signed = y.copy()
    signed[0, 0] = -1e-3  # one slightly negative MSI pixel, outside the coarse test's window
    report = HarmonicReport()
    config = HarmonicConfig(texture=TextureSettings((0.0, 0.5, 1.0)))
    fuse_harmonic_many(guide, signed[None], f, config, report=report)
    note = report.notes[0]
    assert note["texture"] == 0.0 and len(set(note["texture_coarse_mse"])) == 1  # texture cannot apply: not offered
    sparse = np.zeros_like(y)  # a blob on zero background: the smooth solution dips below zero around it
    sparse[6:9, 9:12], sparse[2, 3], sparse[0, 0] = 1.0, 0.5, -0.01
    config = HarmonicConfig(ladder=LadderSettings(((99.9, 0),)), texture=TextureSettings((0.0,)))
    whole = fuse_harmonic_many(guide, sparse[None], f, config)[0]
    tiled = fuse_harmonic_many(guide, sparse[None], f, replace(config, solver=SolverSettings(tile_pixels=64 * 64, halo_blocks=1)))[0]
    far = (slice(48, 96), slice(48, 128))  # tiles away from the negative pixel are left signed too
    assert (whole[far] < 0).sum() > 100 and (tiled[far] < 0).sum() > 100
    assert consistency_error(tiled, sparse, f) < 1e-4


def test_an_all_zero_panel_fuses_to_zero():
    guide = np.random.default_rng(0).random((128, 128, 3)).astype(np.float32)
    out = fuse_harmonic_many(guide, np.zeros((4, 32, 32), np.float32), 4)
    assert np.isfinite(out).all() and not out.any()


def test_edge_scales_are_exact_percentiles_on_small_guides(cells):
    guide = cells[0].astype(np.float32)
    d = np.concatenate([np.sqrt(((guide[:, 1:] - guide[:, :-1]) ** 2).sum(-1)).ravel(),
                        np.sqrt(((guide[1:] - guide[:-1]) ** 2).sum(-1)).ravel()])
    kappas = edge_scales(guide, (50.0, 80.0, 99.9))
    for q, kappa in kappas.items():
        assert kappa == pytest.approx(max(np.percentile(d, q), 1e-3), rel=1e-5)
    sampled = edge_scales(guide, (80.0,), max_samples=4000)  # sampled above max_samples pairs: close, not exact
    assert sampled[80.0] == pytest.approx(kappas[80.0], rel=0.1)


def test_edge_perceptual_term_stays_available(cells):
    guide, truth, f = cells
    y = (block_mean(truth, f) / truth.max())[None]
    config = HarmonicConfig(ladder=LadderSettings(((50.0, 0),)), edge_weight=0.1)
    out = fuse_harmonic_many(guide, y, f, config)[0]
    assert consistency_error(out, y[0], f) < 1e-4
    plain = fuse_harmonic_many(guide, y, f, replace(config, edge_weight=0.0))[0]
    # the term pulls the output's edges towards the optical's: the paper's edge perceptual loss drops
    target = edge_map(luminance(torch.tensor(guide).permute(2, 0, 1)[None]))
    loss = [float(edge_perceptual_loss(torch.as_tensor(x)[None, None], target)) for x in (out, plain)]
    assert loss[0] < 0.5 * loss[1]


def test_an_ion_measured_below_zero_everywhere_is_fused_as_its_mirror_image(cells):
    guide, truth, f = cells
    y = (block_mean(truth, f) / truth.max())[None]
    positive = fuse_harmonic_many(guide, y, f)[0]
    report = HarmonicReport()
    negative = fuse_harmonic_many(guide, -y, f, report=report)[0]
    np.testing.assert_array_equal(negative, -positive)
    assert report.notes[0]["mirrored"] is True
    assert negative.max() <= 0 and consistency_error(negative, -y[0], f) < 1e-4


def test_negative_measurements_are_left_signed():
    rng = np.random.default_rng(9)
    guide = rng.random((32, 32, 3)).astype(np.float32)
    y = rng.normal(size=(1, 4, 4)).astype(np.float32)
    out = fuse_harmonic_many(guide, y / np.abs(y).max(), 8)[0]
    assert consistency_error(out, y[0] / np.abs(y).max(), 8) < 1e-4
    assert out.min() < 0


@pytest.mark.parametrize("group, bad", [
    (LadderSettings, dict(settings=())), (LadderSettings, dict(settings=((0.0, 0),))),
    (LadderSettings, dict(significance=-1.0)), (SolverSettings, dict(iterations=0)),
    (SolverSettings, dict(weight_floor=0.0)), (SolverSettings, dict(tile_pixels=100)),
    (HarmonicConfig, dict(edge_weight=-1.0)), (MeasurementModel, dict(spot_sigma_px=-1.0)),
    (MeasurementModel, dict(spot_sigma_px=float("nan"))),
    (PanelSettings, dict(ion_batch=0)), (PanelSettings, dict(min_ions=1)), (PanelSettings, dict(whiteness=1.0)),
    (TextureSettings, dict(strengths=())), (TextureSettings, dict(sigma_px=0.0)), (TextureSettings, dict(significance=-1.0)),
    (CoarseTest, dict(winsor_percent=50.0)), (CoarseTest, dict(winsor_percent=-1.0)), (CoarseTest, dict(pixels=0))])
def test_config_rejects_nonsense(group, bad):
    with pytest.raises(ValueError):
        group(**bad)


def test_ion_batch_defaults_by_device():
    panel = HarmonicConfig().panel
    assert panel.batch_on(torch.device("cpu")) == 1  # memory-bound on CPU: one ion at a time is fastest
    assert panel.batch_on(torch.device("cuda")) == 8
    assert PanelSettings(ion_batch=3).batch_on(torch.device("cpu")) == 3


def test_shape_mismatch_is_an_error(cells):
    guide, truth, f = cells
    with pytest.raises(ValueError):
        fuse_harmonic_many(guide, block_mean(truth, f)[None, :-1], f)


# ----------------------------------------------------------------------------- many ions: a shared basis


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
    np.testing.assert_allclose(shared.coefficients[:-1] @ shared.basis.reshape(3, -1), mixtures, atol=0.1)  # up to noise
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
    config = HarmonicConfig(ladder=LadderSettings(((99.9, 0),)), texture=TextureSettings((0.0,)))
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
        assert consistency_error(panel[k], measured[k], f) < 1e-4
        assert panel[k].min() >= 0
        alone = fuse_harmonic_many(guide, measured[k:k + 1], f, config)[0]
        gaps.append(psnr(panel[k], truths[k]) - psnr(alone, truths[k]))
    assert np.mean(gaps) > -0.05 and min(gaps) > -0.2
    assert gaps[-1] == 0  # the odd ion was fused alone


def test_fuse_many_reports_which_ions_went_through_the_basis(panel):
    guide, _, measured, f = panel
    units = measured * np.geomspace(0.01, 100, len(measured))[:, None, None].astype(np.float32)
    results = fuse_many(guide, units, "guided-harmonic", MethodOptions(runtime=Runtime(quiet=True)))
    assert all(r.consistency_error < 1e-4 for r in results)
    assert all("basis of 3" in r.fit.stop_reason and "κ at q" in r.fit.stop_reason for r in results[:-1])
    assert "basis" not in results[-1].fit.stop_reason and results[-1].fit.details["fused_alone"]
    assert "coarse_mse" in results[0].fit.details  # each ion's own choice of setting, tested through the basis
    assert results[0].fit.details["shared_basis"]["rank"] == 3
