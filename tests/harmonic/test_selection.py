"""Guided harmonic fusion: the self-supervised choice of setting, and its walk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msifusion.harmonic import (
    HarmonicConfig,
    HarmonicReport,
    LadderSettings,
    SpreadSettings,
    fuse_harmonic_many,
)
from msifusion.runtime import Runtime
from msifusion.methods import MethodOptions, fuse
from msifusion.measurement import block_mean, consistency_error, upsample
from msifusion.metrics import psnr


def _smooth_under_random_texture() -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A smooth chemistry (96×128) under a guide of random texture it does not follow: guide, truth, measured ×8."""
    rng = np.random.default_rng(7)
    H, W, f = 96, 128, 8
    yy, xx = np.mgrid[:H, :W] / 40.0
    truth = (1.5 + np.sin(yy) * np.cos(1.3 * xx)).astype(np.float32)
    return rng.random((H, W, 3)).astype(np.float32), truth, block_mean(truth, f), f


def test_unrelated_optical_falls_back_to_smooth_interpolation():
    """A guide full of texture the ion does not follow: the coarse-level test keeps the bottom of the ladder."""
    guide, truth, measured, f = _smooth_under_random_texture()
    report = HarmonicReport()
    out = fuse_harmonic_many(guide, (measured / measured.max())[None], f, report=report)[0] * measured.max()
    assert report.settings[0] == HarmonicConfig().ladder.rungs[0]
    assert report.notes[0]["texture"] == 0.0
    assert consistency_error(out, measured, f) < 1e-6
    assert psnr(out, truth) > psnr(upsample(measured, f), truth)


