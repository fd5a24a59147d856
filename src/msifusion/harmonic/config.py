"""The guided harmonic method's settings: :class:`HarmonicConfig` and its groups, one per thing they decide
(the ladder and its walk, the optical's texture, the ion's spread, the thin plate, the coarse-level test, the exact
solve, panels of ions), each checking its own values."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from msifusion.errors import check_setting_types


@dataclass(frozen=True)
class LadderSettings:
    """How far to trust the optical: the settings tried, in order, and the walk that chooses among them.

    ``rungs``: the settings, each (edge quantile q in %, refinement passes); κ = the q-th percentile of the guide's
    neighbour colour differences (outside areas of exactly one colour, such as a frame of glass clipped at white:
    :func:`msifusion.harmonic.texture.one_colour_area`), so a low q makes most optical edges block. A setting replaces
    the previous choice only if it predicts the held-back measurement better by ``significance`` standard errors of the
    paired per-block differences (0: any gain in the mean) and on more blocks than it loses by ``sign_significance``
    binomial standard deviations (0: any majority). ``turn_back``: where a setting sharper than the walk's choice
    predicts significantly worse (the coarse curve turns up past its minimum), take the setting one rung smoother. One
    scale coarser the optical's edges carry more (a quarter of the constraints), so the test's minimum lies sharper than
    the measured scale's; where its curve is still falling (or flat) at the sharpest rung, as on the plant phantoms,
    depth edges and most shapes, the choice stands. Measured on cells whose interiors carry a texture the ion does not
    follow (the ladder went to (50, 1) where (80, 1) or (65, 1) was right: −1.5 to −4.5 dB); see docs/benchmarks.md.
    """

    rungs: tuple[tuple[float, int], ...] = ((99.9, 0), (80.0, 0), (80.0, 1), (65.0, 1), (50.0, 1), (20.0, 1))
    significance: float = 4.0
    sign_significance: float = 2.0
    turn_back: bool = True

    def __post_init__(self) -> None:
        if not self.rungs:
            raise ValueError("the ladder needs at least one of its rungs (quantile, passes)")
        for q, passes in self.rungs:
            if not 0 < q < 100 or passes < 0:
                raise ValueError(f"the ladder rungs hold a bad setting {(q, passes)}: quantile in (0, 100), "
                                 "passes ≥ 0")
        if min(self.significance, self.sign_significance) < 0:
            raise ValueError("the ladder's significances must be ≥ 0")


@dataclass(frozen=True)
class TextureSettings:
    """Carrying the optical's fine texture over: strengths β tried, in order (the first is the default, normally
    0 = none), for :func:`msifusion.harmonic.texture.optical_detail` at ``sigma_px``.

    β is chosen per ion by the coarse-level test at ``significance`` standard errors, and only for an ion that
    climbed the ladder: a gatekeeping order, in which the strict test on the optical's edges must pass before the
    one-parameter refinement is tried, so the second can be laxer (measured: at 2 instead of 4, dev phantoms +0.15
    dB and the 24 unseen variants +0.10, no case lower; without the gate the texture was taken on two prostate ions
    whose ladder stayed at the bottom, and cost them 1 dB). β's walk is an ordered one
    (:func:`msifusion.harmonic.selection._walk`): a strength significantly worse than the current choice ends it,
    and none is taken where the strongest is significantly worse than none or than the choice. ``snr_db``: β is
    tried only where the optical's fine texture stands this far above what the guide's own pixel noise would give it
    (:func:`msifusion.harmonic.texture.texture_snr_db`; measured: on a dim synthetic guide with 2 % noise, 3.7 dB, β
    = 0.5 copied that noise into the ion and cost 2.5 dB; our plant phantoms 19–20 dB, synthetic cells with walls
    12–29 dB).

    ``flat_prior``: where the test cannot tell the strengths apart (none is significantly better or worse than none),
    an ion that climbed the ladder takes the second strength: a small measurement at ×20 gives
    the test too few blocks to see a texture the ion has (measured on phantom seeds no choice was made on, 9–12: two
    of 24 cases moved, +0.22 and +0.39 dB; the 24 unseen variants: two moved, +0.26 and −0.12; seeds 1–4,
    Middlebury, the prostate and the 25 synthetic shapes, cells included: none moved).
    """

    strengths: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    sigma_px: float = 1.5
    significance: float = 2.0
    snr_db: float = 10.0
    flat_prior: bool = True

    def __post_init__(self) -> None:
        steps_up = all(a < b for a, b in zip(self.strengths, self.strengths[1:]))
        if not self.strengths or min(self.strengths) < 0 or not steps_up or self.sigma_px <= 0 or self.significance < 0:
            raise ValueError("texture needs strengths (at least one, ≥ 0, increasing: β's walk steps up them in "
                             "order), sigma_px > 0 and significance ≥ 0")

    @classmethod
    def off(cls) -> TextureSettings:
        """No texture step: β = 0 for every ion (``--no-texture``)."""
        return cls(strengths=(0.0,))


@dataclass(frozen=True)
class SpreadSettings:
    """The ion's own spread below the MSI pixel: Gaussian blurs of the fused image, σ = ``widths`` × the MSI pixel
    (width · f fine pixels), tried by the coarse-level test at the ion's chosen setting and β.

    A real ion image need not be as sharp as the optical: the analyte spreads while the matrix is applied, and a
    finer MSI raster has its own laser spot. The optical's edges can then predict the ion at the MSI pixel's scale
    and misplace it below (measured: prostate m/z 1217.52 measured at 200 µm follows the H&E at 200 µm, and its 25 µm
    truth is best matched by the H&E-guided image blurred by σ = 75 µm). The test fuses the measurement's 2×2 block
    average at 2f as for the ladder, blurs the result by the same σ in fine pixels (the same physical width) and
    compares its block means at f with the measurement. A width is taken only where some width predicts better than
    none by ``significance`` standard errors on significantly more blocks (``sign_significance``; the ladder's walk,
    :func:`msifusion.harmonic.selection._walk`); then the widest width within one standard error of the one with the
    least coarse error (:func:`msifusion.harmonic.selection._choose_spread`). The blurred image is made exact again.
    ``widths`` empty: no spread (:meth:`off`).
    """

    widths: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5)
    significance: float = 4.0
    sign_significance: float = 2.0

    def __post_init__(self) -> None:
        if any(not 0 < w <= 2 for w in self.widths) or any(a >= b for a, b in zip(self.widths, self.widths[1:])):
            raise ValueError("spread widths must increase and lie in (0, 2] MSI pixels")
        if min(self.significance, self.sign_significance) < 0:
            raise ValueError("the spread's significance and sign_significance must be ≥ 0")

    @classmethod
    def off(cls) -> SpreadSettings:
        """No spread: every ion as sharp as its setting makes it."""
        return cls(widths=())


@dataclass(frozen=True)
class PlateSettings:
    """The thin plate: for an ion the optical's edges do not predict, the smoothest image with its block means,
    ``xᵀ (L + ℓ² L²) x`` least (:func:`msifusion.harmonic.plate.plate_interpolate_t`), ℓ = ``lengths`` × the MSI
    pixel (ℓ · f fine pixels), tried by the coarse-level test at the ion's chosen setting and β where no spread is
    taken.

    The membrane alone (the ladder's smoothest setting) has a constant Laplacian inside each MSI pixel: a kink at
    every block border that no smooth ion has (measured: on the prostate's ions that keep the smoothest setting the
    plate gains up to +0.1 dB and +0.005 SSIM). The test fuses the measurement's 2×2 block average at 2f by the plate
    of the same length in fine pixels (the same physical length) and compares its block means at f with the
    measurement; the lengths are walked in order as the texture's strengths are
    (:func:`msifusion.harmonic.selection._walk`, ``ordered``) at ``significance`` standard errors, without the sign
    test: the plate's gain sits in the blocks where the ion curves, a minority. ``lengths`` empty: no plate (:meth:`off`); a one-setting ladder runs the
    coarse test for the plate (and the spread) unless both are off.
    """

    lengths: tuple[float, ...] = (0.25, 0.5, 1.0)
    significance: float = 4.0

    def __post_init__(self) -> None:
        if any(not 0 < v <= 8 for v in self.lengths) or any(a >= b for a, b in zip(self.lengths, self.lengths[1:])):
            raise ValueError("plate lengths must increase and lie in (0, 8] MSI pixels")
        if self.significance < 0:
            raise ValueError("the plate's significance must be ≥ 0")

    @classmethod
    def off(cls) -> PlateSettings:
        """No plate: every ion keeps its setting's membrane."""
        return cls(lengths=())


WINDOW_PIXELS = 600_000  # one phase's central window at most, in fine pixels (0.15-0.3 s of test per ginkgo-sized
# ion, docs/benchmarks.md §1): CoarseTest.pixels beyond it buys shifted phases, not a larger window


def window_shrink(height: int, width: int, pixels: int) -> float:
    """The factor on each side that brings a ``height``×``width`` image within ``pixels`` (1 where it is already):
    the side of a central test window (the coarse test's, the texture's noise estimate)."""
    return min(1.0, math.sqrt(pixels / (height * width)))


@dataclass(frozen=True)
class CoarseTest:
    """The self-supervised test behind both walks (the ladder's and β's): the measurement block-averaged 2×2 is
    fused and predicted back at the measured grid.

    ``pixels``: at most this many fine pixels in all (a central window of at most :data:`WINDOW_PIXELS`, in up to
    four shifted phases), so that the choice costs little on large images and is steady on small ones; its solves
    start from the previous setting's solution before refinement and stop at the looser ``tolerance`` (a ranking
    needs less precision than an output), the early-stopped refinement pass too, which so stops sooner than the
    output's (the output's refinement run in the test moved one of 26 phantom and Middlebury cases, by −0.12 dB:
    docs/benchmarks.md). ``winsor_percent``: the walks' paired per-block differences are clipped to
    their percentiles at this value and 100 minus it before the mean test, so that a few hot MSI pixels, whose
    blocks no setting predicts, cannot hide the gain of the rest (measured: three hot pixels at 20× the 99th
    percentile dropped the test to the bottom rung and the ion by 2–3 dB).
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
    ``halo_blocks`` MSI pixels for large images. ``diagonal_weight``: the refinement pass also joins diagonal
    neighbours, at this share of their own conductance (0: 4 neighbours only). A one-pixel line drawn at an angle
    is joined pixel to pixel only diagonally; measured on the phantoms +0.07 dB, on Middlebury +0.14 to +0.19 dB, no
    synthetic variant lower (docs/benchmarks.md).

    ``soft_scale``: for an ion that took the optical's texture (β > 0), the output's refinement pass fits the block
    means softly, with weight μ = ``soft_scale`` / σ² per fine pixel (σ: the measurement's white noise in units of the
    ion's peak, :func:`msifusion.harmonic.setting.measurement_noise`), and the exact projection then restores them:
    each MSI pixel's noise is spread smoothly over it rather than gathered into the small regions that the optical's
    edges isolate (where, with the texture, it costs most). μ grows as the noise falls; the estimate also reads the
    ion's own detail at the MSI pixel, so noise-free data get a soft pass too, a weak one where that detail is fine.
    0: off. Measured (docs/benchmarks.md): benchmark phantoms +0.09 dB, dev phantoms +0.07, the noisy synthetic
    variants up to +0.36, the noise-free ones −0.01 to −0.09; the coarse test keeps the exact pass, so no choice
    changes."""

    weight_floor: float = 1e-3
    refine_scale: float = 0.1
    diagonal_weight: float = 0.5
    soft_scale: float = 3e-6
    iterations: int = 100
    tolerance: float = 1e-3
    tile_pixels: int = 4_000_000
    halo_blocks: int = 6

    def __post_init__(self) -> None:
        if self.weight_floor <= 0 or self.refine_scale <= 0 or not (self.diagonal_weight >= 0 and self.soft_scale >= 0):
            raise ValueError("weight_floor and refine_scale must be positive, diagonal_weight and soft_scale ≥ 0")
        if self.iterations < 1 or self.tolerance <= 0:
            raise ValueError("iterations ≥ 1 and tolerance > 0 required")
        if self.tile_pixels < 4096 or self.halo_blocks < 0:
            raise ValueError("tile_pixels ≥ 4096 and halo_blocks ≥ 0 required")


@dataclass(frozen=True)
class PanelSettings:
    """A panel of ions on one guide: at least ``min_ions`` share one fused basis of at most ``max_rank`` images
    (:func:`msifusion.harmonic.panel.shared_basis`); an ion joins it when what the basis leaves of its measurement
    is white noise (neighbour autocorrelation at most ``whiteness``), else it is fused alone. ``ion_batch``: ions
    solved together (None: :meth:`batch_on` picks by device); results do not depend on it (on the CPU bit for bit
    for ions fused alone, to float32 rounding through a shared basis; on CUDA, whose kernels can round differently
    by batch size, to the solver's tolerance)."""

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

    ``positive``: the non-negativity step for non-negative measurements (exactly non-negative under the box model;
    under a spot, nearly: :meth:`msifusion.measurement.Measurement.project_positive`). ``edge_weight``:
    optional weight of the paper's edge perceptual term ``‖K x − K lum(g)‖²`` (K: the Laplacian of
    :mod:`msifusion.losses`) added to the energy; 0 by default (measured: it does not help against truth). What an MSI
    pixel measures is not a setting of the method but of the data: :class:`msifusion.measurement.MeasurementModel`.
    """

    ladder: LadderSettings = LadderSettings()
    texture: TextureSettings = TextureSettings()
    spread: SpreadSettings = SpreadSettings()
    plate: PlateSettings = PlateSettings()
    test: CoarseTest = CoarseTest()
    solver: SolverSettings = SolverSettings()
    panel: PanelSettings = PanelSettings()
    positive: bool = True
    edge_weight: float = 0.0

    def __post_init__(self) -> None:
        check_setting_types(self)
        if self.edge_weight < 0:
            raise ValueError("edge_weight must be ≥ 0")
