"""The block-constrained graph-Laplacian solver: multigrid, projected PCG, batched inner products."""

from __future__ import annotations

import numpy as np
import torch

from msifusion.measurement import Measurement, block_mean, upsample
from msifusion.harmonic.solver import Multigrid, _dot, solve_harmonic


def test_per_image_dot_products():
    a = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    b = torch.ones(2, 3, 4)
    assert _dot(a, b).shape == (2, 1, 1)
    assert _dot(a, b).flatten().tolist() == [66.0, 210.0]
    assert _dot(a[:0], b[:0]).shape == (0, 1, 1)


def _conductances(guide: np.ndarray, kappa: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.tensor(guide)
    dh = (g[:, 1:] - g[:, :-1]).pow(2).sum(-1).sqrt()
    dv = (g[1:] - g[:-1]).pow(2).sum(-1).sqrt()
    return 1 / (1 + (dh / kappa) ** 2) + 1e-3, 1 / (1 + (dv / kappa) ** 2) + 1e-3


def test_multigrid_coarse_operator_is_galerkin(cells):
    """Each coarse level's Laplacian is PᵀLP for the piecewise-constant prolongation P."""
    guide, _, f = cells
    wh, wv = _conductances(guide)
    mg = Multigrid(wh.double(), wv.double(), f)
    assert [lv.f for lv in mg.levels] == [8, 4, 2]
    rng = np.random.default_rng(0)
    for fine, coarse in zip(mg.levels, mg.levels[1:]):
        p = coarse.p
        xc = torch.as_tensor(rng.standard_normal((1, *coarse.deg.shape[-2:])))
        Lx = fine.laplacian(xc.repeat_interleave(p, -2).repeat_interleave(p, -1))
        H, W = Lx.shape[-2:]
        restricted = Lx.reshape(1, H // p, p, W // p, p).sum((-3, -1))
        torch.testing.assert_close(restricted, coarse.laplacian(xc), rtol=1e-10, atol=1e-10)


def test_multigrid_and_jacobi_reach_the_same_minimiser_multigrid_in_fewer_steps(cells):
    guide, truth, f = cells
    wh, wv = _conductances(guide)
    y = torch.as_tensor(block_mean(truth, f)[None]).double()
    op = Measurement(truth.shape, f)
    x0 = op.project(torch.as_tensor(upsample(y[0].numpy(), f)[None]).double(), y)
    x_mg, its_mg = solve_harmonic(x0, op, wh.double(), wv.double(), 2000, 1e-8)
    x_j, its_j = solve_harmonic(x0, op, wh.double(), wv.double(), 2000, 1e-8, multigrid=False)
    assert its_mg < its_j / 2
    np.testing.assert_allclose(x_mg.numpy(), x_j.numpy(), atol=1e-5 * float(y.max()))
    assert float((op.A(x_mg) - y).abs().max()) < 1e-10  # the iterate never leaves the constraint
