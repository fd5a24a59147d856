"""Guided harmonic fusion: the entry points: exact consistency, many ions, tiles, signs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from msifusion.harmonic import (
    HarmonicConfig,
    HarmonicReport,
    LadderSettings,
    PanelSettings,
    SolverSettings,
    SpreadSettings,
    TextureSettings,
    fuse_harmonic_many,
)
from msifusion.runtime import Runtime, resolve_device
from msifusion.methods import MethodOptions, fuse, fuse_many
from msifusion.measurement import Measurement, MeasurementModel, block_mean, consistency_error, project_consistent, upsample
from msifusion.metrics import psnr


def test_single_ion_is_consistent_and_beats_bilinear(cells):
    guide, truth, f = cells
    measured = block_mean(truth, f)
    result = fuse(guide, measured, "guided-harmonic", MethodOptions(runtime=Runtime(quiet=True)))
    out = result.image
    assert out.shape == truth.shape and out.dtype == np.float32
    assert consistency_error(out, measured, f) < 1e-6
    assert out.min() >= 0
    bilinear_bp = project_consistent(upsample(measured, f), measured, f)
    assert psnr(out, truth) > psnr(bilinear_bp, truth) + 2.0  # the optical's walls are the cells' edges
    assert "κ at q" in result.fit.stop_reason


def test_fuse_many_without_a_shared_basis_equals_fusing_each_ion_alone_in_its_units(cells):
    guide, truth, f = cells[0][:64, :96], cells[1][:64, :96], cells[2]  # two ions: below the shared basis's minimum
    ions = np.stack([block_mean(truth, f) * 1000, block_mean(truth[::-1].copy(), f) * 0.01])
    options = MethodOptions(runtime=Runtime(quiet=True))
    many = fuse_many(guide, ions, "guided-harmonic", options)
    for ion, result in zip(ions, many):
        alone = fuse(guide, ion, "guided-harmonic", options)
        np.testing.assert_allclose(result.image, alone.image, rtol=1e-5, atol=1e-6 * float(ion.max()))
        assert result.consistency_error < 1e-6 and result.intensity_scale == pytest.approx(float(ion.max()))


def test_deterministic_on_cpu(cells):
    guide, truth, f = cells
    y = block_mean(truth, f)[None]
    config, cpu = HarmonicConfig(ladder=LadderSettings(((99.9, 0), (50.0, 1)))), Runtime(device="cpu")
    a = fuse_harmonic_many(guide, y, f, config, cpu)
    b = fuse_harmonic_many(guide, y, f, config, cpu)
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_the_same_output_for_any_number_of_threads(cells_like):
    guide, truth, f = cells_like(shape=(256, 256), seed=2)  # kernels.MIN_PIXELS: the fused kernels run
    y = block_mean(truth, f) + np.random.default_rng(0).normal(0, 0.02, (256 // f, 256 // f)).astype(np.float32)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outputs.append(fuse(guide, y, options=MethodOptions(runtime=Runtime(quiet=True))).image)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(outputs[0], outputs[1])  # a BLAS dot split by threads changed it by 0.6 % of the peak


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
    tolerance = 1e-6 if resolve_device("auto").type == "cpu" else config.solver.tolerance
    together = HarmonicReport()
    many = fuse_harmonic_many(guide, ions, f, config, report=together)
    for k in range(3):
        by_itself = HarmonicReport()
        alone = fuse_harmonic_many(guide, ions[k:k + 1], f, config, report=by_itself)[0]
        assert consistency_error(many[k], ions[k], f) < 1e-6
        note, note_alone = together.notes[k], by_itself.notes[0]
        assert note["chosen"] == note_alone["chosen"] and note["texture"] == note_alone["texture"]
        # each ion's own scores, not the batch's: β = 0 scores what the chosen rung scored
        np.testing.assert_allclose(note["texture_coarse_mse"], note_alone["texture_coarse_mse"], rtol=1e-4)
        assert note["texture_coarse_mse"][0] == note["coarse_mse"][config.ladder.rungs.index(tuple(note["chosen"]))]
        assert np.max(np.abs(many[k] - alone)) <= tolerance * np.abs(alone).max()


def test_tiles_stay_exact_and_agree_with_one_piece(cells):
    guide, truth, f = cells
    y = (block_mean(truth, f) / truth.max())[None]
    config = HarmonicConfig(ladder=LadderSettings(((50.0, 0),)))
    whole = fuse_harmonic_many(guide, y, f, config)[0]
    tiled = fuse_harmonic_many(guide, y, f, replace(config, solver=SolverSettings(tile_pixels=64 * 64, halo_blocks=2)))[0]
    assert consistency_error(tiled, y[0], f) < 1e-6
    assert psnr(tiled, truth / truth.max()) > psnr(whole, truth / truth.max()) - 0.3
    seams = np.abs(tiled - whole) / np.abs(whole).max()  # measured: mean 0.001, largest 0.032 (a tile's edge)
    assert seams.mean() < 3e-3 and seams.max() < 0.05


def test_tiles_stay_exact_under_the_laser_spot_model(cells):
    guide, truth, f = cells
    op = Measurement(truth.shape, f, 1.0)
    y = op.A(torch.tensor(truth, dtype=torch.float64)).numpy()
    ions = np.stack([y, y[::-1].copy()]).astype(np.float32) / y.max()
    config = HarmonicConfig(panel=PanelSettings(ion_batch=2), solver=SolverSettings(tile_pixels=64 * 64, halo_blocks=2))
    out = fuse_harmonic_many(guide, ions, f, config, measurement=MeasurementModel(1.0))  # footprints cross the seams
    for k in range(2):
        assert consistency_error(out[k], ions[k], f, spot_sigma_px=1.0) < 1e-6


def test_a_narrow_laser_spot_fuses_as_the_box_average_does(cells):
    # the spot model's output tends to the box model's as σ → 0: the same setting, texture step and non-negativity
    guide, truth, f = cells
    y = (block_mean(truth, f) / truth.max())[None]
    config = HarmonicConfig(texture=TextureSettings((1.0,)))
    box_report, spot_report = HarmonicReport(), HarmonicReport()
    box = fuse_harmonic_many(guide, y, f, config, report=box_report)[0]
    spot = fuse_harmonic_many(guide, y, f, config, report=spot_report, measurement=MeasurementModel(0.2))[0]
    assert spot_report.settings == box_report.settings and spot_report.notes[0]["texture"] == 1.0
    assert np.abs(spot - box).mean() < 1e-4 * box.max() and spot.min() > -1e-5 * box.max()  # within the solver's tolerance
    assert consistency_error(spot, y[0], f, spot_sigma_px=0.2) < 1e-6


def test_an_ion_measured_below_zero_everywhere_is_fused_as_its_mirror_image(cells):
    guide, truth, f = cells
    y = (block_mean(truth, f) / truth.max())[None]
    positive = fuse_harmonic_many(guide, y, f)[0]
    report = HarmonicReport()
    negative = fuse_harmonic_many(guide, -y, f, report=report)[0]
    np.testing.assert_array_equal(negative, -positive)
    assert report.notes[0]["mirrored"] is True
    assert negative.max() <= 0 and consistency_error(negative, -y[0], f) < 1e-6


def test_an_ion_of_both_signs_is_bounded_by_its_lowest_measured_value(cells):
    """A baseline lowered by a constant (an ion of −3 to 18 in a user's imzML) was fused signed, without the
    non-negativity step, to −77 to 61; fused less its lowest value, it is the non-negative ion's fusion, lowered."""
    guide, truth, f = cells
    y = (block_mean(truth, f) / truth.max())[None]
    y = y - y.min()  # non-negative, down to 0 (a background)
    lowered = y - 0.2 * y.max()
    report = HarmonicReport()
    signed = fuse_harmonic_many(guide, lowered, f, report=report)[0]
    assert report.notes[0]["above_lowest_measured"] is True
    assert signed.min() >= lowered.min() - 1e-6 and consistency_error(signed, lowered[0], f) < 1e-6
    np.testing.assert_allclose(signed, fuse_harmonic_many(guide, y, f)[0] - 0.2 * y.max(), atol=2e-3 * y.max())
    assert "above_lowest_measured" not in _notes(guide, y, f)[0]


def _notes(guide, y, f) -> list[dict]:
    report = HarmonicReport()
    fuse_harmonic_many(guide, y, f, report=report)
    return report.notes


@pytest.mark.parametrize("intensity", [1e-20, 1e20])
def test_the_same_fusion_at_any_intensity_scale(cells, intensity):
    """Tiny or huge intensities (an export in mol/µm², in raw integrated counts) choose the setting and converge as
    the peak-normalised ion does: the solver's floors and the tests' float32 sums see the same numbers."""
    guide, truth, f = cells
    y = (block_mean(truth, f) / truth.max())[None]
    report, scaled_report = HarmonicReport(), HarmonicReport()
    plain = fuse_harmonic_many(guide, y, f, report=report)[0]
    scaled = fuse_harmonic_many(guide, y * intensity, f, report=scaled_report)[0]
    assert scaled_report.settings == report.settings
    # the normalised ions differ by float32 rounding (y·s / (peak·s)), which the refinement's early-stopped CG on
    # near-cut conductances carries into a few pixels (1.2e-5 of the peak with the diagonal pairs, under 1e-5 without)
    np.testing.assert_allclose(scaled / intensity, plain, rtol=0, atol=3e-5)


def test_shape_mismatch_is_an_error(cells):
    guide, truth, f = cells
    y = block_mean(truth, f)[None]
    with pytest.raises(ValueError, match="guide must be"):
        fuse_harmonic_many(guide, y[:, :-1], f)
    with pytest.raises(ValueError, match="scale ≥ 2"):
        fuse_harmonic_many(guide[::f, ::f], y, 1)
    with pytest.raises(ValueError, match="guide must be"):  # a grey guide
        fuse_harmonic_many(guide[..., 0], y, f)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        fuse_harmonic_many(guide * 255, y, f)


def test_an_ion_left_at_the_smoothest_setting_is_told_so(cells):
    from msifusion.methods import SMOOTHEST_LABEL

    guide, truth, f = cells
    measured = block_mean(truth, f)
    options = MethodOptions(runtime=Runtime(quiet=True))
    climbed = fuse(guide, measured, "guided-harmonic", options).fit
    assert not climbed.details["kept_smoothest"] and SMOOTHEST_LABEL not in climbed.stop_reason
    blank = fuse(np.full_like(guide, 0.5), measured, "guided-harmonic", options).fit  # no edges to follow
    assert tuple(blank.details["chosen"]) == LadderSettings().rungs[0] and blank.details["kept_smoothest"]
    assert blank.stop_reason.endswith(f"; {SMOOTHEST_LABEL}: one scale coarser, the optical's finer edges did not "
                                      "predict this ion, so it follows only the optical's strongest edges)")
    tiny = fuse(guide[:48, :48], measured[:6, :6], "guided-harmonic", options).fit  # too small to test: not told so
    assert "too small to test" in tiny.details["selection"] and SMOOTHEST_LABEL not in tiny.stop_reason


def test_a_constant_ion_stays_constant_at_a_refined_setting(cells):
    """Float32 rounding is all that varies in a constant ion's solution: the refinement must not read it as edges."""
    guide, _, f = cells
    y = np.full((1, guide.shape[0] // f, guide.shape[1] // f), 0.3, np.float32)
    report = HarmonicReport()
    for config in (HarmonicConfig(ladder=LadderSettings(((50.0, 1),))), HarmonicConfig()):
        out = fuse_harmonic_many(guide, y, f, config, report=report)[0]
        assert np.abs(out - 0.3).max() < 1e-5
        assert np.isfinite(report.notes[0]["coarse_mse"]).all() and report.notes[0]["spread_px"] == 0


def test_an_ion_blurred_to_its_spread_is_told_so(cells, cells_like):
    from scipy.ndimage import gaussian_filter

    options = MethodOptions(runtime=Runtime(quiet=True))
    guide, truth, f = cells
    sharp = fuse(guide, block_mean(truth, f), "guided-harmonic", options).fit
    assert sharp.details["spread_px"] == 0 and "blurred" not in sharp.stop_reason
    guide, truth, f = cells_like(0)
    blurred = fuse(guide, block_mean(gaussian_filter(truth, 3.0), f), "guided-harmonic", options).fit
    assert blurred.stop_reason.endswith(f"; blurred by σ {blurred.details['spread_px']:g} px: one scale coarser the "
                                        "ion proved less sharp than the optical)")
    assert blurred.details["spread_px"] > 0


def test_a_textured_noisy_ion_fits_its_measurement_softly_and_ends_exact(cells_like):
    """The output's refinement pass of an ion that took the texture fits its block means softly (μ = soft_scale/σ²,
    in run.json's notes), and the projection makes it exact again. (An ion without the texture gets μ = 0, the exact
    pass: test_setting.)"""
    guide, truth, f = cells_like(1, (192, 256), 8)
    measured = block_mean(truth, f)
    measured = np.clip(measured + 0.03 * np.random.default_rng(1).standard_normal(measured.shape), 0, None)
    measured = measured.astype(np.float32)
    outputs = {}
    for scale in (3e-6, 0.0):
        config = HarmonicConfig(solver=SolverSettings(soft_scale=scale), texture=TextureSettings((1.0,)))
        report = HarmonicReport()
        out = fuse_harmonic_many(guide, measured[None], f, config, report=report)[0]
        assert consistency_error(out, measured, f) < 1e-6
        outputs[scale] = out, report.notes[0]
    (soft, note), (exact, exact_note) = outputs[3e-6], outputs[0.0]
    assert note["chosen"] == exact_note["chosen"] and note["chosen"][1] == 1  # a refined rung: where the term acts
    assert note["soft_measurement_weight"] == pytest.approx(3e-6 / note["measurement_noise"] ** 2, rel=1e-5)
    assert exact_note["soft_measurement_weight"] == 0.0
    assert np.abs(soft - exact).max() > 1e-3 * measured.max()
    assert psnr(soft, truth) > psnr(exact, truth)  # measured: +0.09 dB


def test_an_ion_with_a_spread_stays_exact_in_tiles_and_under_a_spot(cells_like):
    """An ion blurred below the MSI pixel, measured through a laser spot, fused in tiles: its spread is taken, every
    tile stays exact under the spot, and the seams are small."""
    from scipy.ndimage import gaussian_filter

    guide, truth, f = cells_like(0, (192, 256))  # the small cells give the test too few blocks under a spot
    op = Measurement(truth.shape, f, 1.0)
    y = op.A(torch.tensor(gaussian_filter(truth, 3.0), dtype=torch.float64)).numpy()
    y = (y / y.max()).astype(np.float32)[None]
    tiles = HarmonicConfig(solver=SolverSettings(tile_pixels=64 * 64, halo_blocks=2))
    whole, tiled = HarmonicReport(), HarmonicReport()
    one = fuse_harmonic_many(guide, y, f, measurement=MeasurementModel(1.0), report=whole)[0]
    out = fuse_harmonic_many(guide, y, f, tiles, measurement=MeasurementModel(1.0), report=tiled)[0]
    assert whole.notes[0]["spread_px"] > 0 and tiled.notes[0]["spread_px"] == whole.notes[0]["spread_px"]
    assert consistency_error(out, y[0], f, spot_sigma_px=1.0) < 1e-6
    assert consistency_error(one, y[0], f, spot_sigma_px=1.0) < 1e-6
    assert np.abs(out - one).mean() / np.abs(one).max() < 3e-3
    sharp = fuse_harmonic_many(guide, y, f, replace(tiles, spread=SpreadSettings.off()),
                               measurement=MeasurementModel(1.0))[0]
    truth = gaussian_filter(truth, 3.0) / op.A(torch.tensor(gaussian_filter(truth, 3.0))).numpy().max()
    assert psnr(out, truth) > psnr(sharp, truth) + 5.0  # the blur was applied, tile by tile


def test_ions_with_different_spreads_in_one_batch_are_each_fused_as_alone(cells_like):
    """A batch of three ions, blurred by 0, 3 and 4 fine pixels: each gets its own spread, and its image is the one it
    gets fused alone, bit for bit."""
    from scipy.ndimage import gaussian_filter

    guide, truth, f = cells_like(0, (192, 256))
    ions = np.stack([block_mean(gaussian_filter(truth, s) if s else truth, f) for s in (0, 3.0, 4.0)])
    ions = (ions / ions.max(axis=(1, 2), keepdims=True)).astype(np.float32)
    config = HarmonicConfig(panel=PanelSettings(ion_batch=3))
    report = HarmonicReport()
    together = fuse_harmonic_many(guide, ions, f, config, report=report)
    spreads = [n["spread_px"] for n in report.notes]
    assert spreads[0] == 0 and 0 < spreads[1] < spreads[2]
    for k in range(3):
        alone = HarmonicReport()
        np.testing.assert_array_equal(fuse_harmonic_many(guide, ions[k:k + 1], f, config, report=alone)[0],
                                      together[k])
        assert alone.notes[0]["spread_px"] == spreads[k]


def test_a_plated_ion_is_its_own_measurements_plate_in_a_panel_alone_and_in_tiles():
    """An ion that takes the thin plate is the plate of its own measurement (known answer: the closed form), the same
    whether fused in a panel or alone, and within 1e-3 of it tile by tile with the default halo (measured 1.6e-4)."""
    from msifusion.harmonic.plate import plate_interpolate_t

    rng = np.random.default_rng(7)
    H, W, f = 96, 128, 8
    yy, xx = np.mgrid[:H, :W] / 40.0
    smooth = [1.5 + np.sin(yy) * np.cos(1.3 * xx), 1.5 + np.sin(1.3 * yy) * np.cos(xx)]
    guide = rng.random((H, W, 3)).astype(np.float32)
    ions = np.stack([block_mean(t.astype(np.float32), f) for t in smooth])
    ions /= ions.max(axis=(1, 2), keepdims=True)
    report = HarmonicReport()
    panel = fuse_harmonic_many(guide, ions, f, report=report)
    for k in range(len(ions)):
        alone = HarmonicReport()
        one = fuse_harmonic_many(guide, ions[k:k + 1], f, report=alone)[0]
        length = report.notes[k]["plate_px"]
        assert length > 0 and alone.notes[0]["plate_px"] == length
        np.testing.assert_array_equal(panel[k], one)
        closed = plate_interpolate_t(torch.tensor(ions[k], dtype=torch.float64), f, length).numpy()
        np.testing.assert_allclose(panel[k], closed, atol=1e-6)
    tiled = fuse_harmonic_many(guide, ions[:1], f, HarmonicConfig(solver=SolverSettings(tile_pixels=64 * 64)))[0]
    assert np.abs(tiled - panel[0]).max() < 1e-3 and consistency_error(tiled, ions[0], f) < 1e-6


def test_a_plated_ion_gets_its_texture_and_non_negativity_as_any_other(cells, monkeypatch):
    """The output path applies a plated ion's own β (the optical's texture) and the non-negativity step to its plate:
    the same image as the plate finished directly. A plate that overshoots below zero (an isolated bright MSI pixel)
    is non-negative and exact after it."""
    import msifusion.harmonic.run as run
    from msifusion.harmonic.plate import plate_interpolate_t
    from msifusion.harmonic.setting import _finish, _Guide

    guide, truth, f = cells
    y = block_mean(truth, f) / truth.max()
    y[3, 4] = 4.0  # the plate rings around it
    assert float(plate_interpolate_t(torch.tensor(y), f, f).min()) < 0
    config = HarmonicConfig()
    texture = config.texture.strengths.index(2.0)
    note = {"chosen": list(config.ladder.rungs[0]), "texture": 2.0, "plate_px": float(f)}
    monkeypatch.setattr(run, "choose_settings",
                        lambda gd, ions, *rest: ([(0, texture, 0, len(config.plate.lengths))] * len(ions),
                                                 [dict(note) for _ in range(len(ions))]))
    out = fuse_harmonic_many(guide, y[None], f, config)[0]
    gd = _Guide.of(guide, f, config, MeasurementModel(), torch.device("cpu"))
    yt = torch.tensor(y)[None]
    op = Measurement(truth.shape, f)
    expected = _finish(op.project(plate_interpolate_t(yt, f, float(f)), yt), yt, op, True, torch.tensor([True]),
                       torch.tensor(2.0), gd.detail(torch.tensor(np.array(guide))))[0].numpy()
    assert out.min() >= 0 and consistency_error(out, y, f) < 1e-6
    np.testing.assert_allclose(out, expected, atol=1e-6)
    untextured = _finish(op.project(plate_interpolate_t(yt, f, float(f)), yt), yt, op, True, torch.tensor([True]))
    assert np.abs(out - untextured[0].numpy()).max() > 0.01  # the texture acted
