"""Zeiss CZI opticals, written here through Zeiss's own libCZI as ZEN lays them out."""

import struct
import sys

import cv2
import numpy as np
import pytest

import msifusion.io.czi as czi_io
import msifusion.runtime as runtime
from msifusion.errors import InputError
from msifusion.io.images import file_pixel_size_um, read_ion, read_optical

pyczi = pytest.importorskip("pylibCZIrw.czi", reason="the czi extra (pylibCZIrw) is not installed")
CziReader = pyczi.CziReader


@pytest.fixture
def section() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)


def test_a_colour_czi_reads_as_rgb_with_its_pixel_size_from_its_top_left(tmp_path, write_czi, section):
    """Stored B, G, R (ZEN's Bgr24) and placed away from the stage origin: read as the RGB it is, from its corner."""
    path = write_czi(tmp_path / "section.czi", section, pixel_size_um=0.22, location=(-40, 70))
    image = read_optical(path)
    np.testing.assert_array_equal(np.rint(image.pixels * 255).astype(np.uint8), section)
    assert image.pixel_size_um == pytest.approx(0.22) and image.calibration_note is None
    assert (image.downsample, image.full_shape, image.origin_um) == (1.0, None, (0.0, 0.0))
    assert file_pixel_size_um(path) == pytest.approx(0.22)


