"""Registering the optical: the microscope image onto the MSI grid × scale, and what a registration writes.

What the commands (:mod:`msifusion.workflows.from_imzml`) and Python callers use to register: :class:`RegisterSettings`
(landmarks or automatic), the MSI side (:class:`MsiTissue`: an imzML file's tissue images), :func:`register_optical`
(the transform, the resampled optical and every warning about it) and :func:`write_registration` (the registered
optical, overlays and landmark files). The algorithms are the other modules of :mod:`msifusion.register`.

Conventions: the optical is the moving image, the ion grid the fixed one. With BigWarp landmarks, coordinates are
in each image's units as Fiji saw them: the optical's file calibration (or ``optical_pixel_size``), and for the
fixed image the ion image, optionally enlarged ``fixed_scale`` times as the paper did, calibrated at
``fixed_pixel_size`` per pixel of that image (default: the ion pixel size in µm divided by ``fixed_scale`` when the
ion image is calibrated, else 1 = pixels).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from msifusion.errors import InputError, fields_as_paths
from msifusion.runtime import check_fused_size, elapsed_bar
from msifusion.io.images import Image, file_pixel_size_um, read_optical, write_rgb_tiff
from msifusion.io.imzml import ImzML, find_ibd
from msifusion.io.landmarks import Landmarks, read_landmarks, write_bigwarp_csv
from msifusion.io.outdir import record_of_the_run_that_wrote
from msifusion.provenance import input_files
from msifusion.io.units import check_pixel_size, coarse_optical_warning, is_square
from msifusion.methods import check_scale, infer_scale
from msifusion.register.automatic import (AMBIGUOUS_PX, CONVINCING_SCORE, AutoRegisterOptions, Polish, PoseSearch,
                                          optical_feature, otsu_level, register_auto)
from msifusion.register.resample import outside_share, resample_optical
from msifusion.register.transforms import (AFFINE_MISS, AffineMap, Grid, LandmarkErrors, PointMap, ThinPlateSpline,
                                           check_landmarks, landmark_errors, landmarks_from_transform, misfit_hint,
                                           spline_fold, transform_from_landmarks)
from msifusion.report import LandmarkMark, save_alignments, save_overlay, save_rgb_png


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
    optical_scene: int | None = None  # a Zeiss CZI's scene, numbered from 1 as ZEN shows them
    fixed_pixel_size: float | None = None
    fixed_scale: int = 1
    deformable: bool = False

    def __post_init__(self) -> None:
        fields_as_paths(self, "landmarks")
        if self.scale is None:
            raise InputError("--scale", "give the magnification, e.g. --scale 10")
        check_scale(self.scale)
        if self.fixed_scale < 1:
            raise InputError("--fixed-scale", "must be at least 1")
        check_pixel_size("--optical-pixel-size", self.optical_pixel_size)
        if self.optical_scene is not None and self.optical_scene < 1:
            raise InputError("--optical-scene", f"scenes are numbered from 1, as ZEN shows them, not "
                                                f"{self.optical_scene}")
        check_pixel_size("--fixed-pixel-size", self.fixed_pixel_size)
        if self.landmarks is None:
            landmark_only = {"--transform": self.transform is not None, "--fixed-pixel-size": self.fixed_pixel_size,
                             "--fixed-scale": self.fixed_scale != 1}
            for option, given in landmark_only.items():
                if given:
                    raise InputError(option, "describes the landmarks; it needs --landmarks")
        elif self.deformable:
            raise InputError("--deformable", "applies to automatic registration only, not with --landmarks")

    def read_landmarks(self, already: Landmarks | None = None) -> Landmarks | None:
        """The landmarks: ``already``, where the caller has read them, else the file read now (None without one). A
        command reads it once and hands the points to each step (``landmarks=``), so that every step of a run sees
        the same points."""
        if already is not None or self.landmarks is None:
            return already
        return read_landmarks(self.landmarks)

    def fixed_pixel_units(self, ion_pixel_um: float | None) -> float:
        """The landmarks' fixed units per pixel of the fixed image (the ion image enlarged ``fixed_scale`` times):
        ``fixed_pixel_size``, else the ion's µm per such pixel, else 1 (pixels)."""
        return self.fixed_pixel_size or ((ion_pixel_um / self.fixed_scale) if ion_pixel_um else 1.0)


