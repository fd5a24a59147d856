"""Ion images from imzML: many m/z windows in one pass over the ``.ibd`` binary file.

pyimzML parses the XML (coordinates, offsets, lengths, number types, metadata); the binary
data is read here with :func:`numpy.memmap`, never through pyimzML's ``getionimage``, which
makes one full pass over the file per ion, takes its tolerance in ±Da only and answers an m/z
below the acquired range with the first peak of every spectrum.

Conventions
-----------
- Window: ``[m - d, m + d]`` inclusive, ``d = m·value·1e-6`` for ppm, ``d = value`` for Da.
  The ion image is the *sum* of the intensities inside the window (METASPACE, Cardinal).
  A window reaching m/z 0 (``d ≥ m``) is refused: it would be the total ion count under an ion's name.
- The ``.ibd`` must start with the imzML's identifier (IMS:1000080) when the imzML states one.
- Image: float32, row = y, column = x, 0-based from imzML's 1-based coordinates (a file whose
  coordinates start at 0 is read as 0-based). Pixels without a spectrum are 0. The image size
  is the larger of the file's "max count of pixels" and the largest coordinate.
- Continuous files (one m/z axis shared by all spectra): the intensity block is memory-mapped
  as one (spectra × channels) matrix and every window becomes a column of a 0/1 selection
  matrix, so all ions come from one matrix product, in chunks of rows. The axis need not be
  sorted (it is sorted once and the columns permuted).
- Processed files (an m/z array per spectrum): one pass over the spectra; per spectrum the
  m/z array is sorted if needed and all windows are found with ``searchsorted`` on the
  cumulative intensity.
- Normalisation is opt-in: ``"tic"`` divides each pixel's window sums by its total ion current
  (sum of all its intensities) and multiplies by the median TIC of the pixels whose TIC is positive,
  so the numbers stay in the instrument's order of magnitude; ``"rms"`` does the same with the root
  mean square of the spectrum's intensities, over the file's channels (processed: over as many points as
  its longest spectrum holds, so that a spectrum's dropped zeros do not change it, as they do not change
  its TIC). Pixels whose TIC (RMS) is 0 stay 0.
- Hotspot clipping (99th percentile) is for display only (:func:`msifusion.report.display_range`);
  exported images are never clipped.
"""

from __future__ import annotations

import math
import re
import uuid
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np

from msifusion.errors import InputError
from msifusion.io.images import Image
from msifusion.io.spectra import (ISOTOPE_SPACING, MAX_LISTED_PEAKS, PROFILE_BIN_PPM, SEPARATION_PPM, Profile,
                                 WindowBins, channel_profile, peak_candidates, reaches_isotope, resolved_peaks)
from msifusion.io.units import replaced_pixel_size_warning, unusable_pixel_size

Normalize = Literal["tic", "rms"] | None

_DTYPES = {"32-bit float": "<f4", "64-bit float": "<f8", "32-bit integer": "<i4", "64-bit integer": "<i8"}
_CHUNK_BYTES = 64 * 2**20  # rows of the intensity block read per step (continuous mode)
_OBSERVED = ("MS:1000528", "MS:1000527")  # lowest / highest observed m/z of a spectrum
DEFAULT_TOLERANCE = "5ppm"  # the m/z window's half-width when none is given


# ----------------------------------------------------------------------------- tolerance


@dataclass(frozen=True)
class Tolerance:
    """Half-width of an m/z window: ``value`` in ``unit`` ("ppm" or "da")."""

    value: float
    unit: Literal["ppm", "da"]

    def __post_init__(self) -> None:
        if self.unit not in ("ppm", "da"):
            raise InputError("--tol", f"unknown tolerance unit {self.unit!r}; use ppm or Da")
        if not (math.isfinite(self.value) and self.value > 0):
            raise InputError("--tol", f"tolerance must be a positive number, got {self.value:g}")
        if self.unit == "ppm" and self.value >= 1e6:  # half-width ≥ the m/z itself, whatever the m/z
            raise InputError("--tol", f"tolerance {self} is ±100 % or more of the m/z, so every window reaches m/z 0; "
                                      "use a few ppm")

    def half_width(self, mz: float | np.ndarray) -> float | np.ndarray:
        """Window half-width in m/z units at ``mz``."""
        mz = np.asarray(mz, dtype=np.float64)
        return mz * (self.value * 1e-6) if self.unit == "ppm" else np.full_like(mz, self.value)

    def __str__(self) -> str:
        return f"{self.value:g}{'ppm' if self.unit == 'ppm' else 'Da'}"


_TOL_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ppm|da|mda)\s*$", re.IGNORECASE)


def parse_tolerance(text: str | Tolerance) -> Tolerance:
    """``"5ppm"``, ``"5 ppm"``, ``"0.01da"``, ``"0.01Da"``, ``"10mDa"`` → :class:`Tolerance`."""
    if isinstance(text, Tolerance):
        return text
    match = _TOL_RE.match(str(text))
    if not match:
        raise InputError("--tol", f"cannot read tolerance {text!r}; write e.g. 5ppm or 0.01Da")
    value, unit = float(match.group(1)), match.group(2).lower()
    if unit == "mda":
        return Tolerance(value * 1e-3, "da")
    return Tolerance(value, unit)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- results


def mz_name(mz: float) -> str:
    """An m/z with 4 decimals, as in file names: ``"328.9167"``."""
    return f"{mz:.4f}"


def mz_label(mz: float) -> str:
    """How every picture title and OME channel names an ion: ``"m/z 328.9167"``."""
    return f"m/z {mz_name(mz)}"


