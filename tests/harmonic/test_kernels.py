"""The fused CPU kernels agree with the solver's torch operations, keep the constraint, and are deterministic."""

from __future__ import annotations

import pytest
import torch

from msifusion.harmonic import kernels
from msifusion.harmonic.solver import Multigrid, _add_diagonal, _aggregate, solve_harmonic
from msifusion.measurement import Measurement, bilinear_up_t, block_project

H, W, F = 256, 320, 16  # 81 920 pixels: above kernels.MIN_PIXELS


def _conductances(seed: int, batch: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(*batch, H, W - 1, generator=g).pow(4).add_(1e-3)  # many near-cuts, as after refinement
    wv = torch.rand(*batch, H - 1, W, generator=g).pow(4).add_(1e-3)
    return wh, wv


def _laplacian_reference(x: torch.Tensor, wh: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
    """Σ_j w_ij (x_i − x_j) over the 4 neighbours, written out edge by edge."""
    out = torch.zeros_like(x)
    dh = wh * (x[..., :, :-1] - x[..., :, 1:])
    dv = wv * (x[..., :-1, :] - x[..., 1:, :])
    out[..., :, :-1] += dh
    out[..., :, 1:] -= dh
    out[..., :-1, :] += dv
    out[..., 1:, :] -= dv
    return out


def _start(seed: int, images: int = 1) -> tuple[torch.Tensor, Measurement, torch.Tensor]:
    """A consistent start (random measurement, projected bilinear upsampling) and its measurement."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(images, H // F, W // F, generator=g)
    op = Measurement((H, W), F)
    return op.project(bilinear_up_t(y, F), y), op, y


def test_usable_only_for_large_float32_cpu_images():
    assert kernels.usable(torch.zeros(2, H, W))
    assert not kernels.usable(torch.zeros(2, H, W, dtype=torch.float64))
    assert not kernels.usable(torch.zeros(64, 64))
    assert not kernels.usable(torch.zeros(1, 70_000))


@pytest.mark.parametrize("shared", [True, False])
def test_laplacian_matches_the_edge_by_edge_definition(shared):
    wh, wv = _conductances(0, () if shared else (3,))
    x = torch.randn(3, H, W, generator=torch.Generator().manual_seed(1))
    out = kernels.laplacian(x, wh, wv, torch.empty_like(x))
    expected = _laplacian_reference(x, wh, wv)
    assert torch.allclose(out, expected, atol=1e-5)
    ones = kernels.laplacian(torch.ones(1, H, W), wh if shared else wh[:1], wv if shared else wv[:1],
                             torch.empty(1, H, W))
    assert ones.abs().max() < 1e-5  # constants are in the kernel
    y = torch.randn(3, H, W)
    ly = kernels.laplacian(y, wh, wv, torch.empty_like(y))
    assert torch.allclose((x * ly).sum((1, 2)), (y * out).sum((1, 2)), rtol=1e-4)  # symmetric


def test_jacobi_pcg_follows_the_torch_iteration(monkeypatch):
    wh, wv = _conductances(2, (2,))
    x0, op, y = _start(3, images=2)
    fused, its = solve_harmonic(x0, op, wh, wv, 20, 1e-6, multigrid=False)
    monkeypatch.setattr(kernels, "usable", lambda x: False)
    plain, its_plain = solve_harmonic(x0, op, wh, wv, 20, 1e-6, multigrid=False)
    assert its == its_plain == 20
    # float32 rounding in another order: CG on near-cut conductances amplifies it as it goes (≈1e-2 by 60 steps)
    assert (fused - plain).abs().max() < 1e-4 * y.abs().max()
    assert torch.allclose(op.A(fused), y, atol=1e-5)  # the iterate stays on the constraint

    def energy(x):
        return float((x * _laplacian_reference(x, wh, wv)).sum())

    assert energy(fused) < 0.5 * energy(x0)
    assert energy(fused) == pytest.approx(energy(plain), rel=1e-3)


def _diagonal_reference(x: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """Σ_j w_ij (x_i − x_j) over the diagonal pairs: d1 joins (i, j) and (i+1, j+1), d2 (i, j+1) and (i+1, j)."""
    out = torch.zeros_like(x)
    rows, cols = x.shape[-2:]
    for i in range(rows - 1):
        for j in range(cols - 1):
            a = d1[..., i, j] * (x[..., i, j] - x[..., i + 1, j + 1])
            out[..., i, j] += a
            out[..., i + 1, j + 1] -= a
            b = d2[..., i, j] * (x[..., i, j + 1] - x[..., i + 1, j])
            out[..., i, j + 1] += b
            out[..., i + 1, j] -= b
    return out


def test_diagonal_neighbours_in_the_jacobi_solve(monkeypatch):
    """The refinement's diagonal pairs: the fused kernel and the torch path follow one iteration, the iterate keeps
    the measurement, and the energy they lower is the 4-neighbour one plus the diagonal pairs' (written out pair by
    pair on a corner of the image, where both kernels' boundary cases are)."""
    wh, wv = _conductances(5, (2,))
    g = torch.Generator().manual_seed(6)
    diagonal = tuple(torch.rand(2, H - 1, W - 1, generator=g).pow(4).add_(1e-3) for _ in range(2))
    x0, op, y = _start(7, images=2)
    fused, its = solve_harmonic(x0, op, wh, wv, 20, 1e-6, multigrid=False, diagonal=diagonal)
    monkeypatch.setattr(kernels, "usable", lambda x: False)
    plain, _ = solve_harmonic(x0, op, wh, wv, 20, 1e-6, multigrid=False, diagonal=diagonal)
    four, _ = solve_harmonic(x0, op, wh, wv, 20, 1e-6, multigrid=False)
    assert its == 20 and (fused - plain).abs().max() < 1e-4 * y.abs().max()
    assert torch.allclose(op.A(fused), y, atol=1e-5)
    assert (fused - four).abs().max() > 1e-2 * y.abs().max()  # the diagonals change the solution

    def energy(x):
        return float((x * _add_diagonal(x, diagonal, _laplacian_reference(x, wh, wv))).sum())

    assert energy(fused) < 0.5 * energy(x0) and energy(fused) < energy(four)
    small = [d[:, :5, :6] for d in diagonal]
    xs = torch.randn(2, 6, 7, generator=g)
    assert torch.allclose(_add_diagonal(xs, small, torch.zeros_like(xs)), _diagonal_reference(xs, *small), atol=1e-6)
    with pytest.raises(ValueError, match="Jacobi"):
        solve_harmonic(x0, op, wh, wv, 5, 1e-6, diagonal=diagonal)



def test_the_soft_measurement_term_in_the_jacobi_solve(monkeypatch):
    """An image with μ > 0 lowers xᵀLx + μ‖B(A x − y)‖² without the projection (its block means move), one with μ = 0
    is solved as without the term; the fused kernel and the torch path follow one iteration."""
    wh, wv = _conductances(8, (2,))
    x0, op, y = _start(9, images=2)
    mu = torch.tensor([0.05, 0.0])[:, None, None]
    fused, its = solve_harmonic(x0, op, wh, wv, 20, 1e-6, multigrid=False, soft=mu)
    exact, _ = solve_harmonic(x0, op, wh, wv, 20, 1e-6, multigrid=False)
    monkeypatch.setattr(kernels, "usable", lambda x: False)
    plain, _ = solve_harmonic(x0, op, wh, wv, 20, 1e-6, multigrid=False, soft=mu)
    assert its == 20 and (fused - plain).abs().max() < 1e-4 * y.abs().max()
    assert torch.equal(fused[1], exact[1])  # μ = 0: the exact pass, bit for bit
    assert (op.A(fused[0]) - y[0]).abs().max() > 1e-3 * y.abs().max()  # the soft image's block means moved

    def energy(x, k, m):
        return float((x * _laplacian_reference(x, wh[k], wv[k])).sum() + m * F * F * (op.A(x) - y[k]).pow(2).sum())

    assert energy(fused[0], 0, 0.05) < energy(exact[0], 0, 0.05) < energy(x0[0], 0, 0.05)
    with pytest.raises(ValueError, match="Jacobi"):
        solve_harmonic(x0, op, wh, wv, 5, 1e-6, soft=mu)


def test_the_soft_solve_reaches_its_normal_equations():
    """Converged, (L + μ B A) x = μ B y: the known minimiser of the soft energy (a small image, the torch path)."""
    g = torch.Generator().manual_seed(10)
    h, w, f, mu = 32, 48, 8, 0.2
    wh, wv = torch.rand(h, w - 1, generator=g).add_(0.05), torch.rand(h - 1, w, generator=g).add_(0.05)
    y = torch.rand(1, h // f, w // f, generator=g)
    op = Measurement((h, w), f)
    x0 = op.project(bilinear_up_t(y, f), y)
    x, _ = solve_harmonic(x0, op, wh, wv, 3000, 1e-9, multigrid=False, soft=torch.tensor(mu)[None, None, None])
    spread = torch.nn.functional.interpolate  # B: each block's value on its pixels

    def B(v):
        return spread(v[:, None], scale_factor=f, mode="nearest")[:, 0]

    residual = _laplacian_reference(x, wh, wv) + mu * B(op.A(x)) - mu * B(y)
    assert residual.abs().max() < 1e-4 * float(mu * y.abs().max())
    assert (op.A(x) - y).abs().max() > 1e-3  # the minimiser is not exact

def test_jacobi_pcg_is_deterministic_and_stops_each_image_on_its_own():
    wh, wv = _conductances(4)
    x0, op, _ = _start(5)
    flat = torch.zeros_like(x0)  # already the minimiser: zero residual, no iteration
    both = torch.cat([x0, flat])
    first, its = solve_harmonic(both, op, wh, wv, 40, 1e-3, multigrid=False)
    again, _ = solve_harmonic(both, op, wh, wv, 40, 1e-3, multigrid=False)
    alone, its_alone = solve_harmonic(x0, op, wh, wv, 40, 1e-3, multigrid=False)
    assert torch.equal(first, again)
    assert torch.equal(first[:1], alone) and its == its_alone
    assert torch.equal(first[1], flat[0])


def test_aggregate_sums_p_by_p_blocks():
    x = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(2, 6, 8)
    expected = x.reshape(2, 3, 2, 4, 2).sum((2, 4))
    assert torch.equal(_aggregate(x, 2), expected)
    assert torch.equal(_aggregate(x, 1), x)
    assert float(_aggregate(x[:, :6, :6], 3).sum()) == float(x[:, :6, :6].sum())



def test_kernels_compile_without_a_writable_cache(monkeypatch):
    calls = []

    def njit(**options):
        calls.append(options)
        if options.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")  # what numba raises then
        return lambda function: function

    monkeypatch.setattr(kernels, "njit", njit)
    assert kernels._compiled(len) is len
    assert [c.get("cache", False) for c in calls] == [True, False] and all(c["parallel"] for c in calls)


def test_multigrid_correction_keeps_zero_block_means_without_a_fine_projection():
    wh, wv = _conductances(10)
    r = block_project(torch.randn(1, H, W, generator=torch.Generator().manual_seed(11)), F)
    multigrid = Multigrid(wh, wv, F)
    assert [lv.f for lv in multigrid.levels] == [16, 8, 4, 2]
    e = multigrid(r)
    means = e.reshape(1, H // F, F, W // F, F).mean((2, 4))
    assert means.abs().max() < 1e-6 * e.abs().max()
    assert float((e * r).sum()) > 0  # a positive definite preconditioner on the constrained space


_LAPLACIAN_BYTES = """
import hashlib, sys, torch
from msifusion.harmonic import kernels
g = torch.Generator().manual_seed(0)
x = torch.rand(2, 300, 400, generator=g)
wh, wv = torch.rand(300, 399, generator=g) + 0.01, torch.rand(299, 400, generator=g) + 0.01
out = torch.empty_like(x)
kernels.laplacian(x, wh, wv, out)
print(hashlib.sha256(out.numpy().tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_cache_loaded_kernels_give_the_freshly_compiled_numbers(tmp_path):
    """The first run (compiling) and a later one (loading numba's cache) agree bit for bit: LLVM's ``contract``
    flag made the Laplacian differ between the two (a 0.35 %-of-max difference in a whole fusion)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    runs = [subprocess.run([sys.executable, "-c", _LAPLACIAN_BYTES], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "the second run did not load from numba's cache"
    assert runs[0].stdout.strip() == runs[1].stdout.strip()


def test_the_dot_is_the_float64_sum_and_the_same_for_any_number_of_threads():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(H, W, generator=g), torch.randn(H, W, generator=g)
    threads = torch.get_num_threads()
    try:
        values = []
        for n in (1, 2):
            torch.set_num_threads(n)
            values.append(kernels.dot(a, b))
    finally:
        torch.set_num_threads(threads)
    assert values[0] == values[1]
    assert values[0] == pytest.approx(float((a.double() * b.double()).sum()), rel=1e-12)


def test_a_users_thread_count_survives_the_first_kernel_call():
    # numba's OpenMP layer, started by the first call, set OpenMP's count (which torch reads) to its own default
    import os
    import subprocess
    import sys

    code = ("import torch\nfrom msifusion.harmonic import kernels\nx = torch.rand(300, 300)\n"
            "kernels.laplacian(x, torch.rand(300, 299), torch.rand(299, 300), torch.empty(300, 300))\n"
            "print(torch.get_num_threads())")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