def read_moving_optical(path: Path, settings: RegisterSettings, msi: MsiTissue,
                        landmarks: Landmarks | None = None) -> Image:
    """The optical as registration moves it: calibrated by ``--optical-pixel-size`` where given, else by its file; a
    pyramidal TIFF read at its coarsest level that is still as fine as the fused grid (:func:`read_optical`),
    measured in the optical's own units: with landmarks, a fused pixel's size on the optical as the landmarks
    place it (they are in those units, whatever they are: µm, or pixels with ``--optical-pixel-size 1``; a
    ``landmarks.csv`` fed back in another run's units is converted first: :func:`_fed_back`); without, the ion's
    µm / scale, where ``msi`` is calibrated (automatic registration works in µm). ``landmarks``: the settings'
    landmarks as already read (else read here)."""
    px = msi.pixel_size_um
    if settings.landmarks is not None:
        ion_grid = landmark_ion_grid(msi.shape, px, settings)
        fed_back = _fed_back(record_of_the_run_that_wrote(settings.landmarks), settings, path, msi.source, ion_grid)
        try:
            points = settings.read_landmarks(landmarks)
            points = fed_back.convert(points) if fed_back else points
            coarsest = ion_grid.pixel_size / settings.scale * AffineMap.from_landmarks(points).scale
        except InputError:  # too few or collinear: the full resolution, and registration says what is wrong
            coarsest = None
    else:
        coarsest = px / settings.scale if px else None
    return read_optical(path, coarsest, settings.optical_pixel_size, settings.optical_scene)


@dataclass(frozen=True)
class MsiTissue:
    """The fixed side of a registration: MSI tissue image(s) (k, h, w) on the ion grid, and their file."""

    images: np.ndarray
    pixel_size_um: float | None
    source: Path
    skipped_xy: tuple[int, int] = (0, 0)  # an imzML's empty columns and rows before its first spectra, not imaged
    warnings: tuple[str, ...] = ()  # what reading the file found: an imzML header's faults, a damaged ion TIFF

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    @classmethod
    def of(cls, f: ImzML, automatic: bool) -> "MsiTissue":
        """TIC and principal components for automatic registration, else the TIC (for the overlay).

        Automatic registration models square MSI pixels; a file whose pixels are not (DESI lines, say) is
        refused with the remedy rather than registered wrong, unless a square pixel size is given in its place."""
        xy = f.layout.pixel_size_xy_um
        if automatic and xy is not None and f.given_pixel_size_um is None and not is_square(*xy):
            raise InputError(f.path, f"its pixels are {xy[0]:g} × {xy[1]:g} µm, not square; automatic registration "
                                     "needs square pixels: register with --landmarks (BigWarp) instead")
        return cls(f.tissue_images() if automatic else f.tic()[None], f.pixel_size_um, f.path, f.layout.skipped_xy,
                   tuple(f.warnings))


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


def _registered_already(optical: Image, ion_shape: tuple[int, int], found: AffineMap, to_pixels: float,
                        ion_source: Path) -> str | None:
    """The warning for an optical that looks registered to the ion grid already (:func:`_registered_scale`), judged
    and named by the file's own size where a pyramid level of it was read (``to_pixels``: as there, per pixel read);
    how to fuse it as it is depends on whether the ion side (``ion_source``) is an imzML or an ion image."""
    full_shape = optical.full_shape or optical.shape2d
    k = _registered_scale(full_shape, ion_shape, found, to_pixels * optical.downsample)
    if k is None:
        return None
    level = f" (read at its {optical.shape2d[0]}×{optical.shape2d[1]} level)" if optical.full_shape else ""
    return (f"{optical.path.name} is {full_shape[0]}×{full_shape[1]}{level}, exactly the ion grid × {k}: it looks "
            "registered already (as `register` writes optical_registered.tiff), and registering it again can move "
            "it; to fuse it as it is, "
            + ("export the ions with `msifusion ions` and run `msifusion fuse --ion ION "
               if ion_source.suffix.lower() == ".imzml" else f"run `msifusion fuse --ion {ion_source.name} ")
            + f"--optical {optical.path.name}`")


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
    marks: tuple[LandmarkMark, ...] = ()  # a landmark run's landmarks on the guide, with their errors, for overlay.png
    marks_measure: str = ""  # what the marks' errors are ("leave-one-out", "affine fit residual")


