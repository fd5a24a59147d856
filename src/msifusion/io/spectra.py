"""The mean spectrum's peaks: what ``peaks`` lists and what the ion windows' warnings name.

A mean spectrum (:class:`Profile`) comes from a continuous file's channels (:func:`channel_profile`) or, for a
processed file, from log-spaced bins gathered spectrum by spectrum (:class:`WindowBins`), over the whole m/z range or
inside each ion's window. Its peaks are local maxima (:func:`peak_candidates`); within a window, a further peak must
stand apart from the stronger ones by a valley and by its standard error (:func:`resolved_peaks`), so that a noisy
top or a drifting centroid is not counted twice.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

ISOTOPE_SPACING = 1.00336  # Da between a singly charged ion's ¹²C and ¹³C peaks
SEPARATION_PPM = 10.0  # peaks closer than this are one peak for `peaks` (two default windows)
PROFILE_BIN_PPM = 5.0  # bin width of a processed file's mean spectrum (ImzML.mean_spectrum's default)
PEAK_SHARE = 0.1  # a further peak in an ion's window is named when it reaches this share of the window's strongest ...
PEAK_Z = 3.0  # ... and stands this many standard errors of the mean above the valley that parts them
MAX_LISTED_PEAKS = 4  # a warning names at most this many peaks of one window


def reaches_isotope(mz: float, lo: float, hi: float) -> bool:
    """Whether the window ``[lo, hi]`` around ``mz`` reaches a singly charged ion's ¹³C peak, or the ¹²C peak below."""
    return hi - mz >= ISOTOPE_SPACING or mz - lo >= ISOTOPE_SPACING


@dataclass(frozen=True)
class Profile:
    """A mean spectrum (of the file, or of one window): m/z ascending, the mean intensity over the spectra, its
    standard error (from the per-spectrum values; None where not gathered), and whether any spectrum has a point
    there."""

    mz: np.ndarray
    mean: np.ndarray
    se: np.ndarray | None
    holds_data: np.ndarray


