"""Reading optical and ion images, writing calibrated TIFF / OME-TIFF.

An :class:`Image` carries its pixels and, when known, its physical pixel size in µm, so the
calibration travels from the instrument file to every output; when the file states a pixel size
that is not used, ``calibration_note`` says why, and ``warnings`` holds what the run should report.

The formats with rules of their own live beside this module: :mod:`msifusion.io.tiff` reads TIFF / OME-TIFF
and writes it (:func:`write_tiff`, :func:`write_rgb_tiff`, re-exported here), :mod:`msifusion.io.czi` reads Zeiss
CZI, :mod:`msifusion.io.tables` reads ion images given as text tables, and :mod:`msifusion.io.units` turns a stated
pixel size into µm.

Accepted inputs
---------------
Optical: PNG, JPEG, TIFF (incl. OME-TIFF, LZW via imagecodecs), Aperio slide scans (.svs, TIFFs calibrated by
their description's MPP), Hamamatsu slide scans (.ndpi, TIFF-like, calibrated by their resolution in pixels per cm;
both read by tifffile, which sets their thumbnails, macro photographs and maps apart) and Zeiss CZI (.czi, one scene
and plane, with the ``czi`` extra); 8-bit, 16-bit, 32-bit or float; grayscale, RGB or RGBA (alpha is dropped, and a
transparent background warned about); TIFF palette, MinIsWhite and CMYK are converted. A TIFF, PNG or JPEG (EXIF)
Orientation tag is not applied (Fiji and Bio-Formats ignore it, so BigWarp landmarks are placed on the stored
pixels): the image carries a warning instead.
Pixels become float32 RGB in [0, 1]: 8-bit images are divided by 255, 16-bit ones by the least camera depth's
maximum (8, 10, 12, 14 or 16 bits) that holds their values, wider integer images by the image's own maximum, float
images (and wider integers with negative values) are min-max scaled unless already in [0, 1].

Ion: a 2-D TIFF, a 2-D ``.npy``, or a CSV / TSV / whitespace text file holding a plain numeric matrix or a long
table with x and y columns (see :mod:`msifusion.io.tables` for which tables are read and how).
NaN or inf in an ion image is an error: the fusion has no way to know what the user meant by them, so
we ask the user to fill them; complex values are an error too. A TIFF whose X and Y pixel sizes differ
is read as uncalibrated (optical or ion): every step downstream models square pixels.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from msifusion.errors import InputError
from msifusion.io.czi import check_czi, czi_file_pixel_size_um, read_czi
from msifusion.io.tables import _read_table
from msifusion.io.tiff import (EXPORT_AS_OME_TIFF, TIFF_CUT_SHORT, _read_tiff, _tiff_pixel_size_um,
                               _tifffile_log, rgb_to_uint8, write_rgb_tiff, write_tiff)
from msifusion.io.units import PLAUSIBLE_PIXEL_UM
from msifusion.runtime import refuse_beyond_memory

__all__ = [  # what other modules import from here; write_tiff, write_rgb_tiff, rgb_to_uint8 and PLAUSIBLE_PIXEL_UM
    # are re-exported
    "ION_SUFFIXES", "LUMA", "OPTICAL_SUFFIXES", "PLAUSIBLE_PIXEL_UM", "Image", "c_stderr_captured", "check_optical",
    "file_pixel_size_um", "luminance", "optical_to_rgb", "read_ion", "read_optical", "require_file", "require_real",
    "rgb_layout", "rgb_to_uint8", "torch_ready", "validate_ion", "write_rgb_tiff", "write_tiff",
]

OPTICAL_TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi")  # slide scans tifffile reads: Aperio, Hamamatsu NDPI
OPTICAL_SUFFIXES = (".png", ".jpg", ".jpeg", *OPTICAL_TIFF_SUFFIXES, ".czi")  # .czi: Zeiss ZEN's, with the czi extra
ION_SUFFIXES = (".tif", ".tiff", ".npy", ".csv", ".tsv", ".txt")
MICROSCOPE_FORMATS = {  # vendors' formats that Bio-Formats opens and msifusion does not: refused with the way round
    ".lif": "Leica LIF", ".vsi": "Olympus VSI", ".nd2": "Nikon ND2",
    ".mrxs": "3DHISTECH MRXS", ".scn": "Leica SCN", ".oib": "Olympus OIB",
    ".oir": "Olympus OIR", ".ims": "Imaris", ".lsm": "Zeiss LSM",
}
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
    name: str | None = None  # an ion TIFF's OME channel name where it names an m/z ("m/z 1217.5161"): _ion_name
    downsample: float = 1.0  # full-resolution pixels per pixel: a pyramid level's factor (:func:`read_optical`)
    full_shape: tuple[int, int] | None = None  # the full resolution's (rows, cols) where a pyramid level was read
    channels: int = 0  # a microscope's channels composed into these colours (msifusion.io.channels); 0: none

    @property
    def shape2d(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def require_file(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """``path`` itself when it is an existing file of one of ``suffixes``; else the one-line error, naming ``what``."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} file not found")
    if not path.is_file():
        raise InputError(path, f"{what} path is not a file")
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        imzml = ("; an imzML file goes to --imzml (fuse) or --ion (register), the microscope image to --optical: "
                 "are the two swapped?" if what == "optical image" else
                 "; an imzML file: export its ions with `msifusion ions`, or fuse it with `fuse --imzml`")
        hint = {".imzml": imzml, ".ibd": "; that is an imzML run's binary half: give the .imzML"}.get(suffix, "")
        if suffix in MICROSCOPE_FORMATS:
            hint = f"; a {MICROSCOPE_FORMATS[suffix]} file: {EXPORT_AS_OME_TIFF}"
        elif suffix in (".svs", ".ndpi", ".czi"):  # where an optical is not what is asked for
            hint = "; a slide scan or micrograph is a microscope image: give it as the optical"
        raise InputError(path, f"unsupported {what} format {path.suffix or '(none)'}; use one of {', '.join(suffixes)}"
                               + hint)
    return path