def register_optical(optical: Image, msi: MsiTissue, settings: RegisterSettings, quiet: bool = False,
                     landmarks: Landmarks | None = None) -> RegisteredOptical:
    """Register with landmarks when given, else automatically against the MSI tissue images (a quarter minute or
    more, with its elapsed seconds shown on a terminal unless ``quiet``: :func:`msifusion.runtime.elapsed_bar`).

    Errors name the file involved: the MSI file when its tissue image is empty, the optical
    when the transform misses it (with a hint about the landmarks only when they were used). ``landmarks``: the
    settings' landmarks as already read (else read here).
    """
    check_fused_size(msi.shape, settings.scale)
    moving = _moving_grid(optical, settings)
    start = time.perf_counter()
    px = msi.pixel_size_um
    found = (_by_landmarks(optical, msi, settings, moving, settings.read_landmarks(landmarks))
             if settings.landmarks is not None else _automatically(optical, msi, settings, moving, quiet))
    transform, ion_grid, info = found.transform, found.ion_grid, found.info
    warnings = [*msi.warnings, *optical.warnings, *found.warnings]  # what reading found first: warnings build on it
    calibration = _calibration_disagreement(found.affine, optical, settings, found.fixed_unit_um, px)
    if calibration is not None:
        warnings.append(calibration.warning)
        info["optical_pixel_size_matched_um"] = calibration.matched_um
    optical_px = moving.pixel_size / found.affine.scale  # in the ion grid's units
    coarse = coarse_optical_warning(optical_px / ion_grid.pixel_size, settings.scale, px)
    warnings += [coarse] if coarse else []
    info["moving_pixel_size"] = moving.pixel_size
    # landmarks.csv's fixed points are in ion_grid's units: fed back with another MSI pixel size, they are converted
    info["landmarks_fixed_frame"] = {"pixel_size": ion_grid.pixel_size, "origin": list(ion_grid.origin)}
    info["optical_shape_read"] = list(optical.shape2d)  # a pyramidal TIFF: the level read, not the full scan
    try:
        guide = resample_optical(optical.pixels, transform, ion_grid.refined(settings.scale), moving)
    except InputError:
        raise InputError(optical.path, found.missed) from None
    outside = outside_share(transform, ion_grid, moving, np.any(msi.images != 0, axis=0))
    info["measured_outside_optical"] = round(outside, 4)
    if outside > OUTSIDE_WARNING:
        check = "check the landmarks and overlay.png" if settings.landmarks is not None else "check overlay.png"
        warnings.append(f"{outside:.0%} of the MSI's measured pixels lie outside {optical.path.name}: the registered "
                        f"optical is black there, so they are fused without a guide; {check}")
    info["seconds"] = time.perf_counter() - start
    marks: tuple[LandmarkMark, ...] = ()
    if settings.landmarks is not None:
        errors = found.errors.ion_px if found.errors is not None else np.full(len(found.landmarks), np.nan)
        at = ion_grid.refined(settings.scale).to_index(found.landmarks.fixed)
        marks = tuple(LandmarkMark(name, float(c), float(r), float(e))
                      for name, (c, r), e in zip(found.landmarks.names, at, errors))
    return RegisteredOptical(guide, settings.scale, info, found.landmarks, warnings, found.matched,
                             found.alternative, marks, found.errors.measure if found.errors is not None else "")


@dataclass(frozen=True)
class _Alignment:
    """What either way of registering found, before the steps they share: the fixed → moving ``transform`` on the
    ``ion_grid``, the landmarks that stand for it, the record's ``info`` and ``warnings`` so far, the MSI image it
    ``matched``, a rival alignment (automatic only), its affine part with the fixed grid's µm per unit, and the error
    for a transform that misses the optical. Frozen as a record; register_optical adds to its ``info`` in
    place."""

    transform: PointMap
    ion_grid: Grid
    landmarks: Landmarks
    info: dict
    warnings: list[str]
    matched: np.ndarray
    alternative: RivalAlignment | None
    affine: AffineMap
    fixed_unit_um: float | None
    missed: str
    errors: LandmarkErrors | None = None  # how far each landmark lies from the transform (landmarks only)


