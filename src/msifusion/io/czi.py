"""Zeiss CZI microscope images (ZEN's slide scans and micrographs), read with Zeiss's own libCZI (pylibCZIrw, the
optional ``czi`` extra: ``pip install 'msifusion[czi]'``).

A CZI holds subblocks placed in a stage frame; one scene (a scanned region) is read whole, from its top-left corner,
as Bio-Formats shows it. Its pixel size is the metadata's ``Scaling/Items/Distance`` for X and Y, in metres as the
format states it. A slide read for a coarser fused grid is averaged down by a whole factor, band by band, so that the
full resolution is never held at once: libCZI's own zoom picks its pixels by nearest neighbour, which aliases the
stain's texture the fusion follows. :func:`msifusion.io.images.read_optical` reads CZIs through :func:`read_czi`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from msifusion.errors import InputError
from msifusion.io.tiff import EXPORT_AS_OME_TIFF
from msifusion.io.units import unusable_pixel_size
from msifusion.runtime import refuse_beyond_memory

INSTALL_HINT = f"reading it needs pylibCZIrw (pip install 'msifusion[czi]'), or {EXPORT_AS_OME_TIFF}"
BAND_BYTES = 64 * 2**20  # full-resolution pixels decoded at once when averaging down
METRES_TO_UM = 1e6
AVERAGED_WAY_ROUND = ("a CZI: `register` and `fuse --imzml` read it averaged down to the fused grid's pixel size, "
                      "where its pixel size is known or given with --optical-pixel-size, and so is the ion's")


@dataclass(frozen=True)
class CziRead:
    """What :func:`read_czi` found: pixels (rows, cols, 3) BGR turned RGB, or (rows, cols) grey, in the file's type;
    their pixel size (µm; None when unknown) and why a stated one was not used; the first pixel's shift from the full
    resolution's in µm; full-resolution pixels per pixel read; the full resolution's (rows, cols)."""

    data: np.ndarray
    pixel_size_um: float | None
    calibration_note: str | None
    shift_um: float
    downsample: int
    full_shape: tuple[int, int]


def read_czi(path: Path, coarsest_um: float | None = None, stated_um: float | None = None) -> CziRead:
    """A CZI's one scene, one plane: RGB (``Bgr24``/``Bgr48``) or grey with one channel. ``stated_um``: the full
    resolution's pixel size in place of the file's (``--optical-pixel-size``). With ``coarsest_um`` and a known pixel
    size, averaged down by the largest whole factor whose pixel is at most that size (as a pyramid level of a TIFF is
    read). Several scenes, channels, focal planes or time points are refused, with what the file holds."""
    try:
        from pylibCZIrw import czi as pyczi
    except ImportError:
        raise InputError(path, f"a Zeiss CZI file: {INSTALL_HINT}") from None
    try:
        with pyczi.open_czi(str(path)) as czi:
            box = _one_plane(path, czi)
            pixel_size, note = (stated_um, None) if stated_um is not None else czi_pixel_size_um(czi.metadata)
            factor = 1
            if coarsest_um is not None and pixel_size is not None:
                factor = math.floor(coarsest_um / pixel_size * (1 + 1e-6))
                factor = max(1, min(factor, box.h // 2, box.w // 2))  # at least 2×2 pixels, as any optical
            data = _averaged(path, czi, box, factor, _pixel_type(path, czi),
                             whole=factor == 1 and (coarsest_um is None or pixel_size is None))
    except RuntimeError as exc:  # libCZI's word for a file it cannot parse or read to the end
        raise InputError(path, f"cannot read CZI: it is truncated or damaged ({exc})") from None
    data = data[..., ::-1] if data.shape[-1] == 3 else data[..., 0]  # libCZI gives colour in memory order B, G, R
    if pixel_size is None:
        return CziRead(np.ascontiguousarray(data), None, note, 0.0, factor, (box.h, box.w))
    return CziRead(np.ascontiguousarray(data), pixel_size * factor, note, pixel_size * (factor - 1) / 2, factor,
                   (box.h, box.w))


def czi_file_pixel_size_um(path: Path) -> float | None:
    """The full resolution's pixel size a CZI's metadata states (None: none usable, no pylibCZIrw, or unreadable)."""
    try:
        from pylibCZIrw import czi as pyczi

        with pyczi.open_czi(str(path)) as czi:
            return czi_pixel_size_um(czi.metadata)[0]
    except (ImportError, RuntimeError):
        return None


def czi_pixel_size_um(metadata: dict) -> tuple[float | None, str | None]:
    """The pixel size a CZI's metadata states (``Scaling/Items/Distance`` X and Y, in metres), in µm, and why a
    stated one is not used (see :func:`msifusion.io.units.unusable_pixel_size`); (None, None) where it states none
    (ZEN writes 0 for an uncalibrated image)."""
    scaling = ((metadata.get("ImageDocument") or {}).get("Metadata") or {}).get("Scaling") or {}
    distances = (scaling.get("Items") or {}).get("Distance") or []
    distances = distances if isinstance(distances, list) else [distances]
    values = {d.get("@Id"): d.get("Value") for d in distances if isinstance(d, dict)}
    sizes = {}
    for axis in ("X", "Y"):
        try:
            sizes[axis] = float(values.get(axis)) * METRES_TO_UM
        except (TypeError, ValueError):
            if values.get(axis) is not None:
                return None, f"its CZI scaling {axis} {values[axis]!r} is not a number"
            sizes[axis] = 0.0
    if sizes["X"] == 0.0:
        return None, None
    note = unusable_pixel_size(sizes["X"], sizes["Y"] or None)
    return (None, note) if note else (sizes["X"], None)


def _one_plane(path: Path, czi):
    """The bounding rectangle of a CZI that holds one image; an InputError naming what else it holds."""
    scenes = czi.scenes_bounding_rectangle
    if len(scenes) > 1:
        sizes = ", ".join(f"{r.w}×{r.h}" for r in list(scenes.values())[:4]) + (", …" if len(scenes) > 4 else "")
        raise InputError(path, f"holds {len(scenes)} scenes ({sizes} px), not one image; export the scene that holds "
                               "the section as an OME-TIFF (Fiji: Bio-Formats opens each scene as a series)")
    extents = {axis: hi - lo for axis, (lo, hi) in czi.total_bounding_box.items() if axis not in "XY"}
    stacked = {axis: n for axis, n in extents.items() if n > 1}
    if stacked:
        what = {"C": "channels", "Z": "focal planes", "T": "time points"}
        held = ", ".join(f"{n} {what.get(axis, axis + ' indices')}" for axis, n in stacked.items())
        raise InputError(path, f"holds {held}, not one image; save the plane to use as RGB or greyscale")
    box = next(iter(scenes.values())) if scenes else czi.total_bounding_rectangle
    if box.w < 1 or box.h < 1:
        raise InputError(path, "holds no image (no pixel data)")
    return box


PIXEL_TYPES = {"Gray8": np.uint8, "Gray16": np.uint16, "Gray32Float": np.float32, "Bgr24": np.uint8,
               "Bgr48": np.uint16, "Bgr96Float": np.float32}  # what libCZI reads out; not its complex types


def _pixel_type(path: Path, czi) -> str:
    """The image's libCZI pixel type; an InputError for one that is no microscope image (complex values)."""
    pixel_type = czi.pixel_types.get(0)
    if pixel_type not in PIXEL_TYPES:
        raise InputError(path, f"its pixel type {pixel_type} is not a grey or colour image msifusion reads "
                               f"({', '.join(PIXEL_TYPES)})")
    return pixel_type


