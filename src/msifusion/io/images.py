"""Reading optical and ion images, writing calibrated TIFF / OME-TIFF.

An :class:`Image` carries its pixels and, when known, its physical pixel size in µm, so the
calibration travels from the instrument file to every output; when the file states a pixel size
that is not used, ``calibration_note`` says why, and ``warnings`` holds what the run should report.

Accepted inputs
---------------
Optical: PNG, JPEG, TIFF (incl. OME-TIFF, LZW via imagecodecs); 8-bit, 16-bit, 32-bit or float;
grayscale, RGB or RGBA (alpha is dropped); TIFF palette, MinIsWhite and CMYK are converted. A TIFF,
PNG or JPEG (EXIF) Orientation tag is not applied (Fiji and Bio-Formats ignore it, so BigWarp landmarks
are placed on the stored pixels): the image carries a warning instead. Pixels become
float32 RGB in [0, 1]: 8- and 16-bit images are divided by their type's maximum, wider integer images
by the image's own maximum, float images (and wider integers with negative values) are min-max scaled
unless already in [0, 1].

Ion: a 2-D TIFF, a 2-D ``.npy``, or a CSV / TSV / whitespace text file holding either a plain
numeric matrix (row = y, column = x; as Cardinal/shinyCardinal or ``numpy.savetxt`` write it,
an optional header row and row-label column are skipped; a first row that counts the columns,
as pandas' ``to_csv`` writes it, is a header, except atop a narrow table of integers, where it is
data and the image carries a warning) or a long table with a header naming the x and y
columns (``x``/``y``, ``col``/``row``, maybe with a unit: ``x_um``, ``x (µm)``) and one intensity
column (pixels absent from the table are 0, as for an off-tissue pixel without a spectrum; the
grid starts at 0 for 0-based coordinates, else at 1, never at the smallest coordinate present; a
table listing under 1 % of an image over 10⁶ pixels is refused; a 3-column table with another
header is refused). Numbers with thousands separators, or whose separator could be one, are refused.
NaN or inf in an ion image is an error: the fusion has no way to know what the user meant by them, so
we ask the user to fill them; complex values are an error too. A TIFF whose X and Y pixel sizes differ
is read as uncalibrated (optical or ion): every step downstream models square pixels.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io as _io
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msifusion.errors import InputError

OPTICAL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ION_SUFFIXES = (".tif", ".tiff", ".npy", ".csv", ".tsv", ".txt")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance weights of R, G, B


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(…, 3) RGB → (…) BT.601 luminance, float32."""
    return np.asarray(rgb, dtype=np.float32) @ np.array(LUMA, np.float32)