# ----------------------------------------------------------------------------- optical


def read_optical(path: str | Path, coarsest_um: float | None = None, pixel_size_um: float | None = None,
                 scene: int | None = None) -> Image:
    """Read a microscope image as float32 RGB in [0, 1], with its pixel size when the file has one.

    Colours come out as a viewer shows them: a TIFF's palette, MinIsWhite or CMYK encoding is applied; a TIFF's, PNG's
    or JPEG's Orientation tag is not applied but warned about (see :func:`_orientation_warning`). ``pixel_size_um``:
    the full resolution's pixel size in place of the file's calibration (``--optical-pixel-size``). ``coarsest_um``:
    the pixel size the caller needs at most; a pyramidal TIFF (a slide scanner's OME-TIFF) with a pixel size is then
    read at its coarsest level that is still that fine, a Zeiss CZI averaged down by the largest whole factor that is
    (:func:`msifusion.io.czi.read_czi`), not at full resolution (float32 RGB costs 12 bytes per pixel:
    a 20000×16000 scan alone is 3.8 GB); ``origin_um`` says where its first pixel lies in the full scan's frame, so
    that landmarks made on the full scan still hold, ``downsample`` how many full-resolution pixels it spans and
    ``full_shape`` the full scan's size. ``scene``: a CZI's scene, numbered from 1 (``--optical-scene``).
    """
    path = check_optical(path, scene, headers=False)
    suffix = path.suffix.lower()
    downsample, full_shape, faults, channels = 1.0, None, (), 0
    if suffix in (*OPTICAL_TIFF_SUFFIXES, ".czi"):
        read = (read_czi(path, coarsest_um, pixel_size_um, scene) if suffix == ".czi" else
                _read_tiff(path, colours=True, coarsest_um=coarsest_um, stated_um=pixel_size_um))
        data, pixel_size, shift, note, orientation = (read.data, read.pixel_size_um, read.shift_um,
                                                      read.calibration_note, read.orientation)
        downsample, full_shape, faults, channels = read.downsample, read.full_shape, read.warnings, read.channels
    else:
        orientation = _png_or_jpeg_header(path)  # not applied by the decoder: pixels as stored, as in Fiji
        data = _decode_png_or_jpeg(path)
        if data.ndim == 3:
            data = data[..., [2, 1, 0, 3][: data.shape[2]]] if data.shape[2] in (3, 4) else data
        pixel_size, shift, note = pixel_size_um, 0.0, None
    transparent = _transparent_warning(path, data)
    rgb = optical_to_rgb(data, path)
    warnings = (*faults, _orientation_warning(path, orientation), _uniform_warning(path, rgb), transparent)
    return Image(rgb, pixel_size, path, (shift, shift), note, tuple(w for w in warnings if w), downsample=downsample,
                 full_shape=full_shape, channels=channels)