@dataclass(frozen=True)
class IonStack:
    """Ion images (n_ions, H, W) float32 plus what is needed to label and calibrate them."""

    images: np.ndarray
    mzs: tuple[float, ...]
    tolerance: Tolerance
    pixel_size_um: float | None
    normalize: Normalize = None
    windows: tuple[tuple[float, float], ...] = ()
    # the resolved mean-spectrum peaks in each window; None for a window reaching the ¹³C isotope peak (wider than
    # ±1 Da: its warning says it sums several peaks), whose mean spectrum is not gathered
    window_peaks: tuple[tuple[float, ...] | None, ...] = ()
    one_point_windows: tuple[float, ...] = ()  # m/z whose window holds a single point of the profile spectra
    source: Path | None = None
    mz_range: tuple[float, float] = (float("nan"), float("nan"))
    normalize_scale: float | None = None  # normalised images are intensity / the pixel's TIC (RMS) × this median
    intensity_unit: str | None = None  # the unit the file states for its intensities ("detector counts")
    acquired: np.ndarray | None = None  # (H, W) bool: where the file has a spectrum; elsewhere the images hold 0

    @property
    def units(self) -> str:
        """The images' intensity units, in words."""
        if self.normalize is None:
            unit = f" ({self.intensity_unit})" if self.intensity_unit else ""
            return f"the spectra's summed intensities{unit} in each m/z window"
        norm = self.normalize.upper()
        median = f" ({self.normalize_scale:.6g})" if self.normalize_scale is not None else ""
        return f"the summed intensity divided by its spectrum's {norm}, times the median {norm} over the pixels{median}"

    @property
    def names(self) -> list[str]:
        """The m/z with 4 decimals, as in the file names ``mz_<name>.tiff``."""
        return [mz_name(mz) for mz in self.mzs]

    @property
    def labels(self) -> list[str]:
        """Channel names and picture titles: ``"m/z 328.9167"``."""
        return [mz_label(mz) for mz in self.mzs]

    def image(self, i: int) -> Image:
        """Ion ``i`` as a calibrated :class:`~msifusion.io.images.Image`, named by its m/z."""
        return Image(self.images[i], self.pixel_size_um, self.source, name=self.labels[i])

    def empty_ions(self) -> list[float]:
        """m/z values whose image is all zero (no signal in the window anywhere)."""
        return [mz for mz, img in zip(self.mzs, self.images) if not np.any(img)]

    def window_warnings(self) -> list[str]:
        """Warnings about the m/z windows: ions whose windows overlap (they share counts: two such ions can be one
        peak's image twice), windows that reach a singly charged ion's ¹³C isotope peak (:data:`ISOTOPE_SPACING`
        away: its image then sums the isotope pattern, or a neighbour's), the other windows that hold two or more
        resolved peaks of the mean spectrum (:func:`resolved_peaks`: its image sums two species), and windows that
        hold a single point of profile spectra (a continuous file's one channel, or one point in at least 90 % of the
        spectra of a processed file: the image samples the peak rather than summing it); and m/z outside the acquired
        range whose window reaches into it (a window wholly outside is an error): the image sums the range's edge."""
        warnings = []
        low, high = self.mz_range
        edge = [(mz, lo, hi) for mz, (lo, hi) in zip(self.mzs, self.windows)
                if mz < low or mz > high]  # never with the range unknown (NaN)
        for mz, lo, hi in edge:
            part = f"from its start to {hi:.4f}" if mz < low else f"from {lo:.4f} to its end"
            warnings.append(f"m/z {mz:.4f} is outside the acquired m/z range {low:.4f}–{high:.4f}, and its window "
                            f"(±{self.tolerance}) reaches in only {part}: its image sums the spectra's edge, not a "
                            "peak at that m/z")
        order = sorted(range(len(self.windows)), key=lambda i: self.windows[i])
        overlapping = [(a, b) for a, b in zip(order, order[1:]) if self.windows[b][0] <= self.windows[a][1]]
        if overlapping:
            listed = ", ".join(f"{self.mzs[a]:.4f} and {self.mzs[b]:.4f}" for a, b in overlapping)
            warnings.append(f"the m/z windows of {listed} overlap (±{self.tolerance}): their images share counts; "
                            "narrow --tol to keep them apart")
        wide = [i for i, (mz, (lo, hi)) in enumerate(zip(self.mzs, self.windows)) if reaches_isotope(mz, lo, hi)]
        if wide:
            warnings.append(f"the m/z window of {', '.join(f'{self.mzs[i]:.4f}' for i in wide)} (±{self.tolerance}) "
                            f"reaches the ¹³C isotope peak {ISOTOPE_SPACING} Da away: its image sums several peaks; "
                            "narrow --tol unless that is meant")
        named = {*wide, *(i for pair in overlapping for i in pair)}
        for i, (mz, peaks) in enumerate(zip(self.mzs, self.window_peaks)):
            if peaks is not None and len(peaks) > 1 and i not in named:
                shown = [f"{p:.4f}" for p in peaks[:MAX_LISTED_PEAKS]]
                listed = ", ".join(shown[:-1]) + f" and {shown[-1]}" if len(peaks) <= MAX_LISTED_PEAKS else \
                    ", ".join(shown) + ", …"
                count = f"{len(peaks)}" if len(peaks) <= MAX_LISTED_PEAKS else f"more than {MAX_LISTED_PEAKS}"
                warnings.append(f"the m/z window of {mz:.4f} (±{self.tolerance}) holds {count} peaks of the mean "
                                f"spectrum, at {listed}: its image sums them; narrow --tol to keep one")
        if self.one_point_windows:
            listed = ", ".join(f"{mz:.4f}" for mz in self.one_point_windows)
            many = len(self.one_point_windows) > 1
            warnings.append(f"the m/z window{'s' if many else ''} of {listed} (±{self.tolerance}) hold"
                            f"{'' if many else 's'} a single point of the profile spectra, which are sampled more "
                            f"coarsely: {'each' if many else 'its'} image is one sample of the peak's profile, not its "
                            "area; widen --tol to the peak's width")
        return warnings

    def negative_warnings(self) -> list[str]:
        """One warning naming the ions whose images hold values below zero (baseline-subtracted spectra; counts never
        are): the default method bounds their fused values by their lowest measured one, not by zero."""
        signed = [(mz, float(image.min())) for mz, image in zip(self.mzs, self.images) if image.min() < 0]
        if not signed:
            return []
        listed = ", ".join(f"{mz:.4f} (down to {low:.3g})" for mz, low in signed[:MAX_LISTED_PEAKS])
        more = f" and {len(signed) - MAX_LISTED_PEAKS} more" if len(signed) > MAX_LISTED_PEAKS else ""
        many = len(signed) > 1
        return [f"the ion image{'s' if many else ''} of m/z {listed}{more} hold{'' if many else 's'} "
                "values below zero, which counts never are (baseline-subtracted spectra?); the default method keeps "
                "such an ion's fused values above its lowest measured one"]


@dataclass(frozen=True)
class _Layout:
    """What the XML says about the binary file, as arrays."""

    imzml: Path
    ibd: Path
    coords: np.ndarray  # (n, 2) 0-based (x, y) in the image
    shape: tuple[int, int]  # (H, W)
    mz_offsets: np.ndarray
    mz_lengths: np.ndarray
    int_offsets: np.ndarray
    int_lengths: np.ndarray
    mz_dtype: np.dtype
    int_dtype: np.dtype
    continuous: bool
    centroid: bool | None
    pixel_size_xy_um: tuple[float, float] | None
    declared_mz_range: tuple[float, float] | None = None  # from "lowest/highest observed m/z"
    origin_xy: tuple[int, int] = (1, 1)  # the file's (x, y) of the image's first pixel: where its spectra begin
    skipped_xy: tuple[int, int] = (0, 0)  # empty columns and rows before it, from the file's first coordinate (0 or 1)
    shape_note: str | None = None  # why the declared image size was not used
    pixel_size_derived: str | None = None  # how the pixel size was found where the file states none
    intensity_unit: str | None = None  # as the intensity array's cvParam names it (:func:`_intensity_unit`)

    def file_xy(self, spectrum: int) -> tuple[int, int]:
        """The file's own (x, y) coordinates of a spectrum."""
        return int(self.coords[spectrum, 0]) + self.origin_xy[0], int(self.coords[spectrum, 1]) + self.origin_xy[1]


# ----------------------------------------------------------------------------- the file