@dataclass(frozen=True)
class Image:
    """Pixels plus calibration. Ion images are (h, w); optical images are (H, W, 3)."""

    pixels: np.ndarray
    pixel_size_um: float | None = None
    path: Path | None = None
    origin_um: tuple[float, float] = (0.0, 0.0)  # pixel (0, 0)'s centre in the file's full-resolution frame (x, y)
    calibration_note: str | None = None  # why the file's stated pixel size was not used, when it states one
    warnings: tuple[str, ...] = ()  # what the reader noticed that the run should report (one line each)

    @property
    def shape2d(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def _require_file(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} file not found")
    if not path.is_file():
        raise InputError(path, f"{what} path is not a file")
    if path.suffix.lower() not in suffixes:
        imzml = {".imzml": "; an imzML file: export its ions with `msifusion ions`, or fuse it with `fuse --imzml`",
                 ".ibd": "; that is an imzML run's binary half: give the .imzML"}.get(path.suffix.lower(), "")
        raise InputError(path, f"unsupported {what} format {path.suffix or '(none)'}; use one of {', '.join(suffixes)}"
                               + imzml)
    return path


# ----------------------------------------------------------------------------- TIFF


PLAUSIBLE_PIXEL_UM = (1e-3, 1e5)  # 1 nm to 10 cm: a pixel size outside is not in µm (e.g. metres typed as µm)
SQUARE_REL_TOL = 1e-2  # X and Y pixel sizes closer than this (relative) are one size (scanners round their MPP)


def _tiff_pixel_size_um(tif) -> tuple[float | None, str | None]:
    """Pixel size from OME PhysicalSizeX/Y, else ImageJ/TIFF resolution tags (None if uncalibrated), and why a pixel
    size the file states was not used (None when it was, or when the file states none).

    A unit we do not know (OME ``pixel``, ``ft``…) makes the image uncalibrated rather than being taken as µm, and
    so does a pixel size outside :data:`PLAUSIBLE_PIXEL_UM`: such metadata is wrong. So does a width and height that
    differ (by more than 1 %, relative: more than a scanner's rounding of its calibration): every step downstream
    models square pixels, and taking the width for both would silently stretch the scale bars; the fusion itself
    works on the pixel grid (DESI and laser-ablation line scans have such pixels), and ``--pixel-size`` still applies.
    The note says which of these it was, so that the run can say the calibration was ignored, not absent.
    """
    width, height, note = _tiff_stated_pixel_size_um(tif)
    if width is None:
        return None, note
    if height is not None and not math.isclose(width, height, rel_tol=SQUARE_REL_TOL):
        return None, f"its pixels are not square ({width:.4g} × {height:.4g} µm) and msifusion models square pixels"
    lo, hi = PLAUSIBLE_PIXEL_UM
    if not lo <= width <= hi:
        return None, f"its pixel size {width:.3g} µm is implausible (not between {lo:g} and {hi:g} µm)"
    return width, None


def _tiff_stated_pixel_size_um(tif) -> tuple[float | None, float | None, str | None]:
    """The pixel width and height the TIFF's metadata states, in µm, however implausible; None for a width it states
    none we can read (the image is uncalibrated: the note says why when it states one in a way we cannot use) or a
    height it does not state (taken as square)."""
    ome = tif.ome_metadata
    if ome and re.search(r'PhysicalSizeX="', ome):
        width, note = _ome_physical_size_um(ome, "X")
        return width, _ome_physical_size_um(ome, "Y")[0], note
    page = tif.pages.first
    ij_unit = (tif.imagej_metadata or {}).get("unit")
    x, y = (_resolution_per_unit(page, name) for name in ("XResolution", "YResolution"))
    note = None
    if ij_unit:
        factor = _unit_to_um(ij_unit)  # None for 'pixel', …: not a physical calibration we can use
        if factor is None and x is not None and ij_unit.strip().lower() not in ("pixel", "pixels"):
            note = f"its ImageJ unit {ij_unit!r} is not a length unit msifusion knows"
    else:
        res_unit = page.tags.get("ResolutionUnit")
        factor = {2: _UNITS_UM["inch"], 3: _UNITS_UM["cm"]}.get(int(res_unit.value) if res_unit is not None else 2)
    if x is None or factor is None or (factor == _UNITS_UM["inch"] and x <= 1000):  # screen dpi (72, 96…): none
        return None, None, note
    return factor / x, (factor / y if y is not None else None), None


def _ome_physical_size_um(ome: str, axis: str) -> tuple[float | None, str | None]:
    """OME ``PhysicalSize{axis}`` in µm (OME's default unit); None when absent, unreadable or in an unknown unit, with
    a note saying which of the last two."""
    m = re.search(rf'PhysicalSize{axis}="([^"]*)"', ome)
    if not m:
        return None, None
    unit = re.search(rf'PhysicalSize{axis}Unit="([^"]*)"', ome)
    name = html.unescape(unit.group(1)) if unit else "µm"
    factor = _unit_to_um(name)
    if factor is None:
        return None, f"its OME PhysicalSize{axis}Unit {name!r} is not a length unit msifusion knows"
    try:
        return float(m.group(1)) * factor, None
    except ValueError:
        return None, f"its OME PhysicalSize{axis} {html.unescape(m.group(1))!r} is not a number"


def _resolution_per_unit(page, name: str) -> float | None:
    """A TIFF resolution tag (pixels per resolution unit); None when absent or zero."""
    tag = page.tags.get(name)
    if tag is None:
        return None
    num, den = tag.value
    return num / den if num and den else None


# OME's length units that occur in microscopy, ImageJ's spellings of them, and the inch. Not "A": ImageJ turns a
# typed "A" into "Å" before saving, and elsewhere it could be anything.
_UNITS_UM = {"pm": 1e-6, "Å": 1e-4, "angstrom": 1e-4, "angstroms": 1e-4, "nm": 1e-3,
             "µm": 1.0, "um": 1.0, "\\u00B5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
             "micrometers": 1.0, "micrometre": 1.0, "micrometres": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6,
             "in": 25400.0, "inch": 25400.0, "inches": 25400.0}


def _unit_to_um(unit: str) -> float | None:
    """µm per ``unit`` (pm, Å, nm, µm and its spellings, mm, cm, m, inch); None for anything else."""
    unit = unit.strip().replace("μ", "µ").replace("\u212b", "Å")  # Greek mu, Angstrom sign
    if len(unit) > 2 and unit.isalpha():  # a spelled-out name ("Microns", "Ångström"); "Mm" is not "mm"
        unit = unit.lower().replace("ångström", "angstrom")
    return _UNITS_UM.get(unit)


@dataclass(frozen=True)
class _Tiff:
    """What :func:`_read_tiff` found: pixels, calibration (see :func:`_tiff_pixel_size_um`), the first pixel's
    shift from the full resolution's in µm, and the Orientation tag (1 when absent)."""

    data: np.ndarray
    pixel_size_um: float | None
    shift_um: float
    calibration_note: str | None
    orientation: int


def _read_tiff(path: Path, colours: bool = False, coarsest_um: float | None = None) -> _Tiff:
    """The first series' pixels and their pixel size. With ``colours`` (optical images) the TIFF's colour encoding
    is applied, see :func:`_tiff_colours`; ion images keep their stored values. With ``coarsest_um`` and a calibrated
    pyramid (OME or SubIFD levels), the coarsest level whose pixel is at most that size, else the full resolution.
    The shift is where the first pixel's centre lies in µm from the full resolution's (a level pixel averages the
    full-resolution pixels it covers: (level size − full size) / 2)."""
    import logging

    import tifffile

    logging.getLogger("tifffile").setLevel(logging.ERROR)  # its warnings about odd OME layouts are not the user's concern
    try:
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            pixel_size, note = _tiff_pixel_size_um(tif)
            series = levels[0]
            base = pixel_size
            if coarsest_um is not None and pixel_size is not None:
                x = levels[0].axes.index("X")
                for level in levels[1:]:
                    size = base * levels[0].shape[x] / level.shape[x]
                    if size <= coarsest_um * (1 + 1e-6):
                        series, pixel_size = level, size
            encoding = _tiff_colour_encoding(path, series.keyframe) if colours else None
            planes = series.axes[0] in "ZT"  # focal planes or time points: three of them are no RGB either
            if colours and len(series.shape) == 3 and "S" not in series.axes and (series.shape[0] not in (1, 3) or planes):
                raise InputError(path, f"a stack of {series.shape[0]} greyscale images (axes {series.axes}: channels or "
                                       "planes), not one colour image; save the microscope image as RGB or greyscale")
            data = series.asarray()
            if encoding is not None:
                data = _tiff_colours(path, data, encoding, series)
            orientation = series.keyframe.tags.valueof(274, 1)
            orientation = int(orientation) if isinstance(orientation, int) else 1  # an IntEnum; junk counts as none
            return _Tiff(data, pixel_size, (pixel_size - base) / 2 if base is not None else 0.0, note, orientation)
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError) as exc:
        raise InputError(path, f"cannot read TIFF ({exc})") from None