def check_optical(path: str | Path, scene: int | None = None, headers: bool = True) -> Path:
    """``path`` itself when it is an optical file this module reads, so far as can be told without decoding it: of a
    known format; ``scene`` (numbered from 1) only for a CZI; with ``headers``, for a CZI, one image or the scene
    asked for (:func:`msifusion.io.czi.check_czi`); else the one-line error."""
    path = require_file(Path(path), OPTICAL_SUFFIXES, "optical image")
    if scene is not None and path.suffix.lower() != ".czi":
        raise InputError("--optical-scene", f"{path.name} is not a CZI: only a Zeiss CZI holds scenes")
    if headers and path.suffix.lower() == ".czi":
        check_czi(path, scene)
    return path


def file_pixel_size_um(path: Path) -> float | None:
    """The full resolution's pixel size that an optical file's own calibration states, whatever overrides it (None:
    a PNG or JPEG, a TIFF without a usable calibration, or one no longer there to read)."""
    if Path(path).suffix.lower() == ".czi":
        return czi_file_pixel_size_um(Path(path))
    if Path(path).suffix.lower() not in OPTICAL_TIFF_SUFFIXES:
        return None
    import tifffile

    try:
        with _tifffile_log(), tifffile.TiffFile(path) as tif:
            return _tiff_pixel_size_um(tif)[0]
    except (tifffile.TiffFileError, OSError, ValueError, *TIFF_CUT_SHORT):
        return None


UNIFORM_LEVELS = 1 / 255  # every pixel of each colour within one 8-bit level: nothing for any method to follow


def _uniform_warning(path: Path, rgb: np.ndarray) -> str | None:
    """The warning for an optical with nothing to follow (a black or blank export, the wrong file or channel): each
    colour channel's full range within :data:`UNIFORM_LEVELS`; None otherwise. Only a truly flat image: a dim or
    low-contrast one still has edges, and the default method scales its edges by the guide's own percentiles."""
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 1e6)))
    for sample in (rgb[::step, ::step], rgb):  # a sample first: a whole slide is read in full only if it is flat
        if not np.all(np.ptp(sample.reshape(-1, rgb.shape[-1]), axis=0) <= UNIFORM_LEVELS * (1 + 1e-6)):
            return None  # (1 + 1e-6): float rounding of one level
    return (f"{path.name} is uniform (each colour within one 8-bit level): a blank image, or the wrong file or "
            "channel? The fusion has no optical detail to follow and only interpolates the ion image")


TRANSPARENT_SHARE = 0.01  # an optical this much transparent is warned about: its alpha is not applied


def _transparent_warning(path: Path, data: np.ndarray) -> str | None:
    """The warning for an optical with a transparent background (a region exported with its surroundings cut out):
    alpha is dropped, so those pixels read as the colour stored under them, black in most exports, which a
    brightfield guide shows as dense tissue and registration may follow; None under :data:`TRANSPARENT_SHARE`."""
    data = _channels_last(data)
    if data.ndim != 3 or data.shape[2] not in (2, 4):
        return None
    step = max(1, int(np.sqrt(data.shape[0] * data.shape[1] / 1e6)))  # a sample of a million pixels
    sample = data[::step, ::step]
    clear = sample[..., -1] == 0
    share = float(clear.mean())
    if not TRANSPARENT_SHARE <= share < 1:  # alpha 0 everywhere: a padding channel (RGBX), not transparency
        return None
    under = "black" if not np.any(sample[..., :-1][clear]) else "the colours stored under it"
    return (f"{share:.0%} of {path.name} is transparent (alpha 0) and reads as {under}: alpha is not applied; fill "
            "the background with the slide's own colour (white for brightfield) first if it is not tissue")


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


PNG_JPEG_MAX_PIXELS = 2**30  # OpenCV's decoder refuses more (CV_IO_MAX_IMAGE_PIXELS)


def _png_or_jpeg_header(path: Path) -> int:
    """From a PNG's or JPEG's header, read by Pillow without decoding the image: refuse a size OpenCV will not decode
    or this machine cannot hold (:func:`refuse_beyond_memory`), and return its Orientation (EXIF tag 274: a PNG's
    eXIf chunk, where it precedes the image data, or a JPEG's APP1 segment), 1 where it has none or it cannot be read
    (a damaged tag is no reason to refuse the image; the decoder judges the rest)."""
    from PIL import Image as PILImage

    limit, PILImage.MAX_IMAGE_PIXELS = PILImage.MAX_IMAGE_PIXELS, None  # Pillow's guard against decompression bombs
    try:
        with PILImage.open(path) as image:
            cols, rows = image.size
            bands = len(image.getbands())
            if image.format == "PNG":  # its getexif() decodes the whole image where no eXIf chunk precedes the data
                exif = PILImage.Exif()
                exif.load(image.info.get("exif") or b"")
            else:
                exif = image.getexif()
            orientation = exif.get(274, 1)
    except (OSError, ValueError, TypeError, SyntaxError):
        return 1
    finally:
        PILImage.MAX_IMAGE_PIXELS = limit
    if rows * cols > PNG_JPEG_MAX_PIXELS:
        raise InputError(path, f"{rows}×{cols} px is more than the {PNG_JPEG_MAX_PIXELS:,} pixels a PNG or JPEG can be "
                               "decoded with; save it as a (tiled, pyramidal) TIFF")
    refuse_beyond_memory(path, rows, cols, rows * cols * bands * 2, None)  # up to 16 bits a sample
    return int(orientation) if isinstance(orientation, int) else 1


