"""Shared fixtures: small synthetic registered pairs made on the fly, and writers of imzML and pyramid files."""

from __future__ import annotations

import random
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch


@pytest.fixture
def small_pair() -> tuple[np.ndarray, np.ndarray, int]:
    """A guide (32×48 RGB) whose two regions match a measured 8×12 ion image at ×4."""
    rng = np.random.default_rng(1)
    scale = 4
    fine = np.zeros((32, 48), np.float32)
    yy, xx = np.mgrid[:32, :48]
    fine[(yy - 15) ** 2 + (xx - 22) ** 2 < 120] = 1.0
    guide = np.stack([0.8 - 0.5 * fine, 0.7 - 0.3 * fine, 0.6 + 0.2 * fine], axis=-1)
    guide = (guide + 0.01 * rng.standard_normal(guide.shape)).clip(0, 1).astype(np.float32)
    truth = 100.0 + 400.0 * fine
    ion = truth.reshape(8, scale, 12, scale).mean(axis=(1, 3)).astype(np.float32)
    return guide, ion, scale


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test images run far faster on one thread than with the pool's overhead on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def voronoi_cells(seed: int = 0, shape: tuple[int, int] = (96, 128), scale: int = 8, chemistries: int = 1):
    """Piecewise-constant 'cells' (Voronoi) with dark walls in the guide; truth constant per cell, walls lower.

    ``chemistries`` > 1: truth is a stack of that many, each with its own amount per cell.
    """
    rng = np.random.default_rng(seed)
    H, W = shape
    pts = rng.uniform(0, 1, (40, 2)) * [H, W]
    yy, xx = np.mgrid[:H, :W]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    order = np.sort(d, axis=-1)
    label = d.argmin(-1)
    wall = np.sqrt(order[..., 1]) - np.sqrt(order[..., 0]) < 1.5
    amount = rng.uniform(0.1, 1.0, (chemistries, len(pts)))
    truth = amount[:, label] * np.where(wall, 0.4, 1.0)
    colour = rng.uniform(0.5, 0.9, (len(pts), 3))
    guide = np.where(wall[..., None], 0.2, colour[label]) + 0.01 * rng.standard_normal((H, W, 3))
    return guide.clip(0, 1).astype(np.float32), truth[0] if chemistries == 1 else truth, scale


@pytest.fixture(scope="session")
def cells() -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`voronoi_cells` at its defaults: a 96×128 guide, its truth, ×8 (read-only: every module shares them)."""
    guide, truth, scale = voronoi_cells()
    guide.setflags(write=False)
    truth.setflags(write=False)
    return guide, truth, scale


@pytest.fixture(scope="session")
def cells_like():
    """:func:`voronoi_cells` itself, for tests that need other cells."""
    return voronoi_cells


@pytest.fixture
def global_random_state():
    """Python's, NumPy's and torch's global generators seeded, with ``expected``, the draws they give next, and
    ``draws()`` to take them: code under test that leaves the generators alone gives ``expected`` afterwards. Torch's
    determinism settings are restored when the test ends, whatever it set."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark

    def seed() -> None:
        random.seed(5)
        np.random.seed(5)
        torch.manual_seed(5)

    def draws() -> tuple[float, float, float]:
        return np.random.rand(), random.random(), float(torch.rand(1))

    seed()
    expected = draws()
    seed()
    yield SimpleNamespace(expected=expected, draws=draws)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


@pytest.fixture
def state_imzml_pixel_size():
    """A function that writes "pixel size x/y" cvParams into an imzML's scan settings: ``(path, x, y=None, unit=None)``
    (``y`` defaults to ``x``; ``unit``: (unitName, unitAccession), none stated by default)."""
    return _state_imzml_pixel_size


def _state_imzml_pixel_size(path: Path, x: float | str, y: float | str | None = None,
                            unit: tuple[str, str] | None = None) -> None:
    stated = f' unitCvRef="UO" unitAccession="{unit[1]}" unitName="{unit[0]}"' if unit else ""
    _add_scan_settings(path, f'<cvParam cvRef="IMS" accession="IMS:1000046" name="pixel size x" value="{x}"{stated}/>'
                             f'<cvParam cvRef="IMS" accession="IMS:1000047" name="pixel size y" '
                             f'value="{x if y is None else y}"{stated}/>')


@pytest.fixture
def add_scan_settings():
    """A function that inserts cvParams (XML text) at the end of an imzML's scan settings: ``(path, params)``."""
    return _add_scan_settings


def _add_scan_settings(path: Path, params: str) -> None:
    """Insert cvParams (XML text) at the end of an imzML's scan settings, as an instrument's header states them."""
    text = path.read_text(encoding="iso-8859-1")
    path.write_text(text.replace("</scanSettings>", params + "</scanSettings>", 1), encoding="iso-8859-1")


