"""Grids and point maps: the :class:`Grid`, the fixed → moving maps (BigWarp's thin-plate spline, affine,
displacement field), landmarks to and from a transform, and the landmark sanity checks (:func:`check_landmarks`).

Coordinate conventions: see :mod:`msifusion.register`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from msifusion.errors import InputError
from msifusion.io.landmarks import Landmarks


# ----------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class Grid:
    """A pixel grid in calibrated units: centre of pixel (i, j) = (j·p + x0, i·p + y0)."""

    shape: tuple[int, int]
    pixel_size: float = 1.0
    origin: tuple[float, float] = (0.0, 0.0)  # (x0, y0)

    def __post_init__(self) -> None:
        if not (self.pixel_size > 0 and math.isfinite(self.pixel_size)):
            raise ValueError(f"pixel size must be positive, got {self.pixel_size}")

    def resized(self, pixel_size: float, shape: tuple[int, int]) -> "Grid":
        """The same frame in pixels of ``pixel_size``, ``shape`` of them, the first covering this grid's first corner
        (its centre moves by half the sizes' difference): a finer or coarser grid over the same area, a pyramid's
        level and its full resolution."""
        shift = (pixel_size - self.pixel_size) / 2.0
        return Grid(shape, pixel_size, (self.origin[0] + shift, self.origin[1] + shift))

    def refined(self, scale: int) -> "Grid":
        """The same area split into ``scale × scale`` sub-pixels per pixel (output grid of fusion)."""
        return self.resized(self.pixel_size / scale, (self.shape[0] * scale, self.shape[1] * scale))

    def coarsened(self, factor: int) -> "Grid":
        """Grid of ``factor × factor`` block means (the inverse of :meth:`refined`, shape floored)."""
        return self.resized(self.pixel_size * factor, (self.shape[0] // factor, self.shape[1] // factor))

    def to_index(self, xy: np.ndarray) -> np.ndarray:
        """Calibrated (x, y) → fractional (column, row)."""
        xy = np.asarray(xy, dtype=np.float64)
        return (xy - np.asarray(self.origin)) / self.pixel_size

    def to_coords(self, cols_rows: np.ndarray) -> np.ndarray:
        """Fractional (column, row) → calibrated (x, y)."""
        return np.asarray(cols_rows, dtype=np.float64) * self.pixel_size + np.asarray(self.origin)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) of the pixel area (edges, not centres)."""
        h, w = self.shape
        x0, y0 = self.origin
        p = self.pixel_size
        return (x0 - p / 2, x0 + (w - 0.5) * p, y0 - p / 2, y0 + (h - 0.5) * p)

    def outside(self, points: np.ndarray, margin: float = 0.0, pixels: float = 0.0) -> np.ndarray:
        """Mask of calibrated (x, y) points beyond the pixel area (:attr:`extent`) by more than ``margin`` of its
        width (height) plus ``pixels`` pixels."""
        x0, x1, y0, y1 = self.extent
        mx = (x1 - x0) * margin + pixels * self.pixel_size
        my = (y1 - y0) * margin + pixels * self.pixel_size
        return (points[:, 0] < x0 - mx) | (points[:, 0] > x1 + mx) | (points[:, 1] < y0 - my) | (points[:, 1] > y1 + my)


# ----------------------------------------------------------------------------- transforms


class PointMap(Protocol):
    """A map from fixed calibrated (x, y) points (n, 2) to moving calibrated points (n, 2)."""

    def __call__(self, points: np.ndarray) -> np.ndarray: ...


ACROSS_THE_LINE = 1e-3  # landmarks spread across their line by less than this share of their spread along it ...
ON_ONE_LINE = f"landmarks are collinear or nearly so (their spread across the line under {ACROSS_THE_LINE:.1%} of " \
              "their spread along it)"  # ... leave the transform across it to their last digits


def _on_one_line(points: np.ndarray) -> bool:
    """Whether ``points`` (n, 2) lie on one line, or so nearly that a transform fitted to them is decided across it by
    rounding (a third landmark 1e-4 px off the line of two others mapped the whole ion grid off the optical)."""
    spread = np.linalg.svd(np.asarray(points, dtype=np.float64) - np.mean(points, axis=0), compute_uv=False)
    return bool(spread[0] == 0 or spread[-1] <= ACROSS_THE_LINE * spread[0])


class ThinPlateSpline:
    """BigWarp's thin-plate spline from fixed to moving landmarks.

    ``RBFInterpolator(fixed, moving, kernel="thin_plate_spline", degree=1, smoothing=0)``:
    r² log r kernel plus an affine part, interpolating the landmarks exactly.
    """

    def __init__(self, landmarks: Landmarks):
        from scipy.interpolate import RBFInterpolator

        if len(landmarks.fixed) < 3:
            raise InputError(landmarks.source, f"need at least 3 active landmarks, got {len(landmarks.fixed)}")
        if any(_on_one_line(side) for side in (landmarks.fixed, landmarks.moving)):
            raise InputError(landmarks.source, f"{ON_ONE_LINE}; a thin-plate spline needs three not on one line")
        self.landmarks = landmarks
        try:
            self._rbf = RBFInterpolator(landmarks.fixed, landmarks.moving, kernel="thin_plate_spline",
                                        degree=1, smoothing=0.0)
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise InputError(landmarks.source, f"landmarks do not define a transform ({exc}); "
                             "are three of them on one line, or two at the same place?") from None

    def __call__(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        out = np.empty_like(pts)
        for start in range(0, len(pts), 200_000):  # bounded memory: n_points × n_landmarks per chunk
            out[start:start + 200_000] = self._rbf(pts[start:start + 200_000])
        return out


@dataclass(frozen=True)
class AffineMap:
    """``moving = A @ fixed + t`` with ``matrix = [A | t]`` (2×3)."""

    matrix: np.ndarray

    def __call__(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        m = np.asarray(self.matrix, dtype=np.float64)
        return pts @ m[:, :2].T + m[:, 2]

    @classmethod
    def from_landmarks(cls, landmarks: Landmarks) -> "AffineMap":
        """Least-squares affine fixed → moving (exact for 3 landmarks)."""
        if len(landmarks.fixed) < 3:
            raise InputError(landmarks.source, f"need at least 3 active landmarks, got {len(landmarks.fixed)}")
        if any(_on_one_line(side) for side in (landmarks.fixed, landmarks.moving)):
            raise InputError(landmarks.source, f"{ON_ONE_LINE}; an affine map needs three not on one line")
        design = np.column_stack([landmarks.fixed, np.ones(len(landmarks.fixed))])
        sol = np.linalg.lstsq(design, landmarks.moving, rcond=None)[0]
        return cls(sol.T.copy())

    @property
    def scale(self) -> float:
        """Its linear scale, moving units per fixed unit: √|det A|."""
        return float(math.sqrt(abs(np.linalg.det(np.asarray(self.matrix, dtype=np.float64)[:, :2]))))

    def inverse(self) -> "AffineMap":
        full = np.vstack([self.matrix, [0.0, 0.0, 1.0]])
        return AffineMap(np.linalg.inv(full)[:2])


IDENTITY = AffineMap(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))


@dataclass(frozen=True)
class DisplacementMap:
    """``moving = affine(fixed) + field(fixed)``: an affine map plus a remainder ``field`` (H, W, 2) sampled at the
    pixel centres of ``grid``, interpolated bilinearly and held constant beyond them. Used for deformable results:
    past the outer centres (the outer half pixel, refined into a fused grid's sub-pixels) the affine still turns and
    scales, where a held total displacement would not."""

    grid: Grid
    field: np.ndarray
    affine: AffineMap = IDENTITY

    @classmethod
    def of_displacements(cls, grid: Grid, displacements: np.ndarray, affine: AffineMap) -> "DisplacementMap":
        """From the total displacements (moving − fixed, (H, W, 2)) at ``grid``'s pixel centres, of a map whose affine
        part is ``affine``."""
        h, w = grid.shape
        cols, rows = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        centres = grid.to_coords(np.column_stack([cols.ravel(), rows.ravel()]))
        return cls(grid, displacements - (affine(centres) - centres).reshape(h, w, 2), affine)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        cr = self.grid.to_index(pts)
        h, w = self.grid.shape
        rows = np.clip(cr[:, 1], 0, h - 1)
        cols = np.clip(cr[:, 0], 0, w - 1)
        dx = map_coordinates(self.field[..., 0], [rows, cols], order=1, mode="nearest")
        dy = map_coordinates(self.field[..., 1], [rows, cols], order=1, mode="nearest")
        return self.affine(pts) + np.column_stack([dx, dy])


def transform_from_landmarks(landmarks: Landmarks, kind: str = "tps") -> PointMap:
    """``"tps"`` (BigWarp's default) or ``"affine"`` (least squares) from the landmarks."""
    if kind == "tps":
        return ThinPlateSpline(landmarks)
    if kind == "affine":
        return AffineMap.from_landmarks(landmarks)
    raise InputError("--transform", f"unknown transform {kind!r}; use tps or affine")


UNITS_HINT = "are the landmarks in pixels while the image is calibrated in µm, or the other way round?"
SQUEEZED_SPAN = 0.05  # landmarks spanning less than this fraction of their image's diagonal ...
SPREAD_SPAN = 0.2  # ... while spanning more than this of the other image's ...
SPAN_DISAGREEMENT = 10.0  # ... and this many times more: the two sets disagree in scale


def _extent_text(grid: Grid) -> str:
    """An image's extent and units for messages: "image spans x a–b, y c–d in units of p per pixel"."""
    x0, x1, y0, y1 = grid.extent
    return f"image spans x {x0:.4g}–{x1:.4g}, y {y0:.4g}–{y1:.4g} in units of {grid.pixel_size:g} per pixel"


EDGE_PIXELS = 1.0  # a landmark clicked on an image's border may sit this many pixels beyond its edge


SWAP_HINT = ("are x and y swapped? With them swapped every landmark lies inside its image: swap the x and y columns of "
             "both sets")


def _swapped_fit(landmarks: Landmarks, fixed: Grid, moving: Grid) -> bool:
    """Whether swapping x and y in both sets puts every landmark inside its image."""
    return all(not grid.outside(pts[:, ::-1], pixels=EDGE_PIXELS).any()
               for pts, grid in ((landmarks.fixed, fixed), (landmarks.moving, moving)))


EXCHANGE_HINT = ("are the moving and fixed columns exchanged? With them exchanged every landmark lies inside its "
                 "image: in BigWarp the optical is the moving image and the ion image the fixed one")


EXCHANGE_SPAN = 2.0  # the two images' extents must differ this many times for an exchange to tell: alike, both fit


def _exchanged_fit(landmarks: Landmarks, fixed: Grid, moving: Grid) -> bool:
    """Whether reading the moving points as fixed and the fixed as moving puts every landmark inside its image, where
    the images' extents (in their units) differ by :data:`EXCHANGE_SPAN` or more: two images in µm over the same
    section hold each other's points either way."""
    extents = [math.hypot(x1 - x0, y1 - y0) for x0, x1, y0, y1 in (fixed.extent, moving.extent)]
    return max(extents) >= EXCHANGE_SPAN * min(extents) and not (
        fixed.outside(landmarks.moving, pixels=EDGE_PIXELS).any()
        or moving.outside(landmarks.fixed, pixels=EDGE_PIXELS).any())


LENGTH_UNITS = ((1e4, "cm"), (25_400.0, "inches"), (1e3, "mm"))  # µm per unit: what Fiji's own TIFF opener shows


def _length_unit_hint(landmarks: Landmarks, fixed: Grid, moving: Grid) -> str | None:
    """Which set crowds its image's origin corner yet, read in cm, inches or mm instead of µm, would lie across it:
    landmarks placed in Fiji on images opened with its own TIFF opener, which shows a TIFF's resolution tags in their
    unit (cm for msifusion's, often inches for a scanner's) where Bio-Formats shows µm. None where no set is so."""
    found = []
    for which, pts, grid in (("fixed (ion)", landmarks.fixed, fixed), ("moving (optical)", landmarks.moving, moving)):
        if _relative_span(pts, grid) < SQUEEZED_SPAN and _in_origin_corner(pts, grid):
            units = [unit for factor, unit in LENGTH_UNITS if not grid.outside(pts * factor, pixels=EDGE_PIXELS).any()
                     and _relative_span(pts * factor, grid) > SPREAD_SPAN]
            if units:
                found.append(f"the {which} landmarks (x {pts[:, 0].min():.4g}–{pts[:, 0].max():.4g}, y "
                             f"{pts[:, 1].min():.4g}–{pts[:, 1].max():.4g}; {_extent_text(grid)}) crowd its corner, "
                             f"yet read in {' or '.join(units)} lie across it")
    if not found:
        return None
    return (f"{'; '.join(found)}: were they placed in Fiji on images opened with File ▸ Open, which shows a TIFF's "
            "calibration in its resolution unit? Open both with Bio-Formats (File ▸ Import ▸ Bio-Formats), whose "
            "units are µm, and place them again, or give --fixed-pixel-size and --optical-pixel-size in the "
            "landmarks' units")


def misfit_hint(landmarks: Landmarks, fixed: Grid, moving: Grid, otherwise: str) -> str:
    """What would put every landmark inside its image (x and y swapped, the two sets exchanged, or a set read in
    another length unit), else ``otherwise``."""
    if _swapped_fit(landmarks, fixed, moving):
        return SWAP_HINT
    if _exchanged_fit(landmarks, fixed, moving):
        return EXCHANGE_HINT
    return _length_unit_hint(landmarks, fixed, moving) or otherwise


def _named_points(landmarks: Landmarks, points: np.ndarray, bad: np.ndarray) -> str:
    """Up to three landmarks by name and position, and how many more."""
    named = ", ".join(f"{landmarks.names[i]!r} at ({points[i, 0]:.6g}, {points[i, 1]:.6g})" for i in bad[:3])
    return named + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def _relative_span(points: np.ndarray, grid: Grid) -> float:
    """Diagonal of the points' bounding box over the image's diagonal."""
    x0, x1, y0, y1 = grid.extent
    return float(np.hypot(*np.ptp(points, axis=0)) / math.hypot(x1 - x0, y1 - y0))


def _in_origin_corner(points: np.ndarray, grid: Grid) -> bool:
    """Whether all points lie within 2 ``SQUEEZED_SPAN`` of the image's size from its origin corner, where
    coordinates in the wrong units (pixels on a grid in µm, a preview's pixels on the full image) crowd; a small
    piece of tissue elsewhere on a whole-slide image is not squeezed but small."""
    x0, x1, y0, y1 = grid.extent
    return bool((points[:, 0] <= x0 + 2 * SQUEEZED_SPAN * (x1 - x0)).all()
                and (points[:, 1] <= y0 + 2 * SQUEEZED_SPAN * (y1 - y0)).all())


def check_landmarks(landmarks: Landmarks, fixed: Grid, moving: Grid) -> list[str]:
    """Refuse landmarks that cannot belong to their images (almost always pixel-vs-µm confusion, swapped x and y,
    or a typo), and warn of those that lie outside their image.

    Refused: any landmark more than half an image size outside its image (one such point is
    enough to distort a thin-plate spline everywhere), a set in cm, inches or mm where its image is in µm
    (:func:`_length_unit_hint`), and sets squeezed into the origin corner of
    one image (under ``SQUEEZED_SPAN`` of its diagonal, :func:`_in_origin_corner`) while spread over
    the other (over ``SPREAD_SPAN``, and ``SPAN_DISAGREEMENT`` times more, within 3× of that image's
    pixel size): no section shrinks 10× between its two images, but coordinates in pixels on a grid
    in µm (25 µm MSI pixels) do; a small core in the corner of a whole-slide scan does not match its
    pixel size, and is accepted. Returned as warnings: landmarks outside their image by more than
    ``EDGE_PIXELS`` (no feature is there to match). Both say where swapping x and y, or exchanging the moving and fixed
    sets, would put every landmark inside its image.
    """
    if len(landmarks.fixed) == 0:
        return []
    sides = (("fixed (ion)", landmarks.fixed, fixed), ("moving (optical)", landmarks.moving, moving))
    outside = [grid.outside(pts, margin=0.5) for _, pts, grid in sides]  # half an image beyond its edge
    if any(mask.any() for mask in outside):
        k = 0 if outside[0].mean() >= outside[1].mean() else 1
        which, pts, grid = sides[k]
        bad = np.flatnonzero(outside[k])
        if len(bad) == 1:
            what = f"{which} landmark {_named_points(landmarks, pts, bad)} lies"
            hint = "is a coordinate mistyped, or " + UNITS_HINT
        else:
            what = f"{len(bad)} of {len(pts)} {which} landmarks ({_named_points(landmarks, pts, bad)}) lie"
            hint = UNITS_HINT
        x0, x1, y0, y1 = grid.extent
        if k == 0 and (pts[:, 0] >= x0).all() and (pts[:, 1] >= y0).all():  # beyond the far edges only
            hint += " Or were they placed on the ion image enlarged in Fiji? Give the enlargement with --fixed-scale"
        raise InputError(landmarks.source,
                         f"{what} far outside that image (more than half its size beyond its edge; {_extent_text(grid)}); "
                         f"{misfit_hint(landmarks, fixed, moving, hint)}")
    spans = [_relative_span(pts, grid) for _, pts, grid in sides]
    for k in (0, 1):
        small, large = spans[k], spans[1 - k]
        unit = sides[k][2].pixel_size  # the factor by which pixel indices undershoot this image's units
        if (small < SQUEEZED_SPAN and large > SPREAD_SPAN and large >= SPAN_DISAGREEMENT * small
                and unit / 3 <= large / small <= 3 * unit and _in_origin_corner(sides[k][1], sides[k][2])):
            which, pts, grid = sides[k]
            raise InputError(
                landmarks.source,
                f"the {which} landmarks span only {100 * small:.2g}% of that image (x {pts[:, 0].min():.4g}–"
                f"{pts[:, 0].max():.4g}, y {pts[:, 1].min():.4g}–{pts[:, 1].max():.4g}; {_extent_text(grid)}) but the "
                f"{sides[1 - k][0]} ones {100 * large:.0f}% of theirs: the two sets disagree in scale "
                f"{large / small:.0f}×; {UNITS_HINT}")
    units = _length_unit_hint(landmarks, fixed, moving)  # a set within a thousandth of its image's corner
    if units:
        raise InputError(landmarks.source, units)
    warnings = []
    for which, pts, grid in sides:
        bad = np.flatnonzero(grid.outside(pts, pixels=EDGE_PIXELS))
        if len(bad):
            x0, x1, y0, y1 = grid.extent
            beyond = np.maximum.reduce([x0 - pts[bad, 0], pts[bad, 0] - x1, y0 - pts[bad, 1], pts[bad, 1] - y1])
            warnings.append(f"{Path(landmarks.source).name if landmarks.source else 'the landmarks'}: {len(bad)} of "
                            f"{len(pts)} {which} landmarks ({_named_points(landmarks, pts, bad)}) "
                            f"{'lies' if len(bad) == 1 else 'lie'} outside that image, up to "
                            f"{beyond.max() / grid.pixel_size:.3g} pixels beyond its edge ({_extent_text(grid)}), where "
                            "it shows nothing to match; "
                            f"{misfit_hint(landmarks, fixed, moving, 'check them in BigWarp')}")
    return warnings



FOLD_SAMPLES = 250_000  # ion pixel centres sampled at most by :func:`spline_fold` ...
SUSPECT_SAMPLES = 10_000  # ... and for each landmark left out, to find the ones the fold comes from


@dataclass(frozen=True)
class Fold:
    """Where a landmark spline folds the moving image over itself: the ion-grid point (column, row) where its local
    area change is most reversed; the landmarks without any one of which it does not fold (``blamed``; ``count`` of
    them), else the one nearest the fold; whether the fold lies among the landmarks (inside their convex hull, where
    they should hold) rather than where the spline extrapolates; and whether it covers an ion pixel's centre, not
    only a sliver beside a landmark."""

    at_column_row: tuple[float, float]
    suspects: str
    count: int
    blamed: bool
    among_landmarks: bool
    covers_a_pixel: bool


SUSPECTS_TRIED = 12  # the landmarks nearest a fold, each left out in turn
RING_POINTS = 8  # points on the ring sampled around each landmark, after the ion pixel centres


def spline_fold(spline: ThinPlateSpline, ion_grid: Grid) -> Fold | None:
    """Where the spline folds over ``ion_grid`` (in the landmarks' fixed units), or None.

    The local area change (the determinant of the spline's Jacobian, central differences of a tenth of an ion pixel)
    is compared with the landmarks' affine fit's: where the two differ in sign, the spline maps that part of the ion
    grid mirrored, and the optical's tissue there is torn and folded: two landmarks with swapped partners, or one
    clicked twice at nearly the same place with different partners, whose spline bends through both (the fold can
    lie away from them). A slide mirrored as a whole is no fold: the affine fit is mirrored too. Sampled at the ion
    pixel centres (strided beyond :data:`FOLD_SAMPLES`) and on a ring of radius 0.3 ion pixels around each landmark,
    where a near-repeat tears; the :data:`SUSPECTS_TRIED` landmarks nearest the fold are then left out in turn (on
    :data:`SUSPECT_SAMPLES` samples) to name the ones it comes from (none where leaving out any one unfolds it, as
    with four landmarks, whose three left always fit exactly)."""
    from scipy.spatial import Delaunay, QhullError

    landmarks = spline.landmarks
    change, points = _area_change(spline, ion_grid, FOLD_SAMPLES)
    if change.min() > 0:
        return None
    worst = points[int(np.argmin(change))]
    n = len(landmarks.fixed)
    nearest = np.argsort(np.hypot(*(landmarks.fixed - worst).T), kind="stable")
    tried = nearest[:SUSPECTS_TRIED] if n > 3 else nearest[:0]
    suspects = [int(i) for i in tried if _unfolds(landmarks, np.arange(n) != i, ion_grid)]
    blamed = 0 < len(suspects) < n
    if not blamed:
        suspects = [int(nearest[0])]
    try:
        among = bool(Delaunay(landmarks.fixed).find_simplex(worst[None])[0] >= 0)
    except QhullError:  # landmarks nearly on one line span no area to be among
        among = False
    column, row = ion_grid.to_index(worst)
    on_pixels = change[: len(points) - RING_POINTS * n]  # the ion pixel centres sampled, before the rings
    return Fold((float(column), float(row)), _named_points(landmarks, landmarks.fixed, np.array(sorted(suspects))),
                len(suspects), blamed, among, bool(on_pixels.size and on_pixels.min() <= 0))


def _unfolds(landmarks: Landmarks, kept: np.ndarray, ion_grid: Grid) -> bool:
    """Whether the spline through the ``kept`` landmarks (a mask) does not fold."""
    rest = Landmarks(landmarks.moving[kept], landmarks.fixed[kept], tuple(np.array(landmarks.names)[kept]),
                     landmarks.source)
    try:
        return bool(_area_change(ThinPlateSpline(rest), ion_grid, SUSPECT_SAMPLES)[0].min() > 0)
    except InputError:  # the rest are collinear
        return False


def _area_change(spline: ThinPlateSpline, ion_grid: Grid, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The spline's local area change over its landmarks' affine fit's at ≈ ``samples`` ion pixel centres and on a
    ring around each landmark, and those points (see :func:`spline_fold`)."""
    landmarks = spline.landmarks
    area = np.linalg.det(AffineMap.from_landmarks(landmarks).matrix[:, :2])
    h, w = ion_grid.shape
    stride = max(1, math.ceil(math.sqrt(h * w / samples)))
    rows, cols = np.mgrid[0:h:stride, 0:w:stride]
    angles = np.linspace(0, 2 * np.pi, RING_POINTS, endpoint=False)
    ring = np.column_stack([np.cos(angles), np.sin(angles)]) * 0.3 * ion_grid.pixel_size
    points = np.concatenate([ion_grid.to_coords(np.column_stack([cols.ravel(), rows.ravel()])),
                             (landmarks.fixed[:, None, :] + ring[None]).reshape(-1, 2)])
    step = 0.1 * ion_grid.pixel_size
    along_x = (spline(points + [step, 0]) - spline(points - [step, 0])) / (2 * step)
    along_y = (spline(points + [0, step]) - spline(points - [0, step])) / (2 * step)
    return (along_x[:, 0] * along_y[:, 1] - along_x[:, 1] * along_y[:, 0]) / area, points


AFFINE_MISS = 1.0  # an affine fit that misses a landmark by more than this many ion pixels is warned of


@dataclass(frozen=True)
class LandmarkErrors:
    """How far each landmark lies from the transform, in ion pixels (NaN where it cannot be measured): for an affine
    fit its residual; for the thin-plate spline, which passes through every landmark, the leave-one-out error, where
    the spline through the others puts it: the registration's accuracy between landmarks, largest at a misplaced one,
    where the tissue deforms and where the others must extrapolate."""

    measure: str  # "leave-one-out" or "affine fit residual"
    names: tuple[str, ...]
    ion_px: np.ndarray

    @property
    def worst(self) -> int:
        return int(np.nanargmax(self.ion_px))

    def record(self, um_per_ion_px: float | None) -> dict:
        """For run.json: the median and the largest (and where), and each landmark's, in ion pixels and µm."""
        def both(value: float) -> dict:
            um = {"um": round(float(value) * um_per_ion_px, 3)} if um_per_ion_px else {}
            return {"ion_px": round(float(value), 3), **um}

        return {"measure": self.measure, "median": both(np.nanmedian(self.ion_px)),
                "largest": {"landmark": self.names[self.worst], **both(self.ion_px[self.worst])},
                "per_landmark": [{"landmark": name, **both(value)}
                                 for name, value in zip(self.names, self.ion_px) if np.isfinite(value)]}


def landmark_errors(landmarks: Landmarks, kind: str, ion_pixel: float) -> LandmarkErrors | None:
    """Each landmark's error under the ``kind`` of transform fitted through them (see :class:`LandmarkErrors`),
    measured in the fixed image as the affine fit carries the moving error back, over ``ion_pixel`` (an ion pixel in
    the fixed landmarks' units); None for three landmarks, which any transform fits exactly, and where none can be
    measured (where, without each landmark, the others are nearly on a line)."""
    if len(landmarks.fixed) < 4:
        return None
    affine = AffineMap.from_landmarks(landmarks)
    if kind == "affine":
        moving_error, label = landmarks.moving - affine(landmarks.fixed), "affine fit residual"
    else:
        moving_error, label = _spline_leave_one_out(landmarks), "leave-one-out"
    fixed_error = moving_error @ np.linalg.inv(affine.matrix[:, :2]).T
    ion_px = np.hypot(*fixed_error.T) / ion_pixel
    return LandmarkErrors(label, landmarks.names, ion_px) if np.isfinite(ion_px).any() else None


def _spline_leave_one_out(landmarks: Landmarks) -> np.ndarray:
    """Where the thin-plate spline through all landmarks but each one misses that one's moving point (n, 2), in one
    inversion (Rippa's rule, which holds with the spline's affine part: error_i = coefficient_i / (M⁻¹)_ii of the
    interpolation system M); NaN where the others lie on one line. The fixed points are centred and scaled first,
    which leaves the spline unchanged and its system well conditioned."""
    from scipy.spatial.distance import cdist

    n = len(landmarks.fixed)
    fixed = landmarks.fixed - landmarks.fixed.mean(axis=0)
    fixed = fixed / np.abs(fixed).max()
    distance = cdist(fixed, fixed)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = np.where(distance > 0, distance ** 2 * np.log(distance), 0.0)
    affine_part = np.column_stack([np.ones(n), fixed])
    system = np.block([[kernel, affine_part], [affine_part.T, np.zeros((3, 3))]])
    try:
        inverse = np.linalg.inv(system)
    except np.linalg.LinAlgError:
        return np.full((n, 2), np.nan)
    coefficients = inverse[:, :n] @ landmarks.moving
    errors = coefficients[:n] / np.diag(inverse)[:n, None]
    others_on_a_line = [_on_one_line(np.delete(landmarks.fixed, i, axis=0)) for i in range(n)]
    errors[np.array(others_on_a_line)] = np.nan
    return errors


# ----------------------------------------------------------------------------- landmarks out


def landmarks_from_transform(transform: PointMap, fixed: Grid, n: tuple[int, int] = (4, 4), margin: float = 0.1,
                             moving: Grid | None = None) -> Landmarks:
    """A ``rows × cols`` lattice of fixed points over the fixed grid, ``margin`` of its size in from each edge, with
    their moving images.

    With ``moving``, the lattice is drawn further in (margins up to 0.3) until every moving point lies within its
    image (:func:`check_landmarks` warns of those that do not): points a user can find in both images. Write it with
    ``io.landmarks.write_bigwarp_csv`` and refine it in Fiji's BigWarp.
    """
    x0, x1, y0, y1 = fixed.extent
    for inset in (margin, *(m for m in (0.15, 0.2, 0.25, 0.3) if moving is not None and m > margin)):
        mx, my = (x1 - x0) * inset, (y1 - y0) * inset
        gx, gy = np.meshgrid(np.linspace(x0 + mx, x1 - mx, n[1]), np.linspace(y0 + my, y1 - my, n[0]))
        fixed_pts = np.column_stack([gx.ravel(), gy.ravel()])
        moving_pts = np.asarray(transform(fixed_pts), dtype=np.float64)
        if moving is None or not moving.outside(moving_pts, pixels=EDGE_PIXELS).any():
            break
    names = tuple(f"Pt-{i}" for i in range(len(fixed_pts)))
    return Landmarks(moving=moving_pts, fixed=fixed_pts, names=names)
