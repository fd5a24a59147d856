"""TIFF and OME-TIFF: reading (calibration from OME, ImageJ and resolution tags; colour encodings; pyramids) and
writing calibrated, compressed float32 OME-TIFF stacks and 8-bit RGB TIFFs (tiled pyramids when large).

:func:`msifusion.io.images.read_optical` and :func:`msifusion.io.images.read_ion` read TIFFs through
:func:`_read_tiff`; :func:`write_tiff` and :func:`write_rgb_tiff` are re-exported by :mod:`msifusion.io.images`.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import logging
import math
import os
import re
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msifusion.errors import InputError
from msifusion.io.channels import WORKING_BYTES_PER_PIXEL, composite, composite_note
from msifusion.io.units import _UNITS_UM, _unit_to_um, check_pixel_size, unusable_pixel_size
from msifusion.runtime import refuse_beyond_memory


def _tiff_pixel_size_um(tif) -> tuple[float | None, str | None]:
    """Pixel size from OME PhysicalSizeX/Y, an Aperio slide's MPP, else ImageJ/TIFF resolution tags (None if
    uncalibrated), and why a pixel size the file states was not used (None when it was, or when the file states none).

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
    note = unusable_pixel_size(width, height)
    return (None, note) if note else (width, None)


def _tiff_stated_pixel_size_um(tif) -> tuple[float | None, float | None, str | None]:
    """The pixel width and height the TIFF's metadata states, in µm, however implausible; None for a width it states
    none we can read (the image is uncalibrated: the note says why when it states one in a way we cannot use) or a
    height it does not state (taken as square)."""
    ome = tif.ome_metadata
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", ome or "")  # the first image's: a label's may follow
    if pixels and re.search(r'PhysicalSizeX="', pixels.group(0)):
        width, note = _ome_physical_size_um(pixels.group(0), "X")
        return width, _ome_physical_size_um(pixels.group(0), "Y")[0], note
    page = _scan_series(tif).keyframe
    aperio = _aperio_mpp_um(page.description) if tif.is_svs else None
    if aperio is not None:
        return aperio
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
    if x is None or factor is None or _screen_dpi(x, factor):
        return None, None, note
    return factor / x, (factor / y if y is not None else None), None


SCREEN_DPI = (72.0, 96.0)  # what image editors (GIMP, Photoshop, Windows) write where nothing was calibrated


def _screen_dpi(per_unit: float, um_per_unit: float) -> bool:
    """Whether a resolution is a display's or an editor's, not a calibration: up to 1000 pixels per inch, or 72 or 96
    dpi written per cm (28.35 or 37.80 pixels per cm; not every value: msifusion writes its own TIFFs per cm)."""
    if um_per_unit == _UNITS_UM["inch"]:
        return per_unit <= 1000
    dpi = per_unit * _UNITS_UM["inch"] / um_per_unit
    return um_per_unit == _UNITS_UM["cm"] and any(math.isclose(dpi, d, rel_tol=1e-3) for d in SCREEN_DPI)


def _scan_series(tif):
    """The file's image: its first series, but for a Hamamatsu NDPI the first that is not the slide's macro
    photograph or map of the scanned area (tifffile names them so from the source lens, −1 and −2), which come last in
    NDP.scan's files but need not. An NDPI holding only those is one cut short (tifffile reads the pages it reaches):
    an IndexError, as other lookups into a file cut short raise (:data:`TIFF_CUT_SHORT`)."""
    if tif.is_ndpi:
        scans = [series for series in tif.series if series.name not in ("Macro", "Map")]
        if not scans:
            raise IndexError("an NDPI with no scan, only its macro photograph or map")
        return scans[0]
    return tif.series[0]


def _aperio_mpp_um(description: str) -> tuple[float | None, float | None, str | None] | None:
    """An Aperio slide's (SVS) pixel size as :func:`_tiff_stated_pixel_size_um` gives it: the ``MPP`` (µm per pixel,
    square) of its first page's description (``…|AppMag = 20|MPP = 0.4990|…``), where the scanner states its
    calibration (not in resolution tags); a note for an MPP that is not a number; None where the description states
    no MPP (the resolution tags are read instead)."""
    mpp = re.search(r"\|\s*MPP\s*=\s*([^|\r\n]*)", description or "")
    if mpp is None:
        return None
    try:
        return float(mpp.group(1)), None, None
    except ValueError:
        return None, None, f"its Aperio MPP {mpp.group(1).strip()!r} is not a number"