_JPEG_COMPRESSIONS = (6, 7, 33007, 34892)  # old-style JPEG, JPEG, ALT_JPEG, lossy DNG: tifffile decodes YCbCr to RGB


def _tiff_colour_encoding(path: Path, page) -> str | None:
    """The page's PhotometricInterpretation as a name, None when it needs nothing done (grey, RGB, or no tag, which
    tifffile would call MinIsWhite); refuses the encodings we do not convert (raw YCbCr, CIELAB, LogLuv, CFA…)."""
    import tifffile

    if 262 not in page.tags:
        return None
    try:
        name = tifffile.PHOTOMETRIC(page.photometric).name
    except ValueError:
        name = str(page.photometric)
    if name in ("MINISBLACK", "RGB") or (name == "YCBCR" and page.compression in _JPEG_COMPRESSIONS):
        return None
    if name not in ("PALETTE", "MINISWHITE", "SEPARATED"):
        raise InputError(path, f"TIFF colour encoding {name} (PhotometricInterpretation {int(page.photometric)}) is "
                               "not supported; save the image as RGB or greyscale")
    return name


def _tiff_colours(path: Path, data: np.ndarray, encoding: str, series) -> np.ndarray:
    """Pixels as a viewer shows them: palette indices through the colour map, MinIsWhite grey inverted, CMYK inks
    as RGB = (1 − C, 1 − M, 1 − Y)·(1 − K) in [0, 1] (3 inks: K = 0). Extra samples (alpha) are dropped."""
    page = series.keyframe
    if "S" in series.axes:  # samples last
        data = np.moveaxis(data, series.axes.index("S"), -1)
    if encoding == "SEPARATED":
        inks = data.shape[-1] - len(page.extrasamples) if "S" in series.axes else 1
        if page.tags.valueof(332, 1) != 1 or inks not in (3, 4):  # InkSet 1: CMYK
            raise InputError(path, f"separated (ink) TIFF with {inks} non-CMYK ink(s) is not supported; save it as RGB")
        ink = data[..., :inks]
        ink = ink / float(np.iinfo(ink.dtype).max) if np.issubdtype(ink.dtype, np.integer) else np.clip(ink, 0, 1)
        white = 1.0 - ink[..., 3:4] if inks == 4 else 1.0
        return ((1.0 - ink[..., :3]) * white).astype(np.float32)
    if "S" in series.axes:
        data = data[..., 0]
    if encoding == "PALETTE":
        colormap = page.colormap  # (3, 2**bits), 16 bits per channel
        if colormap is None:
            raise InputError(path, "palette TIFF has no colour map")
        if colormap.max() < 256:  # an 8-bit map written as is: libtiff assumes the same
            colormap = colormap * 257
        return np.moveaxis(np.take(colormap, data, axis=1), 0, -1)
    # MINISWHITE
    if data.dtype == bool:
        return ~data
    if np.issubdtype(data.dtype, np.unsignedinteger):
        return (min(2**page.bitspersample - 1, np.iinfo(data.dtype).max) - data).astype(data.dtype)
    data = data.astype(np.float64)
    return 1.0 - data if data.min() >= 0.0 and data.max() <= 1.0 else -data


# ----------------------------------------------------------------------------- optical


def read_optical(path: str | Path, coarsest_um: float | None = None) -> Image:
    """Read a microscope image as float32 RGB in [0, 1], with its pixel size when the file has one.

    Colours come out as a viewer shows them: a TIFF's palette, MinIsWhite or CMYK encoding is applied; a TIFF's, PNG's
    or JPEG's Orientation tag is not applied but warned about (see :func:`_orientation_warning`). ``coarsest_um``: the
    pixel size the caller needs at most; a calibrated pyramidal TIFF (a slide scanner's OME-TIFF) is then read at its
    coarsest level that is still that fine, not at full resolution (float32 RGB costs 12 bytes per pixel: a
    20000×16000 scan alone is 3.8 GB), and ``origin_um`` says where its first pixel lies in the full scan's frame, so
    that landmarks made on the full scan still hold.
    """
    path = _require_file(Path(path), OPTICAL_SUFFIXES, "optical image")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        tiff = _read_tiff(path, colours=True, coarsest_um=coarsest_um)
        data, pixel_size, shift, note, orientation = (tiff.data, tiff.pixel_size_um, tiff.shift_um,
                                                      tiff.calibration_note, tiff.orientation)
    else:
        data = _decode_png_or_jpeg(path)
        if data.ndim == 3:
            data = data[..., [2, 1, 0, 3][: data.shape[2]]] if data.shape[2] in (3, 4) else data
        pixel_size, shift, note = None, 0.0, None
        orientation = _exif_orientation(path)  # not applied by the decoder: pixels as stored, as in Fiji
    warning = _orientation_warning(path, orientation)
    return Image(optical_to_rgb(data, path), pixel_size, path, (shift, shift), note, (warning,) if warning else ())


