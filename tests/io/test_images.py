import numpy as np
import pytest
import tifffile

from msifusion.errors import InputError
from msifusion.io.channels import composite
from msifusion.io.images import optical_to_rgb, read_ion, read_optical, torch_ready, write_tiff


@pytest.fixture
def ion() -> np.ndarray:
    return (np.random.default_rng(3).random((6, 9)) * 1e4).astype(np.float32)


@pytest.mark.parametrize("suffix", [".tiff", ".npy", ".csv"])
def test_ion_round_trip(tmp_path, ion, suffix):
    path = tmp_path / f"ion{suffix}"
    if suffix == ".tiff":
        write_tiff(path, ion, pixel_size_um=20.0)
    elif suffix == ".npy":
        np.save(path, ion)
    else:
        np.savetxt(path, ion, delimiter=",", fmt="%.9g")
    image = read_ion(path)
    np.testing.assert_allclose(image.pixels, ion, rtol=1e-6)
    assert image.pixel_size_um == (pytest.approx(20.0) if suffix == ".tiff" else None)


def test_ion_must_be_2d(tmp_path):
    np.save(tmp_path / "cube.npy", np.ones((3, 4, 5)))
    with pytest.raises(InputError, match="2-D"):
        read_ion(tmp_path / "cube.npy")


def test_a_file_named_npy_that_is_no_npy_is_named_as_such(tmp_path):
    """numpy's own errors: EOFError for an empty file (a traceback), advice to allow pickles for text."""
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "text.npy").write_text("hello world")
    np.savez(tmp_path / "arch.npz", a=np.ones((3, 4)))
    (tmp_path / "arch.npz").rename(tmp_path / "arch.npy")
    np.save(tmp_path / "cut.npy", np.ones((30, 40)))
    (tmp_path / "stub.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:4])  # cut inside the signature
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:20])  # the header cut short
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    for name, problem in (("empty", "the .npy file is empty"), ("text", "lacks the .npy signature"),
                          ("arch", "an .npz archive"), ("cut", "cannot read .npy"), ("stub", "cut short"),
                          ("objects", "holds Python objects")):
        with pytest.raises(InputError, match=problem) as info:
            read_ion(tmp_path / f"{name}.npy")
        assert "pickle" not in str(info.value) and info.value.source == str(tmp_path / f"{name}.npy")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_ion(tmp_path / "nothing.tiff")
    (tmp_path / "ion.xyz").write_text("1")
    with pytest.raises(InputError, match="unsupported"):
        read_ion(tmp_path / "ion.xyz")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot decode"):
        read_optical(tmp_path / "broken.png")
    (tmp_path / "section.lif").write_bytes(b"\x70\x00\x00\x00")
    with pytest.raises(InputError, match=r"unsupported optical image format \.lif; .*a Leica LIF file: export it as an "
                                         r"OME-TIFF, which keeps its pixel size \(Fiji: .*Bio-Formats Exporter"):
        read_optical(tmp_path / "section.lif")
    for slide in ("slide.svs", "slide.ndpi"):
        (tmp_path / slide).write_bytes(b"II*\x00")
        with pytest.raises(InputError, match=r"unsupported ion image format \.(svs|ndpi); .*a slide scan or micrograph "
                                             "is a microscope image"):
            read_ion(tmp_path / slide)
    (tmp_path / "run.imzML").write_text("<mzML/>")  # --optical and --imzml given the wrong way round
    with pytest.raises(InputError, match=r"unsupported optical image format \.imzML; .*an imzML file goes to --imzml "
                                         r"\(fuse\) or --ion \(register\), the microscope image to --optical: are "
                                         r"the two swapped\?$"):
        read_optical(tmp_path / "run.imzML")
    with pytest.raises(InputError, match="an imzML file: export its ions with `msifusion ions`"):
        read_ion(tmp_path / "run.imzML")


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 255), (np.uint16, 65535)])
def test_optical_png_bit_depths_and_channel_order(tmp_path, dtype, scale):
    import cv2

    rgb = np.zeros((4, 5, 3), dtype)
    rgb[..., 0] = scale  # pure red
    cv2.imwrite(str(tmp_path / "red.png"), rgb[..., ::-1])
    image = read_optical(tmp_path / "red.png").pixels
    assert image.dtype == np.float32 and image.shape == (4, 5, 3)
    np.testing.assert_allclose(image[0, 0], [1.0, 0.0, 0.0])