def _ome_physical_size_um(ome: str, axis: str) -> tuple[float | None, str | None]:
    """OME ``PhysicalSize{axis}`` in µm (OME's default unit) of one ``<Pixels>`` element's text; None when absent,
    unreadable or in an unknown unit, with a note saying which of the last two."""
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


@dataclass(frozen=True)
class FileRead:
    """What a file's reader found (:func:`_read_tiff`, :func:`msifusion.io.czi.read_czi`): pixels in the file's type,
    their pixel size (µm; None when unknown) and why a stated one was not used, the first pixel's shift from the full
    resolution's in µm, and the Orientation tag (1 when absent or not in the format)."""

    data: np.ndarray
    pixel_size_um: float | None
    shift_um: float
    calibration_note: str | None
    orientation: int
    channel_name: str | None = None  # the OME name of a one-channel image (msifusion writes "m/z …")
    downsample: float = 1.0  # full-resolution pixels per pixel read (a pyramid level's factor; 1 at full resolution)
    full_shape: tuple[int, int] | None = None  # the full resolution's (rows, cols) where a pyramid level was read
    warnings: tuple[str, ...] = ()  # what the run should report about the file (one line each)
    channels: int = 0  # a microscope's channels composed into ``data``'s colours (msifusion.io.channels); 0: none