def _by_landmarks(optical: Image, msi: MsiTissue, settings: RegisterSettings, moving: Grid,
                  landmarks: Landmarks) -> _Alignment:
    """The landmark transform (thin-plate spline or affine) from the settings' ``landmarks``, with their checks."""
    px = msi.pixel_size_um
    k = settings.fixed_scale
    p_fixed = settings.fixed_pixel_units(px)
    fiji_fixed = Grid((msi.shape[0] * k, msi.shape[1] * k), p_fixed)
    ion_grid = landmark_ion_grid(msi.shape, px, settings)
    record = record_of_the_run_that_wrote(settings.landmarks)  # an msifusion run's landmarks.csv, unchanged since
    fed_back = _fed_back(record, settings, optical.path, msi.source, ion_grid)
    landmarks = fed_back.convert(landmarks) if fed_back else landmarks
    full_moving = _full_resolution(moving, optical)
    outside = check_landmarks(landmarks, fiji_fixed, full_moving)
    kind, warnings = landmark_transform_kind(landmarks, settings.transform)
    warnings += [*([fed_back.warning(optical.path, msi.source)] if fed_back else []), *outside]
    if any(msi.skipped_xy) and "imzml" not in ((record or {}).get("input_files") or {}):  # not on an imzML's grid
        warnings.append(f"{msi.source.name}'s spectra begin {msi.skipped_xy[0]} columns and {msi.skipped_xy[1]} "
                        "rows in from its coordinates' origin, and the ion grid begins with them, as `msifusion "
                        "ions` exports it: landmarks placed on an export that kept the empty columns and rows "
                        "are off by that much")
    transform = transform_from_landmarks(landmarks, kind)
    fold = spline_fold(transform, ion_grid) if isinstance(transform, ThinPlateSpline) else None
    if fold is not None:
        where = f"the optical over itself near ion pixel (column {fold.at_column_row[0]:.0f}, row " \
                f"{fold.at_column_row[1]:.0f})"
        which = ((f"leaving out any one of the landmarks {fold.suspects} unfolds it" if fold.count > 1 else
                  f"leaving out the landmark {fold.suspects} unfolds it") if fold.blamed else
                 f"the landmark nearest it is {fold.suspects}")
        if (fold.among_landmarks or fold.blamed) and fold.covers_a_pixel:
            raise InputError(settings.landmarks, f"the thin-plate spline through these landmarks folds {where}; "
                                                 f"{which}: check {'them' if fold.count > 1 else 'it'} in BigWarp "
                                                 "(one misplaced, clicked twice with different partners, or two with "
                                                 "swapped partners), or use --transform affine")
        warnings.append(f"the thin-plate spline through {settings.landmarks.name} folds {where}, "
                        f"{'beyond the landmarks' if not fold.among_landmarks else 'over less than an ion pixel'} "
                        f"({which}): the registered optical is mirrored there; check the landmarks near it, add "
                        "some, or use --transform affine")
    info = {"method": f"landmarks ({kind})", "landmarks": str(settings.landmarks),
            "n_landmarks": len(landmarks.fixed), "fixed_pixel_size": p_fixed, "fixed_scale": k}
    errors = landmark_errors(landmarks, kind, ion_grid.pixel_size)
    if errors is not None:
        info["landmark_errors"] = errors.record(px)
        worst = errors.ion_px[errors.worst]
        if kind == "affine" and worst > AFFINE_MISS:
            warnings.append(f"the affine fit through {settings.landmarks.name} misses {errors.names[errors.worst]!r} "
                            f"by {worst:.3g} ion pixels (median {np.nanmedian(errors.ion_px):.2g}): a misplaced "
                            "landmark, or tissue that an affine map cannot follow (the thin-plate spline, "
                            "--transform tps, can); see run.json's landmark_errors")
    # µm per unit of the fixed landmarks: the MSI's µm over the landmark units per MSI pixel (p_fixed·k); where the
    # MSI has no pixel size, --fixed-pixel-size is taken as µm
    affine = AffineMap.from_landmarks(landmarks)
    fixed_unit_um = px / (p_fixed * k) if px else (1.0 if settings.fixed_pixel_size else None)
    missed = (f"the landmark transform ({kind}) from {settings.landmarks.name} maps the whole ion grid outside this "
              "image; " + misfit_hint(landmarks, fiji_fixed, full_moving,
                                      "check the landmarks' units (pixels vs µm) and which image is fixed"))
    return _Alignment(transform, ion_grid, landmarks, info, warnings, msi.images[0], None, affine, fixed_unit_um,
                      missed, errors)


