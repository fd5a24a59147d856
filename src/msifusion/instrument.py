"""From instrument files to fused ions: imzML + microscope image → registered guide → fused ions.

Registration conventions (see :mod:`msifusion.register`): the optical is the moving image,
the ion grid the fixed one. With BigWarp landmarks, coordinates are in each image's units as
Fiji saw them: the optical's file calibration (or ``optical_pixel_size``), and for the fixed
image the ion image, optionally enlarged ``fixed_scale`` times as the paper did, calibrated
at ``fixed_pixel_size`` per pixel of that image (default: the ion pixel size in µm divided
by ``fixed_scale`` when the ion image is calibrated, else 1 = pixels).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from msifusion.errors import InputError
from msifusion.fit import elapsed_bar
from msifusion.io.images import OPTICAL_SUFFIXES, Image, read_optical, require_file, write_rgb_tiff, write_tiff
from msifusion.io.imzml import ImzML, IonStack, as_mz_list, parse_tolerance, write_ion_stack, write_ion_tiffs
from msifusion.io.landmarks import Landmarks, read_landmarks, write_bigwarp_csv
from msifusion.io.outdir import check_output_dir, free_bytes, staged_output_dir
from msifusion.io.units import SQUARE_REL_TOL, check_pixel_size
from msifusion.methods import METHODS, check_fused_size, check_scale, fuse_many, infer_scale, panel_part_size
from msifusion.pipeline import (FuseSettings, RegisteredPair, coarse_optical_warning, fuse_pair,
                                panel_record, uncalibrated_warning, write_fusion_outputs)
from msifusion.provenance import run_header, write_run_json
from msifusion.register import (AMBIGUOUS_PX, CONVINCING_SCORE, AffineMap, AutoRegisterOptions, Grid, check_landmarks,
                                landmarks_from_transform, optical_feature, otsu_level, outside_share,
                                register_auto, resample_optical, transform_from_landmarks)
from msifusion.report import save_alignments, save_ion_grid, save_overlay, save_rgb_png


def _as_paths(request: object, *names: str) -> None:
    """Take a frozen request's path fields as :class:`Path` (Python callers may give ``str``); None stays None."""
    for name in names:
        if getattr(request, name) is not None:
            object.__setattr__(request, name, Path(getattr(request, name)))


@dataclass(frozen=True)
class RegisterSettings:
    """How to bring the optical onto the ion grid × ``scale``.

    ``transform``, ``fixed_pixel_size`` and ``fixed_scale`` describe landmarks and need them (``transform``
    None: the type a BigWarp JSON export names, else tps, as BigWarp's default); ``deformable`` refines
    automatic registration and is refused with landmarks.
    """

    scale: int
    landmarks: Path | None = None
    transform: str | None = None
    optical_pixel_size: float | None = None
    fixed_pixel_size: float | None = None
    fixed_scale: int = 1
    deformable: bool = False

    def __post_init__(self) -> None:
        _as_paths(self, "landmarks")
        if self.scale is None:
            raise InputError("--scale", "give the magnification, e.g. --scale 10")
        check_scale(self.scale)
        if self.fixed_scale < 1:
            raise InputError("--fixed-scale", "must be at least 1")
        check_pixel_size("--optical-pixel-size", self.optical_pixel_size)
        check_pixel_size("--fixed-pixel-size", self.fixed_pixel_size)
        if self.landmarks is None:
            landmark_only = {"--transform": self.transform is not None, "--fixed-pixel-size": self.fixed_pixel_size,
                             "--fixed-scale": self.fixed_scale != 1}
            for option, given in landmark_only.items():
                if given:
                    raise InputError(option, "describes the landmarks; it needs --landmarks")
        elif self.deformable:
            raise InputError("--deformable", "applies to automatic registration only, not with --landmarks")

    def optical_pixel_needed_um(self, ion_pixel_um: float | None) -> float | None:
        """The coarsest optical pixel the fused grid needs (the ion's / scale), when both are calibrated: a
        pyramidal optical is read at that level (:func:`read_optical`). None with ``optical_pixel_size``, which
        overrides the file's calibration that the level's size is computed from."""
        if ion_pixel_um is None or self.optical_pixel_size is not None:
            return None
        return ion_pixel_um / self.scale


@dataclass(frozen=True)
class MsiTissue:
    """The fixed side of a registration: MSI tissue image(s) (k, h, w) on the ion grid, and their file."""

    images: np.ndarray
    pixel_size_um: float | None
    source: Path
    skipped_xy: tuple[int, int] = (0, 0)  # an imzML's empty columns and rows before its first spectra, not imaged

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    @classmethod
    def of(cls, f: ImzML, automatic: bool) -> "MsiTissue":
        """TIC and principal components for automatic registration, else the TIC (for the overlay).

        Automatic registration models square MSI pixels; a file whose pixels are not (DESI lines, say) is
        refused with the remedy rather than registered wrong."""
        xy = f.layout.pixel_size_xy_um
        if automatic and xy is not None and not math.isclose(*xy, rel_tol=SQUARE_REL_TOL):
            raise InputError(f.path, f"its pixels are {xy[0]:g} × {xy[1]:g} µm, not square; automatic registration "
                                     "needs square pixels: register with --landmarks (BigWarp) instead")
        return cls(f.tissue_images() if automatic else f.tic()[None], f.pixel_size_um, f.path, f.layout.skipped_xy)


