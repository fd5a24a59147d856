"""Automatic registration of the optical image onto the MSI tissue image(s), without landmarks.

Automatic registration (:func:`register_auto`): a global search over scale, rotation, mirror
and translation (FFT-based masked normalised cross-correlation, weighted by how well the two
footprints agree), of candidate MSI tissue images (TIC, principal components of the spectra)
against a stain feature of the optical image (saturation), then SimpleITK's affine
(Mattes mutual information) polish, and an optional B-spline step. Where two tissue images
match almost equally well, both are polished and their disagreement is reported.
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from msifusion.errors import InputError, check_setting_types
from msifusion.io.images import luminance
from msifusion.io.imzml import fill_gaps
from msifusion.measurement import block_mean
from msifusion.register.resample import ResampleOptions, resample_optical
from msifusion.register.transforms import AffineMap, DisplacementMap, Grid, PointMap

FEATURE_ORDERS = {"auto": ("saturation", "inverted_luminance", "luminance"),  # PoseSearch.optical_feature's orders
                  "auto-fluorescence": ("luminance", "inverted_luminance", "saturation")}
CONVINCING_SCORE = 0.4  # automatic registration's search score: 0.65 right, 0.27 wrong on the prostate example
BASIN_TRIES = 3  # poses in other basins refined at most, until one stays there
MAX_SECTIONS = 4  # separate pieces of tissue on the optical searched one by one at most (the largest)
SECTIONS_BELOW_COVERAGE = 0.9  # sections are searched where the whole optical's best match has less inside
SECTION_CORRELATION_SHARE = 0.8  # a section's pose, under the whole optical, correlates at least this share as well
AMBIGUOUS_PX = 1.0  # two near-equal matches further apart than this (MSI pixels) make an alignment uncertain


# ----------------------------------------------------------------------------- automatic


@dataclass(frozen=True)
class PoseSearch:
    """The global search, before any optimiser: the optical feature is scaled by ``n_scales`` factors spanning
    ``scale_range`` × the moment estimate, rotated in ``rotation_step`` degree steps within ±``max_rotation``,
    optionally mirrored (``allow_flip``), and for each pose every translation is scored at once by FFT (see
    :func:`register_auto`); then a finer local search around the best. ``search_pixels``: the MSI image is
    block-averaged to at most this many pixels along its long side for the search; ``min_overlap``: the least share
    of the MSI's tissue a pose must cover.
    ``optical_feature``: "saturation" (stain strength; bright-field H&E and other stains), "inverted_luminance" (dark
    tissue on a bright slide), "luminance" (fluorescence), or "auto": saturation, and where its search scores below
    ``feature_fallback_score`` (a grey image has no saturation at all) also the two luminance features, keeping the
    best-scoring search (the search then takes up to three times as long); "auto-fluorescence" tries them the other
    way round, luminance first (a fluorescence image's channels composed into colours, :mod:`msifusion.io.channels`:
    their colourfulness is no stain's, and it can score high at a wrong scale).
    ``rival_ratio``: where another alignment scores at least this share of the chosen one's, it is polished too and
    the distance between the two alignments is reported (``details["rival"]``): two near-equal matches that disagree
    mean the alignment is uncertain. The other alignment is another MSI tissue image's best pose, or one of any
    tissue image mirrored, turned or moved by over a quarter of the acquired area's diagonal from the best (a
    section nearly mirror-symmetric matches its mirror image almost as well), or the best on another of the optical's
    separate sections (serial sections alike); one that disagrees by more than
    :data:`AMBIGUOUS_PX` is preferred. (All are refined poses, and the highest refined is used: a tissue image turned
    between the coarse search's angles scores low there, and so may the right one of two mirror images.)
    """

    optical_feature: str = "auto"
    feature_fallback_score: float = CONVINCING_SCORE
    max_rotation: float = 180.0
    rotation_step: float = 10.0
    allow_flip: bool = True
    scale_range: tuple[float, float] = (0.5, 2.0)
    n_scales: int = 11
    search_pixels: int = 100
    min_overlap: float = 0.4
    rival_ratio: float = 0.8


@dataclass(frozen=True)
class Polish:
    """SimpleITK's refinement of the searched pose (``enabled``): an affine (Mattes mutual information with
    ``histogram_bins`` bins on at most ``max_samples`` random samples, SimpleITK's ``seed``; ``iterations`` steps) on
    the optical feature at about the fixed pixel / ``moving_oversample``; ``deformable`` adds a B-spline with
    ``bspline_mesh`` nodes per axis."""

    enabled: bool = True
    deformable: bool = False
    bspline_mesh: int = 6
    moving_oversample: float = 2.0
    iterations: int = 200
    histogram_bins: int = 32
    max_samples: int = 250_000  # MI samples per evaluation; all acquired pixels when fewer
    seed: int = 1  # SimpleITK: 0 would mean "seed from the clock"


@dataclass(frozen=True)
class AutoRegisterOptions:
    """Automatic registration settings: the global pose search, then its polish."""

    search: PoseSearch = PoseSearch()
    polish: Polish = Polish()

    def __post_init__(self) -> None:
        check_setting_types(self)


@dataclass(frozen=True)
class Registration:
    """Result of :func:`register_auto`: the fixed → moving map and how well it fits.

    ``score``: the global search's score of the chosen pose (NCC × footprint agreement).
    ``correlation`` / ``nmi``: Pearson correlation and normalised mutual information
    ((H(a)+H(b))/H(a,b): 1 = independent, 2 = identical) between the chosen MSI tissue image
    and the registered optical feature block-averaged to the MSI grid, over the acquired
    pixels. ``metric``: SimpleITK's final Mattes mutual information (lower is better; NaN when
    not polished). ``channel`` / ``sign``: which tissue image (and sign) matched best.
    ``rival``: the rival alignment, polished (``details["rival"]``), if any.
    ``area``: the part of ``fixed`` searched and polished on (:func:`acquired_window`).
    """

    transform: PointMap
    fixed: Grid
    moving: Grid
    affine: AffineMap
    score: float
    correlation: float
    nmi: float
    metric: float
    channel: int
    sign: int
    details: dict = field(default_factory=dict)
    rival: AffineMap | None = None
    area: Grid | None = None


def optical_feature(optical_rgb: np.ndarray, kind: str = "saturation") -> np.ndarray:
    """(h, w) float32 tissue image of an optical image, tissue bright.

    ``saturation`` (HSV: (max − min) / max of R, G, B; stained tissue vs grey/white glass),
    ``inverted_luminance`` (1 − BT.601 luma) or ``luminance``, the luma stretched to its 0.5–99.5 percentiles.
    """
    rgb = np.asarray(optical_rgb, dtype=np.float32)
    if rgb.ndim == 3 and rgb.shape[2] > 3:
        rgb = np.ascontiguousarray(rgb[..., :3])  # an alpha channel is no colour
    if np.asarray(optical_rgb).dtype == np.uint8:
        rgb = rgb / 255.0
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if kind == "saturation":
        hi = rgb.max(axis=2)
        lo = rgb.min(axis=2)
        return np.where(hi > 1e-6, (hi - lo) / np.maximum(hi, 1e-6), 0.0).astype(np.float32)
    if kind not in ("inverted_luminance", "luminance"):
        raise ValueError(f"unknown optical feature {kind!r}; use saturation, inverted_luminance or luminance")
    # stretched to its own 0.5–99.5 percentiles: a 12-bit camera image in a 16-bit file fills only 1/16 of
    # the range, and the search's scores are not invariant to that (measured: a 12-bit fluorescence image
    # registered 100 MSI pixels off, the same image at 8 bits 0.2 px)
    lum = luminance(rgb)
    step = max(1, int(math.sqrt(lum.size / 1e6)))
    lo, hi = np.percentile(lum[::step, ::step], [0.5, 99.5])
    lum = np.clip((lum - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return (1.0 - lum if kind == "inverted_luminance" else lum).astype(np.float32)


def otsu_level(img: np.ndarray) -> float | None:
    """Otsu's threshold over the finite values of ``img``; None where there are none or they are all equal."""
    from skimage.filters import threshold_otsu

    vals = img[np.isfinite(img)]
    if vals.size == 0 or vals.max() == vals.min():
        return None
    return float(threshold_otsu(vals))