def landmark_ion_grid(shape: tuple[int, int], ion_pixel_um: float | None, settings: RegisterSettings) -> Grid:
    """The ion grid in the units of the landmarks' fixed points: the ion image enlarged ``fixed_scale`` times (as
    Fiji showed it, at :meth:`RegisterSettings.fixed_pixel_units` per pixel), coarsened back to MSI pixels."""
    k = settings.fixed_scale
    return Grid((shape[0] * k, shape[1] * k), settings.fixed_pixel_units(ion_pixel_um)).coarsened(k)


@dataclass(frozen=True)
class _FedBack:
    """A ``landmarks.csv`` that an msifusion run wrote, fed back unchanged (its folder's run record says so): the
    units in which that run read the optical and in which this run reads it (per full-resolution pixel, whose first
    pixel is centred at 0 whatever pyramid level is read: ``--optical-pixel-size``, else the file's calibration, else
    1 = pixels; None where this run reads another optical file), and the ion grid in that run's fixed units and in
    this run's (``--pixel-size``, the imzML's calibration, ``--fixed-pixel-size``, ``--fixed-scale``; None where this
    run reads another MSI file or that run's record does not say)."""

    landmarks: Path
    optical_units: tuple[float, float] | None  # (then, now)
    ion_grids: tuple[Grid, Grid] | None  # (then, now)

    def convert(self, landmarks: Landmarks) -> Landmarks:
        """The landmarks in this run's units: optical points scaled, fixed points moved to the same MSI pixels."""
        units, grids = self.optical_units, self.ion_grids

        def moving(points: np.ndarray | list[float]) -> np.ndarray:
            points = np.asarray(points, dtype=np.float64)
            return points * (units[1] / units[0]) if units else points

        def fixed(points: np.ndarray | list[float]) -> np.ndarray:
            points = np.asarray(points, dtype=np.float64)
            return grids[1].to_coords(grids[0].to_index(points)) if grids else points

        parked = tuple((name, *(moving([mx, my]) if np.isfinite([mx, my]).all() else (mx, my)), *fixed([fx, fy]))
                       for name, mx, my, fx, fy in landmarks.inactive)  # switched off in BigWarp: written back too
        return replace(landmarks, moving=moving(landmarks.moving), fixed=fixed(landmarks.fixed), inactive=parked)

    def warning(self, optical: Path | None, msi: Path) -> str:
        """What was converted, and from what."""
        def reading(size: float) -> str:
            return "in pixels" if size == 1 else f"at {size:.4g} µm per pixel"

        def frame(grid: Grid) -> str:
            unit = "unit" if grid.pixel_size == 1 else "units"
            first = (f", the first pixel's centre at ({grid.origin[0]:.4g}, {grid.origin[1]:.4g})"
                     if any(grid.origin) else "")
            return f"{grid.pixel_size:.4g} {unit} per MSI pixel{first}"

        parts = []
        if self.optical_units:
            then, now = self.optical_units
            parts.append(f"read {optical.name} {reading(then)}; its optical points are converted to this run's "
                         f"reading, {reading(now)} (--optical-pixel-size)")
        if self.ion_grids:
            then, now = self.ion_grids
            parts.append(f"placed its ion-image points on {msi.name} at {frame(then)}; they are moved to the same MSI "
                         f"pixels at this run's {frame(now)} (--pixel-size, --fixed-pixel-size, --fixed-scale)")
        return f"{self.landmarks} was written by the msifusion run in that folder, which " + ", and ".join(parts)


