"""Zeiss CZI microscope images (ZEN's slide scans and micrographs), read with Zeiss's own libCZI (pylibCZIrw, the
optional ``czi`` extra: ``pip install 'msifusion[czi]'``).

A CZI holds subblocks (tiles) placed in a stage frame, with a pyramid of smaller copies beside them. The layout is
taken from the full-resolution subblocks' headers alone: one scene (of a slide's several, the one asked for), one
focal plane and time point, one channel or a grey image's several (a fluorescence image's, composed into one colour
image by :mod:`msifusion.io.channels`), read from its top-left corner as Bio-Formats shows it. Its pixel size is
the metadata's ``Scaling/Items/Distance`` for X and Y, in metres as the format states it. A slide read for a coarser
fused grid is averaged down by a whole factor, band by band, so that the full resolution is never held at once:
libCZI's own zoom picks its pixels by nearest neighbour, which aliases the stain's texture the fusion follows.
:func:`msifusion.io.images.read_optical` reads CZIs through :func:`read_czi`.

A file whose subblock directory is damaged can crash libCZI itself (a segmentation fault, found by a review with a
hand-damaged file), before any check here can run.
"""

from __future__ import annotations

import contextlib
import html
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from msifusion.errors import InputError
from msifusion.io.channels import WORKING_BYTES_PER_PIXEL, composite, composite_note
from msifusion.io.tiff import EXPORT_AS_OME_TIFF, ONE_IMAGE_AS_OME_TIFF, ONE_PLANE_AS_OME_TIFF, STACK_AXES, FileRead
from msifusion.io.units import unusable_pixel_size
from msifusion.runtime import refuse_beyond_memory

INSTALL_HINT = f"reading it needs pylibCZIrw (pip install 'msifusion[czi]'), or {EXPORT_AS_OME_TIFF}"
MAGIC = b"ZISRAWFILE"  # the first segment's id: every CZI begins with it
PIXEL_TYPES = {"Gray8": np.uint8, "Gray16": np.uint16, "Gray32Float": np.float32, "Bgr24": np.uint8,
               "Bgr48": np.uint16, "Bgr96Float": np.float32}  # what libCZI reads out; not its complex types
BAND_BYTES = 64 * 2**20  # full-resolution pixels decoded at once when averaging down (at least a row of tiles)
METRES_TO_UM = 1e6
AVERAGED_WAY_ROUND = ("a CZI: `register` and `fuse --imzml` read it averaged down to the fused grid's pixel size, "
                      "where its pixel size is known or given with --optical-pixel-size, and so is the ion's")


@dataclass(frozen=True)
class _Layout:
    """A CZI's one image, from its full-resolution subblocks' headers: the rectangle (x, y, width, height) in the
    stage frame, the plane's coordinates, the pixel type, and the tallest subblock's rows."""

    rect: tuple[int, int, int, int]
    plane: dict[str, int]
    pixel_type: str
    tile_rows: int
    channels: tuple[int, ...] = ()  # a grey image's several channels (fluorescence): their C indices, composed


