"""Guided harmonic fusion: the smoothest image along the optical's edges whose MSI pixels equal the measurement.

Nine modules, each readable on its own, each importing only those listed before it (names with a leading
underscore are shared between them, not offered to users):

- :mod:`msifusion.harmonic.kernels`: the solver's fused CPU kernels (numba), its torch path's answers to float32
  rounding;
- :mod:`msifusion.harmonic.solver`: the exact solver, projected conjugate gradients under ``A x = y`` with an
  aggregation multigrid whose levels nest in the MSI blocks;
- :mod:`msifusion.harmonic.config`: :class:`HarmonicConfig` and its groups of settings, each checking its own values;
- :mod:`msifusion.harmonic.texture`: the optical's fine texture (:func:`optical_detail`), where it has none (areas of
  one colour: :func:`one_colour_area`), and how far it stands above
  the guide's pixel noise (:func:`guide_noise`, :func:`texture_snr_db`);
- :mod:`msifusion.harmonic.plate`: the thin plate, the smoothest image with the measured block means in closed
  form (:func:`~msifusion.harmonic.plate.plate_interpolate_t`), for ions the optical's edges do not predict;
- :mod:`msifusion.harmonic.setting`: conductances (κ: :func:`edge_scales`), what every ion on one guide shares, and
  one ladder setting's exact solve with its refinement, non-negativity and texture steps, the plate's image; the
  measurement's noise
  (:func:`measurement_noise`) and the refinement's soft measurement term it weighs;
- :mod:`msifusion.harmonic.panel`: many ions through a shared basis (:func:`shared_basis`);
- :mod:`msifusion.harmonic.selection`: the self-supervised choice of setting, texture strength, spread and plate
  (:func:`choose_settings`) and its paired per-block walk;
- :mod:`msifusion.harmonic.run`: the entry point (:func:`fuse_harmonic_many`, each ion's choices in a
  :class:`HarmonicReport`): shared basis or ion batches, tiles.

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
:mod:`msifusion.harmonic.solver`; the others are the method around it).

Five additions, each measured on the benchmark (docs/benchmarks.md):

- *Refinement*: one re-weighted pass (IRLS) multiplies the conductances by
  ``1 / (1 + (|x_i − x_j| / τ)²)`` of the first solution (τ = ``SolverSettings.refine_scale``·std(y)):
  optical edges the ion does not follow are smoothed over, edges it does follow sharpen
  (a step towards guided total variation); the pass also joins diagonal neighbours, at half their own
  conductance (``SolverSettings.diagonal_weight``: a one-pixel line at an angle is joined only diagonally).
  These conductances nearly cut the grid, and
  their exact minimiser over-sharpens: the pass is a fixed budget of Jacobi-preconditioned
  CG steps from the first solution (:data:`REFINE_ITERATIONS`), an early-stopped solve
  that measured 0.3 dB better at ×20 than the multigrid-converged one.
- *Self-supervised choice of how far to trust the optical*: a ladder of settings from
  "ignore the optical" to "follow every edge" (κ at a low quantile of the guide's neighbour
  differences outside areas of exactly one colour, :func:`one_colour_area`, with refinement). Each is
  run on the same problem one level coarser (the measurement block-averaged 2×2, predicted back at the
  measured grid); a setting replaces
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
  exactly zero. Under a laser spot the rescaled image is then made exact by the smooth
  projection, a correction that vanishes as the spot narrows (so the spot model's output
  tends to the box model's) and that may leave shallow negatives next to empty blocks.
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
  β predicts the measurement significantly worse than none or than the chosen β (a gain at a weak strength
  that turns into a loss at a strong one is a partial fit of something else).
- *Noise, for an ion that takes the texture*: its output's refinement pass fits the block means softly, with weight
  μ = ``SolverSettings.soft_scale`` / σ² per fine pixel (σ: the measurement's white noise, estimated from the ion
  image itself, :func:`measurement_noise`), and the exact projection then restores them: each MSI pixel's noise is
  spread smoothly over it rather than gathered into the small regions that the optical's edges isolate, where with
  the texture it costs most. μ grows as the noise falls (the estimate also reads the ion's own detail at the MSI
  pixel, so noise-free data get a weak soft pass too); the coarse-level test keeps the exact pass.
- *The ion's own spread*: an ion may follow the optical at the MSI pixel's scale and not below it (the analyte
  spreads while the matrix is applied). At the chosen setting and β, the coarse-level test also tries Gaussian blurs
  of σ = 1/8 to 1/2 MSI pixel (the same width in fine pixels at 2f as at f, :class:`SpreadSettings`); where one
  predicts significantly better than none, the output is blurred by the widest width within a standard error of the
  best and made exact again.
- *The thin plate*: where no spread is taken, the test also tries, in place of the chosen setting's image, the
  smoothest image with the measured MSI pixels, ``xᵀ(L + ℓ²L²)x`` least for a uniform L (ℓ = 1/4, 1/2, 1 MSI pixel,
  :class:`PlateSettings`), and takes it where it predicts better (the ordered walk). The membrane keeps a kink at
  every MSI pixel's border; an ion that follows none of the optical's edges is smoother than that. An ion whose
  edges the optical predicts rejects it by far (its coarse errors 1.2 to 2.7 times the setting's).

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
Jacobi-CG steps run as fused kernels (:mod:`msifusion.harmonic.kernels`): the solver is bound by
memory traffic there.
"""

from msifusion.harmonic.config import (CoarseTest, HarmonicConfig, LadderSettings, PanelSettings, PlateSettings,
                                       SolverSettings, SpreadSettings, TextureSettings)
from msifusion.harmonic.panel import SHARED_MIN_PIXELS, SharedBasis, residual_whiteness, shared_basis
from msifusion.harmonic.run import HarmonicReport, fuse_harmonic_many
from msifusion.harmonic.selection import choose_settings
from msifusion.harmonic.setting import REFINE_ITERATIONS, colour_differences, edge_scales, measurement_noise
from msifusion.harmonic.texture import guide_noise, one_colour_area, optical_detail, texture_snr_db

__all__ = [
    "REFINE_ITERATIONS", "SHARED_MIN_PIXELS", "CoarseTest", "HarmonicConfig", "HarmonicReport", "LadderSettings",
    "PanelSettings", "PlateSettings", "SharedBasis", "SolverSettings", "SpreadSettings", "TextureSettings",
    "choose_settings", "colour_differences", "edge_scales", "fuse_harmonic_many", "guide_noise", "measurement_noise",
    "one_colour_area", "optical_detail", "residual_whiteness", "shared_basis", "texture_snr_db",
]