# How a viewer that honours the TIFF/EXIF Orientation tag shows the stored pixels, by the tag's value.
_ORIENTATIONS = {2: "mirrored left to right", 3: "rotated 180°", 4: "mirrored top to bottom",
                 5: "mirrored about its top-left to bottom-right diagonal", 6: "rotated 90° clockwise",
                 7: "mirrored about its top-right to bottom-left diagonal", 8: "rotated 90° counter-clockwise"}


def _orientation_warning(path: Path, orientation: int) -> str | None:
    """The warning for a TIFF, PNG or JPEG whose Orientation tag asks viewers to turn or mirror it; None for upright.

    Its pixels are used as stored, not turned: Fiji (ImageJ's TIFF reader, and its PNG and JPEG readers through AWT's
    ``Toolkit.createImage``, so BigWarp's landmarks) and Bio-Formats ignore the tag, photo viewers apply it, and
    which of the two the image was registered or landmarked in cannot be told from the file. The warning says so,
    and how to make the file unambiguous.
    """
    if orientation == 1:
        return None
    shown = _ORIENTATIONS.get(orientation, "in an undefined orientation")
    return (f"{path.name} has Orientation {orientation} (photo viewers show it {shown}; Fiji, and msifusion, use it "
            "as stored): if you registered it or placed landmarks on it as a photo viewer shows it, save it that way "
            "up without the tag")


def _exif_orientation(path: Path) -> int:
    """The Orientation (EXIF tag 274) of a PNG (eXIf chunk) or JPEG (APP1 segment), read by Pillow; 1 when it has none
    or it cannot be read (the decoder has read the file already: a damaged tag here is no reason to refuse it)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as image:
            orientation = image.getexif().get(274, 1)
        return int(orientation) if isinstance(orientation, int) else 1
    except (OSError, ValueError, TypeError, SyntaxError):
        return 1


_DAMAGED = ("premature end", "corrupt jpeg", "crc error", "incorrect data check", "read error")


def _decode_png_or_jpeg(path: Path) -> np.ndarray:
    """OpenCV's decoding, refusing damaged files: libjpeg decodes a truncated JPEG with its missing part grey
    and only prints a warning on the C-level stderr, so that stream is captured while decoding and read.

    Pixels come as stored: a PNG's EXIF orientation is not applied (``IMREAD_UNCHANGED``), nor a JPEG's
    (``IMREAD_IGNORE_ORIENTATION``; OpenCV applies it by default), as in Fiji; a JPEG has no alpha.
    """
    import os
    import sys
    import tempfile

    import cv2

    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    flags = (cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION if jpeg
             else cv2.IMREAD_UNCHANGED)
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr (closed): nothing to capture
            saved = None
        try:
            if saved is not None:
                os.dup2(sink.fileno(), 2)
            data = cv2.imread(str(path), flags)
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
        sink.seek(0)
        said = sink.read().decode(errors="replace").strip()
    damage = next((line for line in said.splitlines() if any(k in line.lower() for k in _DAMAGED)), None)
    if data is None or damage:
        raise InputError(path, f"cannot decode image ({damage or 'corrupt or not really a PNG/JPEG'})")
    if said:
        print(said, file=sys.stderr)  # the decoder's other remarks (e.g. libpng's about a colour profile)
    return data


def rgb_layout(data: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Any gray/RGB/RGBA array (channels first or last) as (H, W, 3), values untouched: channels moved last, alpha
    dropped, gray repeated into three channels; an InputError when it is no such image or under 2 pixels a side."""
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[0] in (1, 3, 4) and data.shape[-1] not in (1, 2, 3, 4):
        data = np.moveaxis(data, 0, -1)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[2] not in (1, 2, 3, 4):
        raise InputError(source, f"optical image has shape {data.shape}; expected gray, RGB or RGBA")
    if data.shape[2] in (2, 4):  # drop alpha
        data = data[..., :-1]
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    if min(data.shape[:2]) < 2:
        raise InputError(source, f"optical image is too small ({data.shape[0]}×{data.shape[1]})")
    return data


