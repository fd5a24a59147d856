"""Guided harmonic fusion: the smoothest image along the optical's edges whose MSI pixels equal the measurement.

The method (``--method guided-harmonic``) solves, for each ion image ``y`` (h, w) and the
registered optical guide ``g`` (H, W, 3), H = h·f, W = w·f::

    minimise   Σ_{neighbours i~j} w_ij (x_i − x_j)²        (a graph Dirichlet energy)
    subject to A x = y                                     (every MSI pixel's mean is measured)

``A`` is the measurement model: the box average over each f×f block (default), optionally
after a Gaussian laser spot (:class:`msifusion.measurement.MeasurementModel`). The conductance
``w_ij`` between 4-neighbours is Perona–Malik's ``1 / (1 + (|g_i − g_j| / κ)²)`` on the RGB
difference, plus a small floor: the solution is smooth inside regions of even colour and may
jump where the optical shows an edge, yet every block keeps exactly its measured mean, so
the result stays quantitative. This is the fixed point that training-free anisotropic
diffusion with exact consistency (DADA without features) iterates towards, computed
directly: a projected conjugate-gradient solve on the subspace of images with zero block
means (the projection is "subtract each block's mean"), preconditioned by an aggregation
multigrid V-cycle whose levels nest in the MSI blocks (the solver is its own module,
:mod:`msifusion.solver`; this one is the method around it).

Four additions, each measured on the benchmark (docs/benchmarks.md):

- *Refinement*: one re-weighted pass (IRLS) multiplies the conductances by
  ``1 / (1 + (|x_i − x_j| / τ)²)`` of the first solution (τ = ``SolverSettings.refine_scale``·std(y)):
  optical edges the ion does not follow are smoothed over, edges it does follow sharpen
  (a step towards guided total variation). These conductances nearly cut the grid, and
  their exact minimiser over-sharpens: the pass is a fixed budget of Jacobi-preconditioned
  CG steps from the first solution (:data:`REFINE_ITERATIONS`), an early-stopped solve
  that measured 0.3 dB better at ×20 than the multigrid-converged one.
- *Self-supervised choice of how far to trust the optical*: a ladder of settings from
  "ignore the optical" to "follow every edge" (κ at a low quantile of the guide's neighbour
  differences, with refinement). Each is run on the same problem one level coarser (the
  measurement block-averaged 2×2, predicted back at the measured grid); a setting replaces
  the previous one only if it predicts the held-back measurement significantly better
  (paired per-block test, ``LadderSettings.significance`` standard errors of the differences winsorised so
  that a few hot pixels cannot hide a gain, and better on significantly more blocks than
  worse, ``LadderSettings.sign_significance`` binomial standard deviations); where a sharper setting than the
  one chosen predicts significantly worse, the curve has turned up, and one setting smoother is
  taken (one scale coarser the test favours sharper settings than the measured scale does:
  ``LadderSettings.turn_back``). Optical images that
  show the chemistry (plant cells, depth edges) climb the ladder; an H&E whose texture is
  unrelated to the ion stays at the bottom (a smooth consistent interpolation).
- *Non-negativity*: for non-negative measurements, negatives are clipped and every block
  is rescaled multiplicatively to its measurement (DADA's adjustment): empty blocks stay
  exactly zero.
- *The optical's fine texture*: before that rescale the solution may be multiplied by
  ``exp(−β·d)``, d = the optical density minus its 1.5-px Gaussian blur (positive on thin
  dark structures: cell walls, which hold less of a metabolite than the cells they bound).
  The harmonic solution cannot make such a texture (it is smooth inside regions), and on
  our plant phantoms the walls carried half to three quarters of its squared error. β comes from a
  short ladder (0 first) through the same coarse-level test, per ion, so an optical whose
  texture the ion does not share (a depth map, an H&E) keeps β = 0; it is tried only where
  an MSI pixel spans at least 5 σ (coarser textures are not resolved by the test) and only
  for an ion that climbed the ladder (one that does not follow the optical's edges does not
  get its texture either), only where that texture stands 10 dB above what the guide's own pixel
  noise would give it (else β would copy the camera's noise into the ion), and not where the strongest
  β predicts the measurement significantly worse than none (a gain at a weak strength that turns into a
  loss at a strong one is a partial fit of something else).

Exactness: block means equal the measurement to float32 rounding (consistency error
≈1e-7); :func:`msifusion.measurement.project_consistent` is the reusable exact projection (a smooth bilinear
correction solved exactly through the separable low-resolution system, then a last
block-constant step for the rounding remainder).

Many ions (:func:`fuse_harmonic_many`): a panel that a few basis images explain up to
white noise (:func:`shared_basis`, singular vectors of the ion images) is fused through
them: only the basis images are solved, and each ion gets their mixture, made exactly
consistent with its own measurement. Each ion still gets its own setting (the coarse-level
test runs on the basis and is mixed per ion). The result differs from fusing the ion alone
where the solution is not linear in the measurement (refinement, non-negativity) and in
what the basis leaves of the ion (white noise, spread smoothly by the exact projection);
measured as good as alone (docs/benchmarks.md). Ions the basis does not explain are fused
alone, in batches sharing the optical's edge statistics.
Large images are solved in overlapping tiles (a halo of MSI pixels around each tile):
every block is owned by exactly one tile, so the stitched image is exactly consistent under
the box model; a laser spot's footprints reach across the seams, so with the spot model the
stitched image is projected once more as a whole.
Runs on CUDA when available (float32 throughout: the solver needs it for the 1e-4
consistency bound, so no reduced precision). On CPU the Laplacian and the refinement's
Jacobi-CG steps run as fused kernels (:mod:`msifusion.kernels`): the solver is bound by
memory traffic there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from msifusion.fit import progress_bar
from msifusion.measurement import (Measurement, MeasurementModel, bilinear_up_t, block_mean_t, gauss_taps,
                                   positive_rescale)
from msifusion.solver import EdgeTerm, solve_harmonic

REFINE_ITERATIONS = 300  # Jacobi-CG steps of the refinement pass (an early-stopped solve; see above)


@dataclass(frozen=True)
class LadderSettings:
    """How far to trust the optical: the settings tried, in order, and the walk that chooses among them.

    ``settings``: each (edge quantile q in %, refinement passes); κ = the q-th percentile of the guide's neighbour
    colour differences, so a low q makes most optical edges block. A setting replaces the previous choice only if it
    predicts the held-back measurement better by ``significance`` standard errors of the paired per-block differences
    (0: any gain in the mean) and on more blocks than it loses by ``sign_significance`` binomial standard deviations
    (0: any majority). ``turn_back``: where a setting sharper than the walk's choice predicts significantly worse
    (the coarse curve turns up past its minimum), take the setting one rung smoother. One scale coarser the
    optical's edges carry more (a quarter of the constraints), so the test's minimum lies sharper than the measured
    scale's; where its curve is still falling (or flat) at the sharpest rung, as on the plant phantoms, depth edges
    and most shapes, the choice stands. Measured on cells whose interiors carry a texture the ion does not follow
    (the ladder went to (50, 1) where (80, 1) or (65, 1) was right: −1.5 to −4.5 dB); see docs/benchmarks.md.
    """

    settings: tuple[tuple[float, int], ...] = ((99.9, 0), (80.0, 0), (80.0, 1), (65.0, 1), (50.0, 1), (20.0, 1))
    significance: float = 4.0
    sign_significance: float = 2.0
    turn_back: bool = True

    def __post_init__(self) -> None:
        if not self.settings:
            raise ValueError("ladder needs at least one setting")
        for q, passes in self.settings:
            if not 0 < q < 100 or passes < 0:
                raise ValueError(f"bad ladder setting {(q, passes)}: quantile in (0, 100), passes ≥ 0")
        if min(self.significance, self.sign_significance) < 0:
            raise ValueError("the ladder's significances must be ≥ 0")


@dataclass(frozen=True)
class TextureSettings:
    """Carrying the optical's fine texture over: strengths β tried, in order (the first is the default, normally
    0 = none), for :func:`optical_detail` at ``sigma_px``.

    β is chosen per ion by the coarse-level test at ``significance`` standard errors, and only for an ion that
    climbed the ladder: a gatekeeping order, in which the strict test on the optical's edges must pass before the
    one-parameter refinement is tried, so the second can be laxer (measured: at 2 instead of 4, dev phantoms
    +0.15 dB and the 24 unseen variants +0.10, no case lower; without the gate the texture was taken on two prostate
    ions whose ladder stayed at the bottom, and cost them 1 dB). β's walk is an ordered one (:func:`_walk`): a
    strength significantly worse than the current choice ends it, and none is taken where the strongest is
    significantly worse than none. ``snr_db``: β is tried only where the optical's fine texture stands this far
    above what the guide's own pixel noise would give it (:func:`texture_snr_db`; measured: on a dim synthetic
    guide with 2 % noise, 3.7 dB, β = 0.5 copied that noise into the ion and cost 2.5 dB; our plant phantoms
    19–20 dB, synthetic cells with walls 12–29 dB).
    """

    strengths: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    sigma_px: float = 1.5
    significance: float = 2.0
    snr_db: float = 10.0

    def __post_init__(self) -> None:
        if not self.strengths or self.sigma_px <= 0 or self.significance < 0:
            raise ValueError("texture needs at least one strength, sigma_px > 0 and significance ≥ 0")


@dataclass(frozen=True)
class CoarseTest:
    """The self-supervised test behind both walks (the ladder's and β's): the measurement block-averaged 2×2 is
    fused and predicted back at the measured grid.

    ``pixels``: at most this many fine pixels in all (a central window of at most 600 000, in up to four shifted
    phases), so that the choice costs little on large images and is steady on small ones; its solves start from
    the previous setting's solution and stop at the looser ``tolerance`` (a ranking needs less precision than an
    output). ``winsor_percent``: the walks' paired per-block differences are clipped to their percentiles at this
    value and 100 minus it before the mean test, so that a few hot MSI pixels, whose blocks no setting predicts,
    cannot hide the gain of the rest (measured: three hot pixels at 20× the 99th percentile dropped the test to the
    bottom rung and the ion by 2–3 dB).
    """

    pixels: int = 1_200_000
    tolerance: float = 1e-2
    winsor_percent: float = 1.0

    def __post_init__(self) -> None:
        if self.pixels < 1 or self.tolerance <= 0 or not 0 <= self.winsor_percent < 50:
            raise ValueError("the coarse test needs pixels ≥ 1, tolerance > 0 and winsor_percent in [0, 50)")


@dataclass(frozen=True)
class SolverSettings:
    """The exact solve: conductance floor, the refinement's τ = ``refine_scale``·std(y), the multigrid-preconditioned
    solve's ``iterations`` and relative ``tolerance``, and tiles of at most ``tile_pixels`` fine pixels with a halo of
    ``halo_blocks`` MSI pixels for large images."""

    weight_floor: float = 1e-3
    refine_scale: float = 0.1
    iterations: int = 100
    tolerance: float = 1e-3
    tile_pixels: int = 4_000_000
    halo_blocks: int = 6

    def __post_init__(self) -> None:
        if self.weight_floor <= 0 or self.refine_scale <= 0:
            raise ValueError("weight_floor and refine_scale must be positive")
        if self.iterations < 1 or self.tolerance <= 0:
            raise ValueError("iterations ≥ 1 and tolerance > 0 required")
        if self.tile_pixels < 4096 or self.halo_blocks < 0:
            raise ValueError("tile_pixels ≥ 4096 and halo_blocks ≥ 0 required")


@dataclass(frozen=True)
class PanelSettings:
    """A panel of ions on one guide: at least ``min_ions`` share one fused basis of at most ``max_rank`` images
    (:func:`shared_basis`); an ion joins it when what the basis leaves of its measurement is white noise (neighbour
    autocorrelation at most ``whiteness``), else it is fused alone. ``ion_batch``: ions solved together (None:
    :meth:`batch_on` picks by device); results do not depend on it (on the CPU bit for bit for ions fused alone, to
    float32 rounding through a shared basis; on CUDA, whose kernels can round differently by batch size, to the
    solver's tolerance)."""

    min_ions: int = 4
    max_rank: int = 32
    whiteness: float = 0.1
    ion_batch: int | None = None

    def __post_init__(self) -> None:
        if self.min_ions < 2 or self.max_rank < 1 or not 0 < self.whiteness < 1:
            raise ValueError("min_ions ≥ 2, max_rank ≥ 1 and 0 < whiteness < 1 required")
        if self.ion_batch is not None and self.ion_batch < 1:
            raise ValueError("ion_batch must be ≥ 1 (or None)")

    def batch_on(self, device: torch.device) -> int:
        """How many ions are solved together: ``ion_batch``, or by default 1 on CPU and 8 on a GPU.

        Batching changes no result (every image stops on its own). On a 2-core CPU one ion at a
        time measured fastest per ion (9.8 s against 17.5 s in batches of 8, ginkgo size): the
        solver is memory-bound and a batch only widens its working set; a GPU needs the batch
        to fill its cores.
        """
        if self.ion_batch is not None:
            return self.ion_batch
        return 1 if device.type == "cpu" else 8


@dataclass(frozen=True)
class HarmonicConfig:
    """Defaults of the guided harmonic method (one set for every case), grouped by what they decide.

    ``positive``: the non-negativity step for non-negative measurements (box model only). ``edge_weight``:
    optional weight of the paper's edge perceptual term ``‖K x − K lum(g)‖²`` (K: the Laplacian of
    :mod:`msifusion.losses`) added to the energy; 0 by default (measured: it does not help against truth). What an MSI
    pixel measures is not a setting of the method but of the data: :class:`msifusion.measurement.MeasurementModel`.
    """

    ladder: LadderSettings = LadderSettings()
    texture: TextureSettings = TextureSettings()
    test: CoarseTest = CoarseTest()
    solver: SolverSettings = SolverSettings()
    panel: PanelSettings = PanelSettings()
    positive: bool = True
    edge_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.edge_weight < 0:
            raise ValueError("edge_weight must be ≥ 0")


# ----------------------------------------------------------------------------- conductances


def colour_differences(guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean colour differences of an (H, W, C) guide between horizontal (H, W−1) and vertical (H−1, W)
    neighbours (the diffusion method's conductances use them too)."""
    dh = (guide[:, 1:] - guide[:, :-1]).pow(2).sum(-1).sqrt()
    dv = (guide[1:] - guide[:-1]).pow(2).sum(-1).sqrt()
    return dh, dv


def edge_scales(guide: np.ndarray, quantiles: tuple[float, ...], max_samples: int = 2_000_000) -> dict[float, float]:
    """κ for each quantile: that percentile of the guide's neighbour colour differences (≥ 1e-3).

    Guides with more than ``max_samples`` neighbour pairs are sampled (fixed positions, deterministic).
    """
    g = np.asarray(guide)
    H, W = g.shape[:2]
    if (H - 1) * W + H * (W - 1) <= max_samples:
        dh, dv = colour_differences(torch.as_tensor(g, dtype=torch.float32))
        d = torch.cat([dh.flatten(), dv.flatten()]).numpy()
    else:
        rng = np.random.default_rng(0)
        n = min(max_samples // 2, (H - 1) * W)
        r = rng.integers(0, H - 1, n)
        c = rng.integers(0, W - 1, n)
        p = g[r, c].astype(np.float32)
        d = np.concatenate([np.sqrt(((g[r, c + 1] - p) ** 2).sum(-1)), np.sqrt(((g[r + 1, c] - p) ** 2).sum(-1))])
    return {q: max(float(np.percentile(d, q)), 1e-3) for q in quantiles}


def _pm(d: torch.Tensor, kappa: float | torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + (d / kappa) ** 2)


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
    diffs: tuple[torch.Tensor, torch.Tensor] | None = None
    op: Measurement | None = None
    edge: EdgeTerm | None = None

    @property
    def config(self) -> HarmonicConfig:
        return self.shared.config

    @property
    def kappas(self) -> dict[float, float]:
        return self.shared.kappas

    def __post_init__(self) -> None:
        self.diffs = colour_differences(self.guide)
        self.op = self.shared.measurement.operator(tuple(self.guide.shape[:2]), self.f, self.guide.device)
        if self.config.edge_weight > 0:
            self.edge = EdgeTerm(self.guide, self.config.edge_weight)


def _solve_setting(pb: _Problem, q: float, passes: int, start: torch.Tensor | None = None,
                   tolerance: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact guided harmonic solution for one ladder setting, (K, H, W), and the solution before
    refinement (a warm start for the next setting).

    ``start``: a consistent first guess (default: the projected bilinear upsampling).
    ``tolerance``: the solver's relative tolerance (default: the config's).
    """
    cfg = pb.config
    tolerance = tolerance or cfg.solver.tolerance
    kappa = pb.kappas[q]
    wh = _pm(pb.diffs[0], kappa).add_(cfg.solver.weight_floor)
    wv = _pm(pb.diffs[1], kappa).add_(cfg.solver.weight_floor)
    x = start if start is not None else pb.op.project(bilinear_up_t(pb.y, pb.f), pb.y)
    x, _ = solve_harmonic(x, pb.op, wh, wv, cfg.solver.iterations, tolerance, pb.edge)
    first = x
    for _ in range(passes):
        # product of the optical's and the first solution's conductances, no second floor: edges that
        # both show are cut hard (measured: adding the floor after the product loses 0.15 dB on phantoms)
        sh = _pm((x[..., :, 1:] - x[..., :, :-1]).abs(), pb.taus).mul_(wh)
        sv = _pm((x[..., 1:, :] - x[..., :-1, :]).abs(), pb.taus).mul_(wv)
        x, _ = solve_harmonic(x, pb.op, sh, sv, REFINE_ITERATIONS, tolerance, pb.edge, multigrid=False)
    return pb.op.project(x, pb.y), first


def _refine_taus(images: torch.Tensor, config: HarmonicConfig) -> torch.Tensor:
    """τ of the refinement pass per image of (K, h, w): ``refine_scale``·std, shaped (K, 1, 1)."""
    return (config.solver.refine_scale * images.flatten(1).std(1).clamp_min(1e-12))[:, None, None]


def _finish(x: torch.Tensor, y: torch.Tensor, f: int, rescale: bool, nonneg: torch.Tensor,
            beta: torch.Tensor | None = None, detail: torch.Tensor | None = None) -> torch.Tensor:
    """Non-negativity for the ions whose whole measurement is non-negative (``nonneg``, (K,) bool: decided
    on the whole ion, not on the window or tile in ``y``, so tiles and the coarse test agree with the
    final image), where ``rescale`` (:attr:`_Guide.rescales`: box model only; under a spot the output may dip below
    zero).

    ``beta`` (K, 1, 1) or a scalar tensor, with ``detail`` (H, W): the optical's fine texture is first carried over
    multiplicatively, ``x · exp(−β · detail)`` (see :func:`optical_detail`), before the block rescale.
    """
    if rescale:
        if bool(nonneg.any()):
            textured = x.clamp_min(0) * torch.exp(-beta * detail) if beta is not None and bool((beta != 0).any()) else x
            x = torch.where(nonneg[:, None, None], positive_rescale(textured, y, f), x)
    return x


def _detail_eps(guide: np.ndarray) -> float:
    """The optical density's floor: 1e-3 of the guide's brightest value (so black pixels stay finite)."""
    return 1e-3 * max(float(np.max(guide)), 1e-12)


def optical_detail(guide: torch.Tensor, sigma: float, eps: float) -> torch.Tensor:
    """The optical's fine texture as (H, W): its optical density −log(mean colour + eps) minus a Gaussian
    blur of it (``sigma`` px, replicated borders): positive on what is darker than its surroundings."""
    od = -torch.log(guide.float().mean(-1) + eps)
    taps, radius = gauss_taps(sigma, 3.0)
    taps = taps.to(od)
    blurred = od[None, None]
    blurred = F.conv2d(F.pad(blurred, (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1))
    return od - blurred[0, 0]


def _channels(guide: np.ndarray) -> np.ndarray:
    """The guide as float32 (H, W, C): a grey (H, W) guide gets one channel."""
    g = np.asarray(guide, dtype=np.float32)
    return g if g.ndim == 3 else g[..., None]


def _central(guide: np.ndarray, max_pixels: int) -> torch.Tensor:
    """A central window of the guide (H, W, C) of at most ``max_pixels``, at least 3×3 where the guide is."""
    H, W = guide.shape[:2]
    shrink = min(1.0, math.sqrt(max_pixels / (H * W)))
    h, w = min(H, max(3, int(H * shrink))), min(W, max(3, int(W * shrink)))
    return torch.as_tensor(np.ascontiguousarray(guide[(H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w]))


def _mask_noise(window: torch.Tensor) -> float:
    """:func:`guide_noise` of a window (h, w, C) of at least 3×3."""
    mask = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]).view(1, 1, 3, 3)
    response = F.conv2d(window.permute(2, 0, 1).contiguous()[:, None], mask)
    per_channel = response.abs().flatten(1).median(1).values / (0.6745 * 6)
    return float(per_channel.mean()) / math.sqrt(window.shape[-1])


def guide_noise(guide: np.ndarray, max_pixels: int = 1_000_000) -> float:
    """The guide's pixel noise, as the standard deviation of its mean colour: the response to Immerkær's
    3×3 mask [1 −2 1; −2 4 −2; 1 −2 1] (it cancels planes and straight ramps; white noise of std σ gives
    a response of std 6σ), whose median absolute value / (0.6745 · 6) estimates σ robustly, per channel
    on a central window of at most ``max_pixels``; their mean divided by √channels (the channels'
    noise taken as independent).

    The median, not Immerkær's mean: edges respond too, and on a guide of dense sharp cell walls the
    mean overestimated the noise 6-fold (the median 1.5-fold). (Immerkær, "Fast noise variance
    estimation", CVIU 1996. Written out here: scikit-image's ``estimate_sigma`` needs PyWavelets, one
    more dependency, for a 3×3 convolution.)
    """
    g = _channels(guide)
    return _mask_noise(_central(g, max_pixels)) if min(g.shape[:2]) >= 3 else 0.0


def texture_snr_db(guide: np.ndarray, sigma: float, eps: float, max_pixels: int = 1_000_000) -> float:
    """How far the optical's fine texture (:func:`optical_detail`) stands above what the guide's pixel noise
    alone would give it, in dB: 10·log10 of the detail's mean square over the noise's, the noise carried
    into the optical density (std ``guide_noise / (mean colour + eps)``, larger where the optical is dark).
    The noise is taken as at least an 8-bit camera's quantisation noise (max / 255 / √12), so a noise-free
    synthetic guide gets a finite value. On a central window of at most ``max_pixels`` (noise and detail
    from the same one)."""
    g = _channels(guide)
    window = _central(g, max_pixels)
    measured = _mask_noise(window) if min(window.shape[:2]) >= 3 else 0.0
    noise = max(measured, float(g.max()) / (255 * math.sqrt(12)))
    detail = optical_detail(window, sigma, eps)
    from_noise = float(((noise / (window.mean(-1) + eps)) ** 2).mean())
    if from_noise <= 0:  # an all-black guide: no texture at all
        return -math.inf
    return 10 * math.log10(max(float(detail.pow(2).mean()), 1e-30) / from_noise)


# ----------------------------------------------------------------------------- choosing the setting


def _window(H: int, W: int, f: int, pixels: int) -> tuple[int, int, int, int]:
    """A central window of whole blocks, an even number each way, at most ``pixels`` fine pixels, leaving
    one spare block row and column (for the shifted 2×2 phases) where the image has them.

    Returns (first block row, first block col, block rows, block cols).
    """
    h, w = H // f, W // f
    shrink = min(1.0, math.sqrt(pixels / (H * W)))
    hh = min(max(2, int(h * shrink)), h - 1 if h > 2 else h)
    ww = min(max(2, int(w * shrink)), w - 1 if w > 2 else w)
    hh -= hh % 2
    ww -= ww % 2
    return (h - hh) // 2, (w - ww) // 2, hh, ww


def _texture_testable(f: int, config: HarmonicConfig, model: MeasurementModel) -> bool:
    """Whether β can be chosen at all: there are strengths to try, the coarse-level test resolves the texture
    (it sees it only through its sums over f×f blocks, so a block must span 5 σ of it), and the box model's
    exact block rescale applies."""
    return (len(config.texture.strengths) > 1 and f >= 5 * config.texture.sigma_px and config.positive
            and model.box)


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
    detail_eps: float
    texture_snr_db: float | None
    device: torch.device

    @property
    def rescales(self) -> bool:
        """Whether non-negative ions get the exact block rescale of :func:`_finish` (box model only: a spot's
        footprints overlap blocks, so there is no exact block rescale)."""
        return self.config.positive and self.measurement.box

    @classmethod
    def of(cls, guide: np.ndarray, f: int, config: HarmonicConfig, measurement: MeasurementModel,
           device: torch.device) -> "_Guide":
        guide = np.asarray(guide, dtype=np.float32)
        if not (guide.flags.writeable and guide.flags.c_contiguous):  # as methods' _checked_guide does, for
            guide = np.array(guide, order="C")  # callers of fuse_harmonic_many itself (torch needs both)
        kappas = edge_scales(guide, tuple(sorted({q for q, _ in config.ladder.settings})))
        eps = _detail_eps(guide)
        testable = _texture_testable(f, config, measurement)
        snr = texture_snr_db(guide, config.texture.sigma_px, eps) if testable else None
        return cls(guide, f, config, measurement, kappas, eps, snr, device)

    def detail(self, window: torch.Tensor) -> torch.Tensor:
        """:func:`optical_detail` of a window (h, w, 3) of this guide, on the device."""
        return optical_detail(window, self.config.texture.sigma_px, self.detail_eps)


def choose_settings(gd: _Guide, ions: torch.Tensor, taus: torch.Tensor, nonneg: torch.Tensor,
                    basis: _Basis | None = None) -> tuple[list[tuple[int, int]], list[dict]]:
    """Per ion, the ladder setting and the texture strength to use, by self-supervised coarse-level prediction.

    The measurement (a central window, an even number of blocks) is block-averaged 2×2;
    each setting fuses that coarser image at scale 2f with the same optical, and the
    result's block means at scale f are compared with the real measurement. Up to four
    phases of the 2×2 grouping (shifted by one block) are used while the pixels tested stay
    within ``config.test.pixels``, for a steadier test on small images. Walking up the ladder, a
    setting is taken if its per-block squared errors beat the current choice's by more than
    ``config.ladder.significance`` standard errors (of the differences winsorised at ``config.test.winsor_percent``),
    on significantly more blocks than they lose (``config.ladder.sign_significance``; :func:`_walk`); where a sharper
    setting then predicts significantly worse than the choice, one setting smoother is taken
    (``config.ladder.turn_back``; the note ``turned_back`` says so). Too small an image (fewer than 16 coarse
    pixels) keeps the first setting. With a shared ``basis``
    (``ions`` ≈ coefficients @ basis images), only the basis images are solved and each ion's
    coarse prediction is their mixture, made consistent with its own coarse measurement: the
    same test per ion at the basis's cost.
    Then, at the chosen setting, the same walk (without the sign test) over ``config.texture.strengths``
    picks the strength β of the optical-texture step: only where a block spans 5 σ of it and the
    box model's rescale applies, to ions whose whole measurement is non-negative, ``nonneg`` (K,),
    and whose walk left the ladder's first setting (an ion that does not follow the optical's
    edges does not get its finer texture either; a one-setting ladder counts as trusted).
    ``gd``: the guide and what all its ions share; ``taus``: the ions' refinement scales.
    Returns (setting index, texture index) per ion, and notes for ``run.json``.
    """
    guide, f, config, device = gd.image, gd.f, gd.config, gd.device
    K = ions.shape[0]
    H, W = guide.shape[:2]
    ladder = [list(s) for s in config.ladder.settings]
    if len(config.ladder.settings) == 1 and len(config.texture.strengths) == 1:
        return [(0, 0)] * K, [{"ladder": ladder, "chosen": ladder[0], "texture": config.texture.strengths[0],
                               "selection": "one setting"} for _ in range(K)]
    r0, c0, hh, ww = _window(H, W, f, min(config.test.pixels, 600_000))
    if hh < 2 or ww < 2 or (hh // 2) * (ww // 2) < 16:
        return [(0, 0)] * K, [{"ladder": ladder, "chosen": ladder[0], "texture": config.texture.strengths[0],
                               "selection": "image too small to test; first setting"} for _ in range(K)]
    h, w = H // f, W // f
    phases = [(0, 0), (1, 1), (0, 1), (1, 0)]
    phases = [(a, b) for a, b in phases if r0 + a + hh <= h and c0 + b + ww <= w]
    phases = phases[:max(1, min(len(phases), config.test.pixels // (hh * ww * f * f)))]
    # β only where it can be tested (_texture_testable) and the optical's texture is more than the camera's noise
    textured = gd.texture_snr_db is not None and gd.texture_snr_db >= config.texture.snr_db
    betas = config.texture.strengths if textured else config.texture.strengths[:1]
    errors = [[[] for _ in betas] for _ in config.ladder.settings]
    batch = config.panel.batch_on(device)
    parts = [slice(0, K)] if basis is None else [slice(k, k + batch) for k in range(0, K, batch)]
    for a, b in phases:
        rows = slice((r0 + a) * f, (r0 + a + hh) * f)
        cols = slice((c0 + b) * f, (c0 + b + ww) * f)
        g = torch.as_tensor(np.ascontiguousarray(guide[rows, cols]), dtype=torch.float32, device=device)
        y = ions[:, r0 + a: r0 + a + hh, c0 + b: c0 + b + ww]
        y2 = block_mean_t(y, 2)
        if basis is None:
            pb = _Problem(g, y2, 2 * f, taus, gd)
        else:
            pb = _Problem(g, block_mean_t(basis.images[:, r0 + a: r0 + a + hh, c0 + b: c0 + b + ww], 2), 2 * f,
                          basis.taus, gd)
        measure_f = gd.measurement.operator(tuple(g.shape[:2]), f, device)
        detail = gd.detail(g) if any(betas) else None
        first = None
        for i, (q, passes) in enumerate(config.ladder.settings):
            x, first = _solve_setting(pb, q, passes, first, config.test.tolerance)
            per_block = [[] for _ in betas]
            for part in parts:
                xp = x if basis is None else pb.op.project(basis.mix(x, part), y2[part])
                for j, beta in enumerate(betas):
                    xt = _finish(xp, y2[part], 2 * f, gd.rescales, nonneg[part], torch.tensor(beta, device=device),
                                 detail)
                    per_block[j].append((measure_f.A(xt) - y[part]).pow(2).flatten(1))
            for j in range(len(betas)):
                errors[i][j].append(torch.cat(per_block[j]))  # (K, n) per-block squared errors
    errors = [[torch.cat(e, 1) for e in by_beta] for by_beta in errors]
    chosen, notes = [], []
    for k in range(K):
        ladder_errors = [e[0][k] for e in errors]
        rules = config.ladder.significance, config.ladder.sign_significance, config.test.winsor_percent
        walked = _walk(ladder_errors, *rules)
        best = _walk(ladder_errors, *rules, back=config.ladder.turn_back)
        # no sign test for β: the texture moves only blocks whose wall share differs from their neighbours', so
        # its gain sits in a minority of blocks (measured: with the sign test, dev phantoms lose 0.13 dB)
        trusted = best > 0 or len(config.ladder.settings) == 1
        texture = _walk([e[k] for e in errors[best]], config.texture.significance, winsor=config.test.winsor_percent,
                        ordered=True) if trusted else 0
        chosen.append((best, texture))
        notes.append({"ladder": ladder, "coarse_mse": [float(e[0][k].mean()) for e in errors], "phases": len(phases),
                      "chosen": ladder[best], "turned_back": best != walked,
                      "texture": config.texture.strengths[texture],
                      "texture_tested": trusted and len(betas) > 1, "optical_texture_snr_db": gd.texture_snr_db,
                      "texture_coarse_mse": [float(e[k].mean()) for e in errors[best]]})
    return chosen, notes


def _paired(a: torch.Tensor, b: torch.Tensor, winsor: float) -> tuple[float, float, int, int]:
    """The paired per-block differences a − b: their mean and standard error after winsorising at ``winsor`` and
    100 − ``winsor`` percent, and the raw counts of blocks where a is larger (wins for b) and smaller."""
    d = a - b
    wins, losses = int((d > 0).sum()), int((d < 0).sum())  # the sign test counts the raw differences
    if winsor > 0 and d.numel() > 1:
        q = torch.tensor([winsor / 100, 1 - winsor / 100], dtype=torch.float64, device=d.device)
        lo, hi = torch.quantile(d.double(), q).tolist()
        d = d.clamp(lo, hi)
    se = float(d.std()) / math.sqrt(d.numel()) if d.numel() > 1 else 0.0
    return float(d.mean()), se, wins, losses


def _walk(errors: list[torch.Tensor], significance: float, sign: float | None = None, winsor: float = 0.0,
          ordered: bool = False, back: bool = False) -> int:
    """Walking up a ladder of per-block squared errors, the last step that beat the current choice by more
    than ``significance`` standard errors of the paired differences (and, with ``sign``, on more blocks than
    it lost by more than ``sign`` binomial standard deviations, √(wins + losses), unchanged blocks counting
    on neither side: a sign test beside the mean, so that a few large gains cannot carry the step; 0 = any
    majority). ``winsor``: for the mean test the differences are clipped to their ``winsor`` and 100 − ``winsor``
    percentiles (a winsorised mean test: outlying blocks count, but only as much as the last kept one).
    ``ordered``: the ladder is one strength's increasing values (β), so a step that is significantly *worse*
    than the current choice ends the walk, and where the strongest value is significantly worse than the
    first (none), no step is taken: a texture the ion has gets better or levels off as its strength grows
    towards the ion's, while a gain at a weak strength that turns into a loss at a strong one is a partial
    fit of something else (measured: cells whose walls hold 2.5× their cells' amount took β = 2 past a worse
    0.5 and 1, and lost 3.7 dB; cells whose walls hold as much as their cells took β = 0.5 and lost 0.9 to
    3.1 dB). ``back``: where a step past the choice is significantly worse than it (the curve turns up), take one
    step back (not below the second entry; the entry before the choice, whether or not the walk stood on it):
    see :attr:`LadderSettings.turn_back`."""
    best = 0
    for i in range(1, len(errors)):
        mean, se, wins, losses = _paired(errors[best], errors[i], winsor)
        if mean > significance * se and (sign is None or wins - losses > sign * math.sqrt(wins + losses)):
            best = i
        elif ordered and mean < -significance * se:
            break
    if ordered and best > 0:
        mean, se, _, _ = _paired(errors[0], errors[-1], winsor)
        if mean < -significance * se:
            best = 0
    if back and best > 1:
        for e in errors[best + 1:]:
            mean, se, _, _ = _paired(errors[best], e, winsor)
            if mean < -significance * se:
                return best - 1
    return best


# ----------------------------------------------------------------------------- tiles


def _tiles(h: int, w: int, f: int, config: HarmonicConfig) -> list[tuple[slice, slice, slice, slice]]:
    """Tiles in block units: (outer rows, outer cols, inner rows, inner cols) as block slices.

    Inner tiles partition the block grid; outer = inner + ``config.solver.halo_blocks`` (clipped).
    """
    per_tile_blocks = max(1, config.solver.tile_pixels // (f * f))
    if h * w <= per_tile_blocks:
        return [(slice(0, h), slice(0, w), slice(0, h), slice(0, w))]
    side = max(1, int(math.sqrt(per_tile_blocks)) - 2 * config.solver.halo_blocks)
    out = []
    for r in range(0, h, side):
        for c in range(0, w, side):
            ir, ic = slice(r, min(r + side, h)), slice(c, min(c + side, w))
            orow = slice(max(0, ir.start - config.solver.halo_blocks), min(h, ir.stop + config.solver.halo_blocks))
            ocol = slice(max(0, ic.start - config.solver.halo_blocks), min(w, ic.stop + config.solver.halo_blocks))
            out.append((orow, ocol, ir, ic))
    return out


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
    K, h, w = ions.shape
    if _cannot_share(ions, config):
        return None
    Y = ions.reshape(K, -1).astype(np.float64)
    gram = Y @ Y.T  # the singular vectors of any subset of rows, from a K×K eigenproblem
    energy = np.diag(gram)
    best = None
    for r in range(1, min(config.panel.max_rank, K - 1) + 1):
        if best is not None and r >= best[0]:
            break  # the solves are at least r
        fit = np.ones(K, dtype=bool)
        for _ in range(4):
            lam, u = np.linalg.eigh(gram[np.ix_(fit, fit)])
            top = np.argsort(lam)[::-1][:r]
            rows = (u[:, top].T @ Y[fit]) / np.sqrt(np.maximum(lam[top], 1e-300))[:, None]
            residual = Y - (Y @ rows.T) @ rows
            rho = residual_whiteness(residual.reshape(K, h, w))
            explained = (rho <= config.panel.whiteness) | ((residual**2).sum(1) <= 1e-12 * energy)
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


# ----------------------------------------------------------------------------- entry points


@dataclass
class HarmonicReport:
    """What the run did, per ion: the chosen setting, and the coarse-level scores and the shared basis, if used
    (``notes``, each ion's ``method_details`` in run.json)."""

    settings: list[tuple[float, int]] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)


def _run(guide: np.ndarray, ions: np.ndarray, f: int, config: HarmonicConfig, measurement: MeasurementModel,
         device: torch.device, report: HarmonicReport, quiet: bool = True) -> np.ndarray:
    """Fuse (K, h, w) normalised ions with the guide, through a shared basis where it saves solves; (K, H, W) float32."""
    gd = _Guide.of(guide, f, config, measurement, device)
    shared = shared_basis(ions, config)
    if shared is None:
        out = _run_each(gd, ions, report, quiet)
        if len(ions) > 1:
            why = _cannot_share(ions, config) or "a shared basis would not halve the solves"
            report.notes = [{**note, "fused_alone": why} for note in report.notes]
        return out
    K = ions.shape[0]
    explained = np.setdiff1d(np.arange(K), shared.alone)
    images = torch.as_tensor(shared.basis, device=device)
    basis = _Basis(images, torch.as_tensor(shared.coefficients[explained], dtype=torch.float32, device=device),
                   _refine_taus(images, config))
    out = np.empty((K, *np.shape(guide)[:2]), dtype=np.float32)
    report.settings, report.notes = [None] * K, [{} for _ in range(K)]
    for idx, part_basis in [(explained, basis), (shared.alone, None)]:
        if not len(idx):
            continue
        part_report = HarmonicReport()
        out[idx] = _run_each(gd, ions[idx], part_report, quiet, part_basis)
        for i, k in enumerate(idx):
            report.settings[k] = part_report.settings[i]
            how = ({"shared_basis": {"rank": len(shared.basis)}} if part_basis is not None else
                   {"fused_alone": "the panel's basis leaves structure in this ion"})
            report.notes[k] = {**part_report.notes[i], **how, "residual_whiteness": float(shared.whiteness[k])}
    return out


def _run_each(gd: _Guide, ions: np.ndarray, report: HarmonicReport, quiet: bool = True,
              basis: _Basis | None = None) -> np.ndarray:
    """Fuse (K, h, w) normalised ions with the guide ``gd``, each with its own setting; returns (K, H, W) float32.

    Without ``basis`` every ion is solved, batch by batch (memory grows with
    :meth:`PanelSettings.batch_on`, not with K). With one, only the basis images are solved, once per
    setting some ion chose, and each ion is their mixture made exactly consistent with its
    own measurement, tile by tile. A progress bar (unless ``quiet``) counts the steps.
    """
    guide, f, config, device = gd.image, gd.f, gd.config, gd.device
    H, W = guide.shape[:2]
    K, h, w = ions.shape
    if (h * f, w * f) != (H, W):
        raise ValueError(f"guide {H}×{W} is not ions {h}×{w} × {f}")
    y_all = torch.as_tensor(np.ascontiguousarray(ions, dtype=np.float32), device=device)
    taus = _refine_taus(y_all, config)
    nonneg = (y_all >= 0).flatten(1).all(1)
    tiles = _tiles(h, w, f, config)
    batch_size = config.panel.batch_on(device)
    batches = [slice(0, K)] if basis is not None else [slice(b, b + batch_size) for b in range(0, K, batch_size)]
    progress = progress_bar(len(batches) * (1 + len(tiles)), "guided-harmonic", "batch", quiet,
                            bar_format="{l_bar}{bar}| {elapsed}<{remaining}")  # fractional steps: no counts shown
    chosen, notes = [], []
    for part in batches:
        c, n = choose_settings(gd, y_all[part], taus[part], nonneg[part], basis)
        chosen += c
        notes += n
        progress.update()
    report.settings = [config.ladder.settings[i] for i, _ in chosen]
    betas = torch.tensor([config.texture.strengths[j] for _, j in chosen], dtype=torch.float32,
                         device=device)[:, None, None]
    report.notes = notes
    out = np.empty((K, H, W), dtype=np.float32)
    for orow, ocol, irow, icol in tiles:
        g = torch.as_tensor(np.ascontiguousarray(guide[orow.start * f: orow.stop * f, ocol.start * f: ocol.stop * f]),
                            device=device)
        r0, c0 = irow.start - orow.start, icol.start - ocol.start
        inner = (slice(r0 * f, (r0 + irow.stop - irow.start) * f), slice(c0 * f, (c0 + icol.stop - icol.start) * f))
        detail = gd.detail(g) if bool((betas != 0).any()) else None
        for setting in sorted({i for i, _ in chosen}):
            idx = [k for k in range(K) if chosen[k][0] == setting]
            if basis is not None:
                pb = _Problem(g, basis.images[:, orow, ocol], f, basis.taus, gd)
                fused_basis, _ = _solve_setting(pb, *config.ladder.settings[setting])
            for b in range(0, len(idx), batch_size):
                batch = idx[b: b + batch_size]
                y = y_all[batch][:, orow, ocol]
                if basis is None:
                    pb = _Problem(g, y, f, taus[batch], gd)
                    x, _ = _solve_setting(pb, *config.ladder.settings[setting])
                else:
                    x = pb.op.project(basis.mix(fused_basis, batch), y)
                x = _finish(x, y, f, gd.rescales, nonneg[batch], betas[batch], detail)[:, inner[0], inner[1]]  # exact
                out[batch, irow.start * f: irow.stop * f, icol.start * f: icol.stop * f] = x.float().cpu().numpy()
                progress.update(len(batch) / K if basis is not None else len(batch) / batch_size)
    if not gd.measurement.box and len(tiles) > 1:
        # a spot's footprints reach into the neighbouring tile: the stitched image is made exact as a whole
        op = gd.measurement.operator((H, W), f, device)
        for k in range(K):
            out[k] = op.project(torch.as_tensor(out[k], device=device), y_all[k]).float().cpu().numpy()
    progress.close()
    return out


def fuse_harmonic_many(guide: np.ndarray, ions: np.ndarray, scale: int, config: HarmonicConfig = HarmonicConfig(),
                       runtime=None, report: HarmonicReport | None = None,
                       measurement: MeasurementModel = MeasurementModel()) -> np.ndarray:
    """Fuse K ion images (K, h, w) (normalised units) with one guide (H, W, 3) in [0, 1]: (K, H, W) float32, each
    exactly consistent with its measurement under ``measurement``.

    A panel that a few basis images explain up to white noise is fused through them
    (:func:`shared_basis`): the basis images are fused, and each ion is their mixture made
    exactly consistent with its own measurement. The other ions (or all, when sharing saves
    nothing) are fused one by one, in batches of :meth:`PanelSettings.batch_on`, sharing the guide's
    κ; each gets its own ladder setting and exact consistency.
    """
    from msifusion.fit import Runtime, resolve_device

    runtime = runtime or Runtime()
    ions = np.asarray(ions, dtype=np.float32)
    if ions.ndim != 3:
        raise ValueError(f"ions must be (K, h, w); got shape {ions.shape}")
    if not np.isfinite(ions).all():
        raise ValueError("ion images contain NaN or infinite values")
    device = resolve_device(runtime.device)
    # an ion measured ≤ 0 everywhere (a log or baseline-subtracted image) is fused as its mirror image, so that the
    # non-negativity step keeps it ≤ 0 as it keeps the others ≥ 0
    flat = ions.reshape(len(ions), -1)
    signs = np.where((flat <= 0).all(1) & (flat < 0).any(1), -1.0, 1.0).astype(np.float32)[:, None, None]
    report = report if report is not None else HarmonicReport()
    out = _run(guide, ions * signs, scale, config, measurement, device, report, runtime.quiet)
    out *= signs
    report.notes = [{**note, "mirrored": True} if s < 0 else note for note, s in zip(report.notes, signs.ravel())]
    return out


def fuse_harmonic_stack(guide: np.ndarray, ions: np.ndarray, scale: int, runtime=None,
                        config: HarmonicConfig = HarmonicConfig(), measurement: MeasurementModel = MeasurementModel()):
    """The registry's entry: K normalised ions on one guide → one :class:`msifusion.fit.FitResult` per ion."""
    from msifusion.fit import FitResult

    report = HarmonicReport()
    images = fuse_harmonic_many(guide, ions, scale, config, runtime, report, measurement)
    results = []
    for k, (q, passes) in enumerate(report.settings):
        why = f"closed form (guided harmonic, κ at q{q:g}, {passes} refinement pass(es)"
        if report.notes[k].get("texture"):
            why += f", optical texture β {report.notes[k]['texture']:g}"
        if "shared_basis" in report.notes[k]:
            why += f"; through the panel's basis of {report.notes[k]['shared_basis']['rank']} fused images"
        why += ")"
        # a solver, not a training run: no loss curve; the choice and its scores go to run.json
        results.append(FitResult(images[k], [], 0, why, details=report.notes[k]))
    return results