@pytest.fixture
def write_pyramid():
    """A function that saves RGB ``levels`` (full resolution first) as a pyramidal OME-TIFF of SubIFDs, as slide
    scanners write them: ``(path, levels, metadata=None) -> path`` (``metadata``: the OME pixel sizes, none by
    default)."""
    return _write_pyramid


def _write_pyramid(path: Path, levels: list[np.ndarray], metadata: dict | None = None) -> Path:
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, photometric="rgb", metadata=metadata or {})
        for level in levels[1:]:
            tif.write(level, subfiletype=1, photometric="rgb")
    return path


@pytest.fixture
def write_svs():
    """A function that saves RGB ``levels`` (full resolution first) in an Aperio slide's layout, as its scanners write
    an ``.svs``: the tiled baseline, a thumbnail, the lower levels, then the label and the macro photographs, each page
    with an Aperio description; ``(path, levels, mpp="0.4990") -> path`` (``mpp`` None: a description without one)."""
    return _write_svs


def _write_svs(path: Path, levels: list[np.ndarray], mpp: str | None = "0.4990") -> Path:
    import tifffile

    stated = f"|MPP = {mpp}" if mpp is not None else ""
    rows, cols = levels[0].shape[:2]

    def description(what: str) -> str:
        return f"Aperio Image Library v12.0.15 \r\n{cols}x{rows} {what}|AppMag = 20{stated}|Filename = slide"

    options = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], tile=(16, 16), description=description("[0,0 full] (16x16) RGB"), **options)
        tif.write(levels[0][::8, ::8], description=description("-> thumbnail"), **options)
        for level in levels[1:]:
            tif.write(level, tile=(16, 16), description=description("-> level (16x16) RGB"), **options)
        tif.write(np.full((8, 12, 3), 200, np.uint8), subfiletype=1, description="Aperio Image Library\r\nlabel 12x8",
                  **options)
        tif.write(np.full((10, 30, 3), 90, np.uint8), subfiletype=9, description="Aperio Image Library\r\nmacro 30x10",
                  **options)
    return path


@pytest.fixture
def write_ndpi():
    """A function that saves RGB ``levels`` (full resolution first, each half the one before) as Hamamatsu's NDP.scan
    lays out an ``.ndpi``: a TIFF-like file of one JPEG per page, with NDPI's 64-bit next-page offsets and high-bits
    block after each page's tags, the tags OpenSlide requires (Make, 65420–65424), the source lens per level, the
    resolution in pixels per cm, ``planes`` focal planes of each level, the full resolution's JPEG with restart markers
    every half row of MCUs and their offsets (McuStarts, 65426: how readers tile a level too wide for one JPEG
    decode), and the macro photograph (lens −1) last, or first with ``macro_first``; ``(path, levels,
    px_per_cm=40000, planes=1, macro_first=False) -> path``. OpenSlide 4.0.1 and tifffile both read it as an NDPI."""
    return _write_ndpi


def _write_ndpi(path: Path, levels: list[np.ndarray], px_per_cm: int = 40000, planes: int = 1,
                macro_first: bool = False) -> Path:
    import cv2

    body = bytearray(b"II*\x00" + bytes(8))  # the first page's offset, 8 bytes as NDPI readers take it
    pages = [(level, 20.0 / 2 ** i, px_per_cm // 2 ** i, z) for i, level in enumerate(levels) for z in range(planes)]
    macro = (np.full((20, 50, 3), 90, np.uint8), -1.0, 1000, 0)
    pages = [macro, *pages] if macro_first else [*pages, macro]

    def placed(data: bytes) -> int:
        at = len(body)
        body.extend(data + bytes(len(data) % 2))
        return at

    next_fields = []
    for rgb, lens, resolution, z in pages:
        rows, cols = rgb.shape[:2]
        full = rgb is levels[0]
        mcus = -(-cols // 16)  # 16×16 MCUs (chroma halved both ways)
        restart = [cv2.IMWRITE_JPEG_RST_INTERVAL, mcus // 2 if mcus % 2 == 0 else mcus] if full else []
        jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]),
                            [cv2.IMWRITE_JPEG_QUALITY, 100, *restart])[1].tobytes()
        entries = [(256, 4, 1, struct.pack("<I", cols)), (257, 4, 1, struct.pack("<I", rows)),
                   (258, 3, 3, struct.pack("<I", placed(struct.pack("<3H", 8, 8, 8)))),
                   (259, 3, 1, struct.pack("<HH", 7, 0)), (262, 3, 1, struct.pack("<HH", 6, 0)),  # JPEG, YCbCr
                   (271, 2, 10, struct.pack("<I", placed(b"Hamamatsu\0"))),
                   (273, 4, 1, struct.pack("<I", placed(jpeg))), (277, 3, 1, struct.pack("<HH", 3, 0)),
                   (278, 4, 1, struct.pack("<I", rows)), (279, 4, 1, struct.pack("<I", len(jpeg))),
                   (282, 5, 1, struct.pack("<I", placed(struct.pack("<II", resolution, 1)))),
                   (283, 5, 1, struct.pack("<I", placed(struct.pack("<II", resolution, 1)))),
                   (296, 3, 1, struct.pack("<HH", 3, 0)),  # resolution unit: centimetre
                   (65420, 4, 1, struct.pack("<I", 1)), (65421, 11, 1, struct.pack("<f", lens)),
                   (65422, 9, 1, struct.pack("<i", 0)), (65423, 9, 1, struct.pack("<i", 0)),
                   (65424, 9, 1, struct.pack("<i", 1000 * z))]  # the focal plane's offset, nm
        if full:
            starts = _restart_intervals(jpeg)
            entries.append((65426, 4, len(starts), struct.pack("<I", placed(struct.pack(f"<{len(starts)}I", *starts)))))
        page = len(body)
        body.extend(struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", *entry[:3]) + entry[3]
                                                              for entry in entries))
        next_fields.append((page, len(body)))
        body.extend(bytes(8 + 4 * len(entries)))  # the next page (64-bit), then each value's high 32 bits
    struct.pack_into("<I", body, 4, next_fields[0][0])
    for (_, field), (following, _) in zip(next_fields, next_fields[1:]):
        struct.pack_into("<Q", body, field, following)
    path.write_bytes(bytes(body))
    return path