def _otsu_mask(img: np.ndarray) -> np.ndarray:
    level = otsu_level(img)
    return np.ones(img.shape, bool) if level is None else img > level


def _block_reduce(img: np.ndarray, grid: Grid, factor: int) -> tuple[np.ndarray, Grid]:
    """``factor × factor`` block means (trailing rows/columns dropped) and their grid."""
    if factor <= 1:
        return np.asarray(img, dtype=np.float32), grid
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    return block_mean(img[:h, :w], factor), Grid((h, w), grid.pixel_size, grid.origin).coarsened(factor)


def _normalise01(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img[mask], [0.5, 99.5]) if mask.any() else (0.0, 1.0)
    return np.where(mask, np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1), 0).astype(np.float32)


@dataclass(frozen=True)
class _Pose:
    """A candidate: moving units per fixed unit, rotation (deg), mirror, translation peak."""

    score: float
    ncc: float
    scale: float
    angle: float
    flip: bool
    channel: int
    sign: int
    matrix: np.ndarray  # 2×3 affine fixed calibrated → moving calibrated
    coverage: float  # the share of the optical's tissue inside the acquired area


def _pose_search(fixed_imgs: np.ndarray, fmask: np.ndarray, fgrid: Grid, feat: np.ndarray, fmask_opt: np.ndarray,
                 mgrid: Grid, scales: Sequence[float], angles: Sequence[float], flips: Sequence[bool],
                 min_overlap: float) -> list[_Pose]:
    """Exhaustive pose search; every translation of a pose scored at once with FFTs.

    Score = max(NCC, 0) × (share of optical tissue inside the MSI acquisition area) ×
    (share of the MSI area covered by the optical image): the masked normalised
    cross-correlation (Padfield 2012) over the overlap, weighted so that the two footprints
    must agree. Each fixed channel is tried with both signs (PCA signs are arbitrary).
    """
    import cv2
    from scipy import fft as sfft

    mf = fmask.astype(np.float32)
    n_mask = mf.sum()
    best_per_pose: list[_Pose] = []
    for s in scales:
        k = s * fgrid.pixel_size / mgrid.pixel_size  # moving pixels per search pixel
        sw, sh = max(2, int(round(feat.shape[1] / k))), max(2, int(round(feat.shape[0] / k)))
        small = cv2.resize(feat, (sw, sh), interpolation=cv2.INTER_AREA)
        tsmall = cv2.resize(fmask_opt.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA)
        kx, ky = feat.shape[1] / sw, feat.shape[0] / sh
        d = int(math.ceil(math.hypot(sh, sw))) + 2
        shape = tuple(sfft.next_fast_len(n, real=True) for n in (fmask.shape[0] + d - 1, fmask.shape[1] + d - 1))

        def fwd(a):
            return sfft.rfft2(a, shape)

        def inv(a):
            return sfft.irfft2(a, shape)

        f_mask = fwd(mf)
        f_imgs = [fwd((f * mf).astype(np.float32)) for f in fixed_imgs]
        f_imgs2 = [fwd((f * f * mf).astype(np.float32)) for f in fixed_imgs]
        for flip in flips:
            src = np.ascontiguousarray(small[:, ::-1] if flip else small)
            tsrc = np.ascontiguousarray(tsmall[:, ::-1] if flip else tsmall)
            for ang in angles:
                rot = cv2.getRotationMatrix2D(((sw - 1) / 2, (sh - 1) / 2), float(ang), 1.0)
                rot[0, 2] += (d - 1) / 2 - (sw - 1) / 2
                rot[1, 2] += (d - 1) / 2 - (sh - 1) / 2
                m = cv2.warpAffine(src, rot, (d, d), flags=cv2.INTER_LINEAR)
                mm = cv2.warpAffine(np.ones_like(src), rot, (d, d), flags=cv2.INTER_NEAREST)
                tm = cv2.warpAffine(tsrc, rot, (d, d), flags=cv2.INTER_LINEAR)
                m = np.ascontiguousarray((m * mm)[::-1, ::-1], dtype=np.float32)
                mmr = np.ascontiguousarray(mm[::-1, ::-1], dtype=np.float32)
                f_m, f_m2, f_mm = fwd(m), fwd(m * m), fwd(mmr)
                n = np.maximum(np.round(inv(f_mask * f_mm)), 1.0)
                s_m = inv(f_mask * f_m)
                v_m = inv(f_mask * f_m2) - s_m**2 / n
                t_sum = float(tm.sum())
                coverage = np.clip(inv(f_mask * fwd(np.ascontiguousarray(tm[::-1, ::-1], dtype=np.float32))) / max(t_sum, 1e-9), 0, 1)
                weight = coverage * np.clip(n / max(n_mask, 1.0), 0, 1)  # no fully acquired block: all score 0
                valid = (n >= min_overlap * n_mask) & (v_m > 1e-4 * n)
                for c, (f_i, f_i2) in enumerate(zip(f_imgs, f_imgs2)):
                    s_f = inv(f_i * f_mm)
                    v_f = inv(f_i2 * f_mm) - s_f**2 / n
                    ok = valid & (v_f > 1e-4 * n)
                    ncc = np.where(ok, (inv(f_i * f_m) - s_f * s_m / n) / np.sqrt(np.maximum(v_f * v_m, 1e-30)), 0.0)
                    ncc = np.clip(ncc, -1, 1)
                    for sign in (1, -1):
                        score = np.maximum(sign * ncc, 0) * weight
                        i = int(np.argmax(score))
                        dy, dx = np.unravel_index(i, score.shape)
                        matrix = _pose_matrix(fgrid, mgrid, (d - 1 - dx, d - 1 - dy), rot, flip, sw, kx, ky)
                        best_per_pose.append(_Pose(float(score.flat[i]), float(sign * ncc.flat[i]), float(s), float(ang),
                                                   bool(flip), c, sign, matrix, float(coverage.flat[i])))
    best_per_pose.sort(key=lambda p: -p.score)
    return best_per_pose