def test_ladder_step_needs_a_significant_mean_gain_on_significantly_most_blocks():
    """The walk's sign test: a mean gain carried by a few blocks while most get worse does not climb, nor
    does one that wins on barely more blocks than it loses."""
    from msifusion.harmonic.selection import _walk

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
    strongest value is significantly worse than none or than the choice, a gain at a weaker one is not taken
    either."""
    from msifusion.harmonic.selection import _walk

    rng = np.random.default_rng(1)
    base = torch.tensor(1.0 + 0.01 * rng.random(400))
    worse, flat, better = base + 0.05, base + 0.0005 * torch.tensor(rng.standard_normal(400)), base - 0.05
    assert _walk([base, worse, better], 2.0) == 2  # the ladder's walk looks past a rejected rung
    assert _walk([base, worse, better], 2.0, ordered=True) == 0
    assert _walk([base, flat, better], 2.0, ordered=True) == 2
    assert _walk([base, better, worse, better - 0.05], 2.0, ordered=True) == 1
    assert _walk([base, better, worse], 2.0, ordered=True) == 0  # the strongest is worse than none: an overshoot
    assert _walk([base, better, worse], 2.0) == 1
    # the strongest back near none, or still better than none but significantly worse than the choice: the curve
    # turned up past the choice, an overshoot too
    assert _walk([base, better, flat], 2.0, ordered=True) == 0
    assert _walk([base, better, base - 0.02], 2.0, ordered=True) == 0
    assert _walk([base, better, base - 0.02], 2.0) == 1


def test_an_ordered_walk_reads_a_turn_up_past_its_choice_from_the_raw_differences():
    """The strongest value is judged against the choice on the raw paired differences: a strongest value a hair
    worse on most blocks but much better on a few has a falling mean, so the choice stands; clipped, those few
    blocks would read as a significant turn up."""
    from msifusion.harmonic.selection import _paired, _walk

    rng = np.random.default_rng(3)
    base = torch.tensor(1.0 + 0.01 * rng.random(400))
    better = base - 0.05
    strongest = better + 0.001
    strongest[:3] -= 0.5
    mean_clipped, se_clipped, _, _ = _paired(better, strongest, 1.0)
    assert mean_clipped < -2.0 * se_clipped  # winsorised, a significant turn up
    assert _walk([base, better, strongest], 2.0, winsor=1.0, ordered=True) == 1
    strongest[:3] += 0.5  # without the few: a turn up, raw or clipped
    assert _walk([base, better, strongest], 2.0, winsor=1.0, ordered=True) == 0


def test_the_ladder_turns_back_one_rung_where_its_curve_turns_up():
    """Past the walk's choice, a sharper rung significantly worse than it: one rung back (never to the first rung,
    which would undo the trust the walk found); a curve still falling or flat there keeps its choice."""
    from msifusion.harmonic.selection import _turn_back, _walk

    def walked_back(errors):
        return _turn_back(errors, _walk(errors, 4.0), 4.0)

    rng = np.random.default_rng(2)
    base = torch.tensor(1.0 + 0.01 * rng.random(400))
    flat = 0.0005 * torch.tensor(rng.standard_normal(400))
    better, best = base - 0.05, base - 0.1
    assert walked_back([base, better, best, base]) == 1
    assert _walk([base, better, best, base], 4.0) == 2
    assert walked_back([base, better, best, best + flat]) == 2
    assert walked_back([base, better, best + 0.2]) == 1  # a turn right after the first step keeps it
    assert walked_back([base, best, better, best - 0.05]) == 3  # still falling at the sharpest rung
    assert _turn_back([base, better, best, base], 1, 4.0) == 1  # never back to the first rung


@pytest.mark.slow
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
    from msifusion.harmonic.selection import _walk

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
    ladder = [list(s) for s in HarmonicConfig().ladder.rungs]
    rungs = [ladder.index(fuse(guide, y, "guided-harmonic", options).fit.details["chosen"]) for y in (measured, hot)]
    assert rungs[0] >= 2 and abs(rungs[1] - rungs[0]) <= 1  # without the winsorising: the bottom rung


def test_the_ladder_walk_uses_the_configured_sign_test(cells):
    """On the cells the walk climbs; a sign test no step can pass keeps it at the bottom."""
    guide, truth, f = cells
    y = (block_mean(truth, f) / block_mean(truth, f).max())[None]
    climbed, kept = HarmonicReport(), HarmonicReport()
    fuse_harmonic_many(guide, y, f, report=climbed)
    fuse_harmonic_many(guide, y, f, HarmonicConfig(ladder=LadderSettings(sign_significance=1e6)), report=kept)
    assert climbed.settings[0] != HarmonicConfig().ladder.rungs[0]
    assert kept.settings[0] == HarmonicConfig().ladder.rungs[0]


def test_a_flat_texture_test_is_told_from_a_worse_strength_and_from_no_texture_at_all():
    from msifusion.harmonic.selection import _flat

    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 400, generator=g)
    noise = lambda: 0.01 * torch.randn(1, 400, generator=g)  # noqa: E731 - paired differences around zero
    assert _flat([base, base + noise(), base + noise(), base + noise()], 2.0, 0.0)  # cannot tell them apart
    assert not _flat([base, base + 0.05 + noise(), base + noise(), base + noise()], 2.0, 0.0)  # 0.5 clearly worse
    assert not _flat([base, base + noise(), base + noise(), base + 0.05 + noise()], 2.0, 0.0)  # strongest worse
    assert not _flat([base, base - 0.05 + noise(), base + noise(), base + noise()], 2.0, 0.0)  # 0.5 clearly better
    assert not _flat([base, base.clone(), base.clone(), base.clone()], 2.0, 0.0)  # identical: the texture does not act
    assert not _flat([base, base + noise()], 2.0, 0.0)  # two strengths: the walk itself decides


def test_a_mixed_sign_ion_gets_no_texture_and_its_note_says_so(cells):
    """Inside the solver, the texture step applies to non-negative ions only (a multiplicative darkening has no meaning
    across zero), so a mixed-sign ion's β is not walked, and its note does not say it was tested (its errors are the
    same for every β; the flat prior would read that as "undecided" and note β = 0.5 where none is applied).
    :func:`fuse_harmonic_many` hands it none: it lifts an ion of both signs by its lowest value (test_run)."""
    from msifusion.harmonic.run import _run
    from msifusion.measurement import MeasurementModel

    guide, truth, f = cells
    measured = block_mean(truth, f)
    y = (measured - measured.mean()) / np.abs(measured - measured.mean()).max()
    report = HarmonicReport()
    _run(guide, y[None].astype(np.float32), f, HarmonicConfig(), MeasurementModel(), torch.device("cpu"), report)
    note = report.notes[0]
    assert note["chosen"] != HarmonicConfig().ladder.rungs[0]  # the ladder climbed: the texture would be tested
    assert note["texture"] == 0.0 and note["texture_tested"] is False and note["texture_flat_prior"] is False


def test_an_ion_blurred_below_the_msi_pixel_gets_its_spread_and_a_sharp_one_none(cells, cells_like):
    """Cells whose chemistry is blurred by σ = 3 fine pixels (3/8 of an MSI pixel): the coarse test finds a spread,
    and the output, exact all the same, is far closer to the truth than without one. The sharp cells get none."""
    from scipy.ndimage import gaussian_filter

    guide, sharp, f = cells
    report = HarmonicReport()
    fuse_harmonic_many(guide, (block_mean(sharp, f) / block_mean(sharp, f).max())[None], f, report=report)
    assert report.notes[0]["spread_px"] == 0.0
    guide, truth, f = cells_like(0)
    truth = gaussian_filter(truth, 3.0)
    measured = block_mean(truth, f)
    y, unit = (measured / measured.max())[None], measured.max()
    spread, sharp_report = HarmonicReport(), HarmonicReport()
    out = fuse_harmonic_many(guide, y, f, report=spread)[0] * unit
    off = HarmonicConfig(spread=SpreadSettings.off())
    without = fuse_harmonic_many(guide, y, f, off, report=sharp_report)[0] * unit
    assert spread.notes[0]["spread_px"] > 0 and sharp_report.notes[0]["spread_px"] == 0.0
    assert len(spread.notes[0]["spread_coarse_mse"]) == 1 + len(SpreadSettings().widths)
    assert spread.settings[0] == sharp_report.settings[0]  # the spread is chosen after the setting
    assert consistency_error(out, measured, f) < 1e-6 and out.min() >= 0
    assert psnr(out, truth) > psnr(without, truth) + 5.0


def test_the_spread_needs_a_significant_gain_then_takes_the_widest_width_within_a_standard_error_of_the_least():
    """A spread is taken only where some width beats none significantly on significantly most blocks; then, from the
    width of least mean error, the widest after it that is not worse by more than one standard error. An ion already
    predicted to float32 rounding keeps none."""
    from msifusion.harmonic.selection import _choose_spread

    rng = np.random.default_rng(1)
    none = torch.tensor(1.0 + 0.1 * rng.random(400))
    jitter = 0.01 * torch.tensor(rng.standard_normal(400))
    config = HarmonicConfig()
    clear = torch.stack([none, none - 0.05, none - 0.08, none - 0.085, none + 0.2])
    assert _choose_spread(clear, 1.0, config) == 3  # the least; the fourth is far worse
    tied = torch.stack([none, none - 0.05, none - 0.08, none - 0.0795 + jitter, none + 0.2])
    assert _choose_spread(tied, 1.0, config) == 3  # the third is least, the fourth within its standard error
    worse = torch.stack([none, none - 0.05, none - 0.08, none - 0.06 + jitter, none + 0.2])
    assert _choose_spread(worse, 1.0, config) == 2
    noise = torch.stack([none, *(none + 0.001 * torch.tensor(rng.standard_normal(400)) for _ in range(4))])
    assert _choose_spread(noise, 1.0, config) == 0
    assert _choose_spread(clear, 1.0, HarmonicConfig(spread=SpreadSettings(sign_significance=1e6))) == 0
    assert _choose_spread(clear * 1e-14, 0.09, config) == 0  # a constant ion: rounding, not a spread


def test_a_smooth_ion_the_optical_does_not_show_takes_the_thin_plate_and_cells_do_not(cells):
    """A smooth chemistry under an optical of random texture: the coarse test takes the thin plate, and the output,
    exact all the same, is closer to the truth than the smoothest setting's membrane (measured 47.7 → 48.7 dB). Cells
    that follow the optical's walls predict far worse as a plate and keep their setting."""
    from msifusion.harmonic import PlateSettings

    guide, truth, measured, f = _smooth_under_random_texture()
    y, unit = (measured / measured.max())[None], measured.max()
    plated, membrane = HarmonicReport(), HarmonicReport()
    out = fuse_harmonic_many(guide, y, f, report=plated)[0] * unit
    without = fuse_harmonic_many(guide, y, f, HarmonicConfig(plate=PlateSettings.off()), report=membrane)[0] * unit
    assert plated.notes[0]["plate_px"] == 8.0  # ℓ = 1 MSI pixel, the longest: the truth is smooth
    assert membrane.notes[0]["plate_px"] == 0.0 and membrane.notes[0]["plate_coarse_mse"] == []
    assert len(plated.notes[0]["plate_coarse_mse"]) == 1 + len(PlateSettings().lengths)
    assert consistency_error(out, measured, f) < 1e-6 and out.min() >= 0
    assert psnr(out, truth) > psnr(without, truth) + 0.5
    guide, sharp, f = cells
    report = HarmonicReport()
    fuse_harmonic_many(guide, (block_mean(sharp, f) / block_mean(sharp, f).max())[None], f, report=report)
    coarse = report.notes[0]["plate_coarse_mse"]
    assert report.notes[0]["plate_px"] == 0.0 and min(coarse[1:]) > 1.5 * coarse[0]


