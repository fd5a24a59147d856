"""One ladder setting's exact solve: the conductances from the guide's colour differences (κ per quantile,
:func:`edge_scales`), what every ion fused with one guide shares (:class:`_Guide`), and for a window of the guide
and its measurements (:class:`_Problem`) the harmonic solution with its refinement passes (:func:`_solve_setting`;
the refinement is an early-stopped solve, see the package docstring), the non-negativity and texture steps
(:func:`_finish`), and the thin plate's image (:func:`_plate_image`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from msifusion.harmonic.config import HarmonicConfig
from msifusion.harmonic.plate import plate_interpolate_t
from msifusion.harmonic.texture import (IMMERKAER_SCALE, _detail_eps, _noise_responses, _texture_testable,
                                        one_colour_area, optical_detail, texture_snr_db)
from msifusion.io.images import torch_ready
from msifusion.measurement import Measurement, MeasurementModel, bilinear_up_t
from msifusion.harmonic.solver import EdgeTerm, solve_harmonic

REFINE_ITERATIONS = 300  # Jacobi-CG steps of the refinement pass (an early-stopped solve; see above)


# ----------------------------------------------------------------------------- conductances


def colour_differences(guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean colour differences of an (H, W, C) guide between horizontal (H, W−1) and vertical (H−1, W)
    neighbours (the diffusion method's conductances use them too)."""
    dh = (guide[:, 1:] - guide[:, :-1]).pow(2).sum(-1).sqrt()
    dv = (guide[1:] - guide[:-1]).pow(2).sum(-1).sqrt()
    return dh, dv