@contextlib.contextmanager
def _tifffile_log():
    """While reading, tifffile's log prints nothing: its warnings about odd OME layouts are not the user's concern, and
    its errors (a tag or page offset beyond the end of a damaged file) are collected in the list it yields, for the
    caller to report in its own words, not printed above them. A filter on its logger, removed afterwards, so that a
    notebook's own logging settings stay as they were."""
    logger = logging.getLogger("tifffile")
    quiet = logging.Filter()
    faults: list[str] = []

    def heard(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            faults.append(record.getMessage())
        return False

    quiet.filter = heard
    logger.addFilter(quiet)
    try:
        yield faults
    finally:
        logger.removeFilter(quiet)


def _faults_warning(path: Path, faults: list[str]) -> tuple[str, ...]:
    """The warning for a file tifffile read in spite of faults (its pixels may be incomplete, its calibration lost)."""
    if not faults:
        return ()
    more = f" and {len(faults) - 1} more" if len(faults) > 1 else ""
    return (f"{path.name} looks damaged or cut short: tifffile read it in spite of a fault ({faults[0]}{more}); "
            "check its pixels and pixel size, or export it again",)


TIFF_CUT_SHORT = (KeyError, IndexError, RuntimeError, zlib.error, struct.error)  # what tifffile lets out on a file
# cut short: lookups into its structures, a codec's errors on a compressed strip (imagecodecs', or Python's zlib where
# tifffile falls back to it), an NDPI page's tags


def _read_tiff(path: Path, colours: bool = False, coarsest_um: float | None = None,
               stated_um: float | None = None) -> FileRead:
    """The image's pixels (:func:`_scan_series`) and their pixel size. With ``colours`` (optical images) the TIFF's
    colour encoding is applied, see :func:`_tiff_colours`; ion images keep their stored values. ``stated_um``: the
    full resolution's pixel size in place of the file's calibration (``--optical-pixel-size``). With ``coarsest_um``
    and a pyramid (OME or SubIFD levels, an NDPI's pages) with a pixel size (either), the coarsest level whose pixel is
    at most that size, else the full resolution.
    The shift is where the first pixel's centre lies in µm from the full resolution's (a level pixel averages the
    full-resolution pixels it covers: (level size − full size) / 2)."""
    import tifffile

    try:
        with _tifffile_log() as faults, tifffile.TiffFile(path) as tif:
            levels = _scan_series(tif).levels
            pixel_size, note = (stated_um, None) if stated_um is not None else _tiff_pixel_size_um(tif)
            series, downsample = levels[0], 1.0
            base = pixel_size
            if coarsest_um is not None and pixel_size is not None:
                for level in levels[1:]:
                    factor = _downsampling(levels[0], level)
                    if base * factor <= coarsest_um * (1 + 1e-6):
                        series, pixel_size, downsample = level, base * factor, factor
            if colours:
                _refuse_ion_stack(path, tif.ome_metadata)
            encoding = _tiff_colour_encoding(path, series.keyframe) if colours else None
            planes = series.axes[0] in "ZT"  # focal planes or time points: three of them are no RGB either
            held = {axis: n for axis, n in zip(series.axes, series.shape) if axis in "CZT" and n > 1}
            if colours and "C" in held and len(held) > 1:  # a hyperstack: channels in several planes (ZCYX, CZYX…)
                rows, cols = _rows_cols(series)
                what = " of ".join(f"{n} {STACK_AXES[axis]}" for axis, n in held.items())
                raise InputError(path, f"a stack of {what}, {rows}×{cols} px (axes {series.axes}), not one image; "
                                       f"{ONE_PLANE_AS_OME_TIFF}")
            if colours and planes and len(series.shape) == 4 and series.shape[0] > 1:  # colour planes (a slide's Z)
                raise InputError(path, f"a stack of {series.shape[0]} colour images of {series.shape[1]}×"
                                       f"{series.shape[2]} px (axes {series.axes}: focal planes or time points), not "
                                       f"one image; {ONE_IMAGE_AS_OME_TIFF}")
            # one page (H, W, 1), as numpy pipelines write grey (axes YXQ), is one image
            grey_page = series.shape[-1] == 1 and series.axes[-1] != "X" and len(series.pages) == 1
            # a microscope's channels (fluorescence), as OME and ImageJ mark them: composed into one colour image
            channels = colours and len(series.shape) == 3 and series.axes[0] == "C" and series.shape[0] >= 2
            if (colours and len(series.shape) == 3 and "S" not in series.axes and not grey_page and not channels
                    and (series.shape[0] not in (1, 3) or planes)):
                raise InputError(path, f"a stack of {series.shape[0]} greyscale images of {series.shape[1]}×"
                                       f"{series.shape[2]} px (axes {series.axes}: channels or planes), not one colour "
                                       f"image; {ONE_IMAGE_AS_OME_TIFF}")
            samples = _sample_channels(series.keyframe) if colours and len(series.shape) == 3 else None
            if colours:  # what it is refused for first, then whether it fits
                rows, cols = _rows_cols(series)
                working = WORKING_BYTES_PER_PIXEL * rows * cols if channels or samples else 0
                refuse_beyond_memory(path, rows, cols, series.size * series.dtype.itemsize + working, PYRAMID_WAY_ROUND
                                     if len(levels) > 1 and coarsest_um is None else None)
            data = series.asarray()
            if encoding is not None:
                data = _tiff_colours(path, data, encoding, series)
            names = _channel_names(tif.ome_metadata)
            data, composed, count = _composed(path, tif, series, data, channels, samples, names)
            bits = series.keyframe.bitspersample
            if colours and data.dtype == np.uint8 and 1 < bits < 8:  # 2–7 bits a sample, stored in bytes
                data = data.astype(np.float32) / (2**bits - 1)
            orientation = series.keyframe.tags.valueof(274, 1)
            orientation = int(orientation) if isinstance(orientation, int) else 1  # an IntEnum; junk counts as none
            return FileRead(data, pixel_size, (pixel_size - base) / 2 if base is not None else 0.0, note, orientation,
                            names[0] if len(names) == 1 and names[0].strip() else None, downsample,
                            None if series is levels[0] else _rows_cols(levels[0]),
                            (*composed, *_faults_warning(path, faults)), count)
    except TIFF_CUT_SHORT as exc:
        raise InputError(path, f"cannot read TIFF: it is truncated or damaged ({type(exc).__name__}: {exc})") from None
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        cut = "failed to read" in str(exc)  # tifffile's words for an uncompressed strip cut short
        raise InputError(path, f"cannot read TIFF{': it is truncated' if cut else ''} ({exc})") from None


STACK_AXES = {"C": "channels", "Z": "focal planes", "T": "time points"}  # a stack's axes, named
EXPORT_AS_OME_TIFF = ("export it as an OME-TIFF, which keeps its pixel size (Fiji: open it with Bio-Formats, then "
                      "Plugins > Bio-Formats > Bio-Formats Exporter to a name ending .ome.tif; QuPath, for whole "
                      "slides: File > Export images > OME-TIFF)")
ONE_IMAGE_AS_OME_TIFF = ("keep the one that shows the tissue and export it as an OME-TIFF, which keeps its "
                         "pixel size (Fiji: open it with Bio-Formats, Image > Duplicate… that plane, or Image > "
                         "Color > Stack to RGB to make channels one colour image, then Plugins > Bio-Formats > "
                         "Bio-Formats Exporter to a name ending .ome.tif)")
ONE_PLANE_AS_OME_TIFF = ("keep the focal plane that shows the tissue sharpest, with all its channels, and export it as "
                         "an OME-TIFF, which keeps its pixel size (Fiji: open it with Bio-Formats, Image > Duplicate… "
                         "that slice and every channel, then Plugins > Bio-Formats > Bio-Formats Exporter to a name "
                         "ending .ome.tif): its channels are then read as one colour image")
PYRAMID_WAY_ROUND = ("a pyramid: `register` and `fuse --imzml` read the level the fused grid needs, where its pixel "
                     "size is known or given with --optical-pixel-size, and so is the ion's")


def _rows_cols(series) -> tuple[int, int]:
    """A TIFF series' (rows, columns), whatever its axes."""
    return series.shape[series.axes.index("Y")], series.shape[series.axes.index("X")]


def _downsampling(full, level) -> float:
    """Full-resolution pixels per pixel of a pyramid ``level``: the whole factor f when the level is the full
    resolution's size divided by f, rounded down or up on both axes (as scanners and libvips make levels), else the
    ratio of the widths."""
    size = list(zip(_rows_cols(full), _rows_cols(level)))
    f = max(1, round(size[1][0] / size[1][1]))
    if all(n in (whole // f, -(-whole // f)) for whole, n in size):
        return float(f)
    return size[1][0] / size[1][1]


def _refuse_ion_stack(path: Path, ome: str | None) -> None:
    """Refuse, as a microscope image, an OME-TIFF whose channels are all named as msifusion names ions ("m/z …"): an
    ``ions.ome.tiff`` or ``fused.ome.tiff`` given where the optical belongs."""
    names = _channel_names(ome)
    if names and all(n.startswith("m/z ") for n in names):
        shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
        raise InputError(path, f"its channels are ion images ({shown}), not a microscope image; give the optical image "
                               "here")


def _composed(path: Path, tif, series, data: np.ndarray, channels: bool, samples: list[int] | None,
              names: list[str]) -> tuple[np.ndarray, tuple[str, ...], int]:
    """A microscope's channels (``channels``: the series' planes; ``samples``: a greyscale page's extra samples)
    composed into one colour image (:func:`msifusion.io.channels.composite`), with its note and how many they were;
    three planes only where the file says they are channels (:func:`_microscope_channels`); else ``data`` as it is
    (no note, 0)."""
    if samples and "S" in series.axes:  # the samples as the last axis, however the file stores them
        data = np.moveaxis(data, series.axes.index("S"), -1)
    layers = list(data) if channels else [data[..., k] for k in samples] if samples else []
    if not layers or (len(layers) == 3 and channels and not _microscope_channels(tif)):  # three: a bright field's RGB
        return data, (), 0
    return composite(layers, path), (composite_note(path.name, layers, names),), len(layers)


_RGB_NAMES = {"", "r", "g", "b", "red", "green", "blue"}
_FLUORESCENCE = re.compile(r'\b(?:ExcitationWavelength|EmissionWavelength|Fluor)="|ContrastMethod="Fluorescence"'
                           r'|IlluminationType="Epifluorescence"')


def _microscope_channels(tif) -> bool:
    """Whether a TIFF's three channel planes are a microscope's channels (fluorescence), not a bright field's red,
    green and blue stored as planes (bioformats2raw and raw2ometiff store an RGB scan so, unnamed): an ImageJ
    hyperstack (ImageJ saves colour as RGB samples), or OME channels named otherwise than R, G, B, or described as
    fluorescence (wavelengths, a fluor, the contrast method or illumination)."""
    if tif.is_imagej:
        return True
    image = re.search(r"<Image\b.*?</Image>", tif.ome_metadata or "", re.S)
    channels = re.findall(r"<Channel\b[^>]*>", image.group(0) if image else "")
    named = [n.strip().lower() for n in _channel_names(tif.ome_metadata)]
    return any(_FLUORESCENCE.search(c) for c in channels) or any(n not in _RGB_NAMES for n in named)


def _channel_names(ome: str | None) -> list[str]:
    """The OME channel names of the first image, unescaped (none without OME metadata)."""
    image = re.search(r"<Image\b.*?</Image>", ome or "", re.S)
    return [html.unescape(n) for n in re.findall(r'<Channel\b[^>]*\bName="([^"]*)"', image.group(0) if image else "")]


_JPEG_COMPRESSIONS = (6, 7, 33007, 34892)  # old-style JPEG, JPEG, ALT_JPEG, lossy DNG: tifffile decodes YCbCr to RGB


def _sample_channels(page) -> list[int] | None:
    """The samples of a greyscale page that are a microscope's channels (a fluorescence image's: beside the grey one,
    extra samples not marked as alpha; read as RGB, three would be taken for colours and a fourth dropped as if it
    were alpha); None for any other page."""
    import tifffile

    if page.photometric != tifffile.PHOTOMETRIC.MINISBLACK or not page.extrasamples:
        return None
    alpha = {1, 2}  # associated and unassociated alpha
    kinds = [0] * (page.samplesperpixel - len(page.extrasamples)) + list(page.extrasamples)
    colour = [k for k, kind in enumerate(kinds) if kind not in alpha]
    return colour if len(colour) >= 2 else None


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
        # as floats in [0, 1]: 16-bit colours are no camera's, whose depth the reader would guess from the brightest
        return np.moveaxis(np.take((colormap / 65535.0).astype(np.float32), data, axis=1), 0, -1)
    # MINISWHITE
    if data.dtype == bool:
        return ~data
    if np.issubdtype(data.dtype, np.unsignedinteger):
        return (min(2**page.bitspersample - 1, np.iinfo(data.dtype).max) - data).astype(data.dtype)
    data = data.astype(np.float64)
    return 1.0 - data if data.min() >= 0.0 and data.max() <= 1.0 else -data


# ----------------------------------------------------------------------------- writing


def write_tiff(
    path: str | Path,
    data: np.ndarray | Sequence[np.ndarray],
    pixel_size_um: float | None = None,
    channel_names: list[str] | None = None,
) -> Path:
    """Write float32 OME-TIFF: (H, W) or a (C, H, W) stack, with a name per channel (one for an (H, W) image). A stack
    may be given as a sequence of (H, W) images: it is written page by page, never gathered into one array.

    Carries the pixel size as OME ``PhysicalSizeX/Y`` (µm), which Bio-Formats reads, and as TIFF resolution tags in
    centimetres (TIFF has no µm unit), which ImageJ's own opener shows as the same length in cm. Compressed, and tiled
    with a pyramid when large: see :func:`_write_ome`.
    """
    if not isinstance(data, np.ndarray) and not all(isinstance(page, np.ndarray) and page.ndim == 2 for page in data):
        # not a list of pages: one array-like (a nested list)
        data = np.asarray(data)
    if isinstance(data, np.ndarray):
        data = np.asarray(data, dtype=np.float32)
        shape = data.shape
        if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] > 4
                                       and channel_names is None):
            raise ValueError(f"write_tiff takes an (H, W) image or a (C, H, W) stack, got shape {data.shape}"
                             + ("; a colour image (H, W, 3) is written by write_rgb_tiff" if data.ndim == 3 else ""))
    else:
        shapes = {page.shape for page in data}  # 2-D pages, as checked above
        if len(shapes) != 1:
            raise ValueError(f"a stack needs (H, W) images of one shape; got {sorted(shapes)}")
        shape = (len(data), *shapes.pop())
    metadata: dict = {"axes": "YX" if len(shape) == 2 else "CYX"}
    if channel_names is not None:
        if len(channel_names) != (1 if len(shape) == 2 else shape[0]):
            raise ValueError("channel_names needs one name per channel (one for an (H, W) image)")
        metadata["Channel"] = {"Name": list(channel_names)}
    return _write_ome(path, data, metadata, pixel_size_um, "minisblack", shape)


def file_title(path: Path) -> str:
    """A file's name without its extension, and an OME-TIFF's without its ``.ome`` too (ion.ome.tif: "ion")."""
    stem = path.stem
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") and len(stem) > len(".ome") else stem


def rgb_to_uint8(rgb: np.ndarray) -> np.ndarray:
    """A float RGB image in [0, 1] as 8-bit, as every RGB file msifusion writes holds it (rounded, clipped)."""
    return np.clip(np.round(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8)


def write_rgb_tiff(path: str | Path, rgb: np.ndarray, pixel_size_um: float | None = None,
                   name: str | None = None) -> Path:
    """Write an (H, W, 3) float RGB image in [0, 1] as a calibrated 8-bit RGB TIFF, its OME channel named ``name``."""
    data = rgb_to_uint8(rgb)
    metadata = {"axes": "YXS", **({"Channel": {"Name": [name]}} if name else {})}
    return _write_ome(path, data, metadata, pixel_size_um, "rgb", data.shape)


COMPRESSION = "zlib"  # Deflate, lossless; ImageJ's own opener, Bio-Formats (Fiji, QuPath), napari and GDAL read it
PYRAMID_ABOVE_PX = 4096  # a longer side above this is written tiled, with a pyramid, as whole-slide viewers want it
TILE_PX = 512
PYRAMID_TOP_PX = 1024  # the pyramid halves the image until its longer side is at most this
KEEP_LEVELS_BYTES = 256 * 2**20  # a pyramid's levels are kept to halve the next from when its first fits in this


def pyramid_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """The (height, width) of each level written, the full size first: the full size alone up to
    :data:`PYRAMID_ABOVE_PX` on the longer side or :data:`TILE_PX` on the shorter (ImageJ's own opener reads stripped
    TIFFs only, and such images need no pyramid), else halved (rounding up) until the longer side is at most
    :data:`PYRAMID_TOP_PX`."""
    sizes = [(height, width)]
    if max(height, width) <= PYRAMID_ABOVE_PX or min(height, width) <= TILE_PX:
        return sizes
    while max(sizes[-1]) > PYRAMID_TOP_PX:
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


def halved(page: np.ndarray) -> np.ndarray:
    """The page at half the size, each pixel the mean of the 2×2 it covers (the last row or column of an odd size
    counted twice, so that the level keeps the image's mean intensities at its edge), in the page's dtype."""
    odd = ((0, page.shape[0] % 2), (0, page.shape[1] % 2)) + ((0, 0),) * (page.ndim - 2)
    padded = np.pad(page, odd, mode="edge") if page.shape[0] % 2 or page.shape[1] % 2 else page
    mean = padded[0::2, 0::2].astype(np.float64)  # a quarter-sized sum, not a float64 copy of the page
    mean += padded[1::2, 0::2]
    mean += padded[0::2, 1::2]
    mean += padded[1::2, 1::2]
    mean /= 4
    return np.round(mean).astype(page.dtype) if np.issubdtype(page.dtype, np.integer) else mean.astype(page.dtype)


def _tiles(pages: Sequence[np.ndarray], dtype: np.dtype, level: int, kept: dict[int, np.ndarray] | None):
    """Each page at a pyramid level (halved ``level`` times), cut into :data:`TILE_PX` tiles in the order tifffile
    writes them (page by page, row by row). With ``kept``, each page's level is kept there, and the next level halves
    it rather than the full page again (the same arithmetic, so the same bytes)."""
    for i, page in enumerate(pages):
        if kept is not None and level > 1:
            page = halved(kept[i])
        else:
            page = np.asarray(page, dtype=dtype)
            for _ in range(level):
                page = halved(page)
        if kept is not None and level:
            kept[i] = page
        for top in range(0, page.shape[0], TILE_PX):
            for left in range(0, page.shape[1], TILE_PX):
                yield page[top:top + TILE_PX, left:left + TILE_PX]


def _write_ome(path: str | Path, data: np.ndarray | Sequence[np.ndarray], metadata: dict,
               pixel_size_um: float | None, photometric: str, shape: tuple[int, ...]) -> Path:
    """Deflate-compressed OME-TIFF with the calibration (OME physical size and TIFF resolution tags) and a
    content-derived UUID; ``data`` is one array, or a stack's (H, W) pages (written one by one, as float32). An image
    larger than :data:`PYRAMID_ABOVE_PX` is written in tiles with a pyramid of halved levels (SubIFDs)."""
    import tifffile

    check_pixel_size("pixel_size_um", pixel_size_um)
    metadata = {"Name": file_title(Path(path)), **metadata}  # as QuPath and napari list the image ("Image0" otherwise)
    options = {"photometric": photometric, "compression": COMPRESSION, "maxworkers": min(4, os.cpu_count() or 1),
               "compressionargs": {"level": 1}}  # level 1: as small as the default's on float images, in 3/4 the time
    if pixel_size_um:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeXUnit="µm",
                        PhysicalSizeY=pixel_size_um, PhysicalSizeYUnit="µm")
        options.update(resolutionunit="CENTIMETER")
    stacked = photometric != "rgb" and len(shape) == 3
    pages = list(data) if stacked or not isinstance(data, np.ndarray) else [data]  # views of an array's pages
    dtype = data.dtype if isinstance(data, np.ndarray) else np.dtype(np.float32)
    metadata["UUID"] = _content_uuid(pages, shape, dtype, metadata)
    sizes = pyramid_sizes(*(shape[:2] if photometric == "rgb" else shape[-2:]))
    levels = len(sizes) - 1
    raw = math.prod(shape) * dtype.itemsize * (4 / 3 if levels else 1)  # a pyramid adds up to a third
    bigtiff = raw > 2**31  # Deflate barely shrinks noisy float32, and can grow it: room to spare under 4 GB
    stack_shape = shape[:1] if stacked else ()
    # a large stack's halved pages would not fit in memory: each level is then halved from the full pages again
    kept = {} if levels and math.prod(shape) * dtype.itemsize / 4 <= KEEP_LEVELS_BYTES else None
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=True) as tif:
        for level, size in enumerate(sizes):
            per_cm = 1e4 / pixel_size_um / 2**level if pixel_size_um else None
            level_shape = (*stack_shape, *size, *((shape[-1],) if photometric == "rgb" else ()))
            extra = {"resolution": (per_cm, per_cm)} if per_cm else {}
            if level == 0:
                extra.update(metadata=metadata, subifds=levels)
            else:
                extra.update(subfiletype=1)  # a reduced-resolution image
            if levels:
                tif.write(_tiles(pages, dtype, level, kept), shape=level_shape, dtype=dtype, tile=(TILE_PX, TILE_PX),
                          **options, **extra)
            elif not stacked:
                tif.write(pages[0], **options, **extra)
            else:
                tif.write((np.ascontiguousarray(page, dtype=dtype) for page in pages), shape=level_shape, dtype=dtype,
                          **options, **extra)
    return Path(path)


_OME_UUID_NAMESPACE = uuid.UUID("b23d9f2a-5cbf-466b-b76d-44c26ec263b4")  # msifusion's, drawn once


def _content_uuid(pages: Sequence[np.ndarray], shape: tuple[int, ...], dtype: np.dtype, metadata: dict) -> str:
    """The OME file UUID, derived from the pixels (one array, or a stack's pages in order) and metadata (tifffile
    draws a new one per write), so that the same result written twice is the same file, byte for byte."""
    digest = hashlib.blake2b(digest_size=16)
    for page in pages:
        digest.update(np.ascontiguousarray(page, dtype=dtype).data)
    digest.update(repr((tuple(shape), np.dtype(dtype).str, sorted(metadata.items()))).encode())
    return str(uuid.uuid5(_OME_UUID_NAMESPACE, digest.hexdigest()))