def test_a_czi_is_averaged_down_to_the_pixel_the_fused_grid_needs(tmp_path, write_czi, section, monkeypatch):
    """As a pyramid level: each 4×4 block's mean (rounded to the file's type), the partial edge left out, the first
    pixel's centre 1.5 full pixels in, from the scene's corner away from the stage origin; the same in bands of any
    size, each at least a tile tall, the last one part full."""
    path = write_czi(tmp_path / "section.czi", section, pixel_size_um=0.5, location=(-40, 70), tile_rows=8)
    image = read_optical(path, 2.1)  # 4 full pixels of 0.5 µm are the coarsest within 2.1 µm
    means = section[:36, :48].reshape(9, 4, 12, 4, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(np.rint(image.pixels * 255), np.rint(means))
    assert image.pixel_size_um == pytest.approx(2.0) and image.downsample == 4.0 and image.full_shape == (37, 50)
    assert image.origin_um == pytest.approx((0.75, 0.75))
    bands, resize = [], cv2.resize
    monkeypatch.setattr(cv2, "resize", lambda pixels, *a, **k: bands.append(len(pixels)) or resize(pixels, *a, **k))
    monkeypatch.setattr(czi_io, "BAND_BYTES", 1)  # as few rows as a tile of 8 rows allows: 2 rows of 4
    np.testing.assert_array_equal(read_optical(path, 2.1).pixels, image.pixels)
    assert bands == [8, 8, 8, 8, 4]
    assert read_optical(path, 0.9).pixels.shape == (37, 50, 3)  # finer than two pixels: full resolution
    assert read_optical(path, 1000.0).pixels.shape == (2, 2, 3)  # coarser than the image: 2×2 pixels at least


def test_a_grey_czi_is_averaged_down_alike(tmp_path, write_czi):
    grey = np.random.default_rng(1).integers(0, 4096, (30, 41), dtype=np.uint16)
    image = read_optical(write_czi(tmp_path / "grey.czi", grey, pixel_size_um=1.0, location=(5, -7)), 3.0)
    means = grey[:30, :39].reshape(10, 3, 13, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(image.pixels[..., 0] * 4095, np.rint(means), atol=1e-3)


def test_a_grey_16_bit_czi_is_scaled_by_its_camera_depth(tmp_path, write_czi):
    grey = np.array([[0, 1000], [2000, 4095]], np.uint16)  # a 12-bit camera's values
    image = read_optical(write_czi(tmp_path / "grey.czi", grey))
    np.testing.assert_allclose(image.pixels[..., 1], grey / 4095, rtol=1e-6)
    assert np.array_equal(image.pixels[..., 0], image.pixels[..., 2]) and image.pixel_size_um is None


@pytest.mark.parametrize("size_um, note", [(None, None), (0.5e6, "its pixel size 5e+05 µm is implausible"),
                                           ((1.0, 2.0), "its pixels are not square (1 × 2 µm)")])
def test_an_uncalibrated_czi_takes_the_pixel_size_given(tmp_path, write_czi, section, size_um, note):
    """ZEN writes 0 for no calibration; a scaling written in µm where the format wants metres, or pixels that are not
    square, are no calibration."""
    path = write_czi(tmp_path / "section.czi", section, pixel_size_um=size_um)
    image = read_optical(path, 2.0)
    assert image.pixel_size_um is None and image.pixels.shape == (37, 50, 3)
    assert (image.calibration_note or "").startswith(note or "") and bool(image.calibration_note) == bool(note)
    given = read_optical(path, 2.0, pixel_size_um=1.0)  # --optical-pixel-size: averaged down by 2
    assert given.pixels.shape == (18, 25, 3) and given.pixel_size_um == 2.0 and given.calibration_note is None


def test_a_control_character_in_the_metadata_keeps_the_pixel_size(tmp_path, write_czi, section):
    """ZEN's XML can hold characters XML forbids (libCZI writes them as &#1;), which an XML parser refuses."""
    path = write_czi(tmp_path / "section.czi", section, pixel_size_um=0.22)
    path.write_bytes(path.read_bytes().replace(b"section", b"sec\x01ion", 1))
    assert read_optical(path).pixel_size_um == 0.22 and file_pixel_size_um(path) == 0.22  # rounded, not 0.22…03


def test_a_12_bit_colour_scan_keeps_its_brightness_beside_the_gaps_between_its_tiles(tmp_path, write_czi):
    """libCZI fills what no tile covers: at the camera's white, not 65535, which would make 4095 read as 1/16."""
    tile = np.full((20, 30, 3), 4095, np.uint16)
    path = write_czi(tmp_path / "scan.czi", tile, more=[({"C": 0}, tile, (40, 30))], bits=12)
    image = read_optical(path)
    assert image.pixels.shape == (50, 70, 3) and image.pixels.min() == 1.0  # tiles and glass alike white
    unstated = read_optical(write_czi(tmp_path / "unstated.czi", tile, more=[({"C": 0}, tile, (40, 30))]))
    assert unstated.pixels[:20, :30].min() == 1.0 and unstated.pixels[:20, 40:].max() == 0.0  # gaps black


JPEG_XR = 4  # a subblock's Compression, as the CZI format numbers it
BGR24_GUID = bytes.fromhex("24C3DD6F034EFE4BB1853D77768DC90C")  # jxrlib's GUID_PKPixelFormat24bppBGR
RGB24_GUID = BGR24_GUID[:-1] + b"\x0d"


def _as_jpegxr(path, shape: tuple[int, ...]) -> int:
    """Recompress each subblock of an uncompressed CZI (pylibCZIrw writes no JPEG-XR) into lossless JPEG-XR, as ZEN
    stores slide scans: colour as jxrlib's 24bppBGR, grey as 8bppGray. ``shape``: one subblock's stored (rows, cols[,
    3]). The compressed data replaces the raw data in its place (it is smaller), so no offset moves. Returns how many
    subblocks it recompressed."""
    import imagecodecs

    data = bytearray(path.read_bytes())
    compressed = set()
    at = data.find(b"ZISRAWSUBBLOCK")
    while at >= 0:  # a subblock segment: id, sizes; metadata and data sizes, then its directory entry (DV)
        metadata_size, _, data_size = struct.unpack_from("<iiq", data, at + 32)
        dimensions = struct.unpack_from("<i", data, at + 48 + 28)[0]
        start = at + 32 + max(256, 16 + 32 + 20 * dimensions) + metadata_size
        stored = np.frombuffer(bytes(data[start:start + data_size]), np.uint8).reshape(shape)
        if stored.ndim == 3:  # samples B, G, R in memory: encoded as RGB from R, G, B, then labelled BGR
            encoded = imagecodecs.jpegxr_encode(stored[..., ::-1], level=1.0)
            assert RGB24_GUID in encoded
            encoded = encoded.replace(RGB24_GUID, BGR24_GUID, 1)
        else:
            encoded = imagecodecs.jpegxr_encode(stored, level=1.0)
        assert len(encoded) < data_size
        data[start:start + data_size] = encoded + bytes(data_size - len(encoded))
        struct.pack_into("<q", data, at + 40, len(encoded))
        struct.pack_into("<i", data, at + 48 + 18, JPEG_XR)
        compressed.add(at)
        at = data.find(b"ZISRAWSUBBLOCK", at + 1)
    directory = data.find(b"ZISRAWDIRECTORY")
    entry = directory + 32 + 128
    for _ in range(struct.unpack_from("<i", data, directory + 32)[0]):
        assert struct.unpack_from("<q", data, entry + 6)[0] in compressed
        struct.pack_into("<i", data, entry + 18, JPEG_XR)
        entry += 32 + 20 * struct.unpack_from("<i", data, entry + 28)[0]
    path.write_bytes(bytes(data))
    return len(compressed)


@pytest.mark.parametrize("colour", [True, False])
def test_a_jpeg_xr_czi_reads_as_the_image_it_holds(tmp_path, write_czi, colour):
    """JPEG-XR is ZEN's compression for slide scans; libCZI decodes it. Smooth tiles, so that they compress."""
    rows, cols = np.mgrid[0:40, 0:60]
    image = np.stack([cols * 4, rows * 6, (rows + cols) * 2], -1).astype(np.uint8)
    image = image if colour else image[..., 1]
    path = write_czi(tmp_path / "scan.czi", image, pixel_size_um=0.5, tile_rows=20)
    assert _as_jpegxr(path, (20, 60, 3) if colour else (20, 60)) == 2
    optical = read_optical(path)
    read = np.rint(optical.pixels * 255).astype(np.uint8)
    np.testing.assert_array_equal(read if colour else read[..., 0], image)
    assert optical.pixel_size_um == pytest.approx(0.5)


def test_the_files_own_pyramid_subblocks_are_not_read_as_the_image(tmp_path, write_czi):
    """ZEN stores a pyramid beside the scan: subblocks stored smaller than the area they cover, which can reach past the
    image (an Axio Scan file's pyramid spans 84096×28032 px, its image 84007×28030). Made here as libCZI would find
    one: a 30×20 subblock whose dimension entries say it covers 240×160 (stored size kept, so its zoom is 1/8)."""
    tile = np.full((75, 100, 3), 100, np.uint8)
    path = write_czi(tmp_path / "scan.czi", tile, more=[({"C": 0}, tile, (x, y)) for x, y in ((100, 0), (0, 75),
                                                                                                (100, 75))]
                     + [({"C": 0}, np.full((20, 30, 3), 7, np.uint8), (0, 0))])
    data = bytearray(path.read_bytes())
    for axis, stored, covered in ((b"X", 30, 240), (b"Y", 20, 160)):  # DimensionEntryDV1: axis, start, size, …
        entry = axis + b"\x00\x00\x00" + struct.pack("<ii", 0, stored)
        at = data.find(entry)
        assert at >= 0
        while at >= 0:  # in the subblock's own header and in the directory
            data[at + 8:at + 12] = struct.pack("<i", covered)
            at = data.find(entry, at + 1)
    path.write_bytes(bytes(data))
    image = read_optical(path)
    assert image.pixels.shape == (150, 200, 3) and np.all(image.pixels == np.float32(100 / 255))


def test_one_channel_numbered_other_than_0_is_read(tmp_path, write_czi, section):
    image = read_optical(write_czi(tmp_path / "c1.czi", section, plane={"C": 1}))
    np.testing.assert_array_equal(np.rint(image.pixels * 255).astype(np.uint8), section)


@pytest.mark.parametrize("more, held", [
    ([(2, np.zeros((10, 12, 3), np.uint8), (100, 0))], r"holds 2 scenes \(1: 37×50 px, 3: 10×12 px\), not one "
                                                       "image; choose the one that holds the section with "
                                                       "--optical-scene N, numbered from 1"),
    ([({"C": 1}, np.zeros((37, 50, 3), np.uint8), (0, 0))],  # a colour image's channels are not composed
     "holds 2 channels, not one image; keep the one that shows the tissue and export it as an OME-TIFF"),
    ([({"C": 1}, np.zeros((37, 50), np.uint16), (0, 0)), ({"C": 2}, np.zeros((37, 50, 3), np.uint8), (0, 0))],
     "holds 3 channels, not one image"),  # fluorescence and a transmitted-light colour image: nor these
    ([({"Z": 1}, np.zeros((37, 50), np.uint16), (0, 0))], "holds 2 focal planes, not one image; keep the one"),
    ([({"C": 1}, np.zeros((37, 50), np.uint16), (0, 0)), ({"Z": 1}, np.zeros((37, 50), np.uint16), (0, 0)),
      ({"C": 1, "Z": 1}, np.zeros((37, 50), np.uint16), (0, 0))],  # channels in two focal planes
     "holds 2 focal planes, not one image; keep the focal plane that shows the tissue sharpest, with all its channels"),
])
def test_a_czi_of_several_images_is_refused_with_what_it_holds(tmp_path, write_czi, more, held):
    first = (np.zeros((37, 50, 3), np.uint8) if isinstance(more[0][0], int) or more[0][1].ndim == 3 else
             np.zeros((37, 50), np.uint16))
    path = write_czi(tmp_path / "many.czi", first, more=more)
    with pytest.raises(InputError, match=rf"many.czi: {held}"):
        read_optical(path)


def test_a_grey_czis_channels_are_composed_into_one_colour_image(tmp_path, write_czi, monkeypatch):
    """A fluorescence CZI (DAPI and an autofluorescence channel, 12-bit): each channel at its own scale, read at the
    fused grid's pixel like any CZI, with a note naming the channels as ZEN does."""
    from msifusion.io.channels import composite

    rng = np.random.default_rng(0)
    dapi, af = rng.integers(0, 4096, (2, 40, 60)).astype(np.uint16)
    af //= 16
    path = write_czi(tmp_path / "af.czi", dapi, 0.5, more=[({"C": 1}, af, (0, 0))],
                     channel_names={0: "DAPI", 1: "AF488"})
    image = read_optical(path)
    np.testing.assert_array_equal(image.pixels, composite([dapi, af]))
    assert image.pixel_size_um == 0.5 and image.warnings[0] == (
        "af.czi: its 2 channels (DAPI, AF488) are read as one colour image, each stretched to its own 0.1–99.9 "
        "percentile range, as red and green; to use one of them alone, keep that channel in an OME-TIFF")
    coarse = read_optical(path, coarsest_um=1.0)  # each channel averaged down 2×2, then composed
    halved = [cv2.resize(c, (30, 20), interpolation=cv2.INTER_AREA) for c in (dapi, af)]
    np.testing.assert_array_equal(coarse.pixels, composite(halved))
    refused = []
    monkeypatch.setattr(czi_io, "refuse_beyond_memory",
                        lambda path, rows, cols, nbytes, way=None: refused.append(nbytes))
    read_optical(path)
    assert refused[0] == 2 * 40 * 60 * 2 + 8 * 40 * 60  # both channels and the composing, before the first is read


def test_a_scene_of_a_slide_is_read_as_chosen(tmp_path, write_czi, section):
    """Scenes numbered from 1, as ZEN shows them (libCZI's S index 0 is scene 1), each read from its own corner."""
    other = section[::-1, ::-1]
    path = write_czi(tmp_path / "slide.czi", section, pixel_size_um=0.5, location=(-40, 70),
                     more=[(1, np.ascontiguousarray(other[:30]), (900, 70))])
    first, second = read_optical(path, scene=1), read_optical(path, 2.0, scene=2)
    np.testing.assert_array_equal(np.rint(first.pixels * 255).astype(np.uint8), section)
    means = other[:28, :48].reshape(7, 4, 12, 4, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(np.rint(second.pixels * 255), np.rint(means))
    assert second.full_shape == (30, 50) and second.pixel_size_um == 2.0
    with pytest.raises(InputError, match=r"^--optical-scene: slide.czi has no scene 3; its scenes are 1: 37×50 px, "
                                         r"2: 30×50 px$"):
        read_optical(path, scene=3)
    png = tmp_path / "section.png"
    cv2.imwrite(str(png), section)
    with pytest.raises(InputError, match=r"^--optical-scene: section.png is not a CZI: only a Zeiss CZI holds scenes"):
        read_optical(png, scene=1)
    assert read_optical(write_czi(tmp_path / "one.czi", section), scene=1).pixels.shape == (37, 50, 3)


def test_a_damaged_czi_or_a_missing_reader_is_one_line(tmp_path, write_czi, section, monkeypatch):
    path = write_czi(tmp_path / "section.czi", section)
    cut = tmp_path / "cut.czi"
    cut.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(InputError, match=r"cut.czi: cannot read CZI: it is truncated or damaged \(Not enough data"):
        read_optical(cut)
    assert file_pixel_size_um(cut) is None
    tiff = tmp_path / "scan.czi"
    tiff.write_bytes(b"II*\x00" + bytes(100))  # a TIFF given the wrong name
    with pytest.raises(InputError, match=r"scan.czi: is not a CZI file \(it does not begin as one\)$"):
        read_optical(tiff)
    with pyczi.create_czi(str(tmp_path / "empty.czi")) as empty:  # metadata only, as a scan that was cancelled
        empty.write_metadata("section")
    with pytest.raises(InputError, match=r"empty.czi: holds no image \(no pixel data\)$"):
        read_optical(tmp_path / "empty.czi")
    monkeypatch.setitem(sys.modules, "pylibCZIrw", None)  # as where the czi extra is not installed
    with pytest.raises(InputError, match=r"section.czi: a Zeiss CZI file: reading it needs pylibCZIrw \(pip install "
                                         r"'msifusion\[czi\]'\), or export it as an OME-TIFF"):
        read_optical(path)
    assert file_pixel_size_um(path) is None


def test_a_czi_beyond_this_machines_memory_is_refused_before_decoding(tmp_path, write_czi, section, monkeypatch):
    path = write_czi(tmp_path / "section.czi", section, pixel_size_um=0.5)
    monkeypatch.setattr(runtime, "machine_memory_bytes", lambda: 37 * 50 * 15 - 1)  # 12 B/px float + 3 B/px decoded
    with monkeypatch.context() as undecoded:
        undecoded.setattr(CziReader, "read", lambda *a, **k: pytest.fail("decoded before refusing"))
        with pytest.raises(InputError, match=r"section.czi: 37×50 px needs about [\d.]+ [kMG]B to read, .*; save a "
                                             r"copy "
                                             r"downsampled to the fused grid's pixel size \(it is a CZI: `register`"):
            read_optical(path)
    assert read_optical(path, 1.0).pixels.shape == (18, 25, 3)  # averaged down, it fits
    uncalibrated = write_czi(tmp_path / "uncalibrated.czi", section)
    with pytest.raises(InputError, match=r"of memory; .* \(it is a CZI: .* or given with --optical-pixel-size"):
        read_optical(uncalibrated, 1.0)  # a coarser pixel asked for, but its size unknown: the way round is named
    band = 36 * 50 * 3  # the full-resolution rows decoded at once (here all 36 that average into 18)
    monkeypatch.setattr(runtime, "machine_memory_bytes", lambda: 18 * 25 * 15 + band - 1)
    with pytest.raises(InputError, match=r"18×25 px needs .* [kMG]B of memory; save a copy downsampled to the fused "
                                         r"grid's pixel size$"):  # averaged down already: no way round to name
        read_optical(path, 1.0)
    monkeypatch.setattr(runtime, "machine_memory_bytes", lambda: 18 * 25 * 15 + band)
    assert read_optical(path, 1.0).pixels.shape == (18, 25, 3)


def test_a_czi_given_as_the_ion_is_named_a_microscope_image(tmp_path, write_czi, section):
    with pytest.raises(InputError, match=r"unsupported ion image format .czi; .*; a slide scan or micrograph is a "
                                         "microscope image: give it as the optical"):
        read_ion(write_czi(tmp_path / "section.czi", section))


@pytest.mark.parametrize("items, expected", [
    ('<Distance Id="X"><DefaultUnitFormat>µm</DefaultUnitFormat><Value>2.2E-07</Value></Distance>'
     '<Distance Id="Y"><Value>2.2E-07</Value></Distance>', (0.22, None)),  # as ZEN writes it
    ('<Distance Id="X"><Value>5e-07</Value></Distance>', (0.5, None)),  # no Y: square
    ('<Distance Id="X"></Distance><Distance Id="Y"><Value>5e-07</Value></Distance>', (None, None)),  # not Y's for X
    ('<Distance Id="X"><Value>NaN</Value></Distance>', (None, "its CZI scaling X 'NaN' is not a number")),
    ('<Distance Id="X"><Value>0.2 µm</Value></Distance>', (None, "its CZI scaling X '0.2 µm' is not a number")),
])
def test_the_scaling_is_read_from_the_metadata_text(items, expected):
    metadata = f"<ImageDocument><Metadata><Scaling><Items>{items}</Items></Scaling></Metadata></ImageDocument>"
    assert czi_io.czi_pixel_size_um(metadata) == expected
    assert czi_io.czi_pixel_size_um("<ImageDocument/>") == (None, None)


def test_channel_names_come_from_the_images_dimensions_unescaped():
    metadata = ('<ImageDocument><Metadata><DisplaySetting><Channels><Channel Name="shown first"/></Channels>'
                '</DisplaySetting><Information><Image><Dimensions><Channels><Channel Id="Channel:0" Name="DAPI"/>'
                '<Channel Id="Channel:1" Name="AF &amp; GFP"/></Channels></Dimensions></Image></Information>'
                '</Metadata></ImageDocument>')
    assert czi_io._czi_channel_names(metadata) == ["DAPI", "AF & GFP"]
    assert czi_io._czi_channel_names("<ImageDocument/>") == []