def _registered_scale(optical_shape: tuple[int, int], ion_shape: tuple[int, int], found: AffineMap,
                      to_pixels: float) -> int | None:
    """k where the optical looks registered to the ion grid already: exactly the ion grid × k (k ≥ 2) in shape, and
    found there by automatic registration at that scale (within 10 %), unturned and unmirrored (``found`` maps the
    ion grid to the optical in their units; ``to_pixels`` turns its matrix into optical pixels per ion pixel); else
    None. Both, so that a camera frame that is a multiple of the ion grid by chance is not taken for one."""
    try:
        k = infer_scale(optical_shape, ion_shape)
    except ValueError:
        return None
    a = np.asarray(found.matrix, dtype=np.float64)[:, :2] * to_pixels / k  # ≈ the identity for a registered optical
    return k if k >= 2 and np.abs(a - np.eye(2)).max() <= 0.1 else None


def _tissue_name(channel: int) -> str:
    """What MSI tissue image ``channel`` of :meth:`ImzML.tissue_images` is, for a message."""
    return "the TIC" if channel == 0 else f"principal component {channel} of the spectra"


OUTSIDE_WARNING = 0.1  # share of measured MSI pixels outside the optical that is warned (the prostate example: 4 %)
PREVIEW_PIXELS = 2000  # the rival alignment's overlay: optical resampled to at most about this many pixels across


@dataclass(frozen=True)
class RivalAlignment:
    """The other alignment of an ambiguous automatic registration: the optical resampled under it onto the ion
    grid × ``scale`` (a preview for its overlay) and its landmarks (to rerun with)."""

    preview: np.ndarray
    scale: int
    landmarks: Landmarks


@dataclass
class RegisteredOptical:
    """The optical resampled onto the ion grid × scale, and how it got there."""

    guide: np.ndarray
    scale: int
    info: dict = field(default_factory=dict)
    landmarks: Landmarks | None = None  # landmarks to refine in BigWarp (fixed = ion grid units)
    warnings: list[str] = field(default_factory=list)
    tissue: np.ndarray | None = None  # the MSI tissue image the optical was matched to (for the overlay)
    rival: RivalAlignment | None = None  # an ambiguous automatic registration's other alignment