def _pose_matrix(fgrid: Grid, mgrid: Grid, offset: tuple[int, int], rot: np.ndarray, flip: bool, sw: int,
                 kx: float, ky: float) -> np.ndarray:
    """Affine fixed calibrated → moving calibrated for a search peak (chain of the search's steps)."""
    pts_f = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])  # search pixel (col, row)
    canvas = pts_f + np.asarray(offset, dtype=np.float64)
    full = np.vstack([rot, [0.0, 0.0, 1.0]])
    small = (np.linalg.inv(full) @ np.column_stack([canvas, np.ones(len(canvas))]).T).T[:, :2]
    if flip:
        small[:, 0] = (sw - 1) - small[:, 0]
    mov_idx = np.column_stack([(small[:, 0] + 0.5) * kx - 0.5, (small[:, 1] + 0.5) * ky - 0.5])
    design = np.column_stack([fgrid.to_coords(pts_f), np.ones(len(pts_f))])
    sol, *_ = np.linalg.lstsq(design, mgrid.to_coords(mov_idx), rcond=None)
    return sol.T


def _sitk_image(img: np.ndarray, grid: Grid):
    import SimpleITK as sitk

    im = sitk.GetImageFromArray(np.ascontiguousarray(img, dtype=np.float32))
    im.SetSpacing((float(grid.pixel_size), float(grid.pixel_size)))
    im.SetOrigin(tuple(float(v) for v in grid.origin))
    return im


def _pull_back(moving_img: np.ndarray, moving: Grid, transform: PointMap, fixed: Grid, sub: int = 4) -> np.ndarray:
    """Moving image pulled onto the fixed grid, averaged over ``sub × sub`` points per fixed pixel
    (NaN where the optical image does not reach)."""
    fine = fixed.refined(sub)
    try:
        # averaged here, sub × sub samples per fixed pixel, as registration has always scored it
        vals = resample_optical(moving_img, transform, fine, moving,
                                ResampleOptions(step=sub, fill=np.nan, antialias=False))
    except InputError:
        return np.full(fixed.shape, np.nan, np.float32)
    h, w = fixed.shape
    blocks = vals.reshape(h, sub, w, sub)
    with np.errstate(invalid="ignore"):
        count = np.isfinite(blocks).sum(axis=(1, 3))
        total = np.nansum(blocks, axis=(1, 3))
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray, mask: np.ndarray, bins: int = 32) -> tuple[float, float]:
    """(normalised mutual information (H(a)+H(b))/H(a,b), Pearson correlation) over ``mask``."""
    from skimage.metrics import normalized_mutual_information
    ok = mask & np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 10:
        return 1.0, 0.0
    x, y = a[ok].astype(np.float64), b[ok].astype(np.float64)
    corr = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else 0.0
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # one joint bin: no entropy (scikit-image would divide 0 by 0)
        return 1.0, corr
    return float(normalized_mutual_information(x, y, bins=bins)), corr