def _same_file(described: object, path: Path | None) -> bool:
    """Whether a run record's description of an input file (:func:`msifusion.provenance.input_files`) is ``path``
    as it is now, by name and size (no path, as for an optical given as an array: not)."""
    now = input_files({"file": path}).get("file")
    return (isinstance(described, dict) and now is not None and described.get("bytes") == now["bytes"]
            and Path(str(described.get("path", ""))).name == Path(now["path"]).name)


def _same_msi(read: dict, msi_path: Path) -> bool:
    """Whether a run record's inputs (``read``) hold ``msi_path``: an ion image file, or an .imzML with the same .ibd
    beside it (two acquisitions on one grid can write .imzML files of one size)."""
    if "imzml" not in read:
        return _same_file(read.get("ion"), msi_path)
    try:
        ibd = find_ibd(msi_path)
    except InputError:
        return False
    return _same_file(read["imzml"], msi_path) and _same_file(read.get("ibd"), ibd)


def _fed_back(record: dict | None, settings: RegisterSettings, optical_path: Path | None, msi_path: Path | None,
              ion_grid: Grid | None) -> _FedBack | None:
    """How to read the settings' landmarks in this run's units where an msifusion run wrote them (``record``, its
    run record: :func:`msifusion.io.outdir.record_of_the_run_that_wrote`) and read the same optical file or MSI file
    (``msi_path``; ``ion_grid``: its grid in this run's fixed units, :func:`landmark_ion_grid`) in other units than
    this run; None where they are read as they stand. The run record
    is taken over the options that describe landmark units (``--fixed-pixel-size``, ``--fixed-scale``): it knows
    what the file holds. Fed back with the ``--optical-pixel-size`` or ``--pixel-size`` a first run's warning
    advised, the landmarks would otherwise be read in the wrong units and register the optical silently wrong."""
    if record is None:
        return None
    then = record.get("register_settings") or {}
    read = record.get("input_files") or {}
    stated_then = then.get("optical_pixel_size")
    units = None
    if (_same_file(read.get("optical"), optical_path) and then.get("optical_scene") == settings.optical_scene
            and (stated_then is None or isinstance(stated_then, (int, float)))):
        in_file = file_pixel_size_um(optical_path) if not (stated_then and settings.optical_pixel_size) else None
        units = (stated_then or in_file or 1.0, settings.optical_pixel_size or in_file or 1.0)
        units = None if math.isclose(*units, rel_tol=1e-9) else units
    frame = (record.get("registration") or {}).get("landmarks_fixed_frame")
    grids = None
    if isinstance(frame, dict) and ion_grid is not None and msi_path is not None and _same_msi(read, msi_path):
        try:
            earlier = Grid(ion_grid.shape, float(frame["pixel_size"]), tuple(map(float, frame["origin"])))
        except (KeyError, TypeError, ValueError):
            earlier = ion_grid
        same = (math.isclose(earlier.pixel_size, ion_grid.pixel_size, rel_tol=1e-9)
                and np.allclose(earlier.origin, ion_grid.origin, rtol=1e-9, atol=1e-9 * ion_grid.pixel_size))
        grids = None if same else (earlier, ion_grid)
    return _FedBack(settings.landmarks, units, grids) if units or grids else None