def register_optical(optical: Image, msi: MsiTissue, settings: RegisterSettings, quiet: bool = False) -> RegisteredOptical:
    """Register with landmarks when given, else automatically against the MSI tissue images (a quarter minute or
    more, with its elapsed seconds shown on a terminal unless ``quiet``: :func:`msifusion.fit.elapsed_bar`).

    Errors name the file involved: the MSI file when its tissue image is empty, the optical
    when the transform misses it (with a hint about the landmarks only when they were used).
    """
    check_fused_size(msi.shape, settings.scale)
    moving = (Grid(optical.shape2d, settings.optical_pixel_size) if settings.optical_pixel_size else
              Grid(optical.shape2d, optical.pixel_size_um or 1.0, optical.origin_um))
    start = time.perf_counter()
    px = msi.pixel_size_um
    if settings.landmarks is not None:
        landmarks = read_landmarks(settings.landmarks)
        k = settings.fixed_scale
        p_fixed = settings.fixed_pixel_size or ((px / k) if px else 1.0)
        fiji_fixed = Grid((msi.shape[0] * k, msi.shape[1] * k), p_fixed)
        outside = check_landmarks(landmarks, fiji_fixed, moving)
        ion_grid = fiji_fixed.coarsened(k)
        kind, warnings = landmark_transform_kind(landmarks, settings.transform)
        warnings += outside
        if any(msi.skipped_xy):
            warnings.append(f"{msi.source.name}'s spectra begin {msi.skipped_xy[0]} columns and {msi.skipped_xy[1]} "
                            "rows in from its coordinates' origin, and the ion grid begins with them, as `msifusion "
                            "ions` exports it: landmarks placed on an export that kept the empty columns and rows "
                            "are off by that much")
        transform = transform_from_landmarks(landmarks, kind)
        info = {"method": f"landmarks ({kind})", "landmarks": str(settings.landmarks),
                "n_landmarks": len(landmarks.fixed), "fixed_pixel_size": p_fixed, "fixed_scale": k}
        matched = msi.images[0]
        alternative = None
        # µm per unit of the fixed landmarks: the MSI's µm over the landmark units per MSI pixel (p_fixed·k); where the
        # MSI has no pixel size, --fixed-pixel-size is taken as µm
        affine = AffineMap.from_landmarks(landmarks)
        fixed_unit_um = px / (p_fixed * k) if px else (1.0 if settings.fixed_pixel_size else None)
        missed = (f"the landmark transform ({kind}) from {settings.landmarks.name} maps the whole ion "
                  "grid outside this image; check the landmarks' units (pixels vs µm) and which image is fixed")
    else:
        ion_grid = Grid(msi.shape, px or 1.0)
        try:
            with elapsed_bar("registering (automatic)", quiet):
                reg = register_auto(optical.pixels, msi.images, ion_grid, moving,
                                    AutoRegisterOptions(deformable=settings.deformable))
        except InputError as exc:
            raise (InputError(msi.source, exc.problem) if exc.source is None else exc) from None
        transform = reg.transform
        area = reg.area or reg.fixed  # the acquired area: landmarks there, not over an empty frame
        landmarks = landmarks_from_transform(transform, area, moving=moving)
        info = {"method": "automatic" + (" + deformable" if settings.deformable else ""), "score": reg.score,
                "correlation": reg.correlation, "nmi": reg.nmi, "mattes_mi": reg.metric}
        if settings.deformable:
            info["landmarks_note"] = ("landmarks.csv samples the deformable map at 4×4 points: fed back with "
                                      "--landmarks, its thin-plate spline is close to this registration, not equal")
        warnings = []
        matched = reg.sign * msi.images[reg.channel]
        rival = reg.details.get("rival")
        info.update(tissue_channel=int(reg.channel), tissue_sign=int(reg.sign), rival=rival,
                    optical_feature=reg.details.get("optical_feature"), feature_scores=reg.details.get("feature_scores"))
        ambiguous = rival is not None and rival["disagreement_px"] > AMBIGUOUS_PX  # then reg.rival is its alignment
        alternative = (_rival_alignment(reg.rival, optical, reg.fixed, area, moving, settings.scale)
                       if ambiguous else None)
        if reg.score < CONVINCING_SCORE or reg.correlation <= 0:
            why = (f"score {reg.score:.2f} < {CONVINCING_SCORE}" if reg.score < CONVINCING_SCORE else
                   f"the registered optical does not correlate with the MSI tissue image: {reg.correlation:.2f}")
            warnings.append(f"automatic registration looks unreliable ({why}); "
                            "check overlay.png, and refine landmarks.csv in BigWarp if needed")
        if ambiguous:
            remedy = ("compare them in alignments.png (the optical's outline under each, on the MSI tissue image), "
                      "overlay.png and overlay_rival.png, and to use the other alignment rerun into a new "
                      "--out with --landmarks landmarks_rival.csv (all in this run's output folder), or refine "
                      "either in BigWarp" if alternative is not None else
                      "the other alignment misses the optical image; check overlay.png, and refine landmarks.csv "
                      "in BigWarp if needed")
            warnings.append(f"automatic registration is ambiguous: {_tissue_name(reg.channel)} (used) and "
                            f"{_tissue_name(rival['channel'])} both match the optical (scores "
                            f"{reg.score:.2f} and {rival['score']:.2f}) but align up to {rival['disagreement_px']:.1f} "
                            f"MSI pixels apart; {remedy}")
        registered_k = _registered_scale(optical.shape2d, msi.shape, reg.affine,
                                         ion_grid.pixel_size / moving.pixel_size)
        if registered_k:
            warnings.append(f"{optical.path.name} is {optical.shape2d[0]}×{optical.shape2d[1]}, exactly the ion grid "
                            f"× {registered_k}: it looks registered already (as `register` writes "
                            "optical_registered.tiff), and registering it again can move it; to fuse it as it is, "
                            "export the ions with `msifusion ions` and run `msifusion fuse --ion ION --optical "
                            f"{optical.path.name}`")
        affine, fixed_unit_um = reg.affine, (1.0 if px else None)  # the ion grid in µm
        missed = (f"automatic registration against the MSI tissue image of {msi.source.name} placed the whole ion "
                  "grid outside this image; check that both images show the same section")
    calibration = _calibration_disagreement(affine, optical, settings, fixed_unit_um, px)
    if calibration is not None:
        warnings.append(calibration.warning)
        info["optical_pixel_size_matched_um"] = calibration.matched_um
    optical_px = moving.pixel_size / affine.scale  # in the ion grid's units
    coarse = (coarse_optical_warning(optical_px, ion_grid.pixel_size, settings.scale, "µm") if px else
              coarse_optical_warning(optical_px / ion_grid.pixel_size, 1.0, settings.scale, "MSI pixels"))
    warnings += [*optical.warnings, *([coarse] if coarse else [])]
    info["moving_pixel_size"] = moving.pixel_size
    info["optical_shape_read"] = list(optical.shape2d)  # a pyramidal TIFF: the level read, not the full scan
    try:
        guide = resample_optical(optical.pixels, transform, ion_grid.refined(settings.scale), moving)
    except InputError:
        raise InputError(optical.path, missed) from None
    outside = outside_share(transform, ion_grid, moving, np.any(msi.images != 0, axis=0))
    info["measured_outside_optical"] = round(outside, 4)
    if outside > OUTSIDE_WARNING:
        check = "check the landmarks and overlay.png" if settings.landmarks is not None else "check overlay.png"
        warnings.append(f"{outside:.0%} of the MSI's measured pixels lie outside {optical.path.name}: the registered "
                        f"optical is black there, so they are fused without a guide; {check}")
    info["seconds"] = time.perf_counter() - start
    return RegisteredOptical(guide, settings.scale, info, landmarks, warnings, matched, alternative)


