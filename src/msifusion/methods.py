"""The fusion methods behind ``--method``, and :func:`fuse`, the one entry point to all of them.

Every method sees the problem in normalised units (ion divided by its maximum absolute
value) and returns a :class:`~msifusion.fit.FitResult`; :func:`fuse` scales the result back,
so every method writes the ion image's own intensity units.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

import numpy as np

from msifusion.harmonic import HarmonicConfig
from msifusion.errors import InputError, check_setting_types
from msifusion.fit import CheckpointFn, FitConfig, FitResult, fit_network
from msifusion.runtime import (BYTES_PER_FUSED_PIXEL, Runtime, check_device, check_fused_size, resolve_device,
                               seeded)
from msifusion.io.images import optical_to_rgb, require_real, rgb_layout, torch_ready, validate_ion
from msifusion.measurement import MeasurementModel, project_consistent, upsample


@dataclass(frozen=True)
class FusionProblem:
    """A registered pair: guide (H, W, 3) in [0, 1], ion (h, w), H = h·scale, W = w·scale."""

    guide: np.ndarray
    ion: np.ndarray
    scale: int


@dataclass(frozen=True)
class MethodOptions:
    """How to fuse, for every method: the training recipe (fitted methods), seed, device and progress, the default
    method's settings, and what an MSI pixel measures. The method is named beside them (:func:`fuse`'s ``method``;
    a command's :class:`msifusion.workflows.fusion.FuseSettings` holds both)."""

    fit: FitConfig = FitConfig()
    runtime: Runtime = Runtime()
    on_checkpoint: CheckpointFn | None = None  # (epoch, output) of a fitted method, in units of the ion's peak
    harmonic: HarmonicConfig = HarmonicConfig()  # the guided-harmonic method's settings
    measurement: MeasurementModel = MeasurementModel()  # what an MSI pixel measures (consistency is scored under it)

    def __post_init__(self) -> None:
        check_setting_types(self)


@dataclass
class FusionResult:
    """The fused image in the ion's units, plus everything run.json reports."""

    image: np.ndarray
    method: str
    scale: int
    fit: FitResult  # how the fit went; its image is ``image`` itself where it could be scaled in place (_in_ion_units)
    seconds: float  # with panel_share, this ion's share of the panel's time
    intensity_scale: float
    consistency_error: float
    panel_share: bool = False  # fused together with the other ions of a panel (fuse_many, a method with run_many)
    warnings: list[str] = field(default_factory=list)  # wrong-signed values, inconsistency: output_warnings


MethodFn = Callable[[FusionProblem, MethodOptions], FitResult]
# several ions on one guide: (guide, ions (K, h, w) in normalised units, scale, options) → one FitResult per ion
ManyFn = Callable[[np.ndarray, np.ndarray, int, MethodOptions], list[FitResult]]


@dataclass(frozen=True)
class Method:
    name: str
    run: MethodFn
    summary: str
    fit_fields: tuple[str, ...] = ()  # the FitConfig fields it applies (a fitted network; none: a closed form)
    run_many: ManyFn | None = None  # shares work across the ions of one guide (else: one run per ion)
    # memory per fused pixel, a lower bound: the peak resident growth measured at 1536×1536 on the CPU, rounded down
    bytes_per_pixel: int = BYTES_PER_FUSED_PIXEL
    uses_measurement: bool = False  # its output is made exact under MethodOptions.measurement (the spot: --spot-sigma)

    @property
    def trains(self) -> bool:
        """Fits a network (uses FitConfig, seed and device)."""
        return bool(self.fit_fields)

    @property
    def runs_on_device(self) -> bool:
        """Runs on ``Runtime.device`` (a fitted network, or the default's solver); the others on the CPU always."""
        return self.trains or self.name == DEFAULT_METHOD

    def fit_settings(self, fit: FitConfig) -> dict | None:
        """The training settings this method applied (run.json): only the fields it takes from ``fit``."""
        return {k: v for k, v in asdict(fit).items() if k in self.fit_fields} if self.trains else None


METHODS: dict[str, Method] = {}


ALL_FIT_FIELDS = tuple(f.name for f in fields(FitConfig))