def test_optical_conversions():
    gray = np.array([[0, 128], [255, 64]], np.uint8)
    assert optical_to_rgb(gray).shape == (2, 2, 3)
    rgba = np.zeros((3, 3, 4), np.uint8)
    assert optical_to_rgb(rgba).shape == (3, 3, 3)
    planar = np.zeros((3, 7, 9), np.uint16)
    assert optical_to_rgb(planar).shape == (7, 9, 3)
    floats = np.array([[-1.0, 3.0], [1.0, 0.0]], np.float32)
    scaled = optical_to_rgb(floats)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    with pytest.raises(InputError, match="NaN"):
        optical_to_rgb(np.array([[np.nan, 1.0], [0.0, 0.0]]))


@pytest.mark.parametrize("suffix, keep", [(".jpg", 0.6), (".jpg", 0.02), (".png", 0.6)])
def test_truncated_optical_is_refused_not_half_read(tmp_path, capfd, suffix, keep):
    import cv2

    path = tmp_path / f"optical{suffix}"
    cv2.imwrite(str(path), (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])  # OpenCV decodes a 60 % JPEG, its missing rows grey
    with pytest.raises(InputError, match=r"optical\.(jpg|png).*cannot decode image"):
        read_optical(path)
    assert capfd.readouterr().err == ""  # the decoder's own lines are not printed beside the one-line error