def optical_to_rgb(data: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Any gray/RGB/RGBA array (channels first or last) → float32 (H, W, 3) in [0, 1].

    Unsigned 8/16-bit integers (and signed ones without negatives) are divided by the type's maximum; 32/64-bit
    integers by the image's own maximum (a camera never fills 2³²−1); integers with negative values are min-max
    scaled, as are floats unless already in [0, 1].
    """
    data = rgb_layout(data, source)
    require_real(data, source, "optical image")
    if data.dtype == bool:
        rgb = data.astype(np.float32)
    elif np.issubdtype(data.dtype, np.integer) and data.dtype.itemsize <= 2 and not (
            np.issubdtype(data.dtype, np.signedinteger) and data.min() < 0):
        rgb = data.astype(np.float32)
        rgb /= float(np.iinfo(data.dtype).max)  # in place: one float copy of a large image, not two
    elif np.issubdtype(data.dtype, np.integer):
        # 32/64-bit (by the type's maximum any real image would be black), or signed with negative values
        wide = data.astype(np.float64)
        lo, hi = float(wide.min()), float(wide.max())
        if lo < 0.0:  # as for floats
            rgb = ((wide - lo) / (hi - lo) if hi > lo else np.zeros_like(wide)).astype(np.float32)
        else:
            rgb = (wide / hi if hi > 0 else wide).astype(np.float32)
    else:
        rgb = data.astype(np.float32)
        if not np.all(np.isfinite(rgb)):
            raise InputError(source, "optical image contains NaN or inf")
        lo, hi = float(rgb.min()), float(rgb.max())
        if lo < 0.0 or hi > 1.0:
            rgb = (rgb - lo) / (hi - lo) if hi > lo else np.zeros_like(rgb)
    return np.ascontiguousarray(rgb, dtype=np.float32)


def require_real(data: np.ndarray, source: str | Path | None, what: str) -> None:
    """Refuse pixels that are not real numbers (bool, integer or float): numpy would drop a complex image's imaginary
    part with only a warning, and read a time span (timedelta64, a "number" to numpy) as a count of its units."""
    if data.dtype.kind == "c":
        raise InputError(source, f"{what} has complex values ({data.dtype}); save its magnitude or real part as a "
                                 "real-valued image")
    if data.dtype.kind not in "biuf":
        raise InputError(source, f"{what} has non-numeric type {data.dtype}")


# ----------------------------------------------------------------------------- ion


def read_ion(path: str | Path) -> Image:
    """Read a 2-D ion image in its own intensity units (float32)."""
    path = _require_file(Path(path), ION_SUFFIXES, "ion image")
    suffix = path.suffix.lower()
    pixel_size, note, warning = None, None, None
    if suffix in (".tif", ".tiff"):
        tiff = _read_tiff(path)
        data, pixel_size, note = tiff.data, tiff.pixel_size_um, tiff.calibration_note
        warning = _orientation_warning(path, tiff.orientation)
    elif suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(path, f"cannot read .npy ({exc})") from None
    else:
        data, warning = _read_table(path)
    return Image(validate_ion(data, path), pixel_size, path, calibration_note=note,
                 warnings=(warning,) if warning else ())


def validate_ion(data: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Check an ion image is a finite, non-zero, real 2-D array; return it as float32.

    Integers, floats and booleans (a thresholded map: 1 where the ion is, 0 elsewhere) are intensities; complex
    values are refused rather than cut to their real part (the magnitude may be what the user meant), and so are
    time spans, dates, strings and records, which numpy would otherwise cast or fail on.
    """
    data = np.asarray(data)
    if data.ndim > 2:
        data = np.squeeze(data)
    if data.ndim != 2:
        raise InputError(source, f"ion image must be 2-D, got shape {data.shape}")
    require_real(data, source, "ion image")
    if min(data.shape) < 2:
        raise InputError(source, f"ion image is too small ({data.shape[0]}×{data.shape[1]})")
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(source, f"ion image has {int(bad.sum())} NaN/inf pixel(s); fill them (e.g. with 0) first")
    peak = float(np.max(np.abs(data)))
    if peak > float(np.finfo(np.float32).max):
        raise InputError(source, f"ion image values reach {peak:.3g}, beyond float32's range; divide by a constant first")
    data = data.astype(np.float32)
    if not np.any(data):
        raise InputError(source, "ion image is all zero; nothing to fuse")
    return data


_NA = {"", "na", "nan", "null", "none", "-nan"}


def _cell(token: str) -> str:
    """A cell's text without surrounding blanks and quotes."""
    return token.strip().strip('"').strip()


def _to_float(token: str) -> float | None:
    """A cell's number (NaN for a missing value), None when it is not one."""
    token = _cell(token)
    if token.lower() in _NA:
        return float("nan")
    try:
        return float(token)
    except ValueError:
        return None


def _comma_float(token: str) -> float | None:
    """:func:`_to_float` for a table written with decimal commas."""
    return _to_float(token.replace(",", "."))


_BARE_INTEGER = re.compile(r"[+-]?\d+")
COUNTED_HEADER_MIN_COLUMNS = 10  # a first row 0…n−1 or 1…n this wide is a header even above integers


def _counts_columns(row: list[str]) -> bool:
    """Whether a row is the column numbers 0…n−1 or 1…n written as plain integers (pandas' default column names)."""
    cells = [_cell(t) for t in row]
    if not all(re.fullmatch(r"[0-9]+", c) for c in cells):
        return False
    values = [int(c) for c in cells]
    return values in (list(range(len(values))), list(range(1, len(values) + 1)))


def _fractional(token: str, number: Callable[[str], float | None]) -> bool:
    """Whether a cell is a number written as a non-integer (with a point, comma or exponent), not a missing value."""
    value = number(token)
    return value is not None and not math.isnan(value) and not _BARE_INTEGER.fullmatch(_cell(token))


def _is_header(rows: list[list[str]], number: Callable[[str], float | None] = _to_float) -> bool:
    """Whether the first row holds names, not pixels: a non-numeric cell; an empty corner above row names followed by
    names or by the column numbers 0…n−1 / 1…n (R's ``write.csv``, pandas' ``to_csv``); or those column numbers alone
    (pandas' ``to_csv(index=False)``) above a number written as a non-integer, or at least
    :data:`COUNTED_HEADER_MIN_COLUMNS` wide. An empty corner before numbers that do not count columns stays data (a
    missing value, refused as NaN), and so does 0, 1, 2 atop a narrow table of integers: small counts may start so."""
    row = rows[0]
    values = [number(t) for t in row]
    if _cell(row[0]) == "" and len(row) > 1:
        rest = values[1:]
        return any(v is None for v in rest) or rest in (list(range(len(rest))), list(range(1, len(rest) + 1)))
    if any(v is None for v in values):
        return True
    return _counts_columns(row) and (len(row) >= COUNTED_HEADER_MIN_COLUMNS
                                     or any(_fractional(t, number) for r in rows[1:] for t in r))


def _read_table(path: Path) -> tuple[np.ndarray, str | None]:
    """A text table's pixels, and a warning when a first row counting the columns was kept as data."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(path, f"cannot read text table ({exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(path, "table is empty")
    sample = lines[:20]
    # ";" or a tab on every line wins over ",": a European export ("0,5;1,25", "0,5<tab>1,25") has decimal commas
    delimiter = next((cand for cand in (";", "\t") if all(cand in ln for ln in sample)), None)
    if delimiter is None:
        delimiter = next((cand for cand in (",", "\t", ";") if any(cand in ln for ln in sample)), None)
    if delimiter is None:
        rows = [ln.split() for ln in lines]
    else:
        rows = list(csv.reader(_io.StringIO("\n".join(lines)), delimiter=delimiter))
    rows = _drop_trailing_delimiter(rows)
    decimal_comma = _decimal_separator(path, rows, delimiter) == "," and delimiter != ","
    number = _comma_float if decimal_comma else _to_float
    header = None
    if _is_header(rows, number):
        header, rows = [_cell(t) for t in rows[0]], rows[1:]
    if not rows:
        raise InputError(path, "table has a header but no data rows")
    if header is not None:
        names = [h.lower() for h in header]
        coordinates = _coordinate_columns(path, names)
        if coordinates is not None:
            return _pivot_long_table(path, names, coordinates, rows, number), None
        if len(names) == 3 and names[0] not in _PANDAS_INDEX and any(number(h) is None for h in header):
            raise InputError(path, f"3-column table headed {', '.join(map(repr, header))} is not a long table "
                                   "msifusion knows: name its columns x, y (or col, row; a unit may follow: x_um, "
                                   "x (µm)) and the intensity; for a 3-pixel-wide image, drop the header")
    warning = _counted_row_warning(path, rows[0]) if header is None and _counts_columns(rows[0]) else None
    # Plain matrix. A first column that is non-numeric, or headed by an empty name (R's
    # write.csv row names), holds row labels.
    if (header is not None and header[0] == "") or all(number(r[0]) is None for r in rows if r):
        rows = [r[1:] for r in rows]
    width = len(rows[0])
    values = []
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(path, f"row {i + 1} has {len(row)} values, expected {width}")
        parsed = [number(t) for t in row]
        if any(v is None for v in parsed):
            bad = next(t for t, v in zip(row, parsed) if v is None)
            raise InputError(path, f"non-numeric value {bad!r} in row {i + 1}")
        values.append(parsed)
    return np.asarray(values, dtype=np.float64), warning


def _counted_row_warning(path: Path, row: list[str]) -> str:
    """The warning for a first row 0…n−1 or 1…n read as pixels (above integers, too narrow to be a header)."""
    counted = ", ".join(_cell(t) for t in row)
    return (f"{path.name}: its first row ({counted}) counts the columns and was read as pixel values; if it is pandas' "
            "column-number header, delete that row (or write the table with header=False)")


def _drop_trailing_delimiter(rows: list[list[str]]) -> list[list[str]]:
    """Rows without the empty last cell that a delimiter ending every row makes (a header may lack it): an empty
    column, not a column of missing values."""
    ends_empty = [len(row) > 1 and not row[-1].strip() for row in rows]
    if all(ends_empty[1:]) and (ends_empty[0] or _is_header(rows)):
        return [row[:-1] if empty else row for row, empty in zip(rows, ends_empty)]
    return rows


# A number with thousands separators for certain: both "." and ",", or several groups of three digits after one.
_THOUSANDS = re.compile(r"[+-]?[1-9]\d{0,2}(?:(?:\.\d{3})+,\d*|(?:,\d{3})+\.\d*|(?:\.\d{3}){2,}|(?:,\d{3}){2,})")
# One separator followed by exactly three digits: "12,345", "1.234" are thousands or decimals by their form alone.
_ONE_GROUP = re.compile(r"[+-]?[1-9]\d{0,2}([.,])\d{3}")


def _decimal_separator(path: Path, rows: list[list[str]], delimiter: str | None) -> str:
    """The table's decimal separator, "." or ","; refuses numbers written with thousands separators.

    Excel writes them for cells so formatted: "12,345" beside "987" (English), "1.234" and "16.259,44" (German). A
    number with both separators, or with several groups of three digits, has them for certain. One separator before
    exactly three digits ("12,345") is read as decimal when other numbers show it is the decimal one ("0,5",
    "12,3456"); when every number with a separator has that form, 12345 and 12.345 cannot be told apart and the table
    is refused, as it is when the groups follow the separator the other numbers use for decimals. The delimiter
    settles one separator: a point in a comma-separated table is a decimal point, and a comma in a semicolon-separated
    one a decimal comma (spreadsheets separate with ";" where "," is the decimal separator). Errors quote the cell as
    the file writes it.
    """
    decimal_by_delimiter = {",": ".", ";": ","}.get(delimiter or "")
    names = bool(rows) and any(_to_float(t) is None and re.search(r"[^\W\d_]", _cell(t)) for t in rows[0])
    decimal: dict[str, str] = {}  # separator → the first number in which it can only be a decimal separator
    grouped: dict[str, str] = {}  # separator → the first number with it before exactly three digits
    for row in rows[1:] if names else rows:
        for token in row:
            cell = _cell(token)
            if "." not in cell and "," not in cell:
                continue
            if _THOUSANDS.fullmatch(cell):
                raise InputError(path, f"number {cell!r} has thousands separators; export the table without them")
            group = _ONE_GROUP.fullmatch(cell)
            if group and group.group(1) != decimal_by_delimiter:
                grouped.setdefault(group.group(1), cell)
            elif ("." in cell) != ("," in cell) and _comma_float(cell) is not None:
                decimal.setdefault("," if "," in cell else ".", cell)
    if len(decimal) == 1:
        (sep, example), = decimal.items()
        other = "," if sep == "." else "."
        if other in grouped:
            raise InputError(path, f"number {grouped[other]!r} has a thousands separator (decimals are written with "
                                   f"{sep!r}, as in {example!r}); export the table without thousands separators")
        return sep
    if not decimal and grouped:
        sep, cell = next(iter(grouped.items()))
        whole, fraction = cell.replace(sep, ""), cell.replace(sep, ".")
        raise InputError(path, f"number {cell!r} may be {whole} or {fraction}: every number in the table with a "
                               f"{sep!r} has exactly three digits after it, as with thousands separators; export the "
                               "table without thousands separators")
    return "."


_COORDINATE = re.compile(r"(column|col|row|x|y)(?:\s*[(\[]\s*([^()\[\]]*?)\s*[)\]]|[\s_.-]+(\S+))?")
_PIXEL_UNITS = ("px", "pix", "pixel", "pixels", "index", "idx")


def _coordinate_axis(name: str) -> str | None:
    """"x" or "y" for a lower-case column name that is a coordinate: x, y, col or column (= x), row (= y), maybe with
    a unit of pixels or length after it (``x_um``, ``x (µm)``, ``row [px]``); None for any other name."""
    m = _COORDINATE.fullmatch(name.strip())
    if m is None:
        return None
    unit = m.group(2) if m.group(2) is not None else m.group(3)
    if unit is not None and unit not in _PIXEL_UNITS and _unit_to_um(unit) is None:
        return None
    return "y" if m.group(1) in ("y", "row") else "x"


def _coordinate_columns(path: Path, header: list[str]) -> tuple[int, int] | None:
    """The x and y columns of a long table (see :func:`_coordinate_axis`); None when the header does not name both,
    or has under 3 columns. Two columns for one axis (``x`` and ``x_um``) are refused: which holds the pixel?"""
    axes = [_coordinate_axis(name) for name in header]
    xs, ys = ([i for i, a in enumerate(axes) if a == axis] for axis in ("x", "y"))
    if not xs or not ys or len(header) < 3:
        return None
    for axis, found in (("x", xs), ("y", ys)):
        if len(found) > 1:
            raise InputError(path, f"long table has {len(found)} {axis} columns ({', '.join(header[i] for i in found)}); "
                                   "keep one x and one y column, of pixel indices")
    return xs[0], ys[0]


_PANDAS_INDEX = ("", "unnamed: 0")  # the header pandas' to_csv gives its index column
# columns of a long table that number its rows, not intensities: pandas' index, SCiLS Lab's "Spot index"
_INDEX_COLUMNS = (*_PANDAS_INDEX, "index", "spot", "spot index", "spot id", "id", "pixel index")
LONG_TABLE_PIXELS_PER_ROW = 100  # a long table must list at least 1 % of its image's pixels…
LONG_TABLE_FREE_PIXELS = 1_000_000  # …unless the image is no larger than this


def _pivot_long_table(path: Path, header: list[str], coordinates: tuple[int, int], rows: list[list[str]],
                      number: Callable[[str], float | None] = _to_float) -> np.ndarray:
    """A long table (x, y, intensity) as an image: row = y, column = x; absent pixels are 0.

    The grid's origin is fixed, not taken from the pixels present, so that dropped off-tissue
    rows and columns neither shift nor shrink the image: when the smallest x or y present is 0
    the coordinates are 0-based (origin 0), otherwise they are read as 1-based (origin 1, as
    imzML and R number pixels), even when the smallest present coordinate is larger than 1.
    The image reaches the largest x and y present. Negative coordinates are an error, and so are
    coordinates that all advance in steps larger than 1 (positions in µm, which would otherwise
    become a mostly empty image).

    A table may leave out background pixels, but not nearly all of its image: when the image would
    have more than :data:`LONG_TABLE_PIXELS_PER_ROW` pixels per row of the table (under 1 % of it
    listed) and more than :data:`LONG_TABLE_FREE_PIXELS`, it is refused before anything is allocated.
    A genuine sparse export lists every acquired pixel, and a tissue section fills far more than 1 % of
    the raster it was acquired in; one stray coordinate (x=100000 in a 100×100 table) or coordinates
    that are not pixel indices (one row at x=100000 beside a 100×100 image's rows) fail the rule.
    Images up to 10⁶ pixels (8 MB here) always pass.
    """
    ix, iy = coordinates
    others = [i for i in range(len(header)) if i not in (ix, iy) and header[i].strip() not in _INDEX_COLUMNS]
    if len(others) != 1:
        names = ", ".join(header[i] for i in others) or "none"
        raise InputError(path, f"long table needs exactly one intensity column beside {header[ix]} and {header[iy]}, "
                               f"found: {names}")
    iv = others[0]
    cells = [[number(r[i]) if i < len(r) else None for i in (ix, iy, iv)] for r in rows]
    if any(v is None for c in cells for v in c) or any(math.isnan(v) for c in cells for v in c[:2]):
        raise InputError(path, f"long table has a non-numeric {header[ix]}, {header[iy]} or intensity value")
    arr = np.array(cells, dtype=np.float64)
    if not np.allclose(arr[:, :2], np.round(arr[:, :2])):
        raise InputError(path, "x and y columns must hold integer pixel coordinates")
    xy = np.round(arr[:, :2])
    if xy.min() < 0:
        raise InputError(path, f"negative pixel coordinate {xy.min():.0f} in the x/y columns; subtract the smallest x "
                               "and y so that the table starts at 0 (pixel indices)")
    if xy.max() < 2**53:  # exact in float64 and int64; larger ones are refused by the size rule below
        steps = [int(np.gcd.reduce(np.diff(np.unique(c)).astype(np.int64))) for c in xy.T if np.unique(c).size > 1]
        if steps and min(steps) > 1:  # every coordinate a multiple of 25 (say): positions in µm, not pixel indices
            raise InputError(path, f"x and y advance in steps of {min(steps)}, not 1: they look like positions in µm; "
                                   "give pixel indices (the positions divided by the pixel size)")
    origin = 0 if xy.min() == 0 else 1
    width, height = (float(c.max()) + 1 - origin for c in xy.T)
    limit = max(LONG_TABLE_FREE_PIXELS, LONG_TABLE_PIXELS_PER_ROW * len(xy))
    if width * height > limit:
        own = float(np.prod(np.ptp(xy, axis=0) + 1))  # the rows' own bounding box
        if own <= limit:  # dense where they are: a raster index of a larger acquisition, offset from the origin
            raise InputError(path, f"x and y start at ({xy[:, 0].min():.0f}, {xy[:, 1].min():.0f}), far from the "
                                   f"origin: a {width:.6g}×{height:.6g} image for {len(xy)} rows; subtract that offset "
                                   "so that the table starts at 0 or 1")
        n = ", ".join(f"{v:.0f}" if v < 1e12 else f"{v:.3g}" for v in (xy[:, 0].max(), xy[:, 1].max()))
        raise InputError(path, f"x and y reach ({n}), a {width:.6g}×{height:.6g} image ({width * height:.3g} pixels), "
                               f"but the table has {len(xy)} rows, under 1 % of them; a stray coordinate? Remove it, "
                               "or give pixel indices")
    xy = xy.astype(np.int64)
    x, y = (xy - origin).T
    _, first, counts = np.unique(xy, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        k = int(np.argmax(counts > 1))
        cx, cy = xy[first[k]]
        raise InputError(path, f"pixel x={cx}, y={cy} appears {counts[k]} times in the long table; keep one row per pixel")
    image = np.zeros((y.max() + 1, x.max() + 1))
    image[y, x] = arr[:, 2]
    return image


# ----------------------------------------------------------------------------- writing


def write_tiff(
    path: str | Path,
    data: np.ndarray,
    pixel_size_um: float | None = None,
    channel_names: list[str] | None = None,
) -> Path:
    """Write float32 OME-TIFF: (H, W) or a (C, H, W) stack, with a name per channel (one for an (H, W) image).

    Carries the pixel size as OME ``PhysicalSizeX/Y`` (µm) and as TIFF resolution tags in
    centimetres, so Bio-Formats and ImageJ's own opener both show the calibration.
    """
    data = np.asarray(data, dtype=np.float32)
    metadata: dict = {"axes": "YX" if data.ndim == 2 else "CYX"}
    if channel_names is not None:
        if len(channel_names) != (1 if data.ndim == 2 else data.shape[0]):
            raise ValueError("channel_names needs one name per channel (one for an (H, W) image)")
        metadata["Channel"] = {"Name": list(channel_names)}
    return _write_ome(path, data, metadata, pixel_size_um, "minisblack")


def write_rgb_tiff(path: str | Path, rgb: np.ndarray, pixel_size_um: float | None = None) -> Path:
    """Write an (H, W, 3) float RGB image in [0, 1] as a calibrated 8-bit RGB TIFF."""
    data = np.clip(np.round(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8)
    return _write_ome(path, data, {"axes": "YXS"}, pixel_size_um, "rgb")


def _write_ome(path: str | Path, data: np.ndarray, metadata: dict, pixel_size_um: float | None,
               photometric: str) -> Path:
    """OME-TIFF with the calibration (OME physical size and TIFF resolution tags) and a content-derived UUID."""
    import tifffile

    metadata, kwargs = dict(metadata), {}
    if pixel_size_um:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeXUnit="µm",
                        PhysicalSizeY=pixel_size_um, PhysicalSizeYUnit="µm")
        per_cm = 1e4 / pixel_size_um
        kwargs.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    metadata["UUID"] = _content_uuid(data, metadata)
    tifffile.imwrite(path, data, ome=True, metadata=metadata, photometric=photometric, **kwargs)
    return Path(path)


_OME_UUID_NAMESPACE = uuid.UUID("b23d9f2a-5cbf-466b-b76d-44c26ec263b4")  # msifusion's, drawn once


def _content_uuid(data: np.ndarray, metadata: dict) -> str:
    """The OME file UUID, derived from the pixels and metadata (tifffile draws a new one per write),
    so that the same result written twice is the same file, byte for byte."""
    data = np.ascontiguousarray(data)
    digest = hashlib.blake2b(data.data, digest_size=16)
    digest.update(repr((data.shape, data.dtype.str, sorted(metadata.items()))).encode())
    return str(uuid.uuid5(_OME_UUID_NAMESPACE, digest.hexdigest()))