BIGWARP_TRANSFORMS = {"thin plate spline": "tps", "affine": "affine"}  # BigWarp's export names we apply


def landmark_transform_kind(landmarks: Landmarks, asked: str | None) -> tuple[str, list[str]]:
    """The transform to fit to the landmarks ("tps" or "affine") and any warning: ``asked`` (``--transform``) when
    given, else the type a BigWarp JSON export names (its Thin Plate Spline or Affine), else tps. A BigWarp type
    msifusion does not fit (Similarity, Rotation, Translation) is refused unless ``--transform`` says what to fit."""
    named = landmarks.transform_type
    if named is None or named == "BigWarpLandmarks":
        return asked or "tps", []
    kind = BIGWARP_TRANSFORMS.get(named.strip().lower())
    if asked is None:
        if kind is None:
            raise InputError(landmarks.source, f"BigWarp transform type {named!r} is not one msifusion fits (Thin Plate "
                                               "Spline, Affine); export it as one of those, or pass --transform tps "
                                               "or --transform affine to fit that to these points")
        return kind, []
    if kind != asked:
        where = Path(landmarks.source).name if landmarks.source else "the landmark file"
        return asked, [f"--transform {asked} overrides the transform type {named!r} that {where} was exported with"]
    return asked, []


CALIBRATION_FACTOR = 2.0  # tissue does not shrink or swell by this much between sections


@dataclass(frozen=True)
class CalibrationDisagreement:
    """The optical's stated pixel size against the one the registration matched, and the warning that says so."""

    matched_um: float
    warning: str


def _calibration_disagreement(affine: AffineMap, optical: Image, settings: RegisterSettings,
                              fixed_unit_um: float | None, msi_pixel_um: float | None) -> CalibrationDisagreement | None:
    """When both images are calibrated in µm yet the registration scales one to the other by more than
    :data:`CALIBRATION_FACTOR`. From an automatic registration: the optical's stated pixel size is wrong (a
    downsampled export that kept the scanner's calibration, say); it matters where the size is used: the pyramid
    level read, the scale bars, and landmarks in µm. From landmarks (``settings.landmarks``): the landmarks may be
    in other units than their images' (placed on a downsampled preview, or in pixels on an image calibrated in
    µm), or made on the wrongly calibrated optical (the landmark file ``register`` writes is in its units); a new
    optical pixel size would also move them, so no option is suggested. Where ``--optical-pixel-size`` overrides the
    file's calibration and the landmarks fit the file's, they are in the file's units (a ``landmarks.csv`` of a run
    without the option, fed back with the pixel size its warning suggested): the warning says so. Where the
    landmarks, read as µm, match pixels of the ion image enlarged ×K (``msi_pixel_um``/K µm each), it names
    ``--fixed-scale K --fixed-pixel-size 1``. ``fixed_unit_um``: µm per unit of the affine's fixed coordinates (None:
    uncalibrated)."""
    stated = settings.optical_pixel_size or optical.pixel_size_um
    if stated is None or fixed_unit_um is None:
        return None
    scale = affine.scale / fixed_unit_um  # optical µm per MSI µm; 1 when both calibrations are right
    if 1 / CALIBRATION_FACTOR <= scale <= CALIBRATION_FACTOR:
        return None
    matched = stated / scale
    name = optical.path.name if optical.path else "the optical image"
    source = "--optical-pixel-size" if settings.optical_pixel_size else f"the calibration of {name}"
    by = f"by {max(scale, 1 / scale):.1f}×"
    in_file_units = (settings.optical_pixel_size is not None and optical.pixel_size_um is not None
                     and 1 / CALIBRATION_FACTOR <= scale * settings.optical_pixel_size / optical.pixel_size_um
                     <= CALIBRATION_FACTOR)
    if settings.landmarks is not None and in_file_units:
        return CalibrationDisagreement(matched, (
            f"the landmarks in {settings.landmarks.name} fit the calibration of {name} ({optical.pixel_size_um:.3g} µm "
            f"per pixel), not --optical-pixel-size {stated:.3g}: they are in the file's units, as the landmarks.csv "
            f"and landmarks_rival.csv of a run without --optical-pixel-size are, so the registration is off {by}; "
            f"rerun without --optical-pixel-size, or with landmarks placed at {stated:.3g} µm per pixel"))
    if settings.landmarks is not None:
        fixed_scale = ""
        if msi_pixel_um and settings.fixed_pixel_size is None and settings.fixed_scale == 1:
            enlarged = msi_pixel_um / scale  # K, were they in pixels of the ion image enlarged ×K (read as µm)
            if 1 <= round(enlarged) <= 64 and abs(enlarged / round(enlarged) - 1) < 0.1:
                k = round(enlarged)
                fixed_scale = (f"; placed in pixels on the ion image enlarged ×{k} in Fiji, they need --fixed-scale {k} "
                               "--fixed-pixel-size 1" if k > 1 else
                               "; placed in pixels on the ion image, they need --fixed-pixel-size 1")
        return CalibrationDisagreement(matched, (
            f"the landmarks in {settings.landmarks.name} scale the optical's µm to the ion image's {by}, where the "
            f"two calibrations say 1: either they were placed on a downsampled preview or in pixels where an image is "
            f"calibrated in µm (check overlay.png), or {source} ({stated:.3g} µm per pixel) is wrong and its pixels "
            f"are {matched:.3g} µm (then the registration holds, and so do the outputs, whose scale comes from the "
            f"ion image; a landmarks.csv that msifusion wrote for this optical is in its stated µm){fixed_scale}"))
    return CalibrationDisagreement(matched, (
        f"{source} ({stated:.3g} µm per pixel) disagrees with the registration {by}: "
        f"its pixels match {matched:.3g} µm of the MSI section; if that is right, give "
        f"--optical-pixel-size {matched:.3g}"))


