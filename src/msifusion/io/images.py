"""Reading optical and ion images, writing calibrated TIFF / OME-TIFF.

An :class:`Image` carries its pixels and, when known, its physical pixel size in µm, so the
calibration travels from the instrument file to every output.

Accepted inputs
---------------
Optical: PNG, JPEG, TIFF (incl. OME-TIFF, LZW via imagecodecs); 8-bit, 16-bit or float;
grayscale, RGB or RGBA (alpha is dropped). Pixels become float32 RGB in [0, 1]: integer
images are divided by their type's maximum, float images are min-max scaled unless already
in [0, 1].

Ion: a 2-D TIFF, a 2-D ``.npy``, or a CSV / TSV / whitespace text file holding either a plain
numeric matrix (row = y, column = x; as Cardinal/shinyCardinal or ``numpy.savetxt`` write it,
an optional header row and row-label column are skipped) or a long table with a header
naming ``x``, ``y`` and one intensity column (pixels absent from the table are 0, as for an
off-tissue pixel without a spectrum; the grid starts at 0 for 0-based coordinates, else at 1,
never at the smallest coordinate present). NaN or inf in an ion image is an error: the fusion
has no way to know what the user meant by them, so we ask the user to fill them.
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import re
import uuid
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
        raise InputError(path, f"unsupported {what} format {path.suffix or '(none)'}; use one of {', '.join(suffixes)}")
    return path


# ----------------------------------------------------------------------------- TIFF


def _tiff_pixel_size_um(tif) -> float | None:
    """Pixel size from OME PhysicalSizeX, else ImageJ/TIFF resolution tags; None if uncalibrated."""
    ome = tif.ome_metadata
    if ome:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
            factor = _unit_to_um(unit.group(1)) if unit else 1.0  # OME's default unit is µm
            return float(m.group(1)) * (factor if factor is not None else 1.0)
    page = tif.pages.first
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    if num == 0 or den == 0:
        return None
    per_unit = num / den  # pixels per unit
    ij_unit = (tif.imagej_metadata or {}).get("unit")
    if ij_unit:
        factor = _unit_to_um(ij_unit)
        if factor is None:  # 'pixel', 'inch'… : not a physical calibration we can use
            return None
        return factor / per_unit
    res_unit = page.tags.get("ResolutionUnit")
    code = int(res_unit.value) if res_unit is not None else 2
    if code == 3:  # centimetre
        return 1e4 / per_unit
    if code == 2 and per_unit > 1000:  # inch; typical screen dpi (72, 96, 300) is no calibration
        return 25400.0 / per_unit
    return None


_UNITS_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "\\u00B5m": 1.0,
             "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _unit_to_um(unit: str) -> float | None:
    """µm per ``unit`` (µm, um, micron, nm, mm, cm, m); None for anything else."""
    return _UNITS_UM.get(unit.strip().replace("μ", "µ"))


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    import logging

    import tifffile

    logging.getLogger("tifffile").setLevel(logging.ERROR)  # its warnings about odd OME layouts are not the user's concern
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].levels[0].asarray()
            return data, _tiff_pixel_size_um(tif)
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError) as exc:
        raise InputError(path, f"cannot read TIFF ({exc})") from None


# ----------------------------------------------------------------------------- optical


def read_optical(path: str | Path) -> Image:
    """Read a microscope image as float32 RGB in [0, 1], with its pixel size when the file has one."""
    path = _require_file(Path(path), OPTICAL_SUFFIXES, "optical image")
    if path.suffix.lower() in (".tif", ".tiff"):
        data, pixel_size = _read_tiff(path)
    else:
        data = _decode_png_or_jpeg(path)
        if data.ndim == 3:
            data = data[..., [2, 1, 0, 3][: data.shape[2]]] if data.shape[2] in (3, 4) else data
        pixel_size = None
    return Image(optical_to_rgb(data, path), pixel_size, path)


_DAMAGED = ("premature end", "corrupt jpeg", "crc error", "incorrect data check", "read error")


def _decode_png_or_jpeg(path: Path) -> np.ndarray:
    """OpenCV's decoding, refusing damaged files: libjpeg decodes a truncated JPEG with its missing part grey
    and only prints a warning on the C-level stderr, so that stream is captured while decoding and read."""
    import os
    import sys
    import tempfile

    import cv2

    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr (closed): nothing to capture
            saved = None
        try:
            if saved is not None:
                os.dup2(sink.fileno(), 2)
            data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
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


def optical_to_rgb(data: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Any gray/RGB/RGBA array (channels first or last) → float32 (H, W, 3) in [0, 1]."""
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[0] in (1, 3, 4) and data.shape[-1] not in (1, 3, 4):
        data = np.moveaxis(data, 0, -1)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[2] not in (1, 2, 3, 4):
        raise InputError(source, f"optical image has shape {data.shape}; expected gray, RGB or RGBA")
    if data.shape[2] in (2, 4):  # drop alpha
        data = data[..., :-1]
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    if data.dtype == bool:
        rgb = data.astype(np.float32)
    elif np.issubdtype(data.dtype, np.integer):
        rgb = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    else:
        rgb = data.astype(np.float32)
        if not np.all(np.isfinite(rgb)):
            raise InputError(source, "optical image contains NaN or inf")
        lo, hi = float(rgb.min()), float(rgb.max())
        if lo < 0.0 or hi > 1.0:
            rgb = (rgb - lo) / (hi - lo) if hi > lo else np.zeros_like(rgb)
    if min(rgb.shape[:2]) < 2:
        raise InputError(source, f"optical image is too small ({rgb.shape[0]}×{rgb.shape[1]})")
    return np.ascontiguousarray(rgb, dtype=np.float32)


# ----------------------------------------------------------------------------- ion