def mean_and_se(total: np.ndarray, squares: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    mean = total / n
    if squares is None:
        return mean, None
    return mean, np.sqrt(np.maximum(squares / n - mean * mean, 0.0) / n)


def channel_profile(mz: np.ndarray, total: np.ndarray, squares: np.ndarray | None, n_spectra: int) -> Profile:
    """A continuous file's mean spectrum from its channels' totals (and sums of squares): sorted m/z, channels sharing
    an m/z merged."""
    axis, inverse = np.unique(mz, return_inverse=True)
    total = np.bincount(inverse, weights=total, minlength=axis.size)
    squares = None if squares is None else np.bincount(inverse, weights=squares, minlength=axis.size)
    mean, se = mean_and_se(total, squares, n_spectra)
    return Profile(axis, mean, se, np.ones(axis.size, bool))


def peak_candidates(mean: np.ndarray, holds_data: np.ndarray, centroid: bool, continuous: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(the points of a mean spectrum that trace its profile, those of them that can be peaks), as indices.

    Centroided continuous data is one point per peak already: every channel with signal is a candidate. Otherwise
    candidates are local maxima of the profile: over every bin for centroided processed data (a centroid jittering
    across neighbouring bins counts once; empty bins separate peaks), over the bins that hold data for profile data
    (the sampling gaps of profile spectra do not split a peak).
    """
    if continuous and centroid:
        return np.arange(mean.size), np.flatnonzero(mean > 0)
    idx = np.arange(mean.size) if centroid else np.flatnonzero(holds_data)
    return idx, idx[local_maxima(mean[idx]) & (mean[idx] > 0)]


def resolved_peaks(p: Profile, centroid: bool, continuous: bool) -> list[float]:
    """The m/z of the resolved peaks of a window's mean spectrum, ascending (at most :data:`MAX_LISTED_PEAKS` + 1).

    Candidates (:func:`peak_candidates`) are taken strongest first; one counts as a further peak when it reaches
    :data:`PEAK_SHARE` of the strongest, lies more than :data:`SEPARATION_PPM` from every peak kept (the ``peaks``
    command's rule), and the profile between it and them falls below half its height (a valley: a shoulder or a
    noisy top of one peak is not a second) by more than :data:`PEAK_Z` standard errors of its mean (so that the
    scatter of a drifting centroid over neighbouring bins, or noise seen in a few spectra, is not a peak). It is
    tested against the nearest kept peak on each side: a farther one lies beyond those. In profile data a maximum at
    the window's first or last point is left out: it can be the flank of a peak outside.
    """
    points, cand = peak_candidates(p.mean, p.holds_data, centroid, continuous)
    if not centroid and points.size:
        cand = cand[(cand != points[0]) & (cand != points[-1])]
    if cand.size == 0:
        return []
    cand = cand[np.argsort(-p.mean[cand], kind="stable")]
    cand = cand[p.mean[cand] >= PEAK_SHARE * p.mean[cand[0]]][:64]  # the strongest few: the rest cannot be listed
    kept = [int(cand[0])]  # ascending
    for i in cand[1:]:
        at = bisect.bisect(kept, i)
        if all(_stands_apart(p, points, int(i), j) for j in kept[max(0, at - 1): at + 1]):
            kept.insert(at, int(i))
            if len(kept) > MAX_LISTED_PEAKS:
                break
    return [float(p.mz[i]) for i in kept]


def _stands_apart(p: Profile, points: np.ndarray, i: int, j: int) -> bool:
    """Whether candidate ``i`` is a peak of its own beside the stronger peak ``j`` (see :func:`resolved_peaks`)."""
    if abs(p.mz[i] - p.mz[j]) <= SEPARATION_PPM * 1e-6 * p.mz[j]:
        return False
    a, b = sorted((i, j))
    between = points[np.searchsorted(points, a, side="right"): np.searchsorted(points, b, side="left")]
    valley = float(p.mean[between].min()) if between.size else 0.0
    rise = p.mean[i] - valley
    return valley < 0.5 * p.mean[i] and (p.se is None or rise > PEAK_Z * p.se[i])


class WindowBins:
    """Each window's mean spectrum for processed data, gathered spectrum by spectrum: log-spaced bins ``bin_ppm`` wide
    across each window, holding the summed intensity, its sum of squares (for the standard error; a spectrum's points
    in one bin count apart) and the intensity-weighted m/z (the bin centre when empty)."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, bin_ppm: float = PROFILE_BIN_PPM):
        self.lo = lo
        self.step = math.log1p(bin_ppm * 1e-6)
        self.n_bins = np.floor(np.log(hi / lo) / self.step).astype(np.int64) + 1
        self.offset = np.concatenate(([0], np.cumsum(self.n_bins)))
        self.total = np.zeros(self.offset[-1], dtype=np.float64)
        self.weighted = np.zeros_like(self.total)
        self.squares = np.zeros_like(self.total)
        self.count = np.zeros(self.offset[-1], dtype=np.int64)

    def add(self, mz: np.ndarray, it: np.ndarray, start: np.ndarray, stop: np.ndarray) -> None:
        """Add one spectrum (sorted m/z) whose points ``start[k]:stop[k]`` lie in window k."""
        counts = stop - start
        if not counts.sum():
            return
        window = np.repeat(np.arange(counts.size), counts)
        points = np.repeat(start - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        m = mz[points]
        within = np.minimum((np.log(m / self.lo[window]) / self.step).astype(np.int64), self.n_bins[window] - 1)
        idx = self.offset[window] + within
        self.total += np.bincount(idx, weights=it[points], minlength=self.total.size)
        self.weighted += np.bincount(idx, weights=it[points] * m, minlength=self.total.size)
        self.squares += np.bincount(idx, weights=it[points] ** 2, minlength=self.total.size)
        self.count += np.bincount(idx, minlength=self.total.size)

    def profiles(self, n_spectra: int) -> list[Profile]:
        out = []
        for k, (a, b) in enumerate(zip(self.offset[:-1], self.offset[1:])):
            total = self.total[a:b]
            centres = self.lo[k] * np.exp((np.arange(b - a) + 0.5) * self.step)
            with np.errstate(invalid="ignore", divide="ignore"):
                mz = np.where(total > 0, self.weighted[a:b] / total, centres)
            mean, se = mean_and_se(total, self.squares[a:b], n_spectra)
            out.append(Profile(mz, mean, se, self.count[a:b] > 0))
        return out


def local_maxima(values: np.ndarray) -> np.ndarray:
    """Mask of the points ≥ their left and > their right neighbour (ends compare with −inf)."""
    left = np.concatenate(([-np.inf], values[:-1]))
    right = np.concatenate((values[1:], [-np.inf]))
    return (values >= left) & (values > right)