class ImzML:
    """An opened imzML/ibd pair: XML parsed and checked against the .ibd, nothing read yet.

    Parse once (the XML of a real file takes seconds) and ask for ion images, the TIC image
    and the strongest peaks from the same object. ``pixel_size_um``: the pixel size in µm in place of what the file
    states or leaves out (``--pixel-size``).
    """

    def __init__(self, path: str | Path, pixel_size_um: float | None = None):
        self.layout = _parse(Path(path))
        self.given_pixel_size_um = pixel_size_um
        self._ibd_map: np.memmap | None = None
        self._mz_range: tuple[float, float] | None = None

    # -- facts
    @property
    def path(self) -> Path:
        return self.layout.imzml

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return self.layout.shape

    @property
    def n_spectra(self) -> int:
        return int(self.layout.coords.shape[0])

    @property
    def continuous(self) -> bool:
        return self.layout.continuous

    @property
    def pixel_size_um(self) -> float | None:
        """Square pixel size in µm: the one given, else the scan settings'; None when they state none, or one that is
        not used (:attr:`pixel_size_note` says why)."""
        if self.given_pixel_size_um is not None:
            return self.given_pixel_size_um
        xy = self.layout.pixel_size_xy_um
        return None if xy is None or self.pixel_size_note else xy[0]

    @property
    def pixel_size_note(self) -> str | None:
        """Why the pixel size the scan settings state is not used (x and y differ, or it is implausible, by the rule
        TIFFs follow: :func:`msifusion.io.units.unusable_pixel_size`); None when it is used, none is stated or one is
        given."""
        xy = self.layout.pixel_size_xy_um
        return None if xy is None or self.given_pixel_size_um is not None else unusable_pixel_size(*xy)

    @property
    def warnings(self) -> list[str]:
        """What a run should report about the file's header (one line each): a declared image size taken as wrong,
        a pixel size derived where it states none (and none is given), one given in place of another it states, and
        images that are nearly all without spectra (under 1 % acquired, beyond 10⁶ pixels: a stray coordinate or
        regions far apart, short of the refusal of :func:`_refuse_sparse`)."""
        h, w = self.shape
        sparse = (f"{self.path.name}: its {self.n_spectra} spectra fill {100 * self.n_spectra / (h * w):.2g} % of the "
                  f"{w}×{h}-pixel images (a stray spectrum, or regions far apart?): each ion image is mostly zeros, "
                  "and fusing it takes as much memory as its whole grid"
                  if h * w > SPARSE_CHECKED_PIXELS and self.n_spectra < 0.01 * h * w else None)
        given = self.given_pixel_size_um
        derived = self.layout.pixel_size_derived if given is None else None
        replaced = replaced_pixel_size_warning(given, self.layout.pixel_size_xy_um, self.path.name)
        return [note for note in (self.layout.shape_note, sparse, derived, replaced) if note]

    @property
    def mz_range(self) -> tuple[float, float]:
        """Smallest and largest m/z acquired.

        Continuous: from the shared axis. Processed: from the spectra's "lowest/highest
        observed m/z" in the XML (widened by 1 ppm for their rounding) when every spectrum
        has them, else from a pass over all m/z arrays.
        """
        if self._mz_range is None and self.layout.declared_mz_range is not None and not self.continuous:
            lo, hi = self.layout.declared_mz_range
            self._mz_range = (lo * (1 - 1e-6), hi * (1 + 1e-6))
        if self._mz_range is None:
            lo, hi = math.inf, -math.inf
            for mz in self._mz_arrays():
                mz = mz[mz > 0]  # zero padding is no m/z
                if mz.size:
                    lo, hi = min(lo, float(mz.min())), max(hi, float(mz.max()))
            if lo > hi:
                raise InputError(self.path, "no spectrum holds any m/z value")
            self._mz_range = (lo, hi)
        return self._mz_range

    def summary(self) -> dict:
        """Facts for reports: size, pixel size, mode, m/z range, number of spectra and channels."""
        lay = self.layout
        return {
            "file": str(lay.imzml),
            "shape_hw": lay.shape,
            "pixel_size_um": self.pixel_size_um,
            "pixel_size_given": self.given_pixel_size_um is not None,  # --pixel-size, in place of the file's
            "pixel_size_xy_um": lay.pixel_size_xy_um,
            "first_pixel_xy": lay.origin_xy,
            "mode": "continuous" if lay.continuous else "processed",
            "spectrum_type": {True: "centroid", False: "profile", None: "unknown"}[lay.centroid],
            "n_spectra": self.n_spectra,
            "pixels_without_spectrum": int((~self.acquired).sum()),  # as acquired.tiff marks them
            "n_channels": int(lay.mz_lengths[0]) if lay.continuous else None,
            "mz_range": self.mz_range,
            "mz_axis_sorted": bool(np.all(np.diff(self._shared_mz()) >= 0)) if lay.continuous else None,
        }

    # -- binary access
    def _ibd(self) -> np.memmap:
        if self._ibd_map is None:
            size = self.layout.ibd.stat().st_size
            self._ibd_map = np.memmap(self.layout.ibd, dtype=np.uint8, mode="r", shape=(size,))
        return self._ibd_map

    def _array(self, offset: int, length: int, dtype: np.dtype) -> np.ndarray:
        return np.frombuffer(self._ibd(), dtype=dtype, count=int(length), offset=int(offset))

    def _shared_mz(self) -> np.ndarray:
        lay = self.layout
        return self._finite(self._array(lay.mz_offsets[0], lay.mz_lengths[0], lay.mz_dtype).astype(np.float64), 0,
                            "m/z values")

    def _mz_arrays(self) -> Iterator[np.ndarray]:
        lay = self.layout
        if lay.continuous:
            yield self._shared_mz()
            return
        for i, (off, n) in enumerate(zip(lay.mz_offsets, lay.mz_lengths)):
            yield self._finite(self._array(off, n, lay.mz_dtype), i, "m/z values")

    def _intensity_block(self) -> np.ndarray | None:
        """(spectra, channels) view of the intensities when they lie at a constant stride."""
        lay = self.layout
        n_ch = int(lay.int_lengths[0])
        item = lay.int_dtype.itemsize
        off = lay.int_offsets
        stride = int(off[1] - off[0]) if off.size > 1 else n_ch * item
        if stride < n_ch * item or np.any(np.diff(off) != stride):
            return None
        # the extent the rows span, not count × stride: padding after each row may stop at the last row's end
        return np.ndarray((off.size, n_ch), dtype=lay.int_dtype, buffer=self._ibd(), offset=int(off[0]),
                          strides=(stride, item))

    def _continuous_rows(self) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield (spectrum slice, intensities (rows, channels) in the file's type), chunk by chunk."""
        lay = self.layout
        n_ch = max(int(lay.int_lengths[0]), 1)
        rows = max(1, _CHUNK_BYTES // (lay.int_dtype.itemsize * n_ch))
        block = self._intensity_block()
        for start in range(0, self.n_spectra, rows):
            sl = slice(start, min(start + rows, self.n_spectra))
            if block is not None:
                chunk = np.asarray(block[sl])
            else:
                chunk = np.stack([self._array(o, n_ch, lay.int_dtype) for o in lay.int_offsets[sl]])
            yield sl, chunk

    def _finite_rows(self, values: np.ndarray, start: int) -> None:
        """Refuse the file if ``values`` (per spectrum from ``start``: its intensities, or what was summed from them)
        hold a NaN or infinite value, naming the first such spectrum. Callers check what they summed, so a continuous
        file is not scanned beyond the channels they read."""
        ok = np.isfinite(values)
        if not ok.all():
            self._refuse_non_finite(start + int(np.argmin(ok.reshape(len(values), -1).all(axis=1))), "intensities")

    def _finite(self, values: np.ndarray, spectrum: int, what: str) -> np.ndarray:
        """``values`` (one spectrum's ``what``: "intensities" or "m/z values"), or the file refused if they hold a NaN
        or infinite value: summed into a window, an intensity would spoil every ion image whose window holds it (and, in
        a processed file, every window above it); an m/z would place its window's bounds at random."""
        if not np.isfinite(values).all():
            self._refuse_non_finite(spectrum, what)
        return values

    def _refuse_non_finite(self, spectrum: int, what: str) -> None:
        x, y = self.layout.file_xy(spectrum)
        raise InputError(self.layout.ibd, f"spectrum {spectrum + 1} (pixel x={x}, y={y}) holds NaN or infinite {what}: "
                                          "the file is damaged or was exported with missing values; export it again")

    def _spectra(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (sorted m/z float64, matching intensities float64) per spectrum (processed mode)."""
        lay = self.layout
        for i, (mo, ml, io, il) in enumerate(zip(lay.mz_offsets, lay.mz_lengths, lay.int_offsets, lay.int_lengths)):
            mz = self._finite(self._array(mo, ml, lay.mz_dtype).astype(np.float64), i, "m/z values")
            it = self._finite(self._array(io, il, lay.int_dtype).astype(np.float64), i, "intensities")
            if mz.size > 1 and np.any(mz[1:] < mz[:-1]):
                order = np.argsort(mz, kind="stable")
                mz, it = mz[order], it[order]
            yield mz, it

    # -- images
    @property
    def acquired(self) -> np.ndarray:
        """(H, W) bool: True where the file has a spectrum; the images' other pixels are 0 without being measured."""
        out = np.zeros(self.shape, dtype=bool)
        out[self.layout.coords[:, 1], self.layout.coords[:, 0]] = True
        return out

    def _scatter(self, values: np.ndarray) -> np.ndarray:
        """(spectra, k) values → (k, H, W) float32 images; pixels without a spectrum are 0."""
        h, w = self.shape
        out = np.zeros((values.shape[1], h, w), dtype=np.float32)
        x, y = self.layout.coords[:, 0], self.layout.coords[:, 1]
        out[:, y, x] = values.T
        return out

    def _windows(self, mzs: Sequence[float], tol: Tolerance) -> tuple[np.ndarray, np.ndarray]:
        centres = np.asarray(mzs, dtype=np.float64)
        d = np.asarray(tol.half_width(centres), dtype=np.float64)
        return centres - d, centres + d

    def check_mzs(self, mzs: Sequence[float] | float | str, tol: Tolerance | str
                  ) -> tuple[list[float], Tolerance, np.ndarray, np.ndarray]:
        """The m/z, the tolerance and the windows [lo, hi] :meth:`ion_images` would read, checked by
        :meth:`_check_mzs` without a pass over the intensities (so that a workflow refuses them first)."""
        tol = parse_tolerance(tol)
        mzs = as_mz_list(mzs)
        lo, hi = self._windows(mzs, tol)
        self._check_mzs(mzs, lo, hi, tol)
        return mzs, tol, lo, hi

    def _check_mzs(self, mzs: Sequence[float], lo: np.ndarray, hi: np.ndarray, tol: Tolerance) -> None:
        """Refuse what cannot make one distinct, meaningful image per m/z: no m/z, a non-positive one, two that
        share an output name, a window whose lower edge is at or below m/z 0 (a tolerance of at least the m/z:
        the image would be nearly the total ion count, labelled as one ion), an m/z outside the acquired range."""
        if len(mzs) == 0:
            raise InputError("--mz", "give at least one m/z")
        for m in mzs:
            if not (math.isfinite(m) and m > 0):
                raise InputError("--mz", f"m/z must be a positive number, got {m!r}")
        seen: dict[str, float] = {}
        for m in mzs:
            name = mz_name(m)
            if name in seen and seen[name] == m:
                raise InputError("--mz", f"m/z {float(m)!r} given more than once")
            if name in seen:
                raise InputError("--mz", f"m/z {float(seen[name])!r} and {float(m)!r} share the output name "
                                         f"mz_{name} (m/z to 4 decimals); give only one of them")
            seen[name] = m
        for m, l, h in zip(mzs, lo, hi):
            if l <= 0:
                raise InputError("--tol", f"tolerance {tol} at m/z {m:g} gives the window {l:.4f}–{h:.4f}, which "
                                          f"reaches m/z 0; use a half-width under {m:g} Da (e.g. 5ppm or 0.01Da)")
        a, b = self.mz_range
        for m, l, h in zip(mzs, lo, hi):
            if h < a or l > b:
                raise InputError(self.path, f"m/z {m:g} is outside the acquired m/z range {a:.4f}–{b:.4f}")

    def ion_images(self, mzs: Sequence[float] | float | str, tol: Tolerance | str,
                   normalize: Normalize = None) -> IonStack:
        """Sum of intensities in each window ``[m - d, m + d]``, all ions in one pass (one m/z: a stack of one)."""
        check_normalize(normalize)
        mzs, tol, lo, hi = self.check_mzs(mzs, tol)
        profiled = np.array([not reaches_isotope(m, a, b) for m, a, b in zip(mzs, lo, hi)])
        sums, norm, profiles, single = self._window_sums(lo, hi, normalize, profiled)
        scale = None
        if normalize is not None:
            sums, scale = _normalise(sums, norm)
        return IonStack(
            images=self._scatter(sums),
            mzs=tuple(mzs),
            tolerance=tol,
            pixel_size_um=self.pixel_size_um,
            normalize=normalize,
            windows=tuple((float(a), float(b)) for a, b in zip(lo, hi)),
            window_peaks=tuple(None if p is None else tuple(resolved_peaks(p, self.layout.centroid, self.continuous))
                               for p in profiles),
            one_point_windows=tuple(m for m, one in zip(mzs, single) if one and self.layout.centroid is False),
            source=self.path,
            mz_range=self.mz_range,
            normalize_scale=scale,
            intensity_unit=self.layout.intensity_unit,
            acquired=self.acquired,
        )

    def _window_sums(self, lo: np.ndarray, hi: np.ndarray, normalize: Normalize, profiled: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None, list[Profile | None], np.ndarray]:
        """Per spectrum, the summed intensity in each window ``[lo, hi]`` and the normaliser (None without one); for
        the windows marked in ``profiled`` (bool per window; None: none) their mean spectrum, gathered in the same
        pass (continuous: its channels; processed: bins of :data:`PROFILE_BIN_PPM`, as :meth:`mean_spectrum` bins),
        None for the others; and per window whether it holds a single point (continuous: one channel m/z; processed:
        one point in at least 90 % of the spectra that have any there)."""
        profiled = np.zeros(lo.size, bool) if profiled is None else np.asarray(profiled, bool)
        n = self.n_spectra
        # the largest array of a panel (spectra × ions): kept in the images' float32 where nothing divides it later
        sums = np.empty((n, lo.size), dtype=np.float64 if normalize else np.float32)
        norm = np.empty(n, dtype=np.float64) if normalize else None
        if self.continuous:
            mz = self._shared_mz()
            order = np.argsort(mz, kind="stable")
            first = np.searchsorted(mz[order], lo, side="left")
            last = np.searchsorted(mz[order], hi, side="right")
            # Columns used by any window, and a 0/1 (used columns × ions) selection matrix.
            members = [order[a:b] for a, b in zip(first, last)]
            used = np.unique(np.concatenate(members)) if members else np.empty(0, np.int64)
            select = np.zeros((used.size, lo.size), dtype=np.float64)
            for k, cols in enumerate(members):
                select[np.searchsorted(used, cols), k] = 1.0
            column_total = np.zeros(used.size, dtype=np.float64)
            column_squares = np.zeros(used.size, dtype=np.float64)
            for sl, chunk in self._continuous_rows():
                picked = chunk[:, used].astype(np.float64)
                part = picked @ select
                if profiled.any():
                    column_total += picked.sum(axis=0)
                    column_squares += (picked * picked).sum(axis=0)
                if normalize == "tic":
                    norm[sl] = chunk.sum(axis=1, dtype=np.float64)
                elif normalize == "rms":
                    c = chunk.astype(np.float64)
                    norm[sl] = np.sqrt(np.mean(c * c, axis=1))
                self._finite_rows(part if norm is None else np.column_stack([part, norm[sl]]), sl.start)
                sums[sl] = part  # checked in float64: a finite sum beyond float32's range is no damage
            at = [np.searchsorted(used, cols) for cols in members]
            profiles = [channel_profile(mz[cols], column_total[k], column_squares[k], n) if want else None
                        for cols, k, want in zip(members, at, profiled)]
            return sums, norm, profiles, np.array([np.unique(mz[cols]).size == 1 for cols in members])
        bins = WindowBins(lo[profiled], hi[profiled]) if profiled.any() else None
        points = max(int(self.layout.int_lengths.max()), 1)  # the RMS's count: each spectrum padded to the longest
        one_point, some = np.zeros(lo.size, np.int64), np.zeros(lo.size, np.int64)
        for i, (mz, it) in enumerate(self._spectra()):
            csum = np.concatenate(([0.0], np.cumsum(it)))
            start, stop = np.searchsorted(mz, lo, side="left"), np.searchsorted(mz, hi, side="right")
            sums[i] = csum[stop] - csum[start]
            one_point += stop - start == 1
            some += stop > start
            if bins is not None:
                bins.add(mz, it, start[profiled], stop[profiled])
            if normalize == "tic":
                norm[i] = csum[-1]
            elif normalize == "rms":
                norm[i] = math.sqrt(float(np.dot(it, it)) / points)
        gathered = iter(bins.profiles(n) if bins is not None else [])
        # nearly every spectrum with a point there holds only one (weak spectra that dropped their zeros may too)
        return sums, norm, [next(gathered) if want else None for want in profiled], (some > 0) & (one_point >= 0.9 * some)

    def tic(self) -> np.ndarray:
        """Total ion current image (H, W) float32: the sum of each spectrum's intensities."""
        if self.continuous:
            per = np.empty(self.n_spectra, dtype=np.float64)
            for sl, chunk in self._continuous_rows():
                per[sl] = chunk.sum(axis=1, dtype=np.float64)
                self._finite_rows(per[sl], sl.start)
        else:
            per = np.array([it.sum() for _, it in self._spectra()], dtype=np.float64)
        return self._scatter(per[:, None])[0]

    def mean_spectrum(self, bin_ppm: float = PROFILE_BIN_PPM) -> tuple[np.ndarray, np.ndarray]:
        """Mean spectrum over the pixels with spectra: (m/z ascending, mean intensity).

        Continuous: the exact mean of every channel (channels with the same m/z summed). Processed: the m/z range is cut into
        log-spaced bins ``bin_ppm`` wide; each bin holds the summed intensity of the peaks
        falling in it divided by the number of spectra, and its m/z is the intensity-weighted
        mean m/z of those peaks (the bin centre when empty).
        """
        profile = self._mean_points(bin_ppm)
        return profile.mz, profile.mean

    def _mean_points(self, bin_ppm: float) -> Profile:
        """:meth:`mean_spectrum` with, per entry, whether any spectrum has a point there (peaks use the latter). A
        processed file's points outside its stated m/z range (a file whose "lowest/highest observed m/z" understate
        its data) are left out, as :meth:`ion_images` refuses m/z there."""
        n = self.n_spectra
        if self.continuous:
            mz = self._shared_mz()
            total = np.zeros(mz.size, dtype=np.float64)
            for sl, chunk in self._continuous_rows():
                part = chunk.sum(axis=0, dtype=np.float64)
                if not np.isfinite(part).all():
                    self._finite_rows(chunk, sl.start)
                total += part
            return channel_profile(mz, total, None, n)
        if not (bin_ppm > 0):
            raise InputError("bin_ppm", "bin width must be positive")
        a, b = np.array([self.mz_range[0]]), np.array([self.mz_range[1]])
        bins = WindowBins(a, b, bin_ppm)
        for mz, it in self._spectra():
            bins.add(mz, it, np.searchsorted(mz, a, side="left"), np.searchsorted(mz, b, side="right"))
        return bins.profiles(n)[0]

    def strongest_peaks(self, n: int, bin_ppm: float = PROFILE_BIN_PPM) -> list[tuple[float, float]]:
        """The ``n`` strongest peaks of the mean spectrum as (m/z, mean intensity), strongest first.

        A peak is a local maximum of the mean spectrum with positive intensity (:func:`peak_candidates`): a point ≥
        its left and > its right neighbour on the sorted m/z axis (a flat top counts once), so the points of one
        profile peak count once. The points are the channels of a continuous file, and the ``bin_ppm`` bins of a
        processed file that hold data (bins no spectrum reaches are skipped, so the sampling gaps of profile spectra
        do not split a peak). Centroided data is already one point per peak: every channel of a continuous file is a
        peak, and in a processed file peaks are the local maxima over all bins (a centroid jittering across
        neighbouring bins counts once; empty bins separate peaks). A peak within :data:`SEPARATION_PPM` of a
        stronger one is left out: their windows would overlap (the prostate example's centroids list 1251.3853 and
        1251.3894).

        A peak's intensity, which ranks it, is the mean over the spectra of its ion image at the default window
        (:data:`DEFAULT_TOLERANCE` around its m/z), what ``ions --mz`` gives: not its one point's share, which a
        centroid's jitter over neighbouring channels or bins splits. A continuous file's is summed from its channels;
        a processed file's peaks are ranked by the bins whose m/z lies in the window, then the ``n`` kept are summed
        in a second pass over the spectra, as ``ions`` sums them.
        """
        mz, image_mean = self._ranked_peaks(n, bin_ppm)
        if not self.continuous and mz.size:
            lo, hi = self._windows(mz, parse_tolerance(DEFAULT_TOLERANCE))
            image_mean = self._window_sums(lo, hi, None)[0].sum(axis=0, dtype=np.float64) / self.n_spectra
        order = np.argsort(-image_mean, kind="stable")
        return [(float(mz[i]), float(image_mean[i])) for i in order]

    def _ranked_peaks(self, n: int, bin_ppm: float) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`strongest_peaks`' m/z, and their ion images' means from the mean spectrum's points (a processed
        file's to a bin's share at the window's ends)."""
        if n < 1:
            raise InputError("-n", "number of peaks must be at least 1")
        profile = self._mean_points(bin_ppm)
        mz, mean = profile.mz, profile.mean
        _, cand = peak_candidates(mean, profile.holds_data, self.layout.centroid, self.continuous)
        lo, hi = self._windows(mz[cand], parse_tolerance(DEFAULT_TOLERANCE))
        first, stop = np.searchsorted(mz, lo, side="left"), np.searchsorted(mz, hi, side="right")
        image_mean = np.zeros(mz.size)
        for k in range(int((stop - first).max(initial=0))):  # a few points per window; no running sum, whose
            inside = first + k < stop  # differences lose a weak peak beside strong ones to rounding
            image_mean[cand[inside]] += mean[first[inside] + k]
        best: list[int] = []
        for i in cand[np.argsort(-image_mean[cand], kind="stable")]:
            if all(abs(mz[i] - mz[j]) > SEPARATION_PPM * 1e-6 * mz[j] for j in best):
                best.append(int(i))
                if len(best) == n:
                    break
        return mz[best], image_mean[best]

    def tissue_images(self, n_components: int = 2, n_peaks: int = 300, tol: Tolerance | str = "10ppm") -> np.ndarray:
        """Candidate tissue images for automatic registration: (1 + n_components, H, W) float32.

        The TIC, then the leading principal components of the spectra restricted to the
        ``n_peaks`` strongest peaks (window ``tol``), each spectrum divided by its TIC and
        square-rooted (variance stabilising). Tissue types differ by their spectra, so the
        components show the morphology (e.g. stroma vs epithelium) even where the TIC is flat.
        Pixels without a spectrum are 0; component signs are arbitrary.
        """
        peaks = list(self._ranked_peaks(n_peaks, PROFILE_BIN_PPM)[0])
        tol = parse_tolerance(tol)
        lo, hi = self._windows(peaks, tol)
        sums, tic, _, _ = self._window_sums(lo, hi, "tic")
        x = np.sqrt(np.maximum(sums, 0) / np.maximum(tic, 1e-30)[:, None])
        x -= x.mean(axis=0)
        k = max(0, min(n_components, min(x.shape) - 1))
        if k:
            _, vecs = np.linalg.eigh(x.T @ x)  # ascending eigenvalues; the last are the leading axes
            comps = x @ vecs[:, ::-1][:, :k]
        else:
            comps = np.zeros((x.shape[0], 0))
        return self._scatter(np.column_stack([tic, comps]))

    def close(self) -> None:
        self._ibd_map = None

    def __enter__(self) -> "ImzML":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _normalise(sums: np.ndarray, norm: np.ndarray) -> tuple[np.ndarray, float]:
    """Per spectrum, ``sums / norm`` times the median positive norm (so the values stay near the raw intensities),
    in place; spectra with norm 0 give 0. Returns the normalised sums and that median."""
    ok = norm > 0
    scale = float(np.median(norm[ok])) if ok.any() else 1.0
    factor = np.divide(scale, norm, out=np.zeros_like(norm), where=ok)
    np.multiply(sums, factor[:, None], out=sums)
    return sums, scale


# ----------------------------------------------------------------------------- parsing


def find_ibd(imzml: Path) -> Path:
    """The .ibd beside an .imzML, its suffix in any case (InputError when there is none)."""
    for cand in sorted(imzml.parent.glob("*")):
        if cand.stem == imzml.stem and cand.suffix.lower() == ".ibd" and cand.is_file():
            return cand
    raise InputError(imzml, f"binary file {imzml.stem}.ibd not found beside it (imzML comes as a .imzML + .ibd pair)")


def _param_names(group) -> set[str]:
    """A parameter group's cvParams, each by its name, its name as written and its accession."""
    return {str(p[i]) for p in group.cv_params for i in (0, 1, 3)}


def _compression(names: set[str]) -> str | None:
    """The compression a binary array's parameters name (zlib, MS-Numpress…), or None."""
    named = sorted(n for n in names if "compression" in n.lower() and n.lower() != "no compression")
    return named[0] if named else "zlib compression" if "MS:1000574" in names else None


def _local_name(element) -> str:
    """An XML element's tag without its namespace (imzML's is mzML's)."""
    return element.tag.rsplit("}", 1)[-1]


def _first_arrays(path: Path) -> list[set[str]]:
    """The cvParams written inside the first spectrum's binary data arrays (names and accessions, one set per array),
    read up to that spectrum's end only: they add to (or stand in for) the arrays' referenceable groups."""
    arrays: list[set[str]] = []
    with open(path, "rb") as handle:  # closed here, though the parse stops early
        for _, element in ET.iterparse(handle, events=("end",)):
            if _local_name(element) == "binaryDataArray":
                arrays.append({str(e.get(key)) for e in element if _local_name(e) == "cvParam"
                               for key in ("name", "accession")})
            elif _local_name(element) == "spectrum":
                break
    return arrays


_LENGTH_UNITS_UM = {None: 1.0, "": 1.0, "micrometer": 1.0, "UO:0000017": 1.0, "nanometer": 1e-3, "UO:0000018": 1e-3,
                    "millimeter": 1e3, "UO:0000016": 1e3}  # by unit name or accession; none stated: imzML's µm


_COUNTS = {"number of detector counts", "number of counts", "MS:1000131"}


def _intensity_unit(parser) -> str | None:
    """The unit the file states for its intensity arrays (MS:1000515's unit in a referenceable parameter group, as
    instruments write it), in words: "detector counts" for MS:1000131, else the unit's name; None when none is
    stated."""
    for group in (parser.metadata.referenceable_param_groups or {}).values():
        for param in group.cv_params:
            if param[1] == "MS:1000515" and (param[5] or param[6]):
                return "detector counts" if {param[5], param[6]} & _COUNTS else str(param[5] or param[6])
    return None


_SCAN_LENGTHS = {"IMS:1000046": "pixel size x", "IMS:1000047": "pixel size y",
                 "IMS:1000044": "max dimension x", "IMS:1000045": "max dimension y"}


def _scan_lengths(parser) -> dict[str, float]:
    """The scan settings' lengths in µm by accession: pixel size (IMS:1000046/47) and max dimension (IMS:1000044/45),
    imzML's unit being µm; a value stated in nm or mm is converted, one in any other unit is left out."""
    found: dict[str, float] = {}
    for settings in (parser.metadata.scan_settings or {}).values():
        # pyimzML's tuples: (name, accession, value, name as written, value as written, unit name, unit accession)
        for param in settings.cv_params:
            factor = _LENGTH_UNITS_UM.get(param[5] or param[6])
            value = param[4] if param[4] is not None else param[2]  # as written: pyimzML reads max dimension as int
            if param[1] not in _SCAN_LENGTHS or value is None or factor is None:
                continue
            try:
                size = float(value) * factor
            except (TypeError, ValueError):
                continue
            if size > 0 and math.isfinite(size):
                found.setdefault(param[1], size)
    return found


def _pixel_size(path: Path, parser, counts: tuple[int, int] | None) -> tuple[tuple[float, float] | None, str | None]:
    """(x, y) pixel size in µm from the scan settings, and how it was found where the file states none: its "max
    dimension" over its "max count of pixels" on both axes (``counts``: those counts where they are the ion images'
    size, from the file's first coordinate; else None), when the two give a pixel size a TIFF's would be used at
    (:func:`msifusion.io.units.unusable_pixel_size`). None, None: neither."""
    lengths = _scan_lengths(parser)
    stated = [lengths.get(a) for a in ("IMS:1000046", "IMS:1000047")]
    if any(stated):
        x = stated[0] or stated[1]
        return (float(x), float(stated[1] or x)), None
    dimensions = [lengths.get(a) for a in ("IMS:1000044", "IMS:1000045")]
    if counts is None or None in dimensions:
        return None, None
    xy = (dimensions[0] / counts[0], dimensions[1] / counts[1])
    shown = [f"{d:g} µm / {n} in {axis}" for d, n, axis in zip(dimensions, counts, "xy")]
    if unusable_pixel_size(*xy):
        return None, None
    return xy, (f"{path.name} states no pixel size; {xy[0]:.4g} µm is its \"max dimension\" over its \"max count of "
                f"pixels\" ({', '.join(shown)})")


def _parse(path: Path) -> _Layout:
    if not path.exists():
        raise InputError(path, "imzML file not found")
    if not path.is_file():
        raise InputError(path, "imzML path is not a file")
    if path.suffix.lower() == ".ibd":
        raise InputError(path, "this is the binary half; give the .imzML file (the .ibd must sit beside it)")
    if path.suffix.lower() != ".imzml":  # a TIFF or CSV given where an imzML belongs: say so, not "no .ibd"
        raise InputError(path, "expected an .imzML file (with its .ibd beside it)")
    ibd = find_ibd(path)
    from pyimzml.ImzMLParser import ImzMLParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyimzML's notes on non-standard cvParam names
            parser = ImzMLParser(str(path), ibd_file=None, include_spectra_metadata=list(_OBSERVED))
    except ET.ParseError as exc:
        raise InputError(path, f"not a readable imzML (XML) file: {exc}") from None
    except (KeyError, AttributeError, TypeError, ValueError, IndexError, StopIteration, RuntimeError) as exc:
        raise InputError(path, f"not a valid imzML file: {_what_is_malformed(path) or f'{type(exc).__name__}: {exc}'}"
                         ) from None
    if not parser.coordinates:
        raise InputError(path, "imzML file lists no spectra")
    _check_ibd_uuid(path, ibd, parser)

    groups = parser.metadata.referenceable_param_groups
    for gid in (parser.mzGroupId, parser.intGroupId):
        if gid is None:
            raise InputError(path, "imzML does not declare its m/z and intensity arrays")
    for names in [_param_names(groups[gid]) for gid in (parser.mzGroupId, parser.intGroupId)] + _first_arrays(path):
        compression = _compression(names)
        if compression:
            raise InputError(path, f"its binary arrays are compressed ({compression}), which is not supported; "
                                   "export uncompressed imzML")
    mz_dtype = _dtype(path, groups[parser.mzGroupId])
    int_dtype = _dtype(path, groups[parser.intGroupId])

    coords = np.asarray(parser.coordinates, dtype=np.int64)
    if np.unique(coords[:, 2]).size > 1:
        raise InputError(path, "3-D imzML (several z planes) is not supported")
    if coords[:, :2].min() < 0:
        raise InputError(path, "negative pixel coordinates")
    base = 0 if coords[:, :2].min() == 0 else 1
    # the image starts where the spectra do: an acquisition region at x = 101… is not 100 empty columns
    origin = coords[:, :2].min(axis=0)
    xy = coords[:, :2] - origin
    keys = xy[:, 1] * (xy[:, 0].max() + 1) + xy[:, 0]
    uniq, counts = np.unique(keys, return_counts=True)
    if uniq.size != keys.size:
        k = uniq[np.argmax(counts > 1)]
        dup = np.flatnonzero(keys == k)
        x0, y0 = coords[dup[0], :2]
        raise InputError(path, f"spectra {dup[0] + 1} and {dup[1] + 1} share the pixel x={x0}, y={y0}")
    _refuse_sparse(path, xy)
    shape = _image_shape(path, parser.imzmldict, xy, origin - base)
    h, w = shape.rows, shape.columns

    mz_off = np.asarray(parser.mzOffsets, dtype=np.int64)
    mz_len = np.asarray(parser.mzLengths, dtype=np.int64)
    int_off = np.asarray(parser.intensityOffsets, dtype=np.int64)
    int_len = np.asarray(parser.intensityLengths, dtype=np.int64)
    if np.any(mz_len != int_len):
        i = int(np.argmax(mz_len != int_len))
        raise InputError(path, f"spectrum {i + 1} has {mz_len[i]} m/z values but {int_len[i]} intensities")
    if min(mz_off.min(), int_off.min()) < 0:
        raise InputError(path, "negative offset into the .ibd file")
    needed = int(max((mz_off + mz_len * mz_dtype.itemsize).max(), (int_off + int_len * int_dtype.itemsize).max()))
    have = ibd.stat().st_size
    if have < needed:
        raise InputError(ibd, f"binary file is truncated: the imzML needs {needed} bytes, the file has {have}")

    continuous = bool(np.all(mz_off == mz_off[0]) and np.all(mz_len == mz_len[0]))
    pixel_size, derived = _pixel_size(path, parser, shape.counts)
    fd = _param_names(parser.metadata.file_description)
    centroid = True if parser.spectrum_mode == "centroid" else False if parser.spectrum_mode == "profile" else None
    if centroid is None and ("centroid spectrum" in fd or "profile spectrum" in fd):
        centroid = "centroid spectrum" in fd
    return _Layout(
        imzml=path, ibd=ibd, coords=xy, shape=(h, w),
        mz_offsets=mz_off, mz_lengths=mz_len, int_offsets=int_off, int_lengths=int_len,
        mz_dtype=mz_dtype, int_dtype=int_dtype, continuous=continuous, centroid=centroid,
        pixel_size_xy_um=pixel_size, pixel_size_derived=derived, intensity_unit=_intensity_unit(parser),
        declared_mz_range=_declared_range(parser),
        origin_xy=(int(origin[0]), int(origin[1])),
        skipped_xy=(int(origin[0] - base), int(origin[1] - base)),
        shape_note=shape.note,
    )


DECLARED_SPAN_AT_MOST = 2  # "max count of pixels" beyond this many times the spectra's span is taken as wrong


@dataclass(frozen=True)
class _ImageShape:
    """The ion images' ``rows`` and ``columns``, why a declared size was not used (``note``), and the declared "max
    count of pixels" (x, y) where on both axes it is the images' size from the file's first coordinate (``counts``;
    else None): what a pixel size may be derived with (:func:`_pixel_size`)."""

    rows: int
    columns: int
    note: str | None
    counts: tuple[int, int] | None


SPARSE_CHECKED_PIXELS = 10**6  # ion images larger than this are checked for how much of them has spectra…
IMZML_PIXELS_PER_SPECTRUM = 10_000  # …and refused under one spectrum per this many of their pixels


def _refuse_sparse(path: Path, xy: np.ndarray) -> None:
    """Positions that are not pixel indices, refused before any image is allocated: every axis advancing in steps of
    k > 1 (positions in µm: 50 spectra at x = 0, 1000, 2000 … made 2001×19001-pixel images, 50 of them set), or spectra
    that fill under one pixel in :data:`IMZML_PIXELS_PER_SPECTRUM` of an image over 10⁶ pixels (a stray coordinate).
    ``xy`` from 0. Two regions at the two ends of a slide's raster (0.1 % filled) pass."""
    steps = {axis: int(np.gcd.reduce(np.diff(np.unique(c)))) for axis, c in zip("xy", xy.T) if np.unique(c).size > 1}
    if steps and min(steps.values()) > 1:
        advance = " and ".join(f"{axis} in steps of {k}" for axis, k in steps.items())
        raise InputError(path, f"its spectra's positions advance {advance}, not 1: positions in µm rather than pixel "
                               "indices? An imzML's positions are pixel indices (the positions divided by the pixel "
                               "size)")
    width, height = (int(v) + 1 for v in xy.max(axis=0))
    if width * height > max(SPARSE_CHECKED_PIXELS, IMZML_PIXELS_PER_SPECTRUM * len(xy)):
        raise InputError(path, f"its {len(xy)} spectra span {width}×{height} pixels, one in "
                               f"{width * height // len(xy)} of them: a stray coordinate? An imzML's positions are "
                               "pixel indices")


def _image_shape(path: Path, meta: dict, xy: np.ndarray, skipped: np.ndarray) -> _ImageShape:
    """The ion images' shape: the spectra's span, extended on each axis to the scan settings' "max count of pixels"
    (which counts from the file's first coordinate: trailing rows or columns without spectra), unless that declares
    more than :data:`DECLARED_SPAN_AT_MOST` times the span, a header gone wrong that would make images of mostly
    nothing (one of 60000×60000 px is 13 GB); that axis is then the span, and the note says so."""
    size, notes, counts = [], [], []
    for axis, letter, span in ((1, "y", int(xy[:, 1].max()) + 1), (0, "x", int(xy[:, 0].max()) + 1)):
        stated = int(meta.get(f"max count of pixels {letter}", 0) or 0)
        declared = stated - int(skipped[axis])
        rejected = declared > DECLARED_SPAN_AT_MOST * span
        if rejected:
            notes.insert(0, f"{stated} pixels in {letter}, where its spectra span {span}")  # x first
            declared = span
        size.append(max(span, declared))
        counts.insert(0, stated if declared == size[-1] and not rejected else None)  # (x, y)
    note = (f"{path.name} declares {' and '.join(notes)} (its \"max count of pixels\"): the ion images keep to the "
            "spectra's span" if notes else None)
    return _ImageShape(size[0], size[1], note, (counts[0], counts[1]) if None not in counts else None)


_POSITIONS = {"IMS:1000050": "position x", "IMS:1000051": "position y"}
_EXTERNAL = {"IMS:1000102": "external offset", "IMS:1000103": "external array length"}


def _what_is_malformed(path: Path) -> str | None:
    """What pyimzML stumbled on, in the file's terms, where it is one of the common faults of a hand-edited or cut
    imzML: not mzML at all, no spectrum list, a spectrum without its position or without an array's external offset
    or length, or one of those not an integer. None when none of these is found (the caller then quotes pyimzML)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return None
    if _local_name(root) != "mzML":
        return f"its root element is <{_local_name(root)}>, not an imzML's <mzML>"
    spectra = [e for e in root.iter() if _local_name(e) == "spectrum"]
    if not spectra:
        return "it holds no <spectrum> (no spectrum list)"
    for number, spectrum in enumerate(spectra, 1):
        name = f"spectrum {number} ({spectrum.get('id', 'no id')})"
        params = {e.get("accession"): e.get("value") for e in spectrum.iter() if _local_name(e) == "cvParam"}
        for accession, what in _POSITIONS.items():
            fault = _integer_fault(params, accession, what)
            if fault:
                return f"{name} {fault}"
        arrays = [e for e in spectrum.iter() if _local_name(e) == "binaryDataArray"]
        for k, array in enumerate(arrays, 1):
            if not any(_local_name(e) == "referenceableParamGroupRef" for e in array):
                return (f"{name}'s binary data array {k} refers to no referenceableParamGroup, where imzML readers "
                        "(pyimzML, and so msifusion) look for its kind and number type")
            inner = {e.get("accession"): e.get("value") for e in array if _local_name(e) == "cvParam"}
            for accession, what in _EXTERNAL.items():
                fault = _integer_fault(inner, accession, what)
                if fault:
                    refs = [e.get("ref") for e in array if _local_name(e) == "referenceableParamGroupRef"]
                    return f"{name}'s binary data array {k}{f' ({refs[0]})' if refs else ''} {fault}"
    return None


def _integer_fault(params: dict, accession: str, what: str) -> str | None:
    if accession not in params:
        return f"has no {what} ({accession})"
    try:
        int(params[accession])
    except (TypeError, ValueError):
        return f"has {what} {params[accession]!r}, not an integer"
    return None


_UUID = "IMS:1000080"  # "universally unique identifier": the pair's, also the first 16 bytes of the .ibd


def _check_ibd_uuid(path: Path, ibd: Path, parser) -> None:
    """Refuse an .ibd that is not the imzML's own: the imzML names an identifier, and the .ibd starts with it.

    pyimzML does not compare them, and a stray .ibd of another run (renamed, or copied over) would otherwise be
    read with this file's offsets as garbage, or as a plausible but wrong image. Reads 16 bytes. Skipped when the
    imzML states no identifier, or one that is no UUID, and when the .ibd is shorter than 16 bytes (then the
    truncation check speaks). The bytes may also be the identifier in Microsoft's GUID order (pyimzML wrote
    that until 2017).
    """
    stated = next((str(p[2]) for p in parser.metadata.file_description.cv_params
                   if p[1] == _UUID or p[0] == "universally unique identifier"), None)
    try:
        expected = uuid.UUID(stated.strip())  # "{51BB7C6F-…}", "51bb7c6f-…" and bare hex alike
    except (AttributeError, ValueError):  # none stated, or not a UUID: nothing to compare
        return
    with open(ibd, "rb") as handle:
        head = handle.read(16)
    if len(head) == 16 and head not in (expected.bytes, expected.bytes_le):
        raise InputError(ibd, f"the .ibd's identifier {uuid.UUID(bytes=head)} does not match the imzML's "
                              f"{expected} ({path.name}): they are not one pair; put this imzML's own .ibd beside it")


def _declared_range(parser) -> tuple[float, float] | None:
    fields = getattr(parser, "spectrum_metadata_fields", {})
    try:
        lo = np.asarray(fields.get(_OBSERVED[0]), dtype=np.float64)
        hi = np.asarray(fields.get(_OBSERVED[1]), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if lo.shape != (len(parser.coordinates),) or hi.shape != lo.shape or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        return None
    if lo.min() <= 0:  # an empty spectrum's 0, or zero padding: the arrays themselves say where the data start
        return None
    return float(lo.min()), float(hi.max())


def _dtype(path: Path, group) -> np.dtype:
    names = _param_names(group)
    for name, code in _DTYPES.items():
        if name in names:
            return np.dtype(code)
    raise InputError(path, "imzML does not say the number type (32/64-bit float/integer) of a binary array")


# ----------------------------------------------------------------------------- functions


def check_normalize(normalize: str | None) -> None:
    """Refuse a normalisation other than ``"tic"``, ``"rms"`` or None."""
    if normalize not in (None, "tic", "rms"):
        raise InputError("--normalize", f"unknown normalisation {normalize!r}; use tic, rms or none")


def as_mz_list(mzs: Sequence[float | str] | float | str) -> list[float]:
    """m/z values as floats: one number (or its text, ``"656.7762"``) or a sequence of them."""
    one = isinstance(mzs, (str, bytes, int, float, np.number))
    values = []
    for m in [mzs] if one else mzs:
        try:
            values.append(float(m))
        except (TypeError, ValueError):
            raise InputError("--mz", f"{m!r} is not an m/z") from None
    return values


def write_ion_tiffs(stack: IonStack, out_dir: str | Path) -> list[Path]:
    """Write ``DIR/mz_<m/z, 4 decimals>.tiff`` per ion and the stack ``DIR/ions.ome.tiff``.

    All float32, calibrated with the stack's pixel size; the stack's channels are named
    ``"m/z 328.9167"`` (:func:`mz_label`). Returns the per-ion paths followed by the stack path.
    """
    from msifusion.io.images import write_tiff

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_tiff(out / f"mz_{name}.tiff", img, stack.pixel_size_um, [label])
             for name, label, img in zip(stack.names, stack.labels, stack.images)]
    paths.append(write_ion_stack(stack, out / "ions.ome.tiff"))
    return paths


def acquisition_gaps(acquired: np.ndarray) -> np.ndarray:
    """The pixels without a spectrum between acquired pixels: gaps one or two pixels wide along a row or a column
    (spectra dropped here and there, rows or columns a raster skipped). A region's outline, its corners and a
    corner of the grid are no gap; a notch or a strip one or two pixels wide between acquired pixels is one."""
    from scipy import ndimage

    padded = np.pad(np.asarray(acquired, bool), 1)
    closed = np.zeros_like(padded)
    for segment in (np.ones((1, 3), bool), np.ones((3, 1), bool)):  # along rows, then along columns
        closed |= ndimage.binary_closing(padded, structure=segment)
    return closed[1:-1, 1:-1] & ~acquired


def fill_gaps(images: np.ndarray, acquired: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(images with their :func:`acquisition_gaps` given the mean of their acquired 3×3 neighbours, the gaps):
    a spectrum that was not acquired is not a measured 0. ``images``: (h, w) or (k, h, w); returned as float32 (a
    copy only where there are gaps). ``acquired`` None (:attr:`IonStack.acquired` unknown): no gaps."""
    images = np.asarray(images, dtype=np.float32)
    gaps = acquisition_gaps(acquired) if acquired is not None else np.zeros(images.shape[-2:], bool)
    if not gaps.any():
        return images, gaps
    rows, cols = np.nonzero(gaps)
    h, w = gaps.shape
    total = np.zeros(images.shape[:-2] + rows.shape, np.float64)
    count = np.zeros(rows.shape, np.float64)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            r, c = np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)
            use = inside & acquired[r, c]
            total += np.where(use, images[..., r, c], 0)
            count += use
    filled = images.copy()
    filled[..., rows, cols] = total / count  # a gap lies between acquired pixels: it has one among its eight
    return filled, gaps


def gaps_warning(source: str, gaps: np.ndarray) -> str:
    """What filling ``gaps`` (:func:`fill_gaps`) before fusion did, for the ion images of ``source`` (a file name)."""
    n = int(gaps.sum())
    return (f"{source}: {n} pixel{'s' if n > 1 else ''} without a spectrum between acquired ones (spectra dropped, "
            "rows or columns the raster skipped, or a notch of the region's outline one or two pixels wide; 0 in "
            f"acquired.tiff) {'were' if n > 1 else 'was'} given the mean of {'their' if n > 1 else 'its'} acquired "
            "neighbours before fusion, not fused as measured zeros")


def zero_lines(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of an ion image (h, w) that hold only zeros between lines that do not: one or two lines wide,
    flanked on both sides by lines non-zero along the same stretch (in at least 3 pixels and half the flanking lines'
    non-zero ones, so a tissue's outline is none). What a raster's skipped lines look like in an ion image whose
    acquired pixels are not known (a TIFF from elsewhere): a measured ion is seldom absent from a whole line inside
    the tissue. Found, not filled: which pixels were acquired is a guess without the imzML."""
    present = np.asarray(image) != 0

    def lines(p: np.ndarray) -> np.ndarray:  # along axis 0: the rows of p
        empty = ~p.any(axis=1)
        found = np.zeros(len(p), bool)
        for width in (1, 2):
            for i in range(1, len(p) - width):
                if empty[i:i + width].all() and not empty[i - 1] and not empty[i + width]:
                    both = int((p[i - 1] & p[i + width]).sum())
                    if both >= max(3, 0.5 * min(p[i - 1].sum(), p[i + width].sum())):
                        found[i:i + width] = True
        return np.flatnonzero(found)

    return lines(present), lines(present.T)


def zero_line_pixels(image: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The pixels of an image's :func:`zero_lines` (``rows``, ``columns``, as it found them) that lie between non-zero
    pixels on both sides of the line (h, w bool): where a skipped line crossed the tissue, not where it ran on over an
    empty background."""
    present = np.asarray(image) != 0
    found = np.zeros(present.shape, bool)
    for axis, lines in enumerate((rows, columns)):
        p, f = (present, found) if axis == 0 else (present.T, found.T)  # f: a view, so rows of found.T are columns
        taken = set(lines.tolist())
        for line in lines:
            first, last = line, line
            while first - 1 in taken:
                first -= 1
            while last + 1 in taken:
                last += 1
            f[line] |= p[first - 1] & p[last + 1]
    return found


def _lines_said(rows: np.ndarray, columns: np.ndarray) -> str:
    """"1 row (12) and 5 columns (10, 11, 12, …), numbered from 0, hold" for :func:`zero_lines`' finds."""
    found = [f"{len(v)} {name}{'s' if len(v) > 1 else ''} ({', '.join(map(str, v[:3]))}{', …' if len(v) > 3 else ''})"
             for v, name in ((rows, "row"), (columns, "column")) if len(v)]
    return f"{' and '.join(found)}, numbered from 0, {'holds' if len(rows) + len(columns) == 1 else 'hold'}"


def zero_lines_warning(source: str, rows: np.ndarray, columns: np.ndarray, filled: int | None = None) -> str:
    """What :func:`zero_lines` found in the ion image of ``source`` (a file name), with what to do about it; or, with
    ``filled`` (``fuse --fill-zero-lines``), that that many of their pixels were filled."""
    if filled is not None:
        return (f"{source}: {_lines_said(rows, columns)} only zeros between lines that do not: taken for pixels "
                f"without a spectrum (--fill-zero-lines), {filled} of them, between non-zero ones, were given the "
                "mean of their neighbours before fusion, not fused as measured zeros")
    return (f"{source}: {_lines_said(rows, columns)} only zeros between lines that do not; where they are pixels "
            "without a spectrum (a raster's skipped lines), not a gap in the tissue, they are fused as measured "
            "zeros, each a dark stripe in the fused image: give --fill-zero-lines to fill them from their "
            "neighbours, or fuse from the imzML (fuse --imzml), or the ion TIFF of `msifusion ions` with its "
            "acquired.tiff beside it")


ACQUIRED_FILE = "acquired.tiff"


def write_acquired(stack: IonStack, out_dir: str | Path) -> list[Path]:
    """``DIR/acquired.tiff`` (1 where the imzML has a spectrum, 0 where it has none), calibrated as the ion images,
    where some pixel of the grid has no spectrum: there the ion images hold 0, which a measured 0 cannot be told from.
    Returns its path, or nothing for a fully acquired grid."""
    from msifusion.io.images import write_tiff

    if stack.acquired is None or stack.acquired.all():
        return []
    return [write_tiff(Path(out_dir) / ACQUIRED_FILE, stack.acquired, stack.pixel_size_um, ["acquired"])]


def write_ion_stack(stack: IonStack, path: str | Path) -> Path:
    """The ion images as one calibrated OME-TIFF stack whose channels are named ``"m/z 328.9167"``."""
    from msifusion.io.images import write_tiff

    return write_tiff(path, stack.images, stack.pixel_size_um, channel_names=stack.labels)