_DAMAGED = ("premature end", "corrupt jpeg", "crc error", "incorrect data check", "read error")


@contextmanager
def c_stderr_captured() -> Iterator[list[str]]:
    """Capture what C libraries print on the process's stderr (file descriptor 2) inside the block: libjpeg's warning
    about a truncated file, libpng's "Write Error". The list yielded holds it, stripped, once the block ends (empty
    where nothing was said, or where there is no stderr to capture)."""
    import os
    import sys
    import tempfile

    said: list[str] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr (closed): nothing to capture
            saved = None
        try:
            if saved is not None:
                os.dup2(sink.fileno(), 2)
            yield said
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                said.append(text)


def _decode_png_or_jpeg(path: Path) -> np.ndarray:
    """OpenCV's decoding, refusing damaged files: libjpeg decodes a truncated JPEG with its missing part grey
    and only prints a warning on the C-level stderr, so that stream is captured while decoding and read.

    Pixels come as stored: a PNG's EXIF orientation is not applied (``IMREAD_UNCHANGED``), nor a JPEG's
    (``IMREAD_IGNORE_ORIENTATION``; OpenCV applies it by default), as in Fiji; a JPEG has no alpha.
    """
    import sys

    import cv2

    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    flags = (cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION if jpeg
             else cv2.IMREAD_UNCHANGED)
    with c_stderr_captured() as said:
        try:
            data = cv2.imread(str(path), flags)
        except cv2.error as exc:  # a limit of its own, beyond the header's checks
            raise InputError(path, f"cannot decode image ({str(exc).strip().splitlines()[-1]})") from None
    said = "\n".join(said)
    damage = next((line for line in said.splitlines() if any(k in line.lower() for k in _DAMAGED)), None)
    if data is None or damage:
        raise InputError(path, f"cannot decode image ({damage or 'corrupt or not really a PNG/JPEG'})")
    if said:
        print(said, file=sys.stderr)  # the decoder's other remarks (e.g. libpng's about a colour profile)
    return data


def _channels_last(data: np.ndarray) -> np.ndarray:
    """A (C, H, W) gray/RGB/RGBA array as (H, W, C); any other array as it is."""
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[0] in (1, 3, 4) and data.shape[-1] not in (1, 2, 3, 4):
        return np.moveaxis(data, 0, -1)
    return data