def read_czi(path: Path, coarsest_um: float | None = None, stated_um: float | None = None,
             scene: int | None = None) -> FileRead:
    """A CZI's one image: RGB (``Bgr24``/``Bgr48``) or grey. ``stated_um``: the full resolution's pixel size in place
    of the file's (``--optical-pixel-size``). With ``coarsest_um`` and a known pixel size, averaged down by the largest
    whole factor whose pixel is at most that size (as a pyramid level of a TIFF is read). ``scene``: which scene to
    read, numbered from 1 as ZEN shows them (``--optical-scene``; needed where the file holds several). A grey image's
    several channels (fluorescence) are read one by one and composed into one colour image
    (:func:`msifusion.io.channels.composite`, with a note among the warnings); several focal planes or time points are
    refused, with what the file holds."""
    with _opened(path) as czi:
        layout = _layout(path, czi, scene)
        metadata = czi.raw_metadata
        pixel_size, note = (stated_um, None) if stated_um is not None else czi_pixel_size_um(metadata)
        _, _, width, height = layout.rect
        factor = 1
        if coarsest_um is not None and pixel_size is not None:
            factor = math.floor(coarsest_um / pixel_size * (1 + 1e-6))
            factor = max(1, min(factor, height // 2, width // 2))  # at least 2×2 pixels, as any optical
        whole = factor == 1 and (coarsest_um is None or pixel_size is None)
        empty = _empty_colour(layout.pixel_type, metadata)
        planes = [{**layout.plane, "C": c} for c in layout.channels] or [layout.plane]
        layers = [_averaged(path, czi, layout, factor, empty, whole, plane, len(planes)) for plane in planes]
    composed = ()
    if len(layers) > 1:
        greys = [layer[..., 0] for layer in layers]
        data, composed = composite(greys, path), (composite_note(path.name, greys, _czi_channel_names(metadata)),)
    elif (data := layers[0]).shape[-1] == 3:
        cv2.cvtColor(data, cv2.COLOR_BGR2RGB, dst=data)  # libCZI gives colour in memory order B, G, R; in place
    else:
        data = data[..., 0]
    full_shape = (height, width) if factor > 1 else None
    size, shift = (pixel_size * factor, pixel_size * (factor - 1) / 2) if pixel_size is not None else (None, 0.0)
    return FileRead(data, size, shift, note, 1, downsample=float(factor), full_shape=full_shape, warnings=composed,
                    channels=len(layers) if composed else 0)


def _czi_channel_names(metadata: str) -> list[str]:
    """The channels' names as ZEN's metadata lists them (``Information/Image/Dimensions/Channels``), in order."""
    image = re.search(r"<Information>.*?<Image>(.*?)</Image>", metadata, re.S)
    dimensions = re.search(r"<Dimensions>.*?<Channels>(.*?)</Channels>.*?</Dimensions>",
                           image.group(1) if image else "", re.S)
    found = re.findall(r'<Channel\b[^>]*\bName="([^"]*)"', dimensions.group(1)) if dimensions else []
    return [html.unescape(name) for name in found]


def check_czi(path: Path, scene: int | None = None) -> None:
    """Refuse, from its headers alone (no pixels decoded), a CZI that :func:`read_czi` would refuse for what it holds
    (several scenes and none chosen, a scene it lacks, several planes; no image; a pixel type it cannot
    read), for no pylibCZIrw, or as damaged: a command checks this before minutes of other work."""
    with _opened(path) as czi:
        _layout(path, czi, scene)


def czi_file_pixel_size_um(path: Path) -> float | None:
    """The full resolution's pixel size a CZI's metadata states (None: none usable, no pylibCZIrw, or unreadable)."""
    try:
        with _opened(path) as czi:
            return czi_pixel_size_um(czi.raw_metadata)[0]
    except InputError:
        return None


def czi_pixel_size_um(metadata: str) -> tuple[float | None, str | None]:
    """The pixel size a CZI's metadata XML states (``Scaling/Items/Distance`` X and Y, in metres), in µm, and why a
    stated one is not used (see :func:`msifusion.io.units.unusable_pixel_size`); (None, None) where it states none
    (ZEN writes 0 for an uncalibrated image). Found by pattern, not parsed: ZEN's XML can carry characters that XML
    forbids, which a parser refuses."""
    scaling = re.search(r"<Scaling\b.*?</Scaling>", metadata, re.S)
    sizes = {}
    items = scaling.group(0) if scaling else ""
    for axis in ("X", "Y"):
        distance = re.search(rf'<Distance\s+Id="{axis}"\s*>(.*?)</Distance>', items, re.S)
        value = re.search(r"<Value>([^<]*)</Value>", distance.group(1)) if distance else None
        if value is None:
            sizes[axis] = 0.0
            continue
        try:
            sizes[axis] = float(value.group(1)) * METRES_TO_UM
        except ValueError:
            sizes[axis] = math.nan
        if not math.isfinite(sizes[axis]):
            return None, f"its CZI scaling {axis} {value.group(1).strip()!r} is not a number"
    if sizes["X"] == 0.0:
        return None, None
    width, height = (float(f"{sizes[axis]:.12g}") for axis in ("X", "Y"))  # metres' rounding: 0.22, not 0.2200…03
    note = unusable_pixel_size(width, height or None)
    return (None, note) if note else (width, None)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator:
    """pylibCZIrw's reader of a CZI, open; libCZI's errors on a file it cannot parse or read to the end, and the
    file being no CZI or pylibCZIrw missing, as one-line errors."""
    pyczi = _pylibczirw(path)
    try:
        with pyczi.open_czi(str(path)) as czi:
            yield czi
    except (RuntimeError, ValueError) as exc:
        raise InputError(path, f"cannot read CZI: it is truncated or damaged ({exc})") from None


def _pylibczirw(path: Path):
    """pylibCZIrw's reader module, where the file is a CZI at all; one-line errors for neither."""
    try:
        with open(path, "rb") as file:
            begins = file.read(len(MAGIC))
    except OSError as exc:
        raise InputError(path, f"cannot read CZI ({exc.strerror or exc})") from None
    if begins != MAGIC:
        raise InputError(path, "is not a CZI file (it does not begin as one)")
    try:
        from pylibCZIrw import czi as pyczi
    except ImportError:
        raise InputError(path, f"a Zeiss CZI file: {INSTALL_HINT}") from None
    return pyczi


def _layout(path: Path, czi, scene: int | None) -> _Layout:
    """The one image a CZI holds, or its ``scene`` (numbered from 1), from its full-resolution subblocks' headers
    (pyramid subblocks are stored smaller than the area they cover, and may reach past the image); an InputError
    naming what else it holds."""
    blocks = []
    czi.enumerate_subblocks(lambda _, info: blocks.append(info) or True)
    full = [b for b in blocks if math.isclose(b.get_zoom(), 1.0, rel_tol=1e-6)]
    if not full:
        raise InputError(path, "holds no image (no pixel data)")
    coordinates = [b.coordinate.to_dict() for b in full]
    scenes = sorted({c.get("S", 0) for c in coordinates})
    if scene is not None:
        if scene - 1 not in scenes:
            raise InputError("--optical-scene", f"{path.name} has no scene {scene}; its scenes are "
                                                f"{_scene_sizes(full, coordinates, scenes)}")
        full, coordinates = zip(*[(b, c) for b, c in zip(full, coordinates) if c.get("S", 0) == scene - 1])
    elif len(scenes) > 1:
        raise InputError(path, f"holds {len(scenes)} scenes ({_scene_sizes(full, coordinates, scenes)}), not one "
                               "image; choose the one that holds the section with --optical-scene N, numbered from 1 "
                               "as ZEN and Fiji's Bio-Formats series list show them")
    axes = sorted({axis for c in coordinates for axis in c} - {"S"})
    held = {axis: sorted({c.get(axis) for c in coordinates} - {None}) for axis in axes}  # a block without it: index 0
    pixel_type = full[0].pixelType.name
    # grey channels (fluorescence) are composed into one colour image (each read in the first's type: libCZI converts,
    # and each is stretched to its own range); a colour image among them, or planes, are not
    grey = not any(b.pixelType.name.startswith("Bgr") for b in full)
    channels = tuple(held.get("C", ())) if len(held.get("C", ())) > 1 and grey else ()
    stacked = [f"{len(v)} {STACK_AXES.get(axis, axis + ' indices')}" for axis, v in held.items()
               if len(v) > 1 and not (axis == "C" and channels)]
    if stacked:
        hint = ONE_PLANE_AS_OME_TIFF if channels else ONE_IMAGE_AS_OME_TIFF  # a plane's channels are read together
        raise InputError(path, f"holds {', '.join(stacked)}, not one image; {hint}")
    if pixel_type not in PIXEL_TYPES:
        raise InputError(path, f"its pixel type {pixel_type} is not a grey or colour image msifusion reads "
                               f"({', '.join(PIXEL_TYPES)})")
    return _Layout(_union(full), {axis: coordinates[0][axis] for axis in axes}, pixel_type,
                   max(b.logicalRect.h for b in full), channels)


def _scene_sizes(blocks, coordinates, scenes: list[int]) -> str:
    """Each scene's number (from 1) and size, rows×columns: "1: 600×800 px, 2: 580×790 px"."""
    sizes = []
    for scene in scenes[:6]:
        _, _, width, height = _union([b for b, c in zip(blocks, coordinates) if c.get("S", 0) == scene])
        sizes.append(f"{scene + 1}: {height}×{width} px")
    return ", ".join(sizes) + (", …" if len(scenes) > 6 else "")


def _union(blocks) -> tuple[int, int, int, int]:
    """The rectangle (x, y, width, height) the subblocks cover together."""
    x0, y0 = min(b.logicalRect.x for b in blocks), min(b.logicalRect.y for b in blocks)
    x1 = max(b.logicalRect.x + b.logicalRect.w for b in blocks)
    y1 = max(b.logicalRect.y + b.logicalRect.h for b in blocks)
    return x0, y0, x1 - x0, y1 - y0


def _empty_colour(pixel_type: str, metadata: str) -> tuple[float, float, float]:
    """What libCZI fills between a scan's tiles with (a fraction of the type's range): white, the glass of a bright
    field, for colour, at the camera's depth for 16-bit colour (``ComponentBitCount``; a 12-bit camera's white at
    65535 would make the whole image read 16× too dark), black where that is not stated and for grey (fluorescence's
    dark; a grey bright-field image then shows its gaps black)."""
    if not pixel_type.startswith("Bgr"):
        return 0.0, 0.0, 0.0
    if pixel_type != "Bgr48":
        return 1.0, 1.0, 1.0
    bits = re.search(r"<ComponentBitCount>\s*(\d+)\s*</ComponentBitCount>", metadata)
    if bits is None or not 8 <= int(bits.group(1)) <= 16:
        return 0.0, 0.0, 0.0
    white = (2 ** int(bits.group(1)) - 1) / 65535
    return white, white, white


def _averaged(path: Path, czi, layout: _Layout, factor: int, empty: tuple[float, float, float],
              whole: bool, plane: dict[str, int], layers: int = 1) -> np.ndarray:
    """The image's pixels (rows, cols, channels), each ``factor``×``factor`` block averaged into one (OpenCV's area
    resampling, which at a whole factor is the block mean, rounded back to the file's type as a scanner's pyramid level
    is stored), read in bands of about :data:`BAND_BYTES` and at least a subblock tall (so that each tile is decoded at
    most twice); the last partial block's rows and columns are left out, as a pyramid level's size is the full one
    divided down. ``empty``: the colour between tiles. ``whole``: no coarser pixel was asked for (a refusal for memory
    then names the commands that ask). ``plane``: the image's coordinates (one channel's of ``layers`` read alike,
    which the memory check counts)."""
    x, y, width, height = layout.rect
    channels, dtype = (3 if layout.pixel_type.startswith("Bgr") else 1), np.dtype(PIXEL_TYPES[layout.pixel_type])
    rows, cols = height // factor, width // factor
    band = max(BAND_BYTES // (factor * factor * cols * channels * dtype.itemsize), -(-layout.tile_rows // factor), 1)
    band_bytes = min(band, rows) * factor * cols * factor * channels * dtype.itemsize if factor > 1 else 0
    composing = WORKING_BYTES_PER_PIXEL * rows * cols if layers > 1 else 0
    refuse_beyond_memory(path, rows, cols, layers * rows * cols * channels * dtype.itemsize + band_bytes + composing,
                         AVERAGED_WAY_ROUND if whole else None)  # a tall band of a wide slide's tiles counts too

    def read(top: int, n_rows: int, n_cols: int) -> np.ndarray:
        pixels = czi.read(roi=(x, y + top, n_cols, n_rows), plane=plane, pixel_type=layout.pixel_type,
                          background_pixel=empty)
        return pixels.reshape(n_rows, n_cols, channels)

    if factor == 1:
        return read(0, height, width)
    out = np.empty((rows, cols, channels), dtype)
    for top in range(0, rows, band):
        n = min(band, rows - top)
        pixels = read(top * factor, n * factor, cols * factor)
        out[top:top + n] = cv2.resize(pixels, (cols, n), interpolation=cv2.INTER_AREA).reshape(n, cols, channels)
    return out