def read_ion(path: str | Path) -> Image:
    """Read a 2-D ion image in its own intensity units (float32)."""
    path = _require_file(Path(path), ION_SUFFIXES, "ion image")
    suffix = path.suffix.lower()
    pixel_size = None
    if suffix in (".tif", ".tiff"):
        data, pixel_size = _read_tiff(path)
    elif suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(path, f"cannot read .npy ({exc})") from None
    else:
        data = _read_table(path)
    return Image(validate_ion(data, path), pixel_size, path)


def validate_ion(data: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Check an ion image is a finite, non-zero 2-D array; return it as float32."""
    data = np.asarray(data)
    if data.ndim > 2:
        data = np.squeeze(data)
    if data.ndim != 2:
        raise InputError(source, f"ion image must be 2-D, got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise InputError(source, f"ion image has non-numeric type {data.dtype}")
    if min(data.shape) < 2:
        raise InputError(source, f"ion image is too small ({data.shape[0]}×{data.shape[1]})")
    data = data.astype(np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(source, f"ion image has {int(bad.sum())} NaN/inf pixel(s); fill them (e.g. with 0) first")
    if not np.any(data):
        raise InputError(source, "ion image is all zero; nothing to fuse")
    return data


_NA = {"", "na", "nan", "null", "none", "-nan"}


def _to_float(token: str) -> float | None:
    token = token.strip().strip('"').strip()
    if token.lower() in _NA:
        return float("nan")
    try:
        return float(token)
    except ValueError:
        return None


def _is_header(row: list[str]) -> bool:
    """A first row of names: a non-numeric cell, or an empty corner above row names followed by names or by the
    column numbers 0…n−1 / 1…n (R's ``write.csv``, pandas' ``to_csv``). An empty corner before numbers that do not
    count columns stays data (a missing value, refused as NaN)."""
    values = [_to_float(t) for t in row]
    if row[0].strip().strip('"') == "" and len(row) > 1:
        rest = values[1:]
        return any(v is None for v in rest) or rest in (list(range(len(rest))), list(range(1, len(rest) + 1)))
    return any(v is None for v in values)


def _read_table(path: Path) -> np.ndarray:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(path, f"cannot read text table ({exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(path, "table is empty")
    sample = "\n".join(lines[:20])
    delimiter = None
    for cand in (",", "\t", ";"):
        if cand in sample:
            delimiter = cand
            break
    if delimiter is None:
        rows = [ln.split() for ln in lines]
    else:
        rows = list(csv.reader(_io.StringIO("\n".join(lines)), delimiter=delimiter))
    header = None
    if _is_header(rows[0]):
        header, rows = [t.strip().strip('"').lower() for t in rows[0]], rows[1:]
    if not rows:
        raise InputError(path, "table has a header but no data rows")
    if header is not None and "x" in header and "y" in header and len(header) >= 3:
        return _pivot_long_table(path, header, rows)
    # Plain matrix. A first column that is non-numeric, or headed by an empty name (R's
    # write.csv row names), holds row labels.
    if (header is not None and header[0] == "") or all(_to_float(r[0]) is None for r in rows if r):
        rows = [r[1:] for r in rows]
    width = len(rows[0])
    values = []
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(path, f"row {i + 1} has {len(row)} values, expected {width}")
        parsed = [_to_float(t) for t in row]
        if any(v is None for v in parsed):
            bad = next(t for t, v in zip(row, parsed) if v is None)
            raise InputError(path, f"non-numeric value {bad!r} in row {i + 1}")
        values.append(parsed)
    return np.asarray(values, dtype=np.float64)


def _pivot_long_table(path: Path, header: list[str], rows: list[list[str]]) -> np.ndarray:
    """A long table (x, y, intensity) as an image: row = y, column = x; absent pixels are 0.

    The grid's origin is fixed, not taken from the pixels present, so that dropped off-tissue
    rows and columns neither shift nor shrink the image: when the smallest x or y present is 0
    the coordinates are 0-based (origin 0), otherwise they are read as 1-based (origin 1, as
    imzML and R number pixels), even when the smallest present coordinate is larger than 1.
    The image reaches the largest x and y present. Negative coordinates are an error.
    """
    ix, iy = header.index("x"), header.index("y")
    others = [i for i in range(len(header)) if i not in (ix, iy) and header[i] not in ("", "unnamed: 0")]
    if len(others) != 1:
        names = ", ".join(header[i] for i in others) or "none"
        raise InputError(path, f"long table needs exactly one intensity column beside x and y, found: {names}")
    iv = others[0]
    try:
        arr = np.array([[float(r[ix]), float(r[iy]), float(_to_float(r[iv]))] for r in rows])
    except (ValueError, TypeError, IndexError):
        raise InputError(path, "long table has a non-numeric x, y or intensity value") from None
    if not np.allclose(arr[:, :2], np.round(arr[:, :2])):
        raise InputError(path, "x and y columns must hold integer pixel coordinates")
    xy = np.round(arr[:, :2]).astype(int)
    if xy.min() < 0:
        raise InputError(path, f"negative pixel coordinate {xy.min()} in the x/y columns")
    x, y = (xy - (0 if xy.min() == 0 else 1)).T
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
    """Write float32 OME-TIFF: (H, W) or a (C, H, W) stack with channel names.

    Carries the pixel size as OME ``PhysicalSizeX/Y`` (µm) and as TIFF resolution tags in
    centimetres, so Bio-Formats and ImageJ's own opener both show the calibration.
    """
    data = np.asarray(data, dtype=np.float32)
    metadata: dict = {"axes": "YX" if data.ndim == 2 else "CYX"}
    if channel_names is not None:
        if data.ndim != 3 or len(channel_names) != data.shape[0]:
            raise ValueError("channel_names needs a (C, H, W) stack with one name per channel")
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