def diagonal_differences(guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean colour differences of an (H, W, C) guide between diagonal neighbours, (H−1, W−1) each: (i, j) and
    (i+1, j+1), then (i, j+1) and (i+1, j)."""
    d1 = (guide[1:, 1:] - guide[:-1, :-1]).pow(2).sum(-1).sqrt()
    d2 = (guide[1:, :-1] - guide[:-1, 1:]).pow(2).sum(-1).sqrt()
    return d1, d2


def edge_scales(guide: np.ndarray, quantiles: tuple[float, ...], max_samples: int = 2_000_000,
                one_colour: np.ndarray | None = None) -> dict[float, float]:
    """κ for each quantile: that percentile of an (H, W, C) or grey (H, W) guide's neighbour colour differences
    (≥ 1e-3), leaving out the pairs inside an area of one colour (``one_colour``: :func:`one_colour_area`, computed
    when None; all pairs where that leaves none).

    Guides with more than ``max_samples`` neighbour pairs are sampled: ``max_samples``/2 horizontal and as many vertical
    pairs, each drawn from all pairs of its kind (fixed positions, deterministic).
    """
    g = np.asarray(guide)
    g = g[..., None] if g.ndim == 2 else g
    H, W = g.shape[:2]
    flat = one_colour_area(g) if one_colour is None else one_colour
    if (H - 1) * W + H * (W - 1) <= max_samples:
        dh, dv = (d.numpy() for d in colour_differences(torch.as_tensor(g, dtype=torch.float32)))
        keep_h, keep_v = ~(flat[:, 1:] & flat[:, :-1]), ~(flat[1:] & flat[:-1])
    else:
        rng = np.random.default_rng(0)
        n = max_samples // 2
        rh, ch = rng.integers(0, H, n), rng.integers(0, W - 1, n)  # horizontal pairs: every row, all but the last col
        rv, cv = rng.integers(0, H - 1, n), rng.integers(0, W, n)  # vertical pairs: all but the last row, every col
        dh = np.sqrt(((g[rh, ch + 1] - g[rh, ch].astype(np.float32)) ** 2).sum(-1))
        dv = np.sqrt(((g[rv + 1, cv] - g[rv, cv].astype(np.float32)) ** 2).sum(-1))
        keep_h, keep_v = ~(flat[rh, ch] & flat[rh, ch + 1]), ~(flat[rv, cv] & flat[rv + 1, cv])
    d, keep = np.concatenate([dh.ravel(), dv.ravel()]), np.concatenate([keep_h.ravel(), keep_v.ravel()])
    d = d[keep] if keep.any() else d
    return {q: max(float(np.percentile(d, q)), 1e-3) for q in quantiles}


def _pm(d: torch.Tensor, kappa: float | torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + (d / kappa) ** 2)


# ----------------------------------------------------------------------------- the guide


@dataclass(frozen=True)
class _Guide:
    """What every ion fused with one guide shares: the guide (H, W, 3), the scale f, the settings, the
    measurement model, the edge scales κ per ladder quantile, the optical-density floor of :func:`optical_detail`
    and how far that texture stands above the guide's noise (:func:`texture_snr_db`; None where β cannot be
    tried, :func:`_texture_testable`), and the device."""

    image: np.ndarray
    f: int
    config: HarmonicConfig
    measurement: MeasurementModel
    kappas: dict[float, float]
    pictured: torch.Tensor  # (h, w) bool: the MSI pixels not wholly inside an area of one colour
    detail_eps: float
    texture_snr_db: float | None
    device: torch.device

    @classmethod
    def of(cls, guide: np.ndarray, f: int, config: HarmonicConfig, measurement: MeasurementModel,
           device: torch.device) -> "_Guide":
        guide = torch_ready(np.asarray(guide, dtype=np.float32))  # as methods' _checked_guide, for direct callers
        flat = one_colour_area(guide)
        kappas = edge_scales(guide, tuple(sorted({q for q, _ in config.ladder.rungs})), one_colour=flat)
        H, W = flat.shape
        pictured = ~flat[:H - H % f, :W - W % f].reshape(H // f, f, W // f, f).all(axis=(1, 3))
        eps = _detail_eps(guide)
        testable = _texture_testable(f, config)
        snr = texture_snr_db(guide, config.texture.sigma_px, eps, one_colour=flat) if testable else None
        return cls(guide, f, config, measurement, kappas, torch.as_tensor(pictured, device=device), eps, snr, device)

    def detail(self, window: torch.Tensor) -> torch.Tensor:
        """:func:`optical_detail` of a window (h, w, 3) of this guide, on the device."""
        return optical_detail(window, self.config.texture.sigma_px, self.detail_eps)


# ----------------------------------------------------------------------------- one setting


@dataclass
class _Problem:
    """A guide window and its measurement(s) on one device, with the refinement scales τ and what the whole guide
    shares (``shared``: its κ, the settings and the measurement model)."""

    guide: torch.Tensor  # (H, W, 3)
    y: torch.Tensor  # (K, h, w)
    f: int
    taus: torch.Tensor  # (K, 1, 1)
    shared: _Guide
    diffs: tuple[torch.Tensor, torch.Tensor] = field(init=False)
    diagonal_diffs: tuple[torch.Tensor, torch.Tensor] | None = field(init=False, default=None)
    op: Measurement = field(init=False)
    edge: EdgeTerm | None = field(init=False, default=None)

    @property
    def config(self) -> HarmonicConfig:
        return self.shared.config

    @property
    def kappas(self) -> dict[float, float]:
        return self.shared.kappas

    def __post_init__(self) -> None:
        self.diffs = colour_differences(self.guide)
        if self.config.solver.diagonal_weight > 0:  # the refinement pass's diagonal pairs
            self.diagonal_diffs = diagonal_differences(self.guide)
        self.op = self.shared.measurement.operator(tuple(self.guide.shape[:2]), self.f, self.guide.device)
        if self.config.edge_weight > 0:
            self.edge = EdgeTerm(self.guide, self.config.edge_weight)


def _solve_setting(pb: _Problem, q: float, passes: int, start: torch.Tensor | None = None,
                   tolerance: float | None = None,
                   soft: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact guided harmonic solution for one ladder setting, (K, H, W), and the solution before
    refinement (a warm start for the next setting).

    ``start``: a consistent first guess (default: the projected bilinear upsampling).
    ``tolerance``: the solver's relative tolerance (default: the config's).
    ``soft``: per image μ (K, 1, 1), or None: each refinement pass of an image with μ > 0 fits its measurement ``y``
    softly (:func:`_soft_weights`; a pass after another starts from its exact projection); the returned image is
    exact all the same.
    """
    cfg = pb.config
    tolerance = tolerance or cfg.solver.tolerance
    kappa = pb.kappas[q]
    wh = _pm(pb.diffs[0], kappa).add_(cfg.solver.weight_floor)
    wv = _pm(pb.diffs[1], kappa).add_(cfg.solver.weight_floor)
    x = start if start is not None else pb.op.project(bilinear_up_t(pb.y, pb.f), pb.y)
    x, _ = solve_harmonic(x, pb.op, wh, wv, cfg.solver.iterations, tolerance, pb.edge)
    first = x
    c = cfg.solver.diagonal_weight
    wd = ([_pm(d, kappa).add_(cfg.solver.weight_floor).mul_(c) for d in pb.diagonal_diffs]
          if passes and pb.diagonal_diffs is not None else None)
    for done in range(passes):
        if done and soft is not None:  # a soft pass moved the block means: the next one starts from, and aims at, y
            x = pb.op.project(x, pb.y)
        # product of the optical's and the first solution's conductances, no second floor: edges that
        # both show are cut hard (measured: adding the floor after the product loses 0.15 dB on phantoms)
        sh = _pm((x[..., :, 1:] - x[..., :, :-1]).abs(), pb.taus).mul_(wh)
        sv = _pm((x[..., 1:, :] - x[..., :-1, :]).abs(), pb.taus).mul_(wv)
        sd = None if wd is None else (_pm((x[..., 1:, 1:] - x[..., :-1, :-1]).abs(), pb.taus).mul_(wd[0]),
                                      _pm((x[..., 1:, :-1] - x[..., :-1, 1:]).abs(), pb.taus).mul_(wd[1]))
        x, _ = solve_harmonic(x, pb.op, sh, sv, REFINE_ITERATIONS, tolerance, pb.edge, multigrid=False, diagonal=sd,
                              soft=soft)
    return pb.op.project(x, pb.y), first