def _rival_alignment(affine: AffineMap, optical: Image, ion_grid: Grid, tissue_area: Grid, moving: Grid,
                     scale: int) -> RivalAlignment | None:
    """The other alignment (``affine``, ion grid → optical) of an ambiguous automatic registration, for the
    user to compare and choose; None when it misses the optical."""
    preview_scale = min(scale, max(1, PREVIEW_PIXELS // max(ion_grid.shape)))
    try:
        preview = resample_optical(optical.pixels, affine, ion_grid.refined(preview_scale), moving)
    except InputError:
        return None
    return RivalAlignment(preview, preview_scale, landmarks_from_transform(affine, tissue_area, moving=moving))


def tissue_outline(rgb: np.ndarray, kind: str, blur_px: float) -> tuple[np.ndarray, float]:
    """The optical's tissue image (:func:`msifusion.register.optical_feature` ``kind``, as the registration matched)
    blurred by ``blur_px`` (a stain's texture would draw hundreds of small contours) and its Otsu level: its contour
    at that level outlines the tissue (none where the image is flat). The black fill where the optical does not
    reach counts as background (``1 − luminance`` would make it tissue)."""
    import cv2

    field = optical_feature(rgb, kind)
    fill = ~np.asarray(rgb).reshape(*field.shape, -1).any(-1)
    if fill.any() and not fill.all():
        field[fill] = np.percentile(field[~fill], 1)
    field = cv2.GaussianBlur(field, (0, 0), blur_px)
    level = otsu_level(field)
    return field, float(field.max()) if level is None else level


def write_registration(folder: Path, registered: RegisteredOptical, ion_pixel_size_um: float | None,
                       optical: Path | None = None, ion: Path | None = None) -> list[str]:
    """optical_registered.tiff (+ .png; its channel named after the ``optical`` and ``ion`` files when given),
    overlay.png against the MSI tissue image, landmarks.csv; for an ambiguous automatic registration also
    overlay_rival.png and landmarks_rival.csv of the other alignment, and alignments.png, both outlines on one image
    (:func:`msifusion.report.save_alignments`). Returns the names written."""
    import cv2

    px = ion_pixel_size_um / registered.scale if ion_pixel_size_um else None
    name = f"{optical.name} on the MSI grid of {ion.name} ×{registered.scale}" if optical and ion else None
    paths = [write_rgb_tiff(folder / "optical_registered.tiff", registered.guide, px, name),
             save_rgb_png(folder / "optical_registered.png", registered.guide),
             save_overlay(folder / "overlay.png", registered.guide, registered.tissue, px)]
    if registered.landmarks is not None:
        paths.append(write_bigwarp_csv(registered.landmarks, folder / "landmarks.csv"))
    rival = registered.rival
    if rival is not None:
        preview_px = ion_pixel_size_um / rival.scale if ion_pixel_size_um else None
        # against the same tissue image as overlay.png, so that the two pictures differ only in the alignment
        paths.append(save_overlay(folder / "overlay_rival.png", rival.preview, registered.tissue, preview_px,
                                  "the other alignment (landmarks_rival.csv)"))
        height, width = rival.preview.shape[:2]
        used = cv2.resize(np.asarray(registered.guide, np.float32), (width, height), interpolation=cv2.INTER_AREA)
        kind = registered.info.get("optical_feature") or "saturation"
        paths.append(save_alignments(folder / "alignments.png", registered.tissue,
                                     [("the alignment used", *tissue_outline(used, kind, 1.5 * rival.scale)),
                                      ("the other", *tissue_outline(rival.preview, kind, 1.5 * rival.scale))],
                                     preview_px))
        paths.append(write_bigwarp_csv(rival.landmarks, folder / "landmarks_rival.csv"))
    return [Path(p).name for p in paths]


def _open_ions(path: Path) -> ImzML:
    if path.suffix.lower() != ".imzml":
        raise InputError(path, "expected an .imzML file (with its .ibd beside it)")
    return ImzML(path)


# ----------------------------------------------------------------------------- commands


def _check_ion_options(request: IonsRequest | ImzmlFuseRequest, *paths: str) -> None:
    """What can be checked before the imzML is opened: an m/z given, the tolerance, the normalisation. The request's
    ``paths`` and its m/z are taken as :class:`Path` and floats, as Python callers may give them (str, one number)."""
    _as_paths(request, *paths)
    object.__setattr__(request, "mzs", tuple(as_mz_list(request.mzs)))
    mzs, tol, normalize = request.mzs, request.tol, request.normalize
    if not mzs:
        raise InputError("--mz", "give at least one m/z")
    parse_tolerance(tol)
    if normalize not in (None, "tic", "rms"):
        raise InputError("--normalize", f"unknown normalisation {normalize!r}; use tic, rms or none")


@dataclass(frozen=True)
class IonsRequest:
    imzml: Path
    mzs: tuple[float, ...]
    tol: str
    out: Path
    normalize: str | None = None
    overwrite: bool = False
    quiet: bool = False  # no progress line

    def __post_init__(self) -> None:
        _check_ion_options(self, "imzml", "out")


def _checked_stack(f: ImzML, mzs: tuple[float, ...], tol: str, normalize: str | None, quiet: bool) -> IonStack:
    with elapsed_bar(f"reading {len(mzs)} ion image(s) from {f.path.name}", quiet):  # one pass over the .ibd
        stack = f.ion_images(list(mzs), tol, normalize)
    empty = stack.empty_ions()
    if empty:
        raise InputError(f.path, f"no signal anywhere within the window of m/z {', '.join(f'{m:.4f}' for m in empty)} "
                         f"(±{stack.tolerance}); check the m/z or widen --tol")
    return stack


def _no_pixel_size(imzml: Path, note: str | None) -> str:
    """Why an imzML file's ion images carry no pixel size: none stated, or the stated one is not used (``note``)."""
    return f"{imzml.name}: {note}" if note else f"{imzml.name} gives none in its scan settings"


def _grid_title(what: str, pixel_size_um: float | None, units: str) -> str:
    """An overview's heading: which images (measured or fused), their pixel size and their intensity units."""
    pixels = f", {pixel_size_um:.4g} µm pixels" if pixel_size_um else ", pixel size not known"
    return f"{what} ion images{pixels}\nintensity: {units}"


def extract_ions(request: IonsRequest) -> dict:
    """``msifusion ions``: one TIFF per ion, an OME-TIFF stack and an overview picture."""
    t0 = time.perf_counter()
    inputs = _imzml_files(request.imzml)
    check_output_dir(request.out, request.overwrite, inputs)
    with _open_ions(request.imzml) as f:
        stack = _checked_stack(f, request.mzs, request.tol, request.normalize, request.quiet)
        summary = f.summary()
        pixel_note = f.pixel_size_note
    warnings = stack.window_warnings()
    if stack.pixel_size_um is None:
        warnings.append(uncalibrated_warning(_no_pixel_size(request.imzml, pixel_note),
                                             "give --pixel-size UM when you fuse them with --ion",
                                             ("ion TIFFs", "ions.png")))
    with staged_output_dir(request.out, request.overwrite, inputs) as stage:
        paths = write_ion_tiffs(stack, stage)
        paths.append(save_ion_grid(stage / "ions.png", stack.images, stack.labels, stack.pixel_size_um,
                                   _grid_title("measured", stack.pixel_size_um, stack.units)))
        record = {**run_header(), "imzml": str(request.imzml), "mzs": list(stack.mzs),
                  "tolerance": request.tol, "windows": [list(w) for w in stack.windows],
                  "window_peaks": [list(p) for p in stack.window_peaks], "normalize": request.normalize,
                  "normalize_scale": stack.normalize_scale, "units": stack.units,
                  "pixel_size_um": stack.pixel_size_um, "shape": list(stack.images.shape[1:]), "file": summary,
                  "outputs": [p.name for p in paths] + ["run.json"],
                  "warnings": warnings,
                  "timings_s": {"total": time.perf_counter() - t0}}
        write_run_json(stage, record)
    return record


@dataclass(frozen=True)
class RegisterRequest:
    optical: Path
    ion: Path  # an ion image file or an .imzML
    out: Path
    settings: RegisterSettings
    overwrite: bool = False
    quiet: bool = False  # no progress bar

    def __post_init__(self) -> None:
        _as_paths(self, "optical", "ion", "out")


def _imzml_files(path: Path) -> list[Path]:
    """An imzML run's input files: the .imzML and, for one, the .ibd beside it (as given, not as a link resolves)."""
    path = Path(path)
    return [path, path.with_suffix(".ibd")] if path.suffix.lower() == ".imzml" else [path]


def _tissue_for(ion_path: Path, automatic: bool) -> MsiTissue:
    """The fixed side from an .imzML (see :meth:`MsiTissue.of`) or from an ion image file."""
    if ion_path.suffix.lower() == ".imzml":
        with _open_ions(ion_path) as f:
            return MsiTissue.of(f, automatic)
    from msifusion.io.images import read_ion

    ion = read_ion(ion_path)
    return MsiTissue(ion.pixels[None], ion.pixel_size_um, ion_path)


def _check_before_reading(optical: Path, settings: RegisterSettings) -> None:
    """The optical file and the landmarks are checked before the MSI file's pass (minutes on a large imzML), so that
    a typo in either costs nothing."""
    require_file(Path(optical), OPTICAL_SUFFIXES, "optical image")
    if settings.landmarks is not None:
        read_landmarks(settings.landmarks)


def register_files(request: RegisterRequest) -> dict:
    """``msifusion register``: the optical resampled onto the ion grid × scale, with a check picture."""
    t0 = time.perf_counter()
    inputs = [*_imzml_files(Path(request.ion)), request.optical, request.settings.landmarks]
    check_output_dir(request.out, request.overwrite, inputs)
    _check_before_reading(request.optical, request.settings)
    msi = _tissue_for(Path(request.ion), request.settings.landmarks is None)
    shape, px = msi.shape, msi.pixel_size_um
    optical = read_optical(request.optical, request.settings.optical_pixel_needed_um(px))
    registered = register_optical(optical, msi, request.settings, request.quiet)
    with staged_output_dir(request.out, request.overwrite, inputs) as stage:
        outputs = write_registration(stage, registered, px, request.optical, request.ion)
        record = {**run_header(), "optical": str(request.optical), "ion": str(request.ion),
                  "outputs": outputs + ["run.json"], "settings": asdict(request.settings), "registration": registered.info,
                  "warnings": registered.warnings, "ion_shape": list(shape), "ion_pixel_size_um": px,
                  "registered_shape": list(registered.guide.shape[:2]),
                  "registered_pixel_size_um": px / request.settings.scale if px else None,
                  "timings_s": {"total": time.perf_counter() - t0}}
        write_run_json(stage, record)
    return record


@dataclass(frozen=True)
class ImzmlFuseRequest:
    """``msifusion fuse --imzml``: the whole workflow for a list of m/z."""

    imzml: Path
    mzs: tuple[float, ...]
    tol: str
    optical: Path
    out: Path
    register: RegisterSettings
    settings: FuseSettings = FuseSettings()
    normalize: str | None = None
    overwrite: bool = False
    on_warning: Callable[[str], None] | None = None  # told each registration warning before the fusion starts

    def __post_init__(self) -> None:
        _check_ion_options(self, "imzml", "optical", "out")
        self.settings.measurement.check(self.register.scale)  # before minutes of registration


class _FusedPanel:
    """A panel's fused images until its stack is written: held in memory where the panel is fused in one part, else
    (``spill``) written to a scratch file in the output folder as each part finishes, with plain writes (a full disk
    is then an OSError, not the crash a memory-mapped write gives), and read back memory-mapped, page by page."""

    def __init__(self, folder: Path, count: int, shape: tuple[int, int], spill: bool):
        self.path = folder / ".fused-panel.raw" if spill else None
        self.count, self.shape = count, tuple(shape)
        self.images: list[np.ndarray | None] = [None] * count
        self._file = open(self.path, "wb") if spill else None

    def put(self, i: int, image: np.ndarray) -> None:
        if self._file is None:
            self.images[i] = image
            return
        self._file.seek(i * math.prod(self.shape) * 4)
        np.ascontiguousarray(image, dtype=np.float32).tofile(self._file)

    def pages(self) -> Sequence[np.ndarray]:
        """The K images, in order (a read-only memory map of the scratch file when spilled)."""
        if self._file is None:
            return self.images
        self._file.close()
        return np.memmap(self.path, np.float32, "r", shape=(self.count, *self.shape))

    def remove(self) -> None:
        """Remove the scratch file (once nothing reads its pages any more)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _check_scratch_space(out: Path, need: int) -> None:
    """Refuse, before registration, a panel in parts whose scratch file (``need`` bytes) the output folder's drive
    cannot hold: found full after the fusion, minutes would be lost."""
    free = free_bytes(out)
    if free is not None and free < need:
        raise InputError(out, f"this panel is fused in parts, its fused images kept in a scratch file of about "
                              f"{need / 1e9:.1f} GB beside the outputs, but the drive has {free / 1e9:.1f} GB free; "
                              "free some space, or fuse fewer m/z at a time")


def fuse_imzml(request: ImzmlFuseRequest) -> dict:
    """Ion images in one pass, registration (landmarks or automatic), one fusion per ion.

    One ion: the fusion outputs in ``out``; several: ``out/mz_<m/z>/`` per ion plus a fused
    OME-TIFF stack ``out/fused.ome.tiff`` and overviews of the measured and fused ions (``ions.png``,
    ``fused.png``). Always ``out/optical_registered.tiff``.
    """
    t0 = time.perf_counter()
    inputs = [*_imzml_files(request.imzml), request.optical, request.register.landmarks]
    check_output_dir(request.out, request.overwrite, inputs)
    _check_before_reading(request.optical, request.register)
    with _open_ions(request.imzml) as f:
        msi = MsiTissue.of(f, automatic=request.register.landmarks is None)  # first: it refuses non-square pixels
        stack = _checked_stack(f, request.mzs, request.tol, request.normalize, request.settings.runtime.quiet)
        pixel_note, file_summary = f.pixel_size_note, f.summary()
    K, scale = len(stack.mzs), request.register.scale
    per_part = panel_part_size(stack.images.shape[1:], scale, K)  # before minutes of registration
    parts = -(-K // per_part)
    h, w = stack.images.shape[1:]
    scratch = K * h * scale * w * scale * 4 if parts > 1 else 0  # bytes of the parts' scratch file
    if scratch:
        _check_scratch_space(request.out, scratch)
    optical = read_optical(request.optical, request.register.optical_pixel_needed_um(stack.pixel_size_um))
    registered = register_optical(optical, msi, request.register, request.settings.runtime.quiet)
    registered.warnings += stack.window_warnings()
    if scratch:
        shared = ("; a shared basis is sought within each part only" if METHODS[request.settings.method].run_many
                  and not request.settings.saves_checkpoints else "")
        registered.warnings.append(f"{K} ions fused ×{scale} ({h * scale}×{w * scale} each) do not fit in this "
                                   f"machine's memory together: fused in {parts} parts of at most {per_part} "
                                   f"ion{'s' if per_part > 1 else ''}, each image kept in a scratch file in the "
                                   f"output folder (about {scratch / 1e9:.1f} GB of disk) until "
                                   f"the stack is written{shared}")
    if stack.pixel_size_um is None:
        registered.warnings.append(uncalibrated_warning(_no_pixel_size(request.imzml, pixel_note),
                                                        "export the ions with `msifusion ions` and fuse them with "
                                                        "--ion and --pixel-size UM"))
    if request.on_warning:
        for warning in registered.warnings:
            request.on_warning(warning)
    load_s = time.perf_counter() - t0
    with staged_output_dir(request.out, request.overwrite, inputs) as stage:
        registration_outputs = write_registration(stage, registered, stack.pixel_size_um, request.optical,
                                                  request.imzml)
        common = {"imzml": str(request.imzml), "file": file_summary, "optical": str(request.optical),
                  "tolerance": request.tol, "normalize": request.normalize, "normalize_scale": stack.normalize_scale,
                  "units": stack.units, "registration": registered.info, "warnings": registered.warnings}
        records = []
        pairs = [RegisteredPair(registered.guide, image, scale, stack.pixel_size_um, label)
                 for image, label in zip(stack.images, stack.labels)]
        folders = [stage if K == 1 else stage / f"mz_{name}" for name in stack.names]
        for folder in folders:
            folder.mkdir(exist_ok=True)
        fused = _FusedPanel(stage, K, registered.guide.shape[:2], spill=parts > 1) if K > 1 else None
        fuse_s = 0.0
        for p in range(parts):
            part = range(K * p // parts, K * (p + 1) // parts)  # sizes differ by one at most
            if request.settings.saves_checkpoints:  # a fit per ion anyway; each writes into its own folder
                results = [fuse_pair(pairs[i], request.settings, folders[i] / "checkpoints") for i in part]
            else:  # shared work
                results = fuse_many(registered.guide, stack.images[part.start:part.stop], request.settings.method,
                                    request.settings)
            for i, result in zip(part, results):
                write_tiff(folders[i] / "ion.tiff", stack.images[i], stack.pixel_size_um, [stack.labels[i]])
                per_ion = dict(common, mz=stack.mzs[i], window=list(stack.windows[i]),
                               window_peaks=list(stack.window_peaks[i]))
                if parts > 1:
                    per_ion["panel_part"] = f"{p + 1} of {parts}"
                records.append(write_fusion_outputs(folders[i], pairs[i], result, request.settings, per_ion,
                                                    compare=K == 1))
                fuse_s += result.seconds
                if fused is not None:
                    fused.put(i, result.image)
            results = result = None  # a part's images are views of one array: all must go for it to be freed
        if K > 1:
            px = stack.pixel_size_um / scale if stack.pixel_size_um else None
            pages = fused.pages()
            write_tiff(stage / "fused.ome.tiff", pages, px, stack.labels)
            write_ion_stack(stack, stage / "ions.ome.tiff")
            save_ion_grid(stage / "ions.png", stack.images, stack.labels, stack.pixel_size_um,
                          _grid_title("measured", stack.pixel_size_um, stack.units))
            save_ion_grid(stage / "fused.png", pages, stack.labels, px,
                          _grid_title(f"fused ×{scale} ({request.settings.method})", px, stack.units))
            pages = None
            fused.remove()
            summary = panel_record(records, stack.names, registered.warnings)
            summary.update(mzs=list(stack.mzs), outputs=[*registration_outputs, "fused.ome.tiff", "ions.ome.tiff",
                                                         "ions.png", "fused.png", *(f"mz_{n}/" for n in stack.names),
                                                         "run.json"],
                           panel_parts=parts,
                           timings_s={"load_and_register": load_s, "fuse_panel": fuse_s,
                                      "total": time.perf_counter() - t0})
            write_run_json(stage, summary)
            return summary
        records[0]["timings_s"].update(load_and_register=load_s, total=time.perf_counter() - t0)
        write_run_json(stage, records[0])
        return records[0]
