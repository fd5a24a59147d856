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
)
from msifusion.losses import edge_map, edge_perceptual_loss, luminance_t
from msifusion.measurement import block_mean, consistency_error


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
