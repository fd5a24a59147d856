"""Guided harmonic fusion: one setting's solve: edge scales, the edge term, non-negativity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from msifusion.harmonic import (
    HarmonicConfig,
    HarmonicReport,
    LadderSettings,
    SolverSettings,
    TextureSettings,
    edge_scales,
    fuse_harmonic_many,
    measurement_noise,
    one_colour_area,
)
from msifusion.losses import edge_map, edge_perceptual_loss, luminance_t
from msifusion.measurement import block_mean, consistency_error
from msifusion.metrics import psnr


def test_nonnegativity_is_decided_on_the_whole_ion(cells):
    """Inside the solver (:func:`fuse_harmonic_many` lifts an ion of both signs by its lowest value first)."""
    from msifusion.harmonic.run import _run
    from msifusion.measurement import MeasurementModel

    def run(ions, config, report=None):
        return _run(guide, ions[None].astype(np.float32), f, config, MeasurementModel(), torch.device("cpu"),
                    report if report is not None else HarmonicReport())[0]

    guide, truth, f = cells
    y = block_mean(truth, f) / truth.max()
    signed = y.copy()
    signed[0, 0] = -1e-3  # one slightly negative MSI pixel, outside the coarse test's window
    report = HarmonicReport()
    run(signed, HarmonicConfig(texture=TextureSettings((0.0, 0.5, 1.0))), report)
    note = report.notes[0]
    assert note["texture"] == 0.0 and len(set(note["texture_coarse_mse"])) == 1  # texture cannot apply: not offered
    sparse = np.zeros_like(y)  # a blob on zero background: the smooth solution dips below zero around it
    sparse[6:9, 9:12], sparse[2, 3], sparse[0, 0] = 1.0, 0.5, -0.01
    config = HarmonicConfig(ladder=LadderSettings(((99.9, 0),)), texture=TextureSettings.off())
    whole = run(sparse, config)
    tiled = run(sparse, replace(config, solver=SolverSettings(tile_pixels=64 * 64, halo_blocks=1)))
    far = (slice(48, 96), slice(48, 128))  # tiles away from the negative pixel are left signed too
    assert (whole[far] < 0).sum() > 100 and (tiled[far] < 0).sum() > 100
    assert consistency_error(tiled, sparse, f) < 1e-6


def test_edge_scales_are_exact_percentiles_on_small_guides(cells):
    guide = cells[0].astype(np.float32)
    d = np.concatenate([np.sqrt(((guide[:, 1:] - guide[:, :-1]) ** 2).sum(-1)).ravel(),
                        np.sqrt(((guide[1:] - guide[:-1]) ** 2).sum(-1)).ravel()])
    kappas = edge_scales(guide, (50.0, 80.0, 99.9))
    for q, kappa in kappas.items():
        assert kappa == pytest.approx(max(np.percentile(d, q), 1e-3), rel=1e-5)
    sampled = edge_scales(guide, (80.0,), max_samples=4000)  # sampled above max_samples pairs: close, not exact
    assert sampled[80.0] == pytest.approx(kappas[80.0], rel=0.1)



def test_edge_scales_sample_the_last_row_and_column_pairs_too():
    guide = np.zeros((4, 2000), np.float32)  # the last row alternates: its horizontal pairs all differ
    guide[3, ::2] = 1.0
    exact = edge_scales(guide, (90.0,))[90.0]  # 2999 of 13 996 pairs differ (21 %): the 90th percentile is 1
    sampled = edge_scales(guide, (90.0,), max_samples=4000)[90.0]  # (the last row's pairs left out: 8 %, the floor)
    assert exact == pytest.approx(1.0) and sampled == pytest.approx(1.0)

def test_one_colour_area_is_what_lies_beyond_the_radius_of_every_colour_difference():
    guide = np.ones((40, 60, 3), np.float32)  # white glass, with one grey pixel at (20, 30)
    guide[20, 30] = 0.5
    area = one_colour_area(guide, radius=3)
    rows, cols = np.nonzero(~area)  # the grey pixel differs from its 4 neighbours: they and it touch a difference
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 24, 26, 34)  # each of them, dilated by 3 px
    assert (~area).sum() == 9 * 9 - 4  # the square's corners lie 4 px from the nearest of them in x or in y
    assert one_colour_area(guide[..., 0], radius=3).tolist() == area.tolist()  # a grey guide alike
    assert not one_colour_area(np.random.default_rng(0).random((20, 20, 3), dtype=np.float32)).any()


def test_edge_scales_leave_out_a_frame_of_one_colour_but_keep_a_few_flat_colours_apart(cells):
    guide = cells[0].astype(np.float32)
    m = 96  # white glass around it, as wide as the section: the zero differences of its inside do not count
    framed = np.ones((guide.shape[0] + 2 * m, guide.shape[1] + 2 * m, 3), np.float32)
    framed[m:-m, m:-m] = guide
    alone, with_frame = edge_scales(guide, (50.0, 80.0)), edge_scales(framed, (50.0, 80.0))
    for q in (50.0, 80.0):  # only the band of glass within ONE_COLOUR_RADIUS of the section counts (about a fifth)
        assert with_frame[q] == pytest.approx(alone[q], rel=0.25)
    sampled = edge_scales(framed, (50.0,), max_samples=50_000)  # 184 k pairs: sampled, the frame's left out alike
    assert sampled[50.0] == pytest.approx(with_frame[50.0], rel=0.05)
    all_pairs = np.concatenate([(framed[:, 1:] != framed[:, :-1]).any(-1).ravel(),
                                (framed[1:] != framed[:-1]).any(-1).ravel()])
    assert all_pairs.mean() < 0.2  # over every pair, both percentiles would fall to the floor
    two = np.zeros((64, 256, 3), np.float32)  # two flat colours: every difference is the edge, which must block
    two[:, 128:] = 1.0
    kappas = edge_scales(two, (80.0, 90.0, 99.9))
    assert kappas[80.0] == kappas[90.0] == 1e-3 and kappas[99.9] == pytest.approx(np.sqrt(3.0))
    assert edge_scales(np.ones((16, 16, 3), np.float32), (50.0,))[50.0] == 1e-3  # all one colour: every pair, floor
    assert edge_scales(two[..., 0], (99.9,))[99.9] == pytest.approx(1.0)  # a grey guide: its one channel


def test_a_frame_of_one_colour_leaves_the_fused_section_as_it_was(cells):
    """A section framed by empty glass (exactly white; nothing measured there) fuses as it does alone: κ and τ are
    taken outside areas of one colour (before, the frame pulled κ to its floor and cost this case 9.5 dB)."""
    guide, truth, f = cells
    y = (block_mean(truth, f) / truth.max()).astype(np.float32)
    m = 12  # MSI pixels of glass on every side
    framed = np.ones((guide.shape[0] + 2 * m * f, guide.shape[1] + 2 * m * f, 3), np.float32)
    framed[m * f:-m * f, m * f:-m * f] = guide
    y_framed = np.pad(y, m)
    alone = fuse_harmonic_many(guide, y[None], f)[0]
    inside = fuse_harmonic_many(framed, y_framed[None], f)[0][m * f:-m * f, m * f:-m * f]
    truth = truth / truth.max()
    assert psnr(inside, truth) > psnr(alone, truth) - 0.5
    assert np.abs(inside - alone).mean() < 0.01


def test_edge_perceptual_term_stays_available(cells):
    guide, truth, f = cells
    y = (block_mean(truth, f) / truth.max())[None]
    config = HarmonicConfig(ladder=LadderSettings(((50.0, 0),)), edge_weight=0.1)
    out = fuse_harmonic_many(guide, y, f, config)[0]
    assert consistency_error(out, y[0], f) < 1e-6
    plain = fuse_harmonic_many(guide, y, f, replace(config, edge_weight=0.0))[0]
    # the term pulls the output's edges towards the optical's: the paper's edge perceptual loss drops
    target = edge_map(luminance_t(torch.tensor(guide).permute(2, 0, 1)[None]))
    loss = [float(edge_perceptual_loss(torch.as_tensor(x)[None, None], target)) for x in (out, plain)]
    assert loss[0] < 0.5 * loss[1]


def test_negative_measurements_are_left_signed():
    rng = np.random.default_rng(9)
    guide = rng.random((32, 32, 3)).astype(np.float32)
    y = rng.normal(size=(1, 4, 4)).astype(np.float32)
    out = fuse_harmonic_many(guide, y / np.abs(y).max(), 8)[0]
    assert consistency_error(out, y[0] / np.abs(y).max(), 8) < 1e-6
    assert out.min() < 0


def test_measurement_noise_finds_white_noise_under_a_smooth_image_and_past_a_zero_fill():
    yy, xx = np.mgrid[:60, :80].astype(np.float32)
    smooth = 0.2 + 0.004 * yy + 0.003 * xx + 1e-4 * (xx - 40) ** 2  # a plane and a gentle curve
    noisy = smooth + 0.05 * np.random.default_rng(0).standard_normal(smooth.shape).astype(np.float32)
    filled = noisy.copy()
    filled[:, :40] = 0.0  # half the image not acquired
    sigma = measurement_noise(torch.as_tensor(np.stack([noisy, filled, smooth])))
    assert sigma[0] == pytest.approx(0.05, rel=0.1) and sigma[1] == pytest.approx(0.05, rel=0.15)
    assert sigma[2] < 2e-3  # planes are blind spots of the operator; the curve leaves a trace
    assert measurement_noise(torch.ones(1, 20, 20)).tolist() == [0.0]  # no window of two values: none found
    assert measurement_noise(torch.rand(2, 2, 30)).tolist() == [0.0, 0.0]  # no 3×3 window at all


def test_soft_weights_only_for_textured_ions_with_noise():
    from msifusion.harmonic.setting import _soft_weights

    noise, betas = torch.tensor([0.02, 0.02, 0.0, 0.02]), torch.tensor([1.0, 0.0, 1.0, 1.0])[:, None, None]
    refined = torch.tensor([True, True, True, False])
    mu = _soft_weights(noise, betas, refined, HarmonicConfig())
    assert mu.shape == (4, 1, 1)
    assert mu.ravel().tolist() == pytest.approx([3e-6 / 0.02 ** 2, 0.0, 0.0, 0.0])  # β = 0, σ = 0, no pass: exact
    assert _soft_weights(noise, betas, refined, HarmonicConfig(solver=SolverSettings(soft_scale=0.0))) is None
    assert _soft_weights(noise, betas, refined, HarmonicConfig(edge_weight=0.1)) is None  # no soft solve with it
    assert _soft_weights(noise, torch.zeros(4, 1, 1), refined, HarmonicConfig()) is None
    with pytest.raises(ValueError, match="soft_scale"):
        SolverSettings(soft_scale=-1.0)


def test_a_second_soft_refinement_pass_aims_at_the_measurement(cells):
    """With two passes, the second starts from the first's exact projection: it fits y, not the block means the
    first soft pass moved to."""
    from msifusion.harmonic import setting
    from msifusion.harmonic.setting import _Guide, _Problem, _solve_setting
    from msifusion.measurement import MeasurementModel

    guide, truth, f = cells
    y = torch.as_tensor(block_mean(truth, f)[None].astype(np.float32))
    config = HarmonicConfig()
    gd = _Guide.of(guide, f, config, MeasurementModel(), torch.device("cpu"))
    pb = _Problem(torch.tensor(guide), y, f, torch.full((1, 1, 1), 0.1 * float(y.std())), gd)
    starts = []
    solve = setting.solve_harmonic

    def spy(x0, op, *args, **kwargs):
        starts.append(float((op.A(x0) - y).abs().max()))
        return solve(x0, op, *args, **kwargs)

    setting.solve_harmonic = spy
    try:
        out, _ = _solve_setting(pb, 80.0, 2, soft=torch.full((1, 1, 1), 1e-3))
    finally:
        setting.solve_harmonic = solve
    assert len(starts) == 3 and max(starts) < 1e-5  # the first solve and both passes start on the measurement
    assert float((pb.op.A(out) - y).abs().max()) < 1e-5
