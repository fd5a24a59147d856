"""Many ions on one guide: a panel that a few basis images explain up to white noise (:func:`shared_basis`,
judged by :func:`residual_whiteness`) is fused through them; the basis on the device is :class:`_Basis`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from msifusion.harmonic.config import HarmonicConfig


# ----------------------------------------------------------------------------- many ions: a shared basis

SHARED_MIN_PIXELS = 1024  # below this many MSI pixels, white noise and structure are hard to tell apart


@dataclass(frozen=True)
class SharedBasis:
    """A panel of ions ≈ ``coefficients @ basis``; ``alone``: the ions the basis does not explain."""

    basis: np.ndarray  # (r, h, w) float32, each scaled to max |·| = 1
    coefficients: np.ndarray  # (K, r)
    whiteness: np.ndarray  # (K,) neighbour autocorrelation of what the basis leaves of each ion
    alone: np.ndarray  # indices of the ions fused on their own


def residual_whiteness(residuals: np.ndarray) -> np.ndarray:
    """Per image of (K, h, w): the correlation of horizontally and vertically neighbouring values.

    Not mean-removed, so a leftover offset counts as structure: ≈ 0 for white noise, near 1
    for smooth structure, 0 for an all-zero image.
    """
    e = np.asarray(residuals, dtype=np.float64)
    pairs = [(e[:, :, 1:], e[:, :, :-1]), (e[:, 1:], e[:, :-1])]
    num = sum((a * b).sum((1, 2)) for a, b in pairs)
    den = sum(0.5 * ((a * a).sum((1, 2)) + (b * b).sum((1, 2))) for a, b in pairs)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def shared_basis(ions: np.ndarray, config: HarmonicConfig) -> SharedBasis | None:
    """Split a panel (K, h, w) into a low-rank basis fused once and the ions fused alone; None when sharing saves nothing.

    The basis: the leading right singular vectors of the ion images (one row per ion, not
    centred), refitted on the ions it explains so that the others do not bend it. At rank r
    an ion is explained when what the basis leaves of it is white noise
    (:func:`residual_whiteness` ≤ ``config.panel.whiteness``) or vanishes; r minimises the solves,
    r + the unexplained ions (ties: the smaller r), and sharing is used only where it at
    least halves the solves: Σ_j c_kj·fuse(b_j), made exactly consistent with ion k, is an
    approximation of fusing ion k alone (the module docstring says where it differs).
    """
    return None if _cannot_share(ions, config) else _decompose(ions, config)


def _decompose(ions: np.ndarray, config: HarmonicConfig) -> SharedBasis | None:
    """:func:`shared_basis` of a panel that :func:`_cannot_share` allows."""
    K, h, w = ions.shape
    Y = ions.reshape(K, -1).astype(np.float64)
    gram = Y @ Y.T  # the singular vectors of any subset of rows, from a K×K eigenproblem
    leftover = _Leftover(Y, (h, w))
    best = None
    for r in range(1, min(config.panel.max_rank, K - 1) + 1):
        if best is not None and r >= best[0]:
            break  # the solves are at least r
        fit = np.ones(K, dtype=bool)
        for _ in range(4):
            lam, u = np.linalg.eigh(gram[np.ix_(fit, fit)])
            top = np.argsort(lam)[::-1][:r]
            rows = (u[:, top].T @ Y[fit]) / np.sqrt(np.maximum(lam[top], 1e-300))[:, None]
            rho, nothing_left = leftover.of(rows)
            explained = (rho <= config.panel.whiteness) | nothing_left
            if (explained == fit).all() or explained.sum() <= r:
                break
            fit = explained
        cost = r + int((~explained).sum())
        if best is None or cost < best[0]:
            best = (cost, rows, rho, explained)
    cost, rows, rho, explained = best
    if 2 * cost > K:
        return None  # sharing approximates; worth it only where it halves the solves at least
    r = len(rows)
    sign = np.where(rows.sum(1) < 0, -1.0, 1.0)  # mostly positive basis images
    peak = np.abs(rows).max(1)
    peak = np.where(peak > 0, peak, 1.0)  # a basis row left empty by zero ions stays zero
    basis = (rows * (sign / peak)[:, None]).reshape(r, h, w)
    coefficients = (Y @ rows.T) * sign * peak
    return SharedBasis(basis.astype(np.float32), coefficients, rho, np.flatnonzero(~explained))


def _neighbour_sum(images: np.ndarray) -> np.ndarray:
    """Each pixel of (n, h, w) images replaced by the sum of its four neighbours (none beyond the edge)."""
    out = np.zeros_like(images)
    out[:, :, 1:] += images[:, :, :-1]
    out[:, :, :-1] += images[:, :, 1:]
    out[:, 1:] += images[:, :-1]
    out[:, :-1] += images[:, 1:]
    return out


class _Leftover:
    """What a basis leaves of each ion, E = Y − (Y Rᵀ) R: its :func:`residual_whiteness` and whether anything is left,
    from products with the basis rows R (r, N) alone, without forming E (K, N): a panel tries dozens of bases, and
    forming E each time took 41 s on 416 prostate ions.

    With C = Y Rᵀ and T the neighbour sum (symmetric): ‖E_k‖² = ‖y_k‖² − 2‖C_k‖² + C_k (R Rᵀ) C_kᵀ; the whiteness's
    numerator, the neighbouring products, is ½ E_k·T E_k, expanded alike; its denominator is 2‖E_k‖² less half the
    squares on the image's edge rows and columns (a corner twice), which are formed. Where the basis nearly holds an
    ion (‖E_k‖² under 1e-8 of ‖y_k‖²) the expansion cancels to rounding, whose share grows with N: those few
    leftovers are formed, as before."""

    def __init__(self, Y: np.ndarray, shape: tuple[int, int]):
        h, w = shape
        if h < 2 or w < 2:  # _cannot_share refuses such panels first
            raise ValueError(f"a leftover of {h}×{w} pixels: its edge rows or columns would coincide")
        K = len(Y)
        self.Y, self.shape, self.energy = Y, shape, np.einsum("kn,kn->k", Y, Y)
        self.yty = np.einsum("kn,kn->k", Y, _neighbour_sum(Y.reshape(K, h, w)).reshape(K, -1))
        lines = np.zeros((h, w))
        lines[[0, -1], :] += 1
        lines[:, [0, -1]] += 1
        self.edge = np.flatnonzero(lines)
        self.edge_weight = lines.ravel()[self.edge]

    def of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What the basis ``rows`` (r, N) leaves of each ion: its whiteness (K,), and whether nothing is left (K,):
        under 1e-12 of the ion's energy, which rounding alone leaves."""
        h, w = self.shape
        C = self.Y @ rows.T
        t_rows = _neighbour_sum(rows.reshape(len(rows), h, w)).reshape(len(rows), -1)
        left = self.energy - 2 * (C * C).sum(1) + np.einsum("kr,rs,ks->k", C, rows @ rows.T, C)
        num = 0.5 * (self.yty - 2 * (C * (self.Y @ t_rows.T)).sum(1) + np.einsum("kr,rs,ks->k", C, rows @ t_rows.T, C))
        on_edge = self.Y[:, self.edge] - C @ rows[:, self.edge]
        den = 2 * left - 0.5 * (on_edge**2 * self.edge_weight).sum(1)
        white = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        close = np.flatnonzero(left <= 1e-8 * self.energy)
        if len(close):
            formed = self.Y[close] - C[close] @ rows
            left[close] = (formed * formed).sum(1)
            white[close] = residual_whiteness(formed.reshape(len(close), h, w))
        return white, left <= 1e-12 * self.energy


def _cannot_share(ions: np.ndarray, config: HarmonicConfig) -> str | None:
    """Why a panel (K, h, w) cannot share a basis at all, before any decomposition; None if it might."""
    K, h, w = ions.shape
    if K < config.panel.min_ions:
        return f"a panel of fewer than {config.panel.min_ions} ions shares no basis"
    if h < 2 or w < 2 or h * w < SHARED_MIN_PIXELS:
        return f"fewer than {SHARED_MIN_PIXELS} MSI pixels: too few to tell the basis's leftover noise from structure"
    if not np.any(ions):
        return "an all-zero panel: nothing to share"
    return None


@dataclass
class _Basis:
    """A shared basis on the device: images (r, h, w), the explained ions' coefficients (K, r), the images' τ."""

    images: torch.Tensor
    coefficients: torch.Tensor
    taus: torch.Tensor

    def mix(self, fused: torch.Tensor, ions: slice | list[int]) -> torch.Tensor:
        """The ions' mixtures (k, H, W) of the fused basis images (r, H, W)."""
        return torch.einsum("kr,rhw->khw", self.coefficients[ions], fused)