@pytest.mark.parametrize("peak, white", [(200, 255), (4095, 4095), (4096, 16383), (20000, 65535), (65535, 65535)])
def test_a_16_bit_file_is_read_at_its_camera_depth(tmp_path, peak, white):
    """A 12-bit camera's image in a 16-bit TIFF is white at 4095, not 16× too dark; a full 16-bit one is as before."""
    grey = np.array([[0, peak // 2], [peak, 1]], np.uint16)
    tifffile.imwrite(tmp_path / "cam.tif", grey)
    np.testing.assert_allclose(read_optical(tmp_path / "cam.tif").pixels[..., 1], grey / white, rtol=1e-6)


# ----------------------------------------------------------------------------- wide integers


def test_wide_integer_optical_is_scaled_by_its_own_maximum(tmp_path):
    grey = np.array([[0, 1000], [2000, 4000]], np.uint32)
    tifffile.imwrite(tmp_path / "u32.tif", grey)
    np.testing.assert_allclose(read_optical(tmp_path / "u32.tif").pixels[..., 0], [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(optical_to_rgb(grey.astype(np.int64))[..., 2], [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(optical_to_rgb(np.array([[-10, 0], [10, 30]], np.int32))[..., 0], [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(optical_to_rgb(np.array([[0, 1000], [0, 0]], np.uint16))[0, 1], 1000 / 1023)
    # signed 8/16-bit: by the type's (or camera depth's) maximum without negatives, min-max with them (as wide integers)
    np.testing.assert_allclose(optical_to_rgb(np.array([[0, 1000], [0, 0]], np.int16))[0, 1], 1000 / 1023)
    np.testing.assert_allclose(optical_to_rgb(np.array([[-10, 0], [10, 30]], np.int16))[..., 1], [[0, 0.25], [0.5, 1]])


# ----------------------------------------------------------------------------- input validation


@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_complex_ion_is_refused_not_cut_to_its_real_part(tmp_path, suffix):
    data = (np.arange(12).reshape(3, 4) + 2j).astype(np.complex64)
    path = tmp_path / f"ion{suffix}"
    np.save(path, data) if suffix == ".npy" else tifffile.imwrite(path, data)
    with pytest.raises(InputError) as info:
        read_ion(path)
    assert info.value.problem == ("ion image has complex values (complex64); save its magnitude or real part as a "
                                  "real-valued image")
    if suffix == ".tif":
        with pytest.raises(InputError, match="optical image has complex values"):
            read_optical(path)


def test_time_spans_are_refused_and_booleans_are_ones_and_zeros(tmp_path):
    np.save(tmp_path / "span.npy", np.arange(6, dtype="timedelta64[s]").reshape(2, 3))
    with pytest.raises(InputError, match=r"ion image has non-numeric type timedelta64\[s\]"):
        read_ion(tmp_path / "span.npy")
    mask = np.array([[True, False, True], [False, False, True]])
    np.save(tmp_path / "mask.npy", mask)
    image = read_ion(tmp_path / "mask.npy").pixels
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, [[1, 0, 1], [0, 0, 1]])


# ----------------------------------------------------------------------------- TIFF, PNG and JPEG orientation


_SHOWN = {  # Orientation: how a viewer that honours it shows the stored pixels, in the warning's words
    2: (lambda a: a[:, ::-1], "mirrored left to right"),
    3: (lambda a: a[::-1, ::-1], "rotated 180°"),
    4: (lambda a: a[::-1], "mirrored top to bottom"),
    5: (lambda a: a.T, "mirrored about its top-left to bottom-right diagonal"),
    6: (lambda a: np.rot90(a, -1), "rotated 90° clockwise"),
    7: (lambda a: a[::-1, ::-1].T, "mirrored about its top-right to bottom-left diagonal"),
    8: (lambda a: np.rot90(a), "rotated 90° counter-clockwise"),
}


def _oriented(path, stored: np.ndarray, orientation: int) -> None:
    from PIL import Image as PILImage

    if path.suffix == ".tif":
        tifffile.imwrite(path, stored, extratags=[(274, "H", 1, orientation, True)])
    else:
        exif = PILImage.Exif()
        exif[0x0112] = orientation
        PILImage.fromarray(stored).save(path, exif=exif.tobytes())


@pytest.mark.parametrize("suffix", [".tif", ".png", ".jpg"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_png_and_jpeg_orientation_is_warned_about_not_applied(tmp_path, suffix, orientation):
    blocks = np.array([[0, 50, 100], [150, 200, 250]], np.uint8)
    stored = np.kron(blocks, np.ones((16, 16), np.uint8))  # 32×48, flat 16-pixel blocks: JPEG keeps them nearly exact
    path = tmp_path / f"photo{suffix}"
    _oriented(path, stored, orientation)
    image = read_optical(path)
    atol = 4 / 255 if suffix == ".jpg" else 1e-6
    np.testing.assert_allclose(image.pixels[..., 1], stored / 255, atol=atol)  # as stored, as Fiji shows it
    if orientation == 1:
        assert image.warnings == ()
        return
    shown, words = _SHOWN[orientation]
    assert image.warnings == (f"photo{suffix} has Orientation {orientation} (photo viewers show it {words}; Fiji, and "
                              "msifusion, use it as stored): if you registered it or placed landmarks on it as a photo "
                              "viewer shows it, save it that way up without the tag",)
    if suffix == ".png":  # the words are the standard mapping: Pillow's exif_transpose shows it so
        from PIL import Image as PILImage, ImageOps

        with PILImage.open(path) as im:
            np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(im)), shown(stored))


def test_png_exif_orientation_big_endian_with_app1_prefix(tmp_path):
    import struct
    import zlib

    import cv2

    path = tmp_path / "mm.png"
    cv2.imwrite(str(path), np.zeros((3, 4), np.uint8))
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 274, 3, 1, 8, 0) + struct.pack(">I", 0)
    exif = b"Exif\0\0" + b"MM\0*" + struct.pack(">I", 8) + ifd
    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif))
    data = path.read_bytes()
    path.write_bytes(data[:33] + chunk + data[33:])  # after the signature (8) and IHDR (25)
    assert "has Orientation 8 (photo viewers show it rotated 90° counter-clockwise" in read_optical(path).warnings[0]


def test_a_png_larger_than_its_decoder_takes_is_refused_from_its_header(tmp_path):
    """A 40000×40000 header (1.6 gigapixels; OpenCV decodes at most 2³⁰) is refused before any decoding, in one line;
    Pillow's own guard against decompression bombs (it raised above 179 megapixels) does not stand in the way."""
    import struct
    import zlib

    from PIL import Image as PILImage

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path = tmp_path / "huge.png"
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match=r"huge\.png: 40000×40000 px is more than the 1,073,741,824 pixels a PNG or "
                                         r"JPEG can be decoded with; save it as a \(tiled, pyramidal\) TIFF$"):
        read_optical(path)
    limit = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = 10  # as if this 4×5 image were a "bomb"
    try:
        import cv2

        cv2.imwrite(str(tmp_path / "small.png"), np.full((4, 5, 3), 255, np.uint8))
        assert read_optical(tmp_path / "small.png").pixels.shape == (4, 5, 3)
        assert PILImage.MAX_IMAGE_PIXELS == 10  # restored
    finally:
        PILImage.MAX_IMAGE_PIXELS = limit


def test_ion_tiff_orientation_is_warned_about_not_applied(tmp_path):
    ion = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    tifffile.imwrite(tmp_path / "ion.tif", ion, extratags=[(274, "H", 1, 6, True)])
    image = read_ion(tmp_path / "ion.tif")
    np.testing.assert_array_equal(image.pixels, ion)
    assert image.warnings[0].startswith("ion.tif has Orientation 6 (photo viewers show it rotated 90° clockwise")


def test_rgb_layout_reads_gray_alpha_with_few_rows_as_channels_last():
    from msifusion.io.images import rgb_layout

    assert rgb_layout(np.zeros((4, 48, 2))).shape == (4, 48, 3)  # not (48, 2, …): gray + alpha, four rows
    assert rgb_layout(np.zeros((3, 40, 50))).shape == (40, 50, 3)  # channels first
    assert rgb_layout(np.zeros((40, 50))).shape == (40, 50, 3)


def test_a_transparent_background_is_warned_about(tmp_path):
    """A region exported with its surroundings cut out: alpha is dropped, so the background reads as the black stored
    under it (dense tissue, to a brightfield guide); said, with the remedy. An opaque RGBA image is not."""
    import cv2

    bgra = np.full((40, 50, 4), 230, np.uint8)
    bgra[:, :15] = 0  # 30 % transparent, black under
    cv2.imwrite(str(tmp_path / "cut.png"), bgra)
    assert read_optical(tmp_path / "cut.png").warnings == (
        "30% of cut.png is transparent (alpha 0) and reads as black: alpha is not applied; fill the background with "
        "the slide's own colour (white for brightfield) first if it is not tissue",)
    tifffile.imwrite(tmp_path / "cut.tif", bgra[..., [2, 1, 0, 3]].transpose(2, 0, 1), photometric="rgb",
                     planarconfig="separate", extrasamples=[2])  # planar RGBA, unassociated alpha
    assert read_optical(tmp_path / "cut.tif").warnings[0].startswith("30% of cut.tif is transparent")
    bgra[..., 3] = 255
    cv2.imwrite(str(tmp_path / "opaque.png"), bgra)
    assert read_optical(tmp_path / "opaque.png").warnings == ()
    rgbx = bgra[..., [2, 1, 0, 3]].copy()
    rgbx[..., 3] = 0  # a padding channel, all 0: not a transparent image
    tifffile.imwrite(tmp_path / "rgbx.tif", rgbx, photometric="rgb", extrasamples=[0])
    assert read_optical(tmp_path / "rgbx.tif").warnings == ()


def test_torch_ready_copies_only_what_torch_cannot_wrap() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert torch_ready(a) is a
    frozen = a.copy()
    frozen.setflags(write=False)
    for odd in (frozen, a[:, ::-1]):  # read-only; a flipped view (negative strides)
        ready = torch_ready(odd)
        assert ready is not odd and ready.flags.writeable and ready.flags.c_contiguous
        np.testing.assert_array_equal(ready, odd)


def test_a_uniform_optical_is_warned_as_one_with_nothing_to_follow(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    sparse = np.full((60, 80, 3), 230.0)
    sparse[10:12, 10:12] = 40  # a small piece of tissue on an empty slide: 0.08 % of the image
    cases = {
        "black": np.zeros((60, 80, 3)),
        "grey": np.where(rng.random((60, 80, 3)) < 0.5, 128.0, 129.0),  # one 8-bit level of noise
        "blank_slide": [230, 200, 215] + rng.normal(0, 1.5, (60, 80, 3)),  # noisy: its edges are noise, not flat
        "sparse": sparse,
        "dim_cells": np.where(rng.random((60, 80, 3)) < 0.1, 6.0, 3.0),  # low contrast: still edges to follow
    }
    warned = {}
    for name, pixels in cases.items():
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.clip(np.round(pixels), 0, 255).astype(np.uint8))
        warned[name] = [w for w in read_optical(tmp_path / f"{name}.png").warnings if "uniform" in w]
    assert {name for name, w in warned.items() if w} == {"black", "grey"}
    assert warned["black"] == ["black.png is uniform (each colour within one 8-bit level): a blank image, or the wrong "
                               "file or channel? The fusion has no optical detail to follow and only interpolates the "
                               "ion image"]


def test_what_c_libraries_print_on_stderr_is_captured_not_shown(capfd):
    import os

    from msifusion.io.images import c_stderr_captured

    with c_stderr_captured() as said:
        os.write(2, b"libpng error: Write Error\n")  # as a C library writes it, past Python's sys.stderr
    assert said == ["libpng error: Write Error"] and capfd.readouterr().err == ""
    with c_stderr_captured() as said:
        pass
    assert said == []


def test_tiff_metadata_and_layouts_a_review_found_misread(tmp_path):
    """Each read as a viewer shows it: an OME file's pixel size from its first image (not a label image's after it);
    72 dpi written per cm (GIMP, Photoshop) is no calibration; a dark palette's colours as they are (not taken for a
    12-bit camera's); 4-bit samples in bytes scaled by 15; four greyscale channels refused (the fourth was dropped as
    if it were alpha)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "label_after.ome.tif", ome=True) as tw:
        tw.write(rgb, photometric="rgb", metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(rgb[:32, :32], photometric="rgb", metadata={"PhysicalSizeX": 0.01, "PhysicalSizeXUnit": "mm",
                                                             "PhysicalSizeY": 0.01, "PhysicalSizeYUnit": "mm"})
    assert read_optical(tmp_path / "label_after.ome.tif").pixel_size_um == 0.5
    tifffile.imwrite(tmp_path / "gimp.tif", rgb, resolution=(28.3465, 28.3465), resolutionunit="CENTIMETER")
    assert read_optical(tmp_path / "gimp.tif").pixel_size_um is None
    tifffile.imwrite(tmp_path / "calibrated.tif", rgb, resolution=(200.0, 200.0), resolutionunit="CENTIMETER")
    assert read_optical(tmp_path / "calibrated.tif").pixel_size_um == pytest.approx(50.0)  # an MSI-sized pixel stays
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:] = np.arange(256) * 64  # brightest entry 16320 of 65535
    tifffile.imwrite(tmp_path / "dark_palette.tif", np.full((8, 8), 255, np.uint8), photometric="palette",
                     colormap=colormap)
    assert read_optical(tmp_path / "dark_palette.tif").pixels.max() == pytest.approx(16320 / 65535, abs=1e-6)
    tifffile.imwrite(tmp_path / "four_bits.tif", np.tile(np.arange(16, dtype=np.uint8), (8, 1)), bitspersample=4)
    np.testing.assert_allclose(read_optical(tmp_path / "four_bits.tif").pixels[0, :, 0], np.arange(16) / 15, atol=1e-6)
    samples = rng.integers(0, 4096, (64, 80, 4), dtype=np.uint16)  # a fluorescence image's channels as samples
    tifffile.imwrite(tmp_path / "fluorescence.tif", samples, photometric="minisblack", planarconfig="contig",
                     extrasamples=[0, 0, 0], metadata=None)
    image = read_optical(tmp_path / "fluorescence.tif")  # not its fourth dropped as alpha: composed
    np.testing.assert_array_equal(image.pixels, composite(list(np.moveaxis(samples, -1, 0))))
    assert image.warnings[0].startswith("fluorescence.tif: its 4 channels are read as one colour image")
    tifffile.imwrite(tmp_path / "with_alpha.tif", samples, photometric="minisblack", planarconfig="contig",
                     extrasamples=[0, 0, 2], metadata=None)  # three channels and an alpha
    np.testing.assert_array_equal(read_optical(tmp_path / "with_alpha.tif").pixels,
                                  composite(list(np.moveaxis(samples[..., :3], -1, 0))))
