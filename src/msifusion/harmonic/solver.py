"""The exact solver behind guided harmonic fusion: minimise a graph Dirichlet energy over the images whose MSI
pixels have the measured means.

:func:`solve_harmonic` minimises ``xᵀ L x`` (L: the 4-neighbour graph Laplacian of conductances ``wh``, ``wv``;
optionally plus the edge perceptual term, :class:`EdgeTerm`) over ``{x : A x = A x0}`` by projected conjugate
gradients: the projection onto images with zero block means is "subtract each f×f block's mean"
(:func:`msifusion.measurement.block_project`), and the preconditioner is an aggregation multigrid V-cycle whose
levels nest in the MSI blocks (:class:`Multigrid`), or projected Jacobi. Batched over leading axes (one image per
ion), each image stopping on its own. On CPU the Laplacian and the Jacobi-preconditioned solve run as fused kernels
(:mod:`msifusion.harmonic.kernels`). The method around it (conductances, settings, texture, panels) is
:mod:`msifusion.harmonic`.
"""

from __future__ import annotations

import torch

from msifusion.harmonic import kernels
from msifusion.measurement import Measurement, block_project

def _laplacian(x: torch.Tensor, wh: torch.Tensor, wv: torch.Tensor, deg: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Graph Laplacian L x = deg·x − Σ w·x_neighbour (4-neighbour, conductances wh, wv) into ``out``.

    Fused on CPU (:mod:`msifusion.harmonic.kernels`, which forms ``deg`` on the fly), torch operations elsewhere.
    """
    if kernels.usable(x) and out.is_contiguous():
        return kernels.laplacian(x, wh, wv, out)
    torch.mul(deg, x, out=out)
    out[..., :, :-1].addcmul_(wh, x[..., :, 1:], value=-1.0)
    out[..., :, 1:].addcmul_(wh, x[..., :, :-1], value=-1.0)
    out[..., :-1, :].addcmul_(wv, x[..., 1:, :], value=-1.0)
    out[..., 1:, :].addcmul_(wv, x[..., :-1, :], value=-1.0)
    return out


def _degree(wh: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
    shape = torch.broadcast_shapes(wh.shape[:-2], wv.shape[:-2]) + (wv.shape[-2] + 1, wh.shape[-1] + 1)
    d = torch.zeros(shape, dtype=wh.dtype, device=wh.device)
    d[..., :, :-1] += wh
    d[..., :, 1:] += wh
    d[..., :-1, :] += wv
    d[..., 1:, :] += wv
    return d


def _with_diagonal(deg: torch.Tensor, diagonal: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The 4-neighbour degree ``deg`` plus the diagonal pairs' conductances (a new tensor, batched as either)."""
    d1, d2 = diagonal
    full = deg.expand(torch.broadcast_shapes(deg.shape, d1.shape[:-2] + deg.shape[-2:])).clone()
    full[..., :-1, :-1] += d1
    full[..., 1:, 1:] += d1
    full[..., :-1, 1:] += d2
    full[..., 1:, :-1] += d2
    return full


def _add_diagonal(x: torch.Tensor, diagonal: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Adds the diagonal pairs' Laplacian to ``out``: d1 joins (i, j) and (i+1, j+1), d2 (i, j+1) and (i+1, j)."""
    d1, d2 = diagonal
    step = d1 * (x[..., :-1, :-1] - x[..., 1:, 1:])
    out[..., :-1, :-1] += step
    out[..., 1:, 1:] -= step
    step = d2 * (x[..., :-1, 1:] - x[..., 1:, :-1])
    out[..., :-1, 1:] += step
    out[..., 1:, :-1] -= step
    return out


class EdgeTerm:
    """w·‖K x − K lum(g)‖² with K the Laplacian of :mod:`msifusion.losses` (replicate border)."""

    def __init__(self, guide: torch.Tensor, weight: float):
        from msifusion.losses import edge_map, luminance_t

        self.weight = weight
        self._edge_map = edge_map
        with torch.no_grad():
            self.target = edge_map(luminance_t(guide.permute(2, 0, 1)[None]))[0, 0]

    def _k(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return self._edge_map(x.reshape(-1, 1, *shape[-2:])).reshape(shape)

    def _kt(self, u: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            v = torch.zeros_like(u, requires_grad=True)
            (g,) = torch.autograd.grad(self._k(v), v, grad_outputs=u)
        return g

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * self._kt(self._k(x))

    def rhs(self, like: torch.Tensor) -> torch.Tensor:
        return self.weight * self._kt(self.target.expand_as(like).contiguous())


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image inner products over the last two axes, shape (..., 1, 1).

    On CPU one dot per image, the same for any number of threads (a CG step's rounding decides the
    iterate the solve stops at, and a BLAS dot, which splits the sum by threads, made one thread's output
    differ from two threads' by 0.6 % of the peak): the fused kernel (no full-size temporary) where it
    applies, else float64 row sums and then their sum (small images; a row is summed by one thread). (A
    batched ``bmm`` of (1, n)·(n, 1) ran about 8× slower per image on CPU once the batch had two images or
    more, measured at 980×2700 on 2 cores.) On a GPU one ``bmm`` launch for the batch.
    """
    lead = a.shape[:-2]
    H, W = a.shape[-2:]
    n = H * W
    if a.device.type != "cpu":
        return torch.bmm(a.reshape(-1, 1, n), b.reshape(-1, n, 1)).reshape(*lead, 1, 1)
    a, b = a.reshape(-1, H, W), b.reshape(-1, H, W)
    if not len(a):
        return a.new_zeros(*lead, 1, 1)
    if kernels.usable(a):
        values = [kernels.dot(u, v) for u, v in zip(a, b)]
    else:  # small images: row sums, then their sum (torch splits a whole-tensor sum by threads, not a row's)
        values = [float((u.double() * v.double()).sum(-1).sum()) for u, v in zip(a, b)]
    return torch.tensor(values, dtype=a.dtype).reshape(*lead, 1, 1)


def _aggregate(x: torch.Tensor, p: int) -> torch.Tensor:
    """Sums over p×p aggregates of the last two axes (strided slices: a reshaped ``sum`` over two small axes
    measured 20× slower on CPU at p = 2)."""
    rows = sum(x[..., i::p, :] for i in range(p))
    return sum(rows[..., j::p] for j in range(p))


def _smallest_factor(n: int) -> int:
    return next(p for p in range(2, n + 1) if n % p == 0)


class _Level:
    """One grid of the multigrid hierarchy: conductances, degree, block size."""

    def __init__(self, wh: torch.Tensor, wv: torch.Tensor, f: int, omega: float, p: int = 1):
        self.wh, self.wv, self.f, self.p = wh, wv, f, p  # p: aggregation factor from the level above
        self.deg = _degree(wh, wv)
        self.step = omega / self.deg.clamp_min(1e-30)  # damped Jacobi

    def laplacian(self, x: torch.Tensor) -> torch.Tensor:
        """L x for x of shape (K, H, W)."""
        return _laplacian(x, self.wh, self.wv, self.deg, torch.empty_like(x))

    def smooth(self, r: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        """One damped, projected Jacobi step for L e = r (from e = 0 when ``e`` is None)."""
        if e is None:
            return block_project(self.step * r, self.f)
        step = self.laplacian(e).neg_().add_(r).mul_(self.step)
        return e.add_(block_project(step, self.f))


SMOOTHING_STEPS = 1  # per level, before and after the coarse correction
JACOBI_DAMPING = 0.7  # between 2/3 and 4/5, the dampings at which Jacobi best smooths a 1-D and a 2-D Laplacian's
# high frequencies (Briggs, A Multigrid Tutorial)


class Multigrid:
    """Aggregation multigrid V-cycle for the block-constrained graph Laplacian: the PCG preconditioner.

    Level l+1 merges p×p pixels of level l, p = the smallest prime factor of the level's block
    size, so its blocks nest in level l's: piecewise-constant prolongation maps images with
    zero block means to images with zero block means, and the Galerkin coarse operator PᵀLP is
    again a 4-neighbour graph Laplacian whose conductances are the sums of the fine ones that
    cross each aggregate's side. Coarsening stops where the next block size would be 1 (the
    constraint then fixes everything). Damped Jacobi smoothing, :data:`SMOOTHING_STEPS` before and after,
    keeps the cycle symmetric, as conjugate gradients need. Measured on a 320×800 phantom at
    ×20: 26 iterations instead of 132 for the same residual, about 5× less time.
    (Written here rather than taken from pyamg: the block constraint and the batched,
    per-ion conductances are not what a general AMG package handles.)
    """

    def __init__(self, wh: torch.Tensor, wv: torch.Tensor, f: int):
        self.levels = [_Level(wh, wv, f, JACOBI_DAMPING)]
        while True:
            lv = self.levels[-1]
            p = _smallest_factor(lv.f)
            H, W = lv.deg.shape[-2:]
            if p == lv.f or H * W < 16 * p * p:  # the next level would have under 16 pixels
                break
            whc = lv.wh[..., :, p - 1::p]  # fine edges that cross a vertical aggregate side
            whc = whc.reshape(*whc.shape[:-2], H // p, p, whc.shape[-1]).sum(-2)
            wvc = lv.wv[..., p - 1::p, :]
            wvc = wvc.reshape(*wvc.shape[:-1], W // p, p).sum(-1)
            self.levels.append(_Level(whc, wvc, lv.f // p, JACOBI_DAMPING, p))

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        return self._cycle(0, r)

    def _cycle(self, l: int, r: torch.Tensor) -> torch.Tensor:
        lv = self.levels[l]
        e = lv.smooth(r, None)
        for _ in range(SMOOTHING_STEPS - 1):
            e = lv.smooth(r, e)
        if l + 1 < len(self.levels):
            coarse = self.levels[l + 1]
            p = coarse.p
            rc = block_project(_aggregate(lv.laplacian(e).neg_().add_(r), p), coarse.f)
            ec = self._cycle(l + 1, rc)
            # piecewise-constant prolongation; ec has zero block means on the coarse level, whose blocks are
            # this level's, so e keeps zero block means without a projection here
            for i in range(p):
                for j in range(p):
                    e[..., i::p, j::p].add_(ec)
        for _ in range(SMOOTHING_STEPS):
            e = lv.smooth(r, e)
        return e


def solve_harmonic(x0: torch.Tensor, op: Measurement, wh: torch.Tensor, wv: torch.Tensor, iterations: int,
                   tolerance: float, edge: EdgeTerm | None = None, multigrid: bool = True,
                   diagonal: tuple[torch.Tensor, torch.Tensor] | None = None,
                   soft: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Minimise x^T L x (+ edge term) over {x : A x = A x0} by projected PCG; batched over leading axes.

    Preconditioner: the :class:`Multigrid` V-cycle without the edge term (under a laser spot, between
    projections onto the spot's null space), projected Jacobi otherwise (``multigrid=False``: the
    refinement pass, whose conductances nearly cut the grid; on the CPU, for the box model without the edge term, that path runs as the fused
    kernels of :func:`msifusion.harmonic.kernels.jacobi_pcg`). ``x0`` must already satisfy the constraint (e.g.
    :meth:`Measurement.project` of any start); the iterate stays on it. Stops when every
    image's preconditioned residual fell by ``tolerance`` or after ``iterations``. ``x0`` is
    left unchanged. ``diagonal``: conductances of the diagonal neighbour pairs too, (…, H−1, W−1) each, the first
    joining (i, j) and (i+1, j+1), the second (i, j+1) and (i+1, j) (Jacobi only: the refinement pass).
    ``soft``: per image μ ≥ 0, (K, 1, 1) (Jacobi, no edge term): an image with μ > 0 minimises
    ``xᵀLx + μ‖B(A x − A x0)‖²`` over all images instead (A: the box average, also under a laser spot; B: each
    block's value on its f×f pixels, so μ weighs a fine pixel), from ``x0``; its result is not exact, and the
    caller projects it.
    """
    if diagonal is not None and multigrid:
        raise ValueError("diagonal neighbours are solved with the Jacobi preconditioner only (multigrid=False)")
    if soft is not None and (multigrid or edge is not None):
        raise ValueError("the soft measurement term is solved with the Jacobi preconditioner, without the edge term")
    f = op.f
    if op.spot > 0:
        def project(v: torch.Tensor) -> torch.Tensor:
            v.copy_(op.null_project(v))
            return v
    else:
        def project(v: torch.Tensor) -> torch.Tensor:
            return block_project(v, f)
    hard = None if soft is None else soft <= 0  # (K, 1, 1): the images kept on their measurement
    if hard is None:
        P = project
    else:
        def P(v: torch.Tensor) -> torch.Tensor:
            return v.copy_(torch.where(hard, project(v.clone()), v))

    deg = _degree(wh, wv)  # the 4-neighbour part's, which _laplacian forms; the diagonal pairs are added after it
    full = deg if diagonal is None else _with_diagonal(deg, diagonal)  # the Jacobi preconditioner's
    if soft is not None:
        full = full + soft / (f * f)  # μ B A's diagonal: each pixel weighs 1/f² in its block's mean
    x0 = x0.contiguous()
    if not multigrid and op.spot == 0 and edge is None and kernels.usable(x0):
        return kernels.jacobi_pcg(x0, wh, wv, full, f, iterations, tolerance, diagonal, soft)
    if multigrid and op.spot == 0 and edge is None:
        precondition = Multigrid(wh, wv, f)
    elif multigrid and edge is None:
        # the box model's V-cycle, between projections onto the spot's null space (P M P: symmetric, and positive
        # definite there, since no block-constant image but 0 has zero spot measurements for σ ≤ f/2)
        cycle = Multigrid(wh, wv, f)

        def precondition(v: torch.Tensor) -> torch.Tensor:
            return P(cycle(block_project(v.clone(), f)))
    else:
        dinv = 1.0 / (full + (20.0 * edge.weight if edge else 0.0))  # diag of L (+ KᵀK: 16 + 4)

        def precondition(v: torch.Tensor) -> torch.Tensor:
            return P(dinv * v)
    deg = deg.expand_as(x0) if deg.dim() < x0.dim() else deg

    def apply(v: torch.Tensor, out: torch.Tensor, measured: bool = True) -> torch.Tensor:
        _laplacian(v, wh, wv, deg, out)
        if diagonal is not None:
            _add_diagonal(v, diagonal, out)
        if soft is not None and measured:
            out.add_(soft * (v - block_project(v.clone(), f)))  # μ B A v: each pixel's block mean
        return out.add_(edge.normal(v)) if edge else out

    x = x0.clone()
    r = torch.empty_like(x0)
    apply(x0, r, measured=False)  # x0 meets its own block means: the soft term's residual there is 0
    r.neg_()
    if edge:
        r.add_(edge.rhs(x0))
    P(r)
    s = precondition(r)
    p = s.clone()
    Ap = torch.empty_like(x0)
    rs = _dot(r, s)
    r0 = rs.abs().sqrt().clamp_min(1e-30)
    active = rs.abs().sqrt() > tolerance * r0  # each image stops on its own: a batch gives what each gives alone
    k = 0
    for k in range(1, iterations + 1):
        if not bool(active.any()):
            k -= 1
            break
        P(apply(p, Ap))
        alpha = torch.where(active, rs / _dot(p, Ap).clamp_min(1e-30), torch.zeros_like(rs))
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, Ap, value=-1.0)
        s = precondition(r)
        rs_new = _dot(r, s)
        active = active & (rs_new.abs().sqrt() > tolerance * r0)
        beta = rs_new / rs.where(rs.abs() > 0, torch.ones_like(rs))
        p.mul_(beta).add_(s)
        rs = rs_new
    return x, k