def test_the_plate_walks_its_lengths_in_order_without_a_sign_test():
    """The plate's lengths are walked as the texture's strengths: a significant mean gain steps up even where most
    blocks are unchanged, a significantly worse length ends the walk, and an ion predicted to rounding keeps none."""
    from msifusion.harmonic.selection import _choose_plate

    rng = np.random.default_rng(2)
    none = torch.tensor(1.0 + 0.1 * rng.random(400))
    few = torch.zeros(400, dtype=torch.float64)
    few[:40] = 0.3  # a tenth of the blocks, where the ion curves
    config = HarmonicConfig()
    assert _choose_plate(torch.stack([none, none - few, none - 1.5 * few, none - 1.6 * few]), 1.0, config) == 3
    assert _choose_plate(torch.stack([none, none - few, none + 0.2, none - 2 * few]), 1.0, config) == 1
    noise = torch.stack([none, *(none + 0.001 * torch.tensor(rng.standard_normal(400)) for _ in range(3))])
    assert _choose_plate(noise, 1.0, config) == 0
    steady = torch.stack([none, none - few, none - 1.5 * few, none - 1.6 * few])
    assert _choose_plate(steady * 1e-14, 0.09, config) == 0  # without the guard: 3


def test_without_a_basis_the_spread_and_plate_test_reuses_the_ladders_solutions(cells, monkeypatch):
    """Ions fused without a basis keep each phase's ladder solutions for the spread's and the plate's test: the coarse
    test solves each setting once per phase and nothing more (a solve saved per phase and ion of a panel)."""
    import msifusion.harmonic.selection as selection

    calls = []
    solve = selection._solve_setting
    monkeypatch.setattr(selection, "_solve_setting", lambda *a, **k: calls.append(a[1:3]) or solve(*a, **k))
    guide, truth, f = cells
    report = HarmonicReport()
    fuse_harmonic_many(guide, (block_mean(truth, f) / truth.max())[None], f, report=report)
    rungs = HarmonicConfig().ladder.rungs
    assert report.notes[0]["spread_coarse_mse"] and report.notes[0]["plate_coarse_mse"]  # both tests ran
    assert sorted(calls) == sorted(list(rungs) * report.notes[0]["phases"])
