"""Fused CPU kernels (numba) for the guided harmonic solver's memory-bound loops.

The solver's work is graph-Laplacian products and projected Jacobi-preconditioned CG steps
on full-size images. Written as torch element-wise operations, one step is about ten
passes over memory (the Laplacian alone is five), and on a CPU the solver is bound by that
traffic, not by arithmetic. Fused here band by band (one row of MSI blocks, f pixel rows, at a time, so the
block-mean projection stays in cache), a CG step is three passes: measured at 980×2700 on
2 cores, 1.5 ms against 4.4 ms for a Laplacian and about 2.5× for a whole refinement pass
(docs/benchmarks.md §2). ``torch.compile`` of the same step was slower than eager torch.
Why hand-written: no library offers a block-constrained, batched CG step; the kernels
mirror :func:`msifusion.harmonic.solver.solve_harmonic`'s torch path (kept for GPUs and the
spot model), and the tests hold the two to the same answers.

Used only for contiguous float32 CPU tensors of at least :data:`MIN_PIXELS` pixels; results
are the same for any number of threads (that of torch): every sum across bands is added in band order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from numba import njit, prange, set_num_threads
from numba import config as numba_config

MIN_PIXELS = 65_536  # below this, a parallel numba call costs more than the torch operations it replaces
# vectorised sums, no NaN/inf assumptions. Not "contract" (fused multiply-adds): LLVM forms them differently in
# freshly compiled and in cache-loaded code, so the first run after install gave other numbers than later ones
# (0.35 % of the maximum on a 400×500 fusion; measured 2026-12-03); without it both agree bit for bit, at the
# same speed (300 Jacobi-CG steps at 980×2700: 1.0–1.2 s either way).
_FAST = {"reassoc", "nsz"}


def _compiled(function):
    """numba's parallel JIT, cached on disk where a cache directory is writable (beside the package or in
    the user's cache); where none is, numba refuses ``cache=True`` at import, so compile per process."""
    try:
        return njit(parallel=True, cache=True, fastmath=_FAST)(function)
    except RuntimeError:
        return njit(parallel=True, fastmath=_FAST)(function)


def usable(x: torch.Tensor) -> bool:
    """Whether the fused kernels apply to images ``x`` (..., H, W)."""
    H, W = x.shape[-2:]
    return x.device.type == "cpu" and x.dtype == torch.float32 and H >= 2 and W >= 2 and H * W >= MIN_PIXELS