def _automatically(optical: Image, msi: MsiTissue, settings: RegisterSettings, moving: Grid, quiet: bool) -> _Alignment:
    """Automatic registration against the MSI tissue images, with its warnings: unreliable, ambiguous (and the rival
    alignment), or an optical that looks registered already."""
    px = msi.pixel_size_um
    ion_grid = Grid(msi.shape, px or 1.0)
    features = "auto-fluorescence" if optical.channels else "auto"  # tissue glows in a composite of channels
    options = AutoRegisterOptions(PoseSearch(optical_feature=features), Polish(deformable=settings.deformable))
    try:
        with elapsed_bar("registering (automatic)", quiet):
            reg = register_auto(optical.pixels, msi.images, ion_grid, moving, options)
    except InputError as exc:
        raise (InputError(msi.source, exc.problem) if exc.source is None else exc) from None
    transform = reg.transform
    area = reg.area or reg.fixed  # the acquired area: landmarks there, not over an empty frame
    landmarks = landmarks_from_transform(transform, area, moving=moving)
    info = {"method": "automatic" + (" + deformable" if settings.deformable else ""), "score": reg.score,
            "correlation": reg.correlation, "nmi": reg.nmi, "mattes_mi": reg.metric,
            "options": asdict(options)}  # the search's and polish's settings, SimpleITK's seed among them
    if settings.deformable:
        info["landmarks_note"] = ("landmarks.csv samples the deformable map at 4×4 points: fed back with "
                                  "--landmarks, its thin-plate spline is close to this registration, not equal")
    warnings = []
    matched = reg.sign * msi.images[reg.channel]
    rival = reg.details.get("rival")
    info.update(tissue_channel=int(reg.channel), tissue_sign=int(reg.sign), rival=rival,
                optical_feature=reg.details.get("optical_feature"), feature_scores=reg.details.get("feature_scores"),
                optical_sections=reg.details.get("optical_sections"))
    ambiguous = rival is not None and rival["disagreement_px"] > AMBIGUOUS_PX  # then reg.rival is its alignment
    alternative = (_rival_alignment(reg.rival, optical, reg.fixed, area, moving, settings.scale)
                   if ambiguous else None)
    failed = reg.details.get("polish_error")
    if failed:
        why = re.sub(r"^ITK ERROR: \w+\(0x[0-9a-fA-F]+\): ", "", " ".join(failed)).split(". ")[0].rstrip(".")
        warnings.append(f"automatic registration's affine polish failed ({why}): the searched pose is used, which "
                        "can be a few MSI pixels off; check overlay.png, and refine landmarks.csv in BigWarp if needed")
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
        apart = f"up to {rival['disagreement_px']:.1f} MSI pixels apart"
        turned = abs(rival.get("turned_deg", 0.0))
        other = ", ".join([*(["mirrored"] if rival.get("mirrored") else []),
                           *([f"turned by {turned:.0f}°"] if turned >= 5 else []),
                           *([f"on another of the optical's {reg.details['optical_sections']} separate sections"]
                             if rival.get("other_section") else [])])
        if rival["channel"] == reg.channel:  # two poses of one image: a section nearly symmetric, say
            what = (f"{_tissue_name(reg.channel)} matches the optical in two alignments {apart} (scores "
                    f"{reg.score:.2f}, used, and {rival['score']:.2f}); the other is {other or 'moved'}")
        else:
            what = (f"{_tissue_name(reg.channel)} (used) and {_tissue_name(rival['channel'])} both match the optical "
                    f"(scores {reg.score:.2f} and {rival['score']:.2f}) but align {apart}"
                    f"{f', the other {other}' if other else ''}")
        if rival.get("other_section") and alternative is not None:
            what += (" (serial sections look alike: tell the two apart by a tear, a fold or a missing part in "
                     "overlay.png and overlay_rival.png, or crop the optical image to the acquired section)")
        elif rival.get("mirrored") and alternative is not None:  # pictures of outlines cannot tell a mirror image
            what += (" (a mirror image has nearly the same outline: tell the two apart by a feature known to lie on "
                     "one side, a notch, a bundle, the slide's label, in overlay.png and overlay_rival.png)")
        warnings.append(f"automatic registration is ambiguous: {what}; {remedy}")
    registered = _registered_already(optical, msi.shape, reg.affine, ion_grid.pixel_size / moving.pixel_size,
                                     msi.source)
    if registered:
        warnings.append(registered)
    affine, fixed_unit_um = reg.affine, (1.0 if px else None)  # the ion grid in µm
    missed = (f"automatic registration against the MSI tissue image of {msi.source.name} placed the whole ion "
              "grid outside this image; check that both images show the same section")
    return _Alignment(transform, ion_grid, landmarks, info, warnings, matched, alternative, affine, fixed_unit_um,
                      missed)


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
PIXELS_MATCH = 0.05  # landmarks whose scale is the optical's pixel size within this share are in its pixels