@dataclass(frozen=True)
class _MsiSearch:
    """The MSI side of the pose search: normalised tissue images on the search grid, their mask, the
    search grid, and the acquired area (calibrated units²)."""

    channels: np.ndarray
    mask: np.ndarray
    grid: Grid
    area: float
    msi_pixels: float = 1.0  # MSI pixels per search pixel

    @property
    def acquired(self) -> np.ndarray:
        """The acquired search pixels: where no block is fully acquired (spectra spread out with gaps wider than
        :func:`msifusion.io.imzml.fill_gaps` fills), the whole grid (the acquired area's bounding box) stands for it."""
        return self.mask if self.mask.any() else np.ones_like(self.mask)

    @property
    def far(self) -> float:
        """A quarter of the acquired area's diagonal (search pixels): poses further apart lie in other basins."""
        rows, cols = np.nonzero(self.acquired)
        return 0.25 * math.hypot(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)

    def apart(self, a: _Pose, b: _Pose) -> float:
        """How far apart two poses put the acquired area (search pixels; :func:`_disagreement`)."""
        return _disagreement(AffineMap(a.matrix), AffineMap(b.matrix), self.grid, self.acquired)


@dataclass(frozen=True)
class _FeatureSearch:
    """The global pose search with one optical feature: the feature at full size, the best pose, the coarse
    search's poses (best first), the scale it started from, and the best other alignment (refined like the best;
    None where there is none): one that disagrees with the best by more than :data:`AMBIGUOUS_PX` where there is one,
    on another MSI tissue image or on the same (a section nearly mirror-symmetric matches mirrored too), or on
    another of the optical's separate sections."""

    kind: str
    feature: np.ndarray
    best: _Pose
    poses: list[_Pose]
    scale_start: float
    rival: _Pose | None
    sections: int = 0  # separate pieces of tissue on the optical searched one by one (0: none were)
    other_section: bool = False  # the rival puts the acquired area on another of those sections than the best


@dataclass(frozen=True)
class _TissueSearch:
    """One search of the optical feature (on its reduced grid) with one tissue mask: the scale it started from, the
    coarse poses (best first) and the refined ones paired with the coarse pose each came from (best first)."""

    scale_start: float
    poses: list[_Pose]
    refined: list[tuple[_Pose, _Pose]]