def register_method(name: str, summary: str, fit_fields: tuple[str, ...] = (), run_many: ManyFn | None = None,
                    bytes_per_pixel: int = BYTES_PER_FUSED_PIXEL, uses_measurement: bool = False
                    ) -> Callable[[MethodFn], MethodFn]:
    """Decorator: add a fusion method to :data:`METHODS` under ``name`` (what ``--method`` and ``msifusion methods``
    show), with the training options it uses (``fit_fields``), its many-ion entry, if any, the memory it needs per
    fused pixel where that is more than :data:`BYTES_PER_FUSED_PIXEL`, and whether it makes its output exact under
    the stated measurement model (``uses_measurement``; the others ignore a laser spot)."""
    def wrap(fn: MethodFn) -> MethodFn:
        METHODS[name] = Method(name, fn, summary, fit_fields, run_many, bytes_per_pixel, uses_measurement)
        return fn

    return wrap


def bytes_per_fused_pixel(method: str, device: str = "cpu") -> int:
    """The machine memory ``method`` needs per fused pixel, a lower bound (:attr:`Method.bytes_per_pixel`, measured
    on the CPU); a method run on CUDA (:attr:`Method.runs_on_device`: a fitted network's activations) keeps its working
    arrays in the GPU's memory, so there it is the default's."""
    m = METHODS[method]
    on_gpu = m.runs_on_device and resolve_device(device).type == "cuda"
    return BYTES_PER_FUSED_PIXEL if on_gpu else m.bytes_per_pixel


def check_memory(ion_shape: tuple[int, int], scale: int, method: str, device: str = "cpu") -> None:
    """Refuse, before any work, a fusion whose output grid ``method`` cannot fuse in this machine's memory
    (:func:`bytes_per_fused_pixel` times the fused pixels: :func:`msifusion.runtime.check_fused_size`)."""
    check_fused_size(ion_shape, scale, bytes_per_fused_pixel(method, device), method)


DEFAULT_METHOD = "guided-harmonic"  # measured best on the benchmark (docs/benchmarks.md); LCRN is --method lcrn


def infer_scale(guide_shape: tuple[int, int], ion_shape: tuple[int, int]) -> int:
    """The integer factor with guide = ion × factor on both axes; ValueError if there is none."""
    (H, W), (h, w) = guide_shape[:2], ion_shape[:2]
    if H % h or W % w:
        raise ValueError(f"optical shape {H}×{W} is not an integer multiple of ion shape {h}×{w}")
    if H // h != W // w:
        raise ValueError(f"optical shape {H}×{W} is ×{H // h} the ion's height and ×{W // w} its width ({h}×{w}); "
                         "the two factors must be equal")
    return H // h


FUSE_SETTINGS_HINT = (" (a FuseSettings holds a method and its options: pass settings.options as the options, and "
                      "settings.method as the method unless you name another)")


def _is_fuse_settings(value: object) -> bool:
    """A command's :class:`msifusion.workflows.fusion.FuseSettings`, known by its shape (the algorithms do not import
    the workflows)."""
    return isinstance(getattr(value, "options", None), MethodOptions) and hasattr(value, "method")


def check_methods(names: Sequence[str], option: str = "--method") -> None:
    """InputError (naming ``option``) for any name that is not a registered method (or not a name at all)."""
    for name in names:
        if not isinstance(name, str):  # e.g. a settings object passed where the method goes: its repr would be long
            raise InputError(option, f"a method is given by its name, a str (`msifusion methods` lists them), not "
                                     f"{type(name).__name__}{FUSE_SETTINGS_HINT if _is_fuse_settings(name) else ''}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(option, f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(sorted(METHODS))}")


def check_scale(scale: int | None) -> None:
    """``--scale``: None (inferred from the shapes) or an integer ≥ 2."""
    if scale is not None and not scale >= 2:
        raise InputError("--scale", f"scale must be at least 2, got {scale}")