def measurement_noise(images: torch.Tensor) -> torch.Tensor:
    """The standard deviation of white noise in each of (K, h, w) images, (K,): Immerkær's 3×3 operator (a difference
    of two Laplacians, blind to planes: :func:`msifusion.harmonic.texture._noise_responses`, as the guide's noise)
    through a robust scale, the median of its magnitude / (6 · 0.6745), over the 3×3 windows not of one value (a zero
    fill, an area not acquired). The image's own detail at the pixel scale adds
    to it (measured on noise-free phantoms and Voronoi cells: 0.001–0.06 of the peak); noise under it is found within
    10–30 % (clipped at zero: under). 0 where no window is left. (Immerkær, "Fast noise variance estimation", CVIU
    1996.)"""
    K, h, w = images.shape
    if h < 3 or w < 3:
        return images.new_zeros(K)
    v = images.double()
    response = _noise_responses(v)
    kept = (torch.nn.functional.max_pool2d(v, 3, 1) + torch.nn.functional.max_pool2d(-v, 3, 1)) > 0
    return torch.stack([r[k].median() / IMMERKAER_SCALE if bool(k.any()) else r.new_zeros(())
                        for r, k in zip(response, kept)]).float()


def _soft_weights(noise: torch.Tensor, betas: torch.Tensor, refined: torch.Tensor,
                  config: HarmonicConfig) -> torch.Tensor | None:
    """μ per ion, (K, 1, 1), for :func:`_solve_setting`'s ``soft``: ``config.solver.soft_scale`` / σ² for an ion that
    took the optical's texture (β > 0) at a setting with refinement passes (``refined``, (K,) bool), σ its ``noise``
    (:func:`measurement_noise`, in the units it is fused in), 0 (exact refinement) for the others and where σ is 0;
    None where no ion gets one, and with the edge term (whose solve has no soft form). Under a laser spot the soft
    term fits the box averages, and the exact projection then restores the spot's measurement."""
    if config.solver.soft_scale == 0 or config.edge_weight > 0:
        return None
    taken = (betas.reshape(-1) > 0) & refined & (noise > 0)
    if not bool(taken.any()):
        return None
    mu = torch.where(taken, config.solver.soft_scale / noise.clamp_min(1e-12) ** 2, torch.zeros_like(noise))
    return mu[:, None, None]


def _refine_taus(images: torch.Tensor, config: HarmonicConfig, pictured: torch.Tensor) -> torch.Tensor:
    """τ of the refinement pass per image of (K, h, w): ``refine_scale``·std over the ``pictured`` MSI pixels (those
    not wholly inside an area of one colour, :class:`_Guide`; all where none is), shaped (K, 1, 1): a frame of
    empty glass would otherwise shrink it by its share of zeros. The std is floored at :data:`FLAT_STD` of the ion's
    peak (ions come in units of it): a constant ion's solution differs only by float32 rounding, which a τ near
    zero would read as edges everywhere (measured: NaN from a refined setting)."""
    values = images[:, pictured] if bool(pictured.any()) else images.flatten(1)
    return (config.solver.refine_scale * values.std(1).clamp_min(FLAT_STD))[:, None, None]


FLAT_STD = 1e-6  # an ion whose std is below this share of its peak is flat: rounding is all that varies


def _finish(x: torch.Tensor, y: torch.Tensor, op: Measurement, positive: bool, nonneg: torch.Tensor,
            beta: torch.Tensor | None = None, detail: torch.Tensor | None = None) -> torch.Tensor:
    """With ``positive`` (:attr:`HarmonicConfig.positive`), non-negativity for the ions whose whole measurement is
    non-negative (``nonneg``, (K,) bool: decided on the whole ion, not on the window or tile in ``y``, so tiles and
    the coarse test agree with the final image): :meth:`Measurement.project_positive` under ``op``.

    ``beta`` (K, 1, 1) or a scalar tensor, with ``detail`` (H, W): the optical's fine texture is first carried over
    multiplicatively, ``x · exp(−β · detail)`` (see :func:`optical_detail`), before the rescale.
    """
    if positive and bool(nonneg.any()):
        textured = x.clamp_min(0) * torch.exp(-beta * detail) if beta is not None and bool((beta != 0).any()) else x
        x = torch.where(nonneg[:, None, None], op.project_positive(textured, y), x)
    return x


def _plate_image(y: torch.Tensor, op: Measurement, length_px: float, positive: bool, nonneg: torch.Tensor,
                 beta: torch.Tensor | None = None, detail: torch.Tensor | None = None) -> torch.Tensor:
    """The ions ``y`` (K, h, w) as the thin plate of ``length_px`` fine pixels makes them, made exact under ``op``
    and finished as every output is (:func:`_finish`: non-negative where the measurement is, β's texture)."""
    x = op.project(plate_interpolate_t(y, op.f, length_px), y)  # a spot's model: the box's plate, made exact
    return _finish(x, y, op, positive, nonneg, beta, detail)
