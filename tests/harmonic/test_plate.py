"""The thin plate: the closed-form smoothest image with given block means."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch

from msifusion.harmonic.plate import plate_interpolate_t
from msifusion.measurement import block_mean


def _path_laplacian(n: int) -> sp.spmatrix:
    d = sp.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n))
    return d.T @ d


def _kkt_plate(y: np.ndarray, f: int, length: float) -> np.ndarray:
    """The same minimum by its dense optimality system: [2Q Aᵀ; A 0] [x; λ] = [0; y]."""
    h, w = y.shape
    H, W = h * f, w * f
    lap = sp.kron(_path_laplacian(H), sp.eye(W)) + sp.kron(sp.eye(H), _path_laplacian(W))
    q = lap + length**2 * (lap @ lap)
    box = sp.kron(sp.kron(sp.eye(h), np.full((1, f), 1 / f)), sp.kron(sp.eye(w), np.full((1, f), 1 / f)))
    kkt = sp.bmat([[2 * q, box.T], [box, None]]).tocsc()
    return spl.spsolve(kkt, np.concatenate([np.zeros(H * W), y.ravel()]))[:H * W].reshape(H, W)


@pytest.mark.parametrize("h, w, f, length", [(3, 4, 2, 1.0), (5, 3, 4, 0.5), (4, 6, 3, 3.0), (1, 5, 3, 1.0),
                                              (6, 6, 5, 10.0)])
def test_the_plate_is_the_constrained_minimum_of_its_energy(h, w, f, length):
    """Known answer: the cosine-domain solution equals the dense optimality system's, to float64 rounding, and its
    block means are the measurement."""
    y = np.random.default_rng(h * 10 + w).random((h, w))
    got = plate_interpolate_t(torch.tensor(y), f, length).numpy()
    np.testing.assert_allclose(got, _kkt_plate(y, f, length), atol=1e-10)
    np.testing.assert_allclose(block_mean(got, f).astype(np.float64), y, atol=1e-6)
    np.testing.assert_allclose(got.reshape(h, f, w, f).mean((1, 3)), y, atol=1e-13)


def test_the_plate_keeps_a_constant_and_is_batched_and_linear_in_its_dtype():
    """A constant measurement gives that constant; a stack is the stack of its images; the map is linear; float32 in,
    float32 out."""
    rng = np.random.default_rng(3)
    const = plate_interpolate_t(torch.full((1, 4, 5), 2.5), 4, 2.0)
    assert const.dtype == torch.float32 and const.shape == (1, 16, 20)
    np.testing.assert_allclose(const.numpy(), 2.5, rtol=1e-6)
    a, b = torch.tensor(rng.random((6, 7))), torch.tensor(rng.random((6, 7)))
    both = plate_interpolate_t(torch.stack([a, b]), 3, 1.5)
    np.testing.assert_allclose(both[1].numpy(), plate_interpolate_t(b, 3, 1.5).numpy(), atol=1e-13)
    np.testing.assert_allclose(plate_interpolate_t(2 * a - 3 * b, 3, 1.5).numpy(),
                               (2 * both[0] - 3 * both[1]).numpy(), atol=1e-12)


def test_a_longer_plate_bends_less():
    """The bending energy ‖L x‖² falls as ℓ grows (the membrane's ‖∇x‖² rises to pay for it)."""
    y = torch.tensor(np.random.default_rng(4).random((8, 8)))

    def energies(length: float) -> tuple[float, float]:
        x = plate_interpolate_t(y, 4, length)
        p = torch.nn.functional.pad(x[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]  # mirrored borders
        lap = 4 * x - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
        grad = (x.diff(dim=0) ** 2).sum() + (x.diff(dim=1) ** 2).sum()
        return float((lap**2).sum()), float(grad)

    short, long = energies(0.25), energies(4.0)
    assert long[0] < 0.9 * short[0] and long[1] > 1.05 * short[1]  # measured: 25.8 → 22.2, 38.8 → 41.1


def test_the_plate_is_the_same_whether_its_modes_are_kept_or_not(monkeypatch):
    """The coarse test's windows keep the y-independent part (cached by shape and ℓ); larger images compute it afresh:
    the same numbers either way, and a cached entry is not changed by its use."""
    import msifusion.harmonic.plate as plate

    y = torch.tensor(np.random.default_rng(5).random((2, 5, 7)))
    kept = plate.plate_interpolate_t(y, 4, 2.0)
    again = plate.plate_interpolate_t(y, 4, 2.0)
    monkeypatch.setattr(plate, "CACHED_PIXELS", 0)
    fresh = plate.plate_interpolate_t(y, 4, 2.0)
    assert torch.equal(kept, again) and torch.equal(kept, fresh)