def _moving_grid(optical: Image, settings: RegisterSettings) -> Grid:
    """The optical's pixels in its units as Fiji saw them (those the landmarks are in): its pixel size and origin,
    or under ``--optical-pixel-size`` that size at full resolution (times a pyramid level's downsampling, its first
    pixel centred on the full-resolution pixels it averages, as :func:`read_optical` places it); pixels where
    uncalibrated."""
    full = settings.optical_pixel_size
    if full is None:
        return Grid(optical.shape2d, optical.pixel_size_um or 1.0, optical.origin_um)
    return Grid(optical.shape2d, full).resized(full * optical.downsample, optical.shape2d)


def _full_resolution(level: Grid, optical: Image) -> Grid:
    """The full-resolution scan a pyramid ``level`` of ``optical`` was read from, in the same units: the image Fiji
    showed when the landmarks were placed, so that their checks speak of its pixels and size (``level`` itself where
    the optical was read at full resolution)."""
    if optical.downsample == 1:
        return level
    return level.resized(level.pixel_size / optical.downsample,
                         optical.full_shape or tuple(round(n * optical.downsample) for n in level.shape))


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
    without the option, fed back with the pixel size its warning suggested): the registration would be wrong, and
    is refused (an InputError saying so). Where the
    landmarks, read as µm, match pixels of the ion image enlarged ×K (``msi_pixel_um``/K µm each), it names
    ``--fixed-scale K --fixed-pixel-size 1``. ``fixed_unit_um``: µm per unit of the affine's fixed coordinates (None:
    uncalibrated)."""
    # the full resolution's pixel size, as the option and Fiji give it
    stated = settings.optical_pixel_size or (optical.pixel_size_um / optical.downsample if optical.pixel_size_um
                                             else None)
    pixels_both = msi_pixel_um is None and settings.fixed_pixel_size == 1 and settings.optical_pixel_size == 1
    if stated is None or fixed_unit_um is None or pixels_both:  # pixels_both: both sides' landmarks said in pixels
        return None
    scale = affine.scale / fixed_unit_um  # optical µm per MSI µm; 1 when both calibrations are right
    if 1 / CALIBRATION_FACTOR <= scale <= CALIBRATION_FACTOR:
        return None
    matched = stated / scale
    name = optical.path.name if optical.path else "the optical image"
    source = "--optical-pixel-size" if settings.optical_pixel_size else f"the calibration of {name}"
    by = f"by {max(scale, 1 / scale):.1f}×"
    in_file = file_pixel_size_um(optical.path) if settings.optical_pixel_size and optical.path else None
    in_file_units = in_file is not None and 1 / CALIBRATION_FACTOR <= scale * stated / in_file <= CALIBRATION_FACTOR
    if settings.landmarks is not None and in_file is not None and abs(scale * in_file / stated - 1) < PIXELS_MATCH:
        return None  # landmarks in the optical's pixels, given as such (--optical-pixel-size 1): the file agrees
    in_pixels = abs(scale * stated - 1) < PIXELS_MATCH
    if settings.landmarks is not None and settings.optical_pixel_size is None and in_pixels:
        return CalibrationDisagreement(matched, (
            f"the landmarks in {settings.landmarks.name} put {scale:.3g} of the optical's units in a µm of the ion "
            f"image, 1 / its pixel size ({stated:.3g} µm): they look placed in pixels of {name}, not in its µm; if "
            "so, give --optical-pixel-size 1 (their optical units are then its pixels), and check overlay.png"))
    if settings.landmarks is not None and in_file_units:  # a registration known to be wrong: refused, not warned
        raise InputError("--optical-pixel-size", (
            f"the landmarks in {settings.landmarks.name} fit the calibration of {name} ({in_file:.3g} µm "
            f"per pixel), not --optical-pixel-size {stated:.3g}: they are in the file's units, as the landmarks.csv "
            f"and landmarks_rival.csv of a run without --optical-pixel-size are, so the registration would be off "
            f"{by}; rerun without --optical-pixel-size, or with landmarks placed at {stated:.3g} µm per pixel"))
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
             save_overlay(folder / "overlay.png", registered.guide, registered.tissue, px, marks=registered.marks,
                          error_measure=registered.marks_measure)]
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