@contextmanager
def _threads() -> Iterator[None]:
    """numba's threads for one call: torch's count (the user's own, e.g. from ``OMP_NUM_THREADS``). numba's OpenMP
    layer sets OpenMP's count to its own default at its first parallel call, which torch then reads as its own: without
    the restore, ``OMP_NUM_THREADS=1`` gave one thread up to the first kernel call and two after it."""
    n = torch.get_num_threads()
    set_num_threads(max(1, min(n, numba_config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


@njit(inline="always", fastmath=_FAST)
def _lap_row(x, wh, wv, out, i, H, W):  # pragma: no cover - compiled
    """Row i of L x (4-neighbour graph Laplacian, conductances wh (H, W−1), wv (H−1, W)) into out."""
    if i == 0 or i == H - 1:
        up, dn = i > 0, i < H - 1
        for j in range(W):
            a = wh[i, j - 1] if j > 0 else np.float32(0)
            b = wh[i, j] if j < W - 1 else np.float32(0)
            c = wv[i - 1, j] if up else np.float32(0)
            d = wv[i, j] if dn else np.float32(0)
            xl = x[i, j - 1] if j > 0 else np.float32(0)
            xr = x[i, j + 1] if j < W - 1 else np.float32(0)
            xu = x[i - 1, j] if up else np.float32(0)
            xd = x[i + 1, j] if dn else np.float32(0)
            out[i, j] = (a + b + c + d) * x[i, j] - (a * xl + b * xr + c * xu + d * xd)
        return
    # interior row, branch-free so that it vectorises
    b, c, d = wh[i, 0], wv[i - 1, 0], wv[i, 0]
    out[i, 0] = (b + c + d) * x[i, 0] - (b * x[i, 1] + c * x[i - 1, 0] + d * x[i + 1, 0])
    for j in range(1, W - 1):
        a, b, c, d = wh[i, j - 1], wh[i, j], wv[i - 1, j], wv[i, j]
        out[i, j] = (a + b + c + d) * x[i, j] - (a * x[i, j - 1] + b * x[i, j + 1] + c * x[i - 1, j] + d * x[i + 1, j])
    j = W - 1
    a, c, d = wh[i, j - 1], wv[i - 1, j], wv[i, j]
    out[i, j] = (a + c + d) * x[i, j] - (a * x[i, j - 1] + c * x[i - 1, j] + d * x[i + 1, j])


@njit(inline="always", fastmath=_FAST)
def _add_diagonal_row(x, wd1, wd2, out, i, H, W):  # pragma: no cover - compiled
    """Adds row i of the diagonal pairs' Laplacian: wd1 (H−1, W−1) joins (i, j) and (i+1, j+1), wd2 (H−1, W−1)
    joins (i, j+1) and (i+1, j)."""
    for j in range(W):
        acc = np.float32(0)
        if i < H - 1:
            if j < W - 1:
                acc += wd1[i, j] * (x[i, j] - x[i + 1, j + 1])
            if j > 0:
                acc += wd2[i, j - 1] * (x[i, j] - x[i + 1, j - 1])
        if i > 0:
            if j > 0:
                acc += wd1[i - 1, j - 1] * (x[i, j] - x[i - 1, j - 1])
            if j < W - 1:
                acc += wd2[i - 1, j] * (x[i, j] - x[i - 1, j + 1])
        out[i, j] += acc


@njit(inline="always", fastmath=_FAST)
def _band_means(v, band, f, column, means):  # pragma: no cover - compiled
    """means[j] = the mean of the f×f block that holds (band·f, j); column: scratch of length W."""
    W = v.shape[1]
    column[:] = 0
    for i in range(band * f, band * f + f):
        for j in range(W):
            column[j] += v[i, j]
    inv = np.float32(1.0 / (f * f))
    for k in range(W // f):
        acc = np.float32(0)
        for j in range(k * f, k * f + f):
            acc += column[j]
        for j in range(k * f, k * f + f):
            means[j] = acc * inv


@njit(inline="always", fastmath=_FAST)
def _shift_band_dot(v, u, band, f, source, scale):  # pragma: no cover - compiled
    """In the band: v += scale × the block means of ``source``; returns Σ u·v (float32 per row, float64 across rows).
    With ``source`` v and scale −1, the projection onto zero block means; with ``source`` u and scale μ, the soft
    measurement term's μ B A u."""
    column = np.empty(v.shape[1], dtype=np.float32)
    means = np.empty(v.shape[1], dtype=np.float32)
    _band_means(source, band, f, column, means)
    total = 0.0
    for i in range(band * f, band * f + f):
        acc = np.float32(0)
        for j in range(v.shape[1]):
            value = v[i, j] + scale * means[j]
            v[i, j] = value
            acc += u[i, j] * value
        total += acc
    return total


@njit(inline="always", fastmath=_FAST)
def _band_dot(v, u, band, f):  # pragma: no cover - compiled
    """Σ u·v over the band (float32 per row, float64 across rows), v unchanged."""
    total = 0.0
    for i in range(band * f, band * f + f):
        acc = np.float32(0)
        for j in range(v.shape[1]):
            acc += u[i, j] * v[i, j]
        total += acc
    return total


@njit(inline="always")
def _ordered_sum(totals):  # pragma: no cover - compiled
    """The bands' partial sums added in band order: a reduction inside ``prange`` adds per-thread sums, whose
    grouping depends on the thread count (one thread gave outputs 0.6 % of the peak away from two: the refinement's
    fixed budget of CG steps carries such rounding differences into the image)."""
    total = 0.0
    for value in totals:
        total += value
    return total


@_compiled
def _laplacian(x, wh, wv, out):  # pragma: no cover - compiled
    H, W = x.shape
    for i in prange(H):
        _lap_row(x, wh, wv, out, i, H, W)


@_compiled
def _project_laplacian(p, wh, wv, wd1, wd2, f, Ap, soft, mu):  # pragma: no cover - compiled
    """Ap = P L p (P: subtract block means), or with ``soft`` L p + μ B A p (no projection); returns p·Ap. Diagonal
    pairs where ``wd1`` is not empty."""
    H, W = p.shape
    diagonal = wd1.shape[0] > 0
    totals = np.empty(H // f, dtype=np.float64)
    for band in prange(H // f):
        for i in range(band * f, band * f + f):
            _lap_row(p, wh, wv, Ap, i, H, W)
            if diagonal:
                _add_diagonal_row(p, wd1, wd2, Ap, i, H, W)
        source, scale = (p, mu) if soft else (Ap, np.float32(-1))  # μ B A p, or the projection of L p
        totals[band] = _shift_band_dot(Ap, p, band, f, source, scale)
    return _ordered_sum(totals)


@_compiled
def _cg_update(x, r, p, Ap, dinv, alpha, f, s, soft):  # pragma: no cover - compiled
    """x += α p; r −= α Ap; s = P(dinv · r) (with ``soft``, s = dinv · r); returns r·s."""
    H, W = x.shape
    totals = np.empty(H // f, dtype=np.float64)
    for band in prange(H // f):
        for i in range(band * f, band * f + f):
            for j in range(W):
                x[i, j] += alpha * p[i, j]
                residual = r[i, j] - alpha * Ap[i, j]
                r[i, j] = residual
                s[i, j] = dinv[i, j] * residual
        totals[band] = _band_dot(s, r, band, f) if soft else _shift_band_dot(s, r, band, f, s, np.float32(-1))
    return _ordered_sum(totals)


@_compiled
def _dot_rows(a, b):  # pragma: no cover - compiled
    """Σ a·b for (H, W) float32 arrays: each row's sum in float64, the rows added in order (the same for any
    number of threads, which a BLAS dot is not: it split the sum by threads)."""
    H, W = a.shape
    totals = np.empty(H, dtype=np.float64)
    for i in prange(H):
        acc = 0.0
        for j in range(W):
            acc += np.float64(a[i, j]) * np.float64(b[i, j])
        totals[i] = acc
    return _ordered_sum(totals)


@_compiled
def _scale_add(p, beta, s):  # pragma: no cover - compiled
    """p = β p + s."""
    H, W = p.shape
    for i in prange(H):
        for j in range(W):
            p[i, j] = beta * p[i, j] + s[i, j]


def _per_image(w: torch.Tensor, k: int) -> np.ndarray:
    """Image k of a (K or 1, H, W) stack (a batch of one is shared by all images), as a contiguous array."""
    return w[k if w.shape[0] > 1 else 0].contiguous().numpy()


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Σ a·b over two (H, W) float32 CPU images, the same for any number of threads."""
    with _threads():
        return float(_dot_rows(a.contiguous().numpy(), b.contiguous().numpy()))


def laplacian(x: torch.Tensor, wh: torch.Tensor, wv: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """L x into ``out`` for x (..., H, W); ``wh``/``wv`` per image or shared (no or size-1 batch axis)."""
    H, W = x.shape[-2:]
    xs, outs = x.reshape(-1, H, W), out.view(-1, H, W)
    whs, wvs = wh.reshape(-1, H, W - 1), wv.reshape(-1, H - 1, W)
    with _threads():
        for k in range(xs.shape[0]):
            _laplacian(xs[k].contiguous().numpy(), _per_image(whs, k), _per_image(wvs, k), outs[k].numpy())
    return out


def jacobi_pcg(x0: torch.Tensor, wh: torch.Tensor, wv: torch.Tensor, deg: torch.Tensor, f: int, iterations: int,
               tolerance: float, diagonal: tuple[torch.Tensor, torch.Tensor] | None = None,
               soft: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Projected Jacobi-PCG for L x = 0 on {x : block means of x = those of x0}, image by image.

    The same iteration as :func:`msifusion.harmonic.solver.solve_harmonic` without multigrid (box model, no
    edge term): each image stops when its preconditioned residual fell by ``tolerance`` or after
    ``iterations``. ``diagonal``: the conductances of the diagonal pairs, (…, H−1, W−1) each (``deg`` counts
    them). ``soft``: per image μ ≥ 0, (K, 1, 1) or None: an image with μ > 0 instead minimises xᵀLx + μ‖B(A x − A x0)‖²
    over all images (no projection; ``deg`` must then hold μ/f² more on that image, its preconditioner's diagonal).
    Returns the solutions (shaped as ``x0``) and the most iterations any image used.
    """
    H, W = x0.shape[-2:]
    x = x0.reshape(-1, H, W).clone(memory_format=torch.contiguous_format)
    whs, wvs = wh.reshape(-1, H, W - 1), wv.reshape(-1, H - 1, W)
    none = torch.empty((1, 0, 0), dtype=torch.float32)
    wd1s, wd2s = ((d.reshape(-1, H - 1, W - 1) for d in diagonal) if diagonal is not None else (none, none))
    dinvs = (1.0 / deg.clamp_min(1e-30)).reshape(-1, H, W)
    mus = np.zeros(x.shape[0], np.float32) if soft is None else soft.reshape(-1).float().numpy()
    most = 0
    with _threads():
        for k in range(x.shape[0]):
            xk, whk, wvk, dinv = x[k].numpy(), _per_image(whs, k), _per_image(wvs, k), _per_image(dinvs, k)
            wd1, wd2 = _per_image(wd1s, k), _per_image(wd2s, k)
            mu = np.float32(mus[k if len(mus) > 1 else 0])
            is_soft = bool(mu > 0)
            Ap, s = np.empty_like(xk), np.empty_like(xk)
            _project_laplacian(xk, whk, wvk, wd1, wd2, f, Ap, is_soft, np.float32(0))  # x0 meets its own means
            r = -Ap
            rs = _cg_update(np.zeros_like(xk), r, Ap, Ap, dinv, np.float32(0), f, s, is_soft)  # α = 0: only s, r·s
            p = s.copy()
            r0 = max(math.sqrt(abs(rs)), 1e-30)
            used = 0
            for used in range(1, iterations + 1):
                if math.sqrt(abs(rs)) <= tolerance * r0:
                    used -= 1
                    break
                alpha = rs / max(_project_laplacian(p, whk, wvk, wd1, wd2, f, Ap, is_soft, mu), 1e-30)
                rs_new = _cg_update(xk, r, p, Ap, dinv, np.float32(alpha), f, s, is_soft)
                _scale_add(p, np.float32(rs_new / rs if rs != 0 else rs_new), s)
                rs = rs_new
            most = max(most, used)
    return x.reshape(x0.shape), most