def _averaged(path: Path, czi, box, factor: int, pixel_type: str, whole: bool) -> np.ndarray:
    """The rectangle's pixels, each ``factor``×``factor`` block averaged into one (OpenCV's area resampling, which at a
    whole factor is the block mean, rounded back to the file's type as a scanner's pyramid level is stored), read in
    bands of about :data:`BAND_BYTES`; the last partial block's rows and columns are left out, as a pyramid level's
    size is the full one divided down. ``whole``: no coarser pixel was asked for (a refusal for memory then names the
    commands that ask)."""
    channels, dtype = (3 if pixel_type.startswith("Bgr") else 1), np.dtype(PIXEL_TYPES[pixel_type])
    rows, cols = box.h // factor, box.w // factor
    refuse_beyond_memory(path, rows, cols, rows * cols * channels * dtype.itemsize,
                         AVERAGED_WAY_ROUND if whole else None)
    empty = (1.0, 1.0, 1.0) if channels == 3 else (0.0, 0.0, 0.0)  # between tiles: glass (bright field), dark (grey)
    if factor == 1:
        return czi.read(roi=(box.x, box.y, box.w, box.h), background_pixel=empty)
    out = np.empty((rows, cols, channels), dtype)
    band = max(1, BAND_BYTES // (factor * factor * cols * channels * dtype.itemsize))  # output rows per band
    for top in range(0, rows, band):
        n = min(band, rows - top)
        pixels = czi.read(roi=(box.x, box.y + top * factor, cols * factor, n * factor), background_pixel=empty)
        out[top:top + n] = cv2.resize(pixels, (cols, n), interpolation=cv2.INTER_AREA).reshape(n, cols, channels)
    return out