def _closed(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` closed by a disk of ``radius`` pixels (gaps up to twice as wide filled), as if it went on beyond the
    image's edge."""
    import cv2

    disk = (np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius).astype(np.uint8)
    padded = np.pad(mask, radius, mode="edge").astype(np.uint8)
    return cv2.morphologyEx(padded, cv2.MORPH_CLOSE, disk)[radius:-radius, radius:-radius].astype(bool)


def separate_sections(tissue: np.ndarray, max_sections: int = MAX_SECTIONS) -> list[np.ndarray]:
    """The optical's separate pieces of tissue that could each be a section on their own (a slide of serial sections):
    connected components of the tissue mask closed by a disk of 1 % of the image's long side (gaps up to 2 % wide
    filled), holes filled, each at least a quarter of the largest's area; the ``max_sections`` largest, or [] where
    there are fewer than two."""
    from scipy import ndimage

    closed = _closed(tissue, max(1, int(round(0.01 * max(tissue.shape)))))
    labels, n = ndimage.label(ndimage.binary_fill_holes(closed))
    if n < 2:
        return []
    areas = np.bincount(labels.ravel())[1:]
    large = [i + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= 0.25 * areas.max()][:max_sections]
    return [labels == i for i in large] if len(large) >= 2 else []


def _search_tissue(feat: np.ndarray, opt_tissue: np.ndarray, fgrid_m: Grid, msi: _MsiSearch,
                   options: AutoRegisterOptions) -> _TissueSearch:
    """Global search over scale × rotation × mirror × channel × sign of one optical feature with its tissue mask,
    then a finer search around each tissue image's best pose (same channel and mirror) and around the best pose in
    another basin (mirrored, turned or moved far; the next, up to :data:`BASIN_TRIES`, where its finer search lands
    back in a basin refined already)."""
    # Scale start: footprint areas.
    scale0 = math.sqrt(max(opt_tissue.sum() * fgrid_m.pixel_size**2, 1e-12) / msi.area)
    lo, hi = options.search.scale_range
    scales = scale0 * np.exp(np.linspace(math.log(lo), math.log(hi), options.search.n_scales))
    step = options.search.rotation_step
    n_half = int(math.floor(min(options.search.max_rotation, 180.0) / step))
    angles = np.arange(-n_half, n_half + 1) * step
    angles = angles[angles > -180.0 + 1e-9]  # -180° is +180°
    flips = (False, True) if options.search.allow_flip else (False,)
    poses = _pose_search(msi.channels, msi.mask, msi.grid, feat, opt_tissue, fgrid_m, scales, angles, flips,
                         options.search.min_overlap)
    ratio = math.exp(math.log(hi / lo) / max(options.search.n_scales - 1, 1))

    def refine(coarse: _Pose) -> _Pose:
        fine = _pose_search(msi.channels[[coarse.channel]], msi.mask, msi.grid, feat, opt_tissue, fgrid_m,
                            coarse.scale * ratio ** np.linspace(-1, 1, 5), coarse.angle + np.linspace(-step, step, 7),
                            (coarse.flip,), options.search.min_overlap)
        return replace(fine[0], channel=coarse.channel) if fine[0].score >= coarse.score else coarse

    firsts: dict[int, _Pose] = {}  # each tissue image's best coarse pose, best first
    for pose in poses:
        firsts.setdefault(pose.channel, pose)
    # the finer search ranks them: a tissue image turned between the coarse angles scored low there
    refined = sorted(((refine(p), p) for p in firsts.values()), key=lambda pair: -pair[0].score)

    # another basin of any tissue image's score surface: mirrored, turned or moved by over a quarter of the acquired
    # area's diagonal from the best refined pose and from those refined on its own tissue image, where neighbouring
    # angles and scales of one basin stay under a fifth (a section nearly mirror-symmetric matches its mirror image
    # almost as well; another tissue image's pose in that basin may score far less)
    def another_basin(pose: _Pose) -> bool:
        return msi.apart(pose, refined[0][0]) > msi.far and all(
            r.channel != pose.channel or msi.apart(pose, r) > msi.far for r, _ in refined)

    # its finer search scores every translation, so a pose may land back in a refined basin: then the next is tried
    candidates = (p for p in poses if p.score >= options.search.rival_ratio * poses[0].score
                  and all(p is not c for _, c in refined) and another_basin(p))
    for elsewhere in itertools.islice(candidates, BASIN_TRIES):
        found = refine(elsewhere)
        if another_basin(found):
            refined = sorted([*refined, (found, elsewhere)], key=lambda pair: -pair[0].score)
            break
    return _TissueSearch(scale0, poses, refined)


def _search_pose(optical_rgb: np.ndarray, kind: str, moving: Grid, msi: _MsiSearch,
                 options: AutoRegisterOptions) -> _FeatureSearch:
    """The pose search (:func:`_search_tissue`) for one optical feature over all of the optical's tissue, and, where
    its best match leaves tissue outside the acquired area and the optical shows separate pieces of tissue
    (:func:`separate_sections`: serial sections on one slide), over each with the others blanked, so that each is
    scored by the share of its own tissue in the acquired area. The best refined pose is the one used (a section's
    only where it also explains the MSI under the whole optical), the best other its rival (see :class:`PoseSearch`'s
    ``rival_ratio``)."""
    # Optical feature on a reduced copy (≤ ~1000 px): the search never needs more.
    red_m = max(1, int(math.ceil(max(moving.shape) / 1000)))
    feat_full = optical_feature(optical_rgb, kind)
    feat, fgrid_m = _block_reduce(feat_full, moving, red_m)
    opt_tissue = _otsu_mask(feat)
    searches = [_search_tissue(feat, opt_tissue, fgrid_m, msi, options)]
    # where the best match leaves a tenth of the optical's tissue or more outside the acquired area (a section beside
    # it, not acquired: a quarter of the largest's area at least), or is no convincing match (over a slide of four
    # sections, a mirrored, turned pose that shrank them all into the acquired area), each section is searched too
    first = searches[0].refined[0][0]
    doubtful = first.coverage < SECTIONS_BELOW_COVERAGE or first.score < CONVINCING_SCORE
    sections = separate_sections(opt_tissue) if doubtful else []
    if sections:  # the others blanked to the glass's level (its median: dust and pen marks do not move it)
        glass = float(np.median(feat[~opt_tissue])) if (~opt_tissue).any() else 0.0
        for section in sections:
            searches.append(_search_tissue(np.where(section, feat, glass), opt_tissue & section, fgrid_m, msi,
                                           options))
    whole = searches[0].refined[0][0]

    def pulled(pose: _Pose) -> np.ndarray:  # the whole optical feature under the pose, on the search grid
        return _pull_back(feat, fgrid_m, AffineMap(pose.matrix), msi.grid)

    under_whole = pulled(whole) if sections else None

    def explains(feature: np.ndarray, channel: int) -> float:
        """How strongly the whole optical feature under a pose (``feature``, :func:`pulled`) correlates, either way
        (the signs of principal components are arbitrary), with an MSI tissue image over the acquired area."""
        return abs(similarity(msi.channels[channel], feature, msi.acquired)[1])

    # a section's best is used where it scores higher than the whole optical's and, under the whole optical (the other
    # sections in view), explains the MSI nearly as well (its correlation with the section pose's tissue image at least
    # SECTION_CORRELATION_SHARE of the whole best's with that image): a section's score counts only its own tissue, so
    # one piece of a section in pieces, slid within an acquisition of part of it, could score higher too
    better = [search for search in searches[1:] if search.refined[0][0].score > whole.score
              and explains(pulled(search.refined[0][0]), search.refined[0][0].channel)
              >= SECTION_CORRELATION_SHARE * explains(under_whole, search.refined[0][0].channel)]
    chosen = max(better, key=lambda search: search.refined[0][0].score) if better else searches[0]
    best, used = chosen.refined[0]

    def apart(pose: _Pose) -> bool:  # from the best by more than AMBIGUOUS_PX
        return msi.apart(pose, best) * msi.msi_pixels > AMBIGUOUS_PX

    # the rival: the best of the others close enough to be one (register_auto's rival_ratio), preferring one that
    # disagrees with the used pose, so that a tissue image agreeing with it does not hide another that does not
    elsewhere = [s.refined[0][0] for s in searches if s is not chosen and apart(s.refined[0][0])]
    others = sorted([r for r, _ in chosen.refined[1:]] + elsewhere, key=lambda pose: -pose.score)
    distinct = [r for r in others if r.score >= options.search.rival_ratio * best.score and apart(r)]
    rival = (distinct or others or [None])[0]
    poses = [used] + [p for p in chosen.poses if p is not used]  # the runner-ups: the coarse poses after the one used
    on = [_section_of(pose, sections, fgrid_m, msi) for pose in (best, rival)] if rival is not None else [None]
    other_section = None not in on and on[0] != on[1]
    return _FeatureSearch(kind, feat_full, best, poses, chosen.scale_start, rival, len(sections), other_section)


def _section_of(pose: _Pose, sections: list[np.ndarray], fgrid_m: Grid, msi: _MsiSearch) -> int | None:
    """Which of the optical's separate sections (their masks on ``fgrid_m``) a pose puts most of the acquired area
    on (None: none of them, or no sections)."""
    if not sections:
        return None
    rows, cols = np.nonzero(msi.acquired)
    xy = AffineMap(pose.matrix)(msi.grid.to_coords(np.column_stack([cols, rows]).astype(np.float64)))
    c, r = np.round(fgrid_m.to_index(xy)).astype(int).T
    inside = (r >= 0) & (r < fgrid_m.shape[0]) & (c >= 0) & (c < fgrid_m.shape[1])
    counts = [int(section[r[inside], c[inside]].sum()) for section in sections]
    return int(np.argmax(counts)) if max(counts) > 0 else None


def register_auto(
    optical_rgb: np.ndarray,
    tissue: np.ndarray,
    fixed: Grid,
    moving: Grid | None = None,
    options: AutoRegisterOptions = AutoRegisterOptions(),
) -> Registration:
    """Register the optical image onto MSI tissue image(s) without landmarks.

    ``tissue``: (h, w) or a stack (k, h, w) of candidate MSI tissue images on ``fixed`` (the
    ion grid in its calibrated units), 0 where no spectrum was acquired; e.g.
    ``ImzML.tissue_images()`` (TIC and principal components). The optical becomes one
    tissue-bright feature (:func:`optical_feature`; by default saturation, and the luminance
    features where saturation finds no convincing match, see :class:`AutoRegisterOptions`).

    1. Start scale from the areas of the two footprints (acquired pixels; Otsu tissue mask of
       the optical feature).
    2. Global search (:func:`_pose_search`) over scale × rotation × mirror × channel × sign,
       all translations at once; then a finer search around the best pose (:func:`_search_pose`). Where the optical
       shows separate sections (:func:`separate_sections`), each is also searched on its own.
    3. SimpleITK affine polish (Mattes MI) from the best pose; kept only if it does not lower
       the correlation with the MSI image. Optional B-spline refinement.
    4. Where another tissue image, or the same one in another pose (mirrored, turned or moved far: a nearly
       symmetric section), matches almost as well (``rival_ratio``), that pose is refined and polished too, and
       ``details["rival"]`` says how far apart the two alignments are (:func:`_disagreement`, in fixed pixels) and
       whether the other is mirrored or turned: the caller warns above :data:`AMBIGUOUS_PX`.

    Returns the fixed → moving map in the units of ``fixed`` and ``moving``: pass it, with
    ``fixed.refined(scale)``, to :func:`resample_optical`. A ``tissue`` with under 16 pixels of signal is an
    :class:`InputError` without a source (the caller names the MSI file).
    """
    stack = np.asarray(tissue, dtype=np.float32)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.shape[1:] != fixed.shape:
        raise ValueError(f"tissue image shape {stack.shape[1:]} does not match the fixed grid {fixed.shape}")
    acquired = np.any(stack != 0, axis=0)
    if acquired.sum() < 16:
        size = (f"too small ({stack.shape[1]}×{stack.shape[2]})" if stack.shape[1] * stack.shape[2] < 16 else
                "nearly empty" if acquired.any() else "empty")
        raise InputError(None, f"the MSI tissue image is {size}: {int(acquired.sum())} pixels with signal, 16 "
                               "needed to register automatically; give --landmarks")
    optical_rgb = np.asarray(optical_rgb)
    if moving is None:
        moving = Grid(optical_rgb.shape[:2])
    if optical_rgb.shape[:2] != moving.shape:
        raise ValueError(f"optical shape {optical_rgb.shape[:2]} does not match its grid {moving.shape}")

    full = fixed
    (rows, cols), fixed = acquired_window(acquired, fixed)  # the search and polish work on the acquired area
    stack, acquired = stack[:, rows, cols], acquired[rows, cols]
    # the acquisition's gaps (spectra dropped, columns a raster skipped) filled for the search and polish alike:
    # counted out, they cut the search's mask (its blocks must be fully acquired) and the share of the optical's
    # tissue found inside it (10 % of spectra dropped at random took a right match's score from 0.56 to 0.22; an
    # interleaved raster's fell to 0, and its polish failed, the mask vanishing at the polish's coarser level)
    stack, gaps = fill_gaps(stack, acquired)
    acquired = acquired | gaps
    # Search grid: MSI block-averaged to ≤ search_pixels on the long side.
    red_f = max(1, int(math.ceil(max(fixed.shape) / options.search.search_pixels)))
    chans = []
    for img in stack:
        small, sgrid = _block_reduce(np.where(acquired, img, 0), fixed, red_f)
        chans.append(small)
    smask, _ = _block_reduce(acquired.astype(np.float32), fixed, red_f)
    smask = smask > 0.99
    msi_search = _MsiSearch(np.stack([_normalise01(c, smask) for c in chans]), smask, sgrid,
                            float(acquired.sum() * fixed.pixel_size**2), sgrid.pixel_size / fixed.pixel_size)

    found: _FeatureSearch | None = None
    feature_scores: dict[str, float] = {}
    for kind in FEATURE_ORDERS.get(options.search.optical_feature, (options.search.optical_feature,)):
        search = _search_pose(optical_rgb, kind, moving, msi_search, options)
        feature_scores[kind] = search.best.score
        if found is None or search.best.score > found.best.score:
            found = search  # the best so far (and only its full-size feature) is kept
        if search.best.score >= options.search.feature_fallback_score:
            break  # a convincing match: the other features are for images where this one fails (a grey one)
    best, feat_full = found.best, found.feature
    chosen = _polish(best, stack, acquired, fixed, feat_full, moving, options)
    info = dict(chosen.info)
    transform: PointMap = chosen.affine
    if options.polish.deformable:
        transform, metric, binfo = _run_bspline(chosen.fix_img, acquired, fixed, chosen.mov, chosen.mov_grid,
                                                chosen.affine, options, full)
        info = {**info, "bspline": binfo}
    else:
        metric = chosen.metric
    nmi, corr = similarity(chosen.fix_img, _pull_back(chosen.mov, chosen.mov_grid, transform, fixed), acquired)
    rival, other = found.rival, None
    if rival is not None and rival.score >= options.search.rival_ratio * best.score:
        other = _polish(rival, stack, acquired, fixed, feat_full, moving, options).affine
        info["rival"] = {"channel": rival.channel, "sign": rival.sign, "score": rival.score,
                         "disagreement_px": _disagreement(chosen.affine, other, fixed, acquired),
                         "mirrored": rival.flip != best.flip,
                         "turned_deg": (rival.angle - best.angle + 180) % 360 - 180,
                         "other_section": found.other_section}
    return Registration(
        transform=transform, fixed=full, moving=moving, affine=chosen.affine, score=best.score,
        correlation=corr, nmi=nmi, metric=float(metric), channel=best.channel, sign=best.sign,
        details={**info, "optical_feature": found.kind,
                 "feature_scores": feature_scores,
                 "scale_start": found.scale_start, "optical_sections": found.sections,
                 "pose": {"scale": best.scale, "angle_deg": best.angle, "flip": best.flip, "ncc": best.ncc},
                 "runner_up": [(p.score, p.scale, p.angle, p.flip, p.channel, p.sign) for p in found.poses[1:4]],
                 "moving_block_factor": chosen.factor, "search_block_factor": red_f},
        rival=other, area=fixed,
    )


def acquired_window(acquired: np.ndarray, fixed: Grid) -> tuple[tuple[slice, slice], Grid]:
    """The acquired pixels' bounding box plus a margin (a tenth of the box, at least 3 pixels): its (rows, cols)
    slices of ``fixed`` and its grid in the same calibrated frame, so transforms found on it hold on the whole
    grid. The whole grid when the box fills most of it. An imzML whose coordinates start far from 1 (a region
    cropped in another tool, raster indices) otherwise puts the tissue in a corner of a mostly empty frame, which
    the search coarsens for nothing (measured: 3.4 MSI pixels off instead of 0.14)."""
    rows, cols = np.flatnonzero(acquired.any(1)), np.flatnonzero(acquired.any(0))
    h, w = acquired.shape
    if not rows.size:
        return (slice(0, h), slice(0, w)), fixed
    mr = max(3, (rows[-1] - rows[0] + 1) // 10)
    mc = max(3, (cols[-1] - cols[0] + 1) // 10)
    r0, r1 = max(rows[0] - mr, 0), min(rows[-1] + 1 + mr, h)
    c0, c1 = max(cols[0] - mc, 0), min(cols[-1] + 1 + mc, w)
    if (r1 - r0) * (c1 - c0) > 0.75 * h * w:
        return (slice(0, h), slice(0, w)), fixed
    p = fixed.pixel_size
    window = Grid((r1 - r0, c1 - c0), p, (fixed.origin[0] + c0 * p, fixed.origin[1] + r0 * p))
    return (slice(r0, r1), slice(c0, c1)), window


@dataclass(frozen=True)
class _Polished:
    """A searched pose after the affine polish, with what the polish matched: the MSI tissue image
    (``fix_img``) and the optical feature block-reduced by ``factor`` (``mov`` on ``mov_grid``)."""

    affine: AffineMap
    metric: float
    info: dict
    fix_img: np.ndarray
    mov: np.ndarray
    mov_grid: Grid
    factor: int


def _polish(pose: _Pose, stack: np.ndarray, acquired: np.ndarray, fixed: Grid, feat_full: np.ndarray,
            moving: Grid, options: AutoRegisterOptions) -> _Polished:
    """SimpleITK's affine polish of a searched pose against its MSI tissue image (``pose.channel`` of
    ``stack``, with the pose's sign); kept only if it does not lower the correlation with that image."""
    fix_img = _normalise01(np.where(acquired, stack[pose.channel], 0), acquired)
    if pose.sign < 0:
        fix_img = np.where(acquired, 1.0 - fix_img, 0).astype(np.float32)
    search_affine = AffineMap(pose.matrix)

    # Moving image for the optimiser: the feature at about fixed pixel / oversample.
    target = fixed.pixel_size * pose.scale / options.polish.moving_oversample
    factor = max(1, int(round(target / moving.pixel_size)))
    mov, mov_grid = _block_reduce(feat_full, moving, factor)

    def corr_of(tx: PointMap) -> float:
        return similarity(fix_img, _pull_back(mov, mov_grid, tx, fixed), acquired)[1]

    affine, metric, info = search_affine, float("nan"), {}
    if options.polish.enabled:
        corr_search = corr_of(search_affine)
        # the optimiser's steps are in calibrated units: it sees the optical in units of the MSI's (its grid shrunk by
        # the searched scale), so that a wrong or absent optical calibration does not change its step sizes
        s = pose.scale
        unit_grid = Grid(mov_grid.shape, mov_grid.pixel_size / s, (mov_grid.origin[0] / s, mov_grid.origin[1] / s))
        polished, metric, info = _run_affine(fix_img, acquired, fixed, mov, unit_grid,
                                             AffineMap(search_affine.matrix / s), options)
        polished = AffineMap(polished.matrix * s)
        corr_polish = corr_of(polished)
        info = {**info, "correlation_search": corr_search, "correlation_polished": corr_polish}
        if corr_polish >= corr_search:
            affine = polished
        else:
            info["polish_rejected"] = True
    return _Polished(affine, metric, info, fix_img, mov, mov_grid, factor)


def _disagreement(a: AffineMap, b: AffineMap, fixed: Grid, acquired: np.ndarray) -> float:
    """The largest distance between where two fixed → moving affines put the acquired area's corners, in
    fixed pixels (moving distances divided by ``a``'s scale)."""
    rows, cols = np.nonzero(acquired)
    corners = fixed.to_coords(np.array([[cols.min(), rows.min()], [cols.max(), rows.min()],
                                        [cols.min(), rows.max()], [cols.max(), rows.max()]], dtype=np.float64))
    return float(np.hypot(*(a(corners) - b(corners)).T).max() / a.scale / fixed.pixel_size)


def _sitk_affine(affine: AffineMap):
    import SimpleITK as sitk

    tx = sitk.AffineTransform(2)
    tx.SetMatrix(tuple(float(v) for v in affine.matrix[:, :2].ravel()))
    tx.SetTranslation(tuple(float(v) for v in affine.matrix[:, 2]))
    return tx


def _affine_matrix(tx) -> np.ndarray:
    """2×3 [A | t] of a SimpleITK affine transform (x ↦ A(x − c) + c + t)."""
    a = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(2, 2)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    return np.column_stack([a, a @ (-c) + c + t])


def _method(options: AutoRegisterOptions, fix_img: np.ndarray, acquired: np.ndarray, fixed: Grid):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=options.polish.histogram_bins)
    fraction = options.polish.max_samples / max(int(acquired.sum()), 1)
    if fraction < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(fraction, options.polish.seed)
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    fixed_img = _sitk_image(fix_img, fixed)
    mask = sitk.GetImageFromArray(acquired.astype(np.uint8))
    mask.CopyInformation(fixed_img)
    reg.SetMetricFixedMask(mask)
    return reg, fixed_img


@contextmanager
def _one_itk_thread():
    """ITK's threads sum the metric in varying order, so a polish differed from run to run (by up to a tenth
    of an MSI pixel on the prostate example); with one thread the same inputs give the same transform.

    SimpleITK has no per-filter switch that covers the metric, so this sets its process-wide default for the
    duration: not for registrations run concurrently in threads of one process.
    """
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _run_affine(fix_img, acquired, fixed: Grid, mov, mov_grid: Grid, start: AffineMap, options: AutoRegisterOptions):
    reg, fixed_img = _method(options, fix_img, acquired, fixed)
    moving_img = _sitk_image(mov, mov_grid)
    tx = _sitk_affine(start)
    centre = fixed.to_coords(np.array([(fixed.shape[1] - 1) / 2, (fixed.shape[0] - 1) / 2]))
    moved = start(centre[None])[0]
    tx.SetCenter(tuple(float(v) for v in centre))
    tx.SetTranslation(tuple(float(v) for v in moved - centre))
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=options.polish.iterations, relaxationFactor=0.6,
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(tx, inPlace=True)
    try:
        with _one_itk_thread():
            reg.Execute(fixed_img, moving_img)
    except RuntimeError as exc:  # e.g. every sample mapped outside the moving image
        return start, float("nan"), {"polish_error": str(exc).strip().splitlines()[-1:]}
    return AffineMap(_affine_matrix(tx)), float(reg.GetMetricValue()), {
        "stop": reg.GetOptimizerStopConditionDescription(), "iterations": reg.GetOptimizerIteration()}


def _run_bspline(fix_img, acquired, fixed: Grid, mov, mov_grid: Grid, affine: AffineMap, options: AutoRegisterOptions,
                 field_grid: Grid):
    """The affine plus a B-spline fitted on ``fixed`` (the acquired area), as a displacement field on ``field_grid``
    (the whole ion grid: outside the B-spline's support only the affine moves points)."""
    import SimpleITK as sitk

    reg, fixed_img = _method(options, fix_img, acquired, fixed)
    moving_img = _sitk_image(mov, mov_grid)
    affine_tx = _sitk_affine(affine)
    bspline = sitk.BSplineTransformInitializer(fixed_img, [options.polish.bspline_mesh] * 2, order=3)
    reg.SetMovingInitialTransform(affine_tx)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=options.polish.iterations)
    try:
        with _one_itk_thread():
            reg.Execute(fixed_img, moving_img)
    except RuntimeError as exc:  # as the affine polish: the affine stands, and the note says why
        return affine, float("nan"), {"bspline_error": str(exc).strip().splitlines()[-1:]}
    composite = sitk.CompositeTransform([affine_tx, bspline])
    domain = _sitk_image(np.zeros(field_grid.shape, np.float32), field_grid)
    field_img = sitk.TransformToDisplacementField(
        composite, sitk.sitkVectorFloat64, domain.GetSize(), domain.GetOrigin(), domain.GetSpacing(),
        domain.GetDirection())
    disp = sitk.GetArrayFromImage(field_img)  # (H, W, 2): moving − fixed
    return DisplacementMap.of_displacements(field_grid, disp, affine), float(reg.GetMetricValue()), {
        "stop": reg.GetOptimizerStopConditionDescription(), "iterations": reg.GetOptimizerIteration()}