def _array(value, what: str) -> np.ndarray:
    if hasattr(value, "pixels"):
        raise InputError(None, f"the {what} is an Image; pass its pixels (read_optical(path).pixels, "
                               "read_ion(path).pixels)")
    if hasattr(value, "images") and hasattr(value, "mzs"):
        raise InputError(None, f"the {what} is an IonStack; pass its images (stack.images)")
    if np.ma.isMaskedArray(value) and np.ma.getmaskarray(value).any():
        raise InputError(None, f"the {what} has {int(np.ma.getmaskarray(value).sum())} masked pixel(s); fill them "
                               "first (value.filled(…)): the tool cannot guess whether they mean no spectrum or a "
                               "bad value")
    if value is None or isinstance(value, (str, bytes, os.PathLike)):
        reader = "read_optical" if "optical" in what else "read_ion"
        raise InputError(None, f"the {what} must be an array, not {type(value).__name__}; read a file with "
                               f"msifusion.{reader}(path).pixels")
    try:
        return np.asarray(value)
    except ValueError as exc:  # a ragged list
        raise InputError(None, f"cannot read the {what} as one array: {exc}") from None


def _guide_in_unit_range(guide: np.ndarray) -> np.ndarray:
    """The guide as float32 in [0, 1]: integer and boolean images (uint8, uint16, as tifffile or OpenCV read them) as
    a file's pixels are read (:func:`msifusion.io.images.optical_to_rgb`: 8-bit as fractions of 255, 16-bit of
    the least camera depth's maximum that holds their values, signed ones with negatives min-max scaled); a float
    guide must already be in [0, 1]."""
    require_real(guide, None, "optical guide")
    if guide.dtype.kind in "uib":
        return optical_to_rgb(guide)
    guide = guide.astype(np.float32, copy=False)
    if not np.isfinite(guide).all():
        raise InputError(None, "the optical guide contains NaN or inf")
    low, high = float(guide.min()), float(guide.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise InputError(None, f"the optical guide must be in [0, 1], got values from {low:g} to {high:g}; "
                               "divide 8-bit values by 255, or read the file with read_optical")
    return guide


def _checked_guide(guide: np.ndarray) -> np.ndarray:
    """The guide as float32 (H, W, 3) in [0, 1] (see :func:`_guide_in_unit_range`), or an InputError. Gray, RGBA and
    channels-first arrays are laid out as files are (:func:`msifusion.io.images.rgb_layout`). Writable and
    C-contiguous, since a read-only array (a memory map, a frozen input) or a flipped view cannot back the torch
    tensors every method makes of it."""
    guide = _guide_in_unit_range(rgb_layout(_array(guide, "optical guide")))
    return torch_ready(guide)


def _checked_ion(guide_shape: tuple[int, ...], ion: np.ndarray, options: MethodOptions) -> tuple[np.ndarray, int, float]:
    """The ion as float32, the scale (from the checked guide's shape) and the ion's intensity scale (max |ion|), or an
    InputError."""
    ion = _array(ion, "ion image")
    if ion.ndim != 2:  # not squeezed as a file's singleton axes are: here a (1, h, w) array is a stack
        hint = "drop its last axis (ion[..., 0])" if ion.ndim == 3 and ion.shape[-1] == 1 else \
            "for a stack of ions use fuse_many"
        raise InputError(None, f"an ion image must be a 2-D (h, w) array, got shape {ion.shape}; {hint}")
    ion = validate_ion(ion)  # as a file's pixels: real, at least 2×2, finite, not all zero; float32
    try:
        scale = infer_scale(guide_shape, ion.shape)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    if scale < 2:
        raise InputError(None, f"the optical must be at least twice the ion's size (optical {guide_shape[0]}×"
                               f"{guide_shape[1]}, ion {ion.shape[0]}×{ion.shape[1]})")
    options.measurement.check(scale)
    return ion, scale, float(np.max(np.abs(ion)))


def _in_ion_units(result: FitResult, ion: np.ndarray, method: str, scale: int, intensity_scale: float,
                  seconds: float, options: MethodOptions, panel_share: bool = False,
                  not_owned: Sequence[np.ndarray] = ()) -> FusionResult:
    """The result in the ion's units, with its consistency error under the stated measurement model.

    The fit's image is scaled in place (a panel holds K fused images; the normalised one is not kept) unless it is
    not float32, read-only, or may share memory with one of ``not_owned`` (the caller's guide and ion, the other
    ions' fused images): then a copy is scaled, and the fit keeps its normalised image."""
    image = result.image
    if image.dtype != np.float32 or not image.flags.writeable or any(np.may_share_memory(image, a) for a in not_owned):
        image = image.astype(np.float32)
    image *= np.float32(intensity_scale)
    if not np.isfinite(image).all():  # a guard: every known cause is refused before (the spot's width, --lr)
        raise InputError(f"--method {method}", f"the fusion diverged: {int((~np.isfinite(image)).sum())} pixels are "
                                               "NaN or inf")
    error = options.measurement.consistency_error(image, ion, scale)
    fused = FusionResult(image, method, scale, result, seconds, intensity_scale, error, panel_share)
    fused.warnings = output_warnings(fused, ion, options.measurement.spot_sigma_px)
    return fused


MAX_CONSISTENCY_ERROR = 0.5  # above it, the fused image cannot be read in the ion's units
EXACT = 1e-4  # a consistency error at most this: the output reproduces the measurement (the bar)
SPOT_DIP_WARNING = 0.01  # under a laser spot, wrong-signed values beyond this share of the ion's peak are warned


def spot_dip_note(spot_sigma_px: float) -> str:
    """Why an exact output under a laser spot has wrong-signed values, and what to do about them."""
    return (f"undoing the laser spot (spot σ {spot_sigma_px:g} px) exactly sharpens the measurement's own contrast "
            "(bright MSI pixels beside dim ones, noise), the more the wider the spot, and dips below zero where it is "
            "steep; the image is exact under that model, so clip them for display only")


def output_warnings(result: FusionResult, ion: np.ndarray, spot_sigma_px: float = 0.0) -> list[str]:
    """Warnings when the fused image cannot be read as ion intensities, whatever the method (FusionResult.warnings).

    That is: negative values (beyond float rounding) from a non-negative ion image, or positive ones from an ion
    image that is ≤ 0 everywhere (a log or baseline-subtracted export), or a consistency error above
    :data:`MAX_CONSISTENCY_ERROR` (its block means do not give back the measured ion image). Under a laser spot
    (``spot_sigma_px``), from an output exact under it (consistency error at most :data:`EXACT`), wrong-signed values
    are what an exact inversion of the spot gives where the measurement's contrast is steep: they are warned apart,
    as such, beyond :data:`SPOT_DIP_WARNING` of the ion's peak; dips deeper than the peak itself mean contrast that
    a spot of that σ would have blurred away (a hot pixel, or σ too wide).
    """
    image = result.image
    peak = float(np.max(np.abs(ion)))
    # the sign every value should have (0: a signed ion, with none)
    sign = 1.0 if float(np.min(ion)) >= 0 else -1.0 if float(np.max(ion)) <= 0 else 0.0
    signed = image if sign > 0 else -image if sign < 0 else None  # one full-size copy at most, for an ion ≤ 0
    worst = float(np.min(signed)) if signed is not None else 0.0  # the most wrong-signed value, as a negative number
    exact_spot = spot_sigma_px > 0 and result.consistency_error <= EXACT  # an exact inversion of the spot
    floor = (SPOT_DIP_WARNING if exact_spot else 1e-6) * peak  # 1e-6: float rounding
    problems, warnings = [], []
    if worst < -floor:
        kind, bound = ("negative", "min") if sign > 0 else ("positive", "max")
        values = (f"{kind} values ({bound} {sign * worst:.3g}, {abs(worst) / peak:.2%} of the ion's peak; "
                  f"{int(np.sum(signed < -1e-6 * peak))} of {image.size} pixels)")  # beyond float rounding
        if exact_spot:
            deep = (" deeper than the ion's peak, so the measurement has contrast a spot that wide would have blurred "
                    "away (a hot or outlying MSI pixel, or σ stated wider than the instrument's)"
                    if abs(worst) > peak else "")
            warnings.append(f"the {result.method} output has {values}{deep}; {spot_dip_note(spot_sigma_px)}")
        else:
            source = "a non-negative ion image" if sign > 0 else "an ion image that is ≤ 0 everywhere"
            problems.append(f"{values} from {source}")
    if not result.consistency_error <= MAX_CONSISTENCY_ERROR:
        problems.append(f"consistency error {result.consistency_error:.3g} > {MAX_CONSISTENCY_ERROR} "
                        "(averaged back over each MSI pixel it does not give the measured image)")
    if problems:
        advice = "look at the fused image, or try another method"
        method = METHODS[result.method]
        if method.trains:  # a fitted network: the stopping rule or the cap may have left it short of the data
            if "patience" in method.fit_fields:
                more = "fit without early stopping (patience 0) for more epochs"
            else:  # the U-Net: its three stages end at the recipe's total, whatever --epochs says
                from msifusion.models.unet import UNetRecipe

                most = UNetRecipe().total_epochs
                more = ("give it more epochs (--epochs)" if result.fit.epochs < most else
                        f"its recipe ends at {most} epochs")
            advice = (f"the fit stopped at epoch {result.fit.epochs} ({result.fit.stop_reason}) before it matched the "
                      f"measurement; {more}, or try another method")
        warnings.append(f"the {result.method} output is not in the ion's units: {'; '.join(problems)}; {advice}")
    return warnings


def _method_and_options(method: str | None, options: MethodOptions | None) -> tuple[str, MethodOptions]:
    """The method to run (None: the default) and its options, checked."""
    options = MethodOptions() if options is None else options
    if not isinstance(options, MethodOptions):
        hint = FUSE_SETTINGS_HINT if _is_fuse_settings(options) else ""
        raise InputError(None, f"options must be a MethodOptions, not {type(options).__name__}{hint}")
    method = DEFAULT_METHOD if method is None else method
    check_methods([method], "method")
    check_device(options.runtime.device)
    return method, options


def fuse(
    guide: np.ndarray,
    ion: np.ndarray,
    method: str | None = None,
    options: MethodOptions | None = None,
) -> FusionResult:
    """Fuse an ion image (h, w) with a registered optical guide (h·scale, w·scale, 3) in [0, 1] (integer
    images as files are read, :func:`msifusion.io.images.optical_to_rgb`; gray or RGBA too); the result is in the
    ion's units.
    ``method``: a name from ``msifusion methods`` (:data:`METHODS`); by default guided-harmonic. Reproducible: the
    run is seeded with ``options.runtime.seed``, and the caller's random states are left as they were."""
    method, options = _method_and_options(method, options)
    guide = _checked_guide(guide)
    return _fuse_checked(guide, *_checked_ion(guide.shape, ion, options), method, options)


def _fuse_checked(guide: np.ndarray, ion: np.ndarray, scale: int, intensity_scale: float, method: str,
                  options: MethodOptions) -> FusionResult:
    check_memory(ion.shape, scale, method, options.runtime.device)
    problem = FusionProblem(guide, ion / intensity_scale, scale)
    start = time.perf_counter()
    with seeded(options.runtime.seed):
        result = METHODS[method].run(problem, options)
    return _in_ion_units(result, ion, method, scale, intensity_scale, time.perf_counter() - start, options,
                         not_owned=(guide, ion))


def fuse_many(
    guide: np.ndarray,
    ions: np.ndarray,
    method: str | None = None,
    options: MethodOptions | None = None,
) -> list[FusionResult]:
    """Fuse several ion images (K, h, w) with one guide; each result in its own ion's units.

    Methods that share work across ions (:attr:`Method.run_many`; for guided-harmonic a
    fused basis of the panel, see :func:`msifusion.harmonic.shared_basis`) run them
    together: each result is exactly consistent with its own ion and measured as good as
    fusing it alone, though not identical to it. The others run once per ion. A result's
    ``seconds`` is its share of the shared run. ``method`` and ``options`` as for :func:`fuse`.
    """
    method, options = _method_and_options(method, options)
    if hasattr(ions, "shape") or hasattr(ions, "images"):  # one array (K, h, w), or an IonStack (refused with a hint)
        stack = _array(ions, "ion images")
        if stack.ndim != 3:
            raise InputError(None, f"fuse_many takes a stack (K, h, w) of ion images, got shape {stack.shape}"
                                   + ("; for one ion use fuse" if stack.ndim == 2 else ""))
        ions = list(stack)
    else:
        ions = list(ions)  # a list, tuple or generator of (h, w) ions
    if not ions:
        raise InputError(None, "fuse_many got no ion images")
    guide = _checked_guide(guide)  # once, not per ion
    checked = []
    for k, ion in enumerate(ions):
        try:
            checked.append(_checked_ion(guide.shape, ion, options))
        except InputError as exc:
            raise InputError(exc.source, f"ion {k + 1} of {len(ions)}: {exc.problem}") from None
    run_many = METHODS[method].run_many
    if run_many is None or len(checked) == 1:
        return [_fuse_checked(guide, *c, method, options) for c in checked]
    if len({ion.shape for ion, _, _ in checked}) > 1:
        raise InputError(None, f"method {method!r} fuses a panel together, so its ion images need one shape; got "
                               f"{sorted({ion.shape for ion, _, _ in checked})}")
    scale = checked[0][1]
    check_memory(checked[0][0].shape, scale, method, options.runtime.device)
    normalised = np.stack([ion / peak for ion, _, peak in checked])
    start = time.perf_counter()
    with seeded(options.runtime.seed):
        results = run_many(guide, normalised, scale, options)
    share = (time.perf_counter() - start) / len(checked)
    images = [r.image for r in results]  # a method may hand two ions one array: then each scales its own copy
    return [_in_ion_units(r, ion, method, scale, peak, share, options, True, (guide, ion, *images[:k], *images[k + 1:]))
            for k, (r, (ion, _, peak)) in enumerate(zip(results, checked))]


# ----------------------------------------------------------------------------- methods


@register_method("bilinear", "bilinear interpolation of the ion image (OpenCV INTER_LINEAR), the paper's baseline")
def _bilinear(problem: FusionProblem, options: MethodOptions) -> FitResult:
    return FitResult(upsample(problem.ion, problem.scale, "bilinear"))


@register_method("lcrn", "LCRN as published: residual CNN, MSE + edge perceptual loss, edge-loss early stopping",
                 fit_fields=ALL_FIT_FIELDS, bytes_per_pixel=1400)
def _lcrn(problem: FusionProblem, options: MethodOptions) -> FitResult:
    from msifusion.models.lcrn import LCRN

    target = upsample(problem.ion, problem.scale, "bilinear")
    return fit_network(LCRN(), problem.guide, target, options.fit, options.runtime,
                       options.on_checkpoint, desc="lcrn")


# ----------------------------------------------------- comparison methods (classical.py, models/)


@register_method("bicubic", "bicubic interpolation of the ion image (OpenCV INTER_CUBIC)")
def _bicubic(problem: FusionProblem, options: MethodOptions) -> FitResult:
    return FitResult(upsample(problem.ion, problem.scale, "bicubic"))


@register_method("guided", "guided filter (He et al.) of the bilinear upsampling, RGB optical as guide, "
                           "radius = scale, eps = 1e-3", bytes_per_pixel=240)
def _guided(problem: FusionProblem, options: MethodOptions) -> FitResult:
    from msifusion.classical import guided_upsample

    return FitResult(guided_upsample(problem.guide, problem.ion, problem.scale))


@register_method("bilinear-bp", "bilinear interpolation + back-projection onto the measurement (exactly consistent, "
                                "under a laser spot too)", uses_measurement=True)
def _bilinear_bp(problem: FusionProblem, options: MethodOptions) -> FitResult:
    start = upsample(problem.ion, problem.scale, "bilinear")
    return FitResult(project_consistent(start, problem.ion, problem.scale, options.measurement.spot_sigma_px))


@register_method("guided-bp", "guided filter + back-projection onto the measurement (exactly consistent, under a "
                              "laser spot too)", bytes_per_pixel=240, uses_measurement=True)
def _guided_bp(problem: FusionProblem, options: MethodOptions) -> FitResult:
    from msifusion.classical import guided_upsample

    start = guided_upsample(problem.guide, problem.ion, problem.scale)
    return FitResult(project_consistent(start, problem.ion, problem.scale, options.measurement.spot_sigma_px))


@register_method("diffusion", "training-free guided anisotropic diffusion with exact per-block consistency (DADA "
                              "without features; back-projected under a laser spot)", bytes_per_pixel=85,
                 uses_measurement=True)
def _diffusion(problem: FusionProblem, options: MethodOptions) -> FitResult:
    from msifusion.classical import anisotropic_diffusion

    fused = anisotropic_diffusion(problem.guide, problem.ion, problem.scale)
    spot = options.measurement.spot_sigma_px
    if spot > 0:  # its block rescaling is exact under the box model only
        fused = project_consistent(fused, problem.ion, problem.scale, spot)
    return FitResult(fused)


@register_method("pls", "PLS regression from optical features to the ion image (Van de Plas et al. 2015 style)",
                 bytes_per_pixel=95)
def _pls(problem: FusionProblem, options: MethodOptions) -> FitResult:
    from msifusion.classical import pls_fusion

    return FitResult(pls_fusion(problem.guide, problem.ion, problem.scale))


# its loss is fixed (MSE only): it takes neither w_mse nor w_edge
@register_method("cnn3", "the paper's three-layer CNN comparison (SRCNN 9-1-5), MSE only, LCRN's recipe "
                         "otherwise", fit_fields=tuple(f for f in ALL_FIT_FIELDS if f not in ("w_mse", "w_edge")),
                 bytes_per_pixel=1000)
def _cnn3(problem: FusionProblem, options: MethodOptions) -> FitResult:
    from dataclasses import replace

    from msifusion.models.cnn3 import CNN3

    target = upsample(problem.ion, problem.scale, "bilinear")
    config = replace(options.fit, w_mse=1.0, w_edge=0.0)
    return fit_network(CNN3(), problem.guide, target, config, options.runtime, options.on_checkpoint, desc="cnn3")


@register_method("unet", "the paper's U-Net comparison: 3-stage training with MSE, correlation and reconstruction "
                         "losses", fit_fields=("max_epochs", "lr", "checkpoint_every"),  # its own stages, stopping
                 bytes_per_pixel=1250)
def _unet(problem: FusionProblem, options: MethodOptions) -> FitResult:
    from msifusion.models.unet import UNetRecipe, fit_unet

    target = upsample(problem.ion, problem.scale, "bilinear")
    recipe = UNetRecipe(lr=options.fit.lr, checkpoint_every=options.fit.checkpoint_every)
    return fit_unet(problem.guide, target, problem.ion, problem.scale, recipe, options.fit.max_epochs,
                    options.runtime, options.on_checkpoint)


SMOOTHEST_LABEL = "the smoothest setting"  # the ladder's first rung, kept where the walk took no step
SMOOTHEST_WHY = "one scale coarser, the optical's finer edges did not predict"
SPREAD_LABEL = "blurred to their own spread"  # the ion proved less sharp than the optical below the MSI pixel
PLATE_LABEL = "as a thin plate"  # the ion proved smoother than the membrane: the optical's edges left out


def _guided_harmonic_many(guide: np.ndarray, ions: np.ndarray, scale: int, options: MethodOptions) -> list[FitResult]:
    """K normalised ions on one guide → one :class:`FitResult` per ion, its setting told in words and in detail."""
    from msifusion.harmonic import HarmonicReport, fuse_harmonic_many

    report = HarmonicReport()
    images = fuse_harmonic_many(guide, ions, scale, options.harmonic, options.runtime, report,
                                options.measurement)
    results = []
    for k, (q, passes) in enumerate(report.settings):
        plate = report.notes[k].get("plate_px")
        why = (f"closed form (guided harmonic: a thin plate of ℓ {plate:g} px, the smoothest image with the measured "
               "MSI pixels; one scale coarser the ion proved smoother than the optical's edges make it, so it follows "
               "none of them" if plate else f"closed form (guided harmonic, κ at q{q:g}, {passes} refinement pass(es)")
        if report.notes[k].get("texture"):
            why += f", optical texture β {report.notes[k]['texture']:g}"
        if "shared_basis" in report.notes[k] and not plate:
            why += f"; through the panel's basis of {report.notes[k]['shared_basis']['rank']} fused images"
        if report.notes[k].get("kept_smoothest") and not plate:
            why += f"; {SMOOTHEST_LABEL}: {SMOOTHEST_WHY} this ion, so it follows only the optical's strongest edges"
        if report.notes[k].get("spread_px"):
            why += (f"; blurred by σ {report.notes[k]['spread_px']:g} px: one scale coarser the ion proved less sharp "
                    "than the optical")
        why += ")"
        # a solver, not a training run: no loss curve; the choice and its scores go to run.json
        results.append(FitResult(images[k], [], 0, why, details=report.notes[k]))
    return results


@register_method("guided-harmonic", "the smoothest image along the optical's edges whose MSI-pixel means equal the "
                 "measurement exactly; how far to trust the optical chosen per ion", run_many=_guided_harmonic_many,
                 uses_measurement=True)
def _guided_harmonic(problem: FusionProblem, options: MethodOptions) -> FitResult:
    return _guided_harmonic_many(problem.guide, problem.ion[None], problem.scale, options)[0]