def rgb_layout(data: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Any gray/RGB/RGBA array (channels first or last) as (H, W, 3), values untouched: channels moved last, alpha
    dropped, gray repeated into three channels; an InputError when it is no such image or under 2 pixels a side."""
    data = _channels_last(data)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[2] not in (1, 2, 3, 4):
        raise InputError(source, f"optical image has shape {data.shape}; expected gray, RGB or RGBA")
    if data.shape[2] in (2, 4):  # drop alpha
        data = data[..., :-1]
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    if min(data.shape[:2]) < 2:
        raise InputError(source, f"optical image is too small ({data.shape[0]}×{data.shape[1]}; at least 2×2 pixels)")
    return data


def torch_ready(data: np.ndarray) -> np.ndarray:
    """The array itself where it is writable and C-contiguous, else a C-ordered copy: torch cannot wrap a read-only
    array (a memory map, a frozen input) or a flipped view."""
    return data if data.flags.writeable and data.flags.c_contiguous else np.array(data, order="C")


CAMERA_BITS = (8, 10, 12, 14)  # depths a 16-bit file may hold fewer of


def _full_scale(data: np.ndarray) -> float:
    """An 8/16-bit image's white: the type's maximum, or for 16 bits the least camera depth's that holds its values."""
    top = float(np.iinfo(data.dtype).max)
    if data.dtype.itemsize == 2:
        peak = int(data.max()) if data.size else 0
        top = next((2.0 ** bits - 1 for bits in CAMERA_BITS if peak <= 2 ** bits - 1), top)
    return top


def optical_to_rgb(data: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Any gray/RGB/RGBA array (channels first or last) → float32 (H, W, 3) in [0, 1].

    Unsigned 8/16-bit integers (and signed ones without negatives) are divided by the type's maximum, a 16-bit one by
    the least camera depth's (8, 10, 12 or 14 bits) that holds its values (a 12-bit camera's image in a 16-bit file
    would otherwise be read 16× too dark: the registered optical.png nearly black); 32/64-bit
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
        rgb /= _full_scale(data)  # in place: one float copy of a large image, not two
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


def read_ion(path: str | Path, what: str = "ion image") -> Image:
    """Read a 2-D ion image in its own intensity units (float32); ``what`` names it in errors (a study's truth is
    read the same way)."""
    path = require_file(Path(path), ION_SUFFIXES, what)
    suffix = path.suffix.lower()
    pixel_size, note, warnings, name = None, None, (), None
    if suffix in (".tif", ".tiff"):
        tiff = _read_tiff(path)
        data, pixel_size, note = tiff.data, tiff.pixel_size_um, tiff.calibration_note
        name = _ion_name(tiff.channel_name)
        warnings = (*tiff.warnings, _orientation_warning(path, tiff.orientation))
    elif suffix == ".npy":
        data = _read_npy(path)
    else:
        data, warning = _read_table(path)
        warnings = (warning,)
    return Image(validate_ion(data, path, what), pixel_size, path, calibration_note=note,
                 warnings=tuple(w for w in warnings if w), name=name)


def _read_npy(path: Path) -> np.ndarray:
    """One array from a .npy file, never unpickled; a file that is no .npy (empty, an ``np.savez`` archive, text) is
    named as such rather than with numpy's advice to allow pickles."""
    magic = np.lib.format.MAGIC_PREFIX
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(magic))
        if not head:
            raise InputError(path, "the .npy file is empty")
        if head.startswith(b"PK\x03\x04"):
            raise InputError(path, "this is an .npz archive (np.savez), not a .npy file: save the one image with "
                                   "np.save")
        if head != magic:
            raise InputError(path, "the .npy file is cut short" if magic.startswith(head) else
                                   "not a NumPy .npy file (it lacks the .npy signature): save the image with np.save")
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        problem = ("it holds Python objects, not numbers (never loaded, for safety): save a numeric array" if
                   "allow_pickle" in str(exc) else f"cannot read .npy ({exc})")
        raise InputError(path, problem) from None


def _ion_name(channel_name: str | None) -> str | None:
    """An ion TIFF's OME channel name where it names an m/z as msifusion writes them (``m/z 1217.5161``; a checkpoint's
    ``, epoch N`` dropped); None for other names ("Channel 1"…), so that the file's name stands."""
    if not channel_name or not channel_name.startswith("m/z "):
        return None
    return re.sub(r", epoch \d+$", "", channel_name).strip()


MAX_ION_VALUE = float(np.finfo(np.float32).max) / 1e6  # room for a fused image's values beyond the ion's peak


def validate_ion(data: np.ndarray, source: str | Path | None = None, what: str = "ion image") -> np.ndarray:
    """Check an ion image (``what``, in errors) is a finite, non-zero, real 2-D array; return it as float32.

    Integers, floats and booleans (a thresholded map: 1 where the ion is, 0 elsewhere) are intensities; complex
    values are refused rather than cut to their real part (the magnitude may be what the user meant), and so are
    time spans, dates, strings and records, which numpy would otherwise cast or fail on.
    """
    data = np.asarray(data)
    if data.ndim > 2:
        data = np.squeeze(data)
    if data.ndim != 2:
        raise InputError(source, f"{what} must be 2-D, got shape {data.shape}")
    require_real(data, source, what)
    if min(data.shape) < 2:
        raise InputError(source, f"{what} is too small ({data.shape[0]}×{data.shape[1]}; at least 2×2 pixels)")
    bad = ~np.isfinite(data)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(source, f"{what} has {int(bad.sum())} NaN/inf pixel(s), the first at row {row}, column {col} "
                                 "of the image (0-based); fill them (e.g. with 0) first")
    peak = float(np.max(np.abs(data)))
    if peak > MAX_ION_VALUE:
        largest = float(np.finfo(np.float32).max)
        where = "beyond float32's range" if peak > largest else f"too near float32's largest ({largest:.3g})"
        raise InputError(source, f"{what} values reach {peak:.3g}, {where}: the fused image, whose values can exceed "
                                 "the ion's, would overflow; divide by a constant first")
    data = data.astype(np.float32)
    if not np.any(data):
        raise InputError(source, f"{what} is all zero")
    return data