def _restart_intervals(jpeg: bytes) -> list[int]:
    """Where each restart interval of a JPEG's scan begins (bytes from the JPEG's start): after the start-of-scan
    header, then after each restart marker (0xFFD0–0xFFD7; entropy-coded 0xFF bytes are followed by 0x00)."""
    scan = jpeg.index(b"\xff\xda")
    starts = [scan + 2 + struct.unpack(">H", jpeg[scan + 2:scan + 4])[0]]
    at = jpeg.find(b"\xff", starts[0])
    while 0 <= at < len(jpeg) - 2:
        if 0xD0 <= jpeg[at + 1] <= 0xD7:
            starts.append(at + 2)
        at = jpeg.find(b"\xff", at + 2)
    return starts


@pytest.fixture
def write_czi():
    """A function that saves an image as Zeiss ZEN saves a CZI, through Zeiss's libCZI: ``(path, image,
    pixel_size_um=None, location=(0, 0), more=(), plane=None, tile_rows=None, bits=None) -> path``.

    ``image`` (rows, cols, 3) RGB is stored as ZEN stores colour (Bgr24/Bgr48, memory order B, G, R), (rows, cols) as
    one grey channel, in subblocks of ``tile_rows`` rows (None: one), in ``plane`` (a dict: {"C": 1}, default
    channel 0); ``more``: further (plane, image, location) triples, a plane being a dict ({"C": 1}: another channel;
    {"Z": 1}: a focal plane) or a scene's index. The pixel size (µm; a pair: X, Y) goes into the metadata's scaling in
    metres, as the format states it (0: uncalibrated, as ZEN writes it); ``bits``: the camera's depth, stated as ZEN
    states it (``ComponentBitCount``); ``channel_names``: {C index: name}, in the metadata's channel list."""
    return _write_czi


def _write_czi(path: Path, image: np.ndarray, pixel_size_um=None, location: tuple[int, int] = (0, 0), more=(),
               plane: dict | None = None, tile_rows: int | None = None, bits: int | None = None,
               channel_names: dict[int, str] | None = None) -> Path:
    pyczi = pytest.importorskip("pylibCZIrw.czi", reason="the czi extra (pylibCZIrw) is not installed")

    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        for where, pixels, (x, y) in [(plane or {"C": 0}, image, location), *more]:
            stored = pixels[..., ::-1] if pixels.ndim == 3 else pixels[..., None]
            plane_of, scene = (where, 0) if isinstance(where, dict) else (None, where)
            step = tile_rows or len(stored)
            for top in range(0, len(stored), step):
                czi.write(np.ascontiguousarray(stored[top:top + step]), location=(x, y + top), plane=plane_of,
                          scene=scene)
        size_x, size_y = pixel_size_um if isinstance(pixel_size_um, tuple) else (pixel_size_um,) * 2
        czi.write_metadata("section", channel_names=channel_names, scale_x=(size_x or 0.0) * 1e-6,
                           scale_y=(size_y or 0.0) * 1e-6)
    if bits is not None:
        with pyczi.edit_czi(str(path)) as editor, editor.edit_session() as metadata:
            metadata.set_xml(metadata.get_xml().replace("<SizeX>", f"<ComponentBitCount>{bits}</ComponentBitCount>"
                                                                   "<SizeX>", 1))
    return path
