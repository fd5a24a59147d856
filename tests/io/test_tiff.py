"""TIFF and OME-TIFF (msifusion.io.tiff), through the readers and writers that use it."""

import logging
import re
import struct

import cv2
import numpy as np
import pytest
import tifffile

from msifusion.errors import InputError
from msifusion.io.channels import composite
from msifusion.io.images import file_pixel_size_um, read_ion, read_optical
from msifusion.io.tiff import PYRAMID_ABOVE_PX, halved, pyramid_sizes, write_rgb_tiff, write_tiff


def test_calibrated_tiff_carries_pixel_size_and_channel_names(tmp_path):
    stack = np.random.default_rng(0).random((2, 4, 5)).astype(np.float32)
    path = write_tiff(tmp_path / "stack.ome.tiff", stack, pixel_size_um=2.5, channel_names=["m/z 100.0000", "m/z 200.0000"])
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.asarray(), stack)
        assert 'Name="m/z 100.0000"' in tif.ome_metadata
        assert 'PhysicalSizeX="2.5"' in tif.ome_metadata
        num, den = tif.pages.first.tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 2.5)


def test_the_same_image_written_twice_is_the_same_file(tmp_path):
    """In two folders under one name (the OME image is named after its file: "image")."""
    def at(folder: str):
        (tmp_path / folder).mkdir(exist_ok=True)
        return tmp_path / folder / "image.ome.tiff"

    image = np.random.default_rng(0).random((4, 5)).astype(np.float32)
    first, again = (write_tiff(at(folder), image, pixel_size_um=2.5).read_bytes() for folder in ("a", "b"))
    assert first == again and b'Name="image"' in first
    other = write_tiff(at("c"), image + 1, pixel_size_um=2.5)
    with tifffile.TiffFile(at("a")) as a, tifffile.TiffFile(other) as c:
        uuids = [re.search(r'UUID="urn:uuid:([0-9a-f-]+)"', tif.ome_metadata).group(1) for tif in (a, c)]
    assert uuids[0] != uuids[1]  # a file's UUID still names its content
    rgb = np.random.default_rng(1).random((4, 5, 3))
    assert write_rgb_tiff(at("d"), rgb).read_bytes() == write_rgb_tiff(at("e"), rgb).read_bytes()


def test_rgb_tiff_round_trip_as_optical(tmp_path):
    rgb = np.random.default_rng(0).random((6, 8, 3)).astype(np.float32)
    write_rgb_tiff(tmp_path / "opt.tiff", rgb, pixel_size_um=1.5)
    image = read_optical(tmp_path / "opt.tiff")
    np.testing.assert_allclose(image.pixels, rgb, atol=1 / 255)
    assert image.pixel_size_um == pytest.approx(1.5)


# ----------------------------------------------------------------------------- TIFF colour encodings


@pytest.mark.parametrize("eight_bit_map", [False, True])
def test_palette_tiff_is_read_through_its_colour_map(tmp_path, eight_bit_map):
    index = np.array([[0, 1, 2], [2, 1, 0], [1, 1, 2]], np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :3] = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 51]]).T  # red, green, dark blue
    if not eight_bit_map:  # TIFF's colour map holds 16 bits per channel; some writers put 8-bit values there
        colormap *= 257
    tifffile.imwrite(tmp_path / "palette.tif", index, photometric="palette", colormap=colormap)
    palette = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.2]])
    np.testing.assert_allclose(read_optical(tmp_path / "palette.tif").pixels, palette[index], atol=1e-6)


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_miniswhite_tiff_is_inverted(tmp_path, dtype, top):
    grey = np.array([[0, top], [top // 5, top]], dtype)
    tifffile.imwrite(tmp_path / "white.tif", grey, photometric="miniswhite")
    image = read_optical(tmp_path / "white.tif").pixels
    np.testing.assert_allclose(image[..., 0], [[1.0, 0.0], [0.8, 0.0]], atol=1e-4)
    bilevel = np.array([[True, False], [False, False]])
    tifffile.imwrite(tmp_path / "bits.tif", bilevel, photometric="miniswhite")
    np.testing.assert_array_equal(read_optical(tmp_path / "bits.tif").pixels[..., 1], [[0, 1], [1, 1]])


def test_cmyk_tiff_is_converted_to_rgb(tmp_path):
    cmyk = np.array([[[0, 255, 255, 0], [255, 0, 0, 0]], [[0, 0, 0, 51], [0, 0, 0, 255]]], np.uint8)
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    expected = [[[1, 0, 0], [0, 1, 1]], [[0.8, 0.8, 0.8], [0, 0, 0]]]  # red, cyan, light grey, black
    np.testing.assert_allclose(read_optical(tmp_path / "cmyk.tif").pixels, expected, atol=1e-6)
    # three inks, no black: tifffile will not write it, so an RGB file is relabelled
    tifffile.imwrite(tmp_path / "cmy.tif", cmyk[..., :3], photometric="rgb")
    with tifffile.TiffFile(tmp_path / "cmy.tif", mode="r+b") as tif:
        tif.pages.first.tags["PhotometricInterpretation"].overwrite(5)
    np.testing.assert_allclose(read_optical(tmp_path / "cmy.tif").pixels, [[[1, 0, 0], [0, 1, 1]], [[1, 1, 1]] * 2],
                               atol=1e-6)


@pytest.mark.parametrize("photometric, extratags, message", [
    ("ycbcr", [], "TIFF colour encoding YCBCR"),  # raw, without JPEG compression to decode it
    ("cielab", [], "TIFF colour encoding CIELAB"),
    ("separated", [(332, 3, 1, 2, True)], "non-CMYK ink"),  # InkSet 2: inks other than CMYK
])
def test_unconverted_tiff_colour_encodings_are_refused(tmp_path, photometric, extratags, message):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, np.zeros((4, 6, 4 if photometric == "separated" else 3), np.uint8),
                     photometric=photometric, extratags=extratags)
    with pytest.raises(InputError, match=message) as info:
        read_optical(path)
    assert info.value.source == str(path)


def test_ion_tiff_keeps_its_stored_values_whatever_the_photometric(tmp_path):
    ion = np.array([[1, 2], [3, 250]], np.uint8)
    tifffile.imwrite(tmp_path / "ion.tif", ion, photometric="miniswhite")
    np.testing.assert_array_equal(read_ion(tmp_path / "ion.tif").pixels, ion)


def test_a_grey_image_written_as_h_w_1_is_one_image_not_a_stack(tmp_path):
    """tifffile stores a numpy (H, W, 1) array as one page of axes YXQ: it was refused as "a stack of 20 greyscale
    images of 30×1 px"."""
    import tifffile

    grey = np.arange(600, dtype=np.uint8).reshape(20, 30, 1)
    tifffile.imwrite(tmp_path / "grey.tif", grey, photometric="minisblack")
    pixels = read_optical(tmp_path / "grey.tif").pixels
    assert pixels.shape == (20, 30, 3)
    np.testing.assert_allclose(pixels[..., 1], grey[..., 0] / 255, atol=1e-6)


def test_a_stack_of_four_greyscale_pages_is_not_taken_for_rgba(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((4, 20, 30), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="a stack of 4 greyscale images of 20×30 px"):
        read_optical(tmp_path / "stack.tif")
    planes = np.stack([np.full((20, 30), v, np.uint8) for v in (10, 130, 250)])
    tifffile.imwrite(tmp_path / "z.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match="a stack of 3 greyscale images"):  # three focal planes are no RGB
        read_optical(tmp_path / "z.tif")
    tifffile.imwrite(tmp_path / "rgb_z.ome.tif", np.zeros((2, 20, 30, 3), np.uint8), photometric="rgb", ome=True,
                     metadata={"axes": "ZYXS"})  # a slide scanned at two focal planes
    with pytest.raises(InputError, match="a stack of 2 colour images of 20×30 px .axes ZYXS: focal planes"):
        read_optical(tmp_path / "rgb_z.ome.tif")
    rng = np.random.default_rng(0)
    glowing = rng.random((20, 30)) > 0.6  # tissue glowing over a dark background
    channels = (100 + glowing * rng.integers(0, 4000, (4, 20, 30))).astype(np.uint16)
    for n in (2, 3, 4):  # a microscope's channels (fluorescence), as ImageJ and OME mark them: composed
        for name, kwargs in (("ij.tif", {"imagej": True, "metadata": {"axes": "CYX"}}),
                             ("c.ome.tif", {"metadata": {"axes": "CYX", "Channel": {"Name": list("ABCD"[:n])}}})):
            tifffile.imwrite(tmp_path / name, channels[:n], **kwargs)
            image = read_optical(tmp_path / name)
            np.testing.assert_array_equal(image.pixels, composite(list(channels[:n])))
            assert image.warnings[0].startswith(f"{name}: its {n} channels" + (f" ({', '.join('ABCD'[:n])})"
                                                                               if "ome" in name else " are read"))
    stained = rng.integers(0, 256, (3, 20, 30)).astype(np.uint8)  # a bright field's RGB as three channel planes, as
    for metadata in ({}, {"Channel": {"Name": ["Red", "Green", "Blue"]}}):  # raw2ometiff writes it (unnamed): RGB
        tifffile.imwrite(tmp_path / "he.ome.tif", stained, metadata={"axes": "CYX", **metadata})
        image = read_optical(tmp_path / "he.ome.tif")
        np.testing.assert_allclose(image.pixels, np.moveaxis(stained, 0, -1) / 255)
        assert image.channels == 0 and image.warnings == ()
    ome = tmp_path / "he.ome.tif"  # unnamed but described as fluorescence: channels
    with tifffile.TiffFile(ome) as tif:
        xml = tif.ome_metadata.replace('<Channel ID="Channel:0:0"', '<Channel EmissionWavelength="461" '
                                                                    'ID="Channel:0:0"')
    tifffile.imwrite(ome, stained, description=xml.encode(), metadata=None, photometric="minisblack")
    assert read_optical(ome).channels == 3
    planar = tmp_path / "planar.tif"  # a greyscale page's extra samples stored as planes (axes SYX)
    tifffile.imwrite(planar, channels[:3], photometric="minisblack", planarconfig="separate", extrasamples=[0, 0])
    np.testing.assert_array_equal(read_optical(planar).pixels, composite(list(channels[:3])))
    tifffile.imwrite(tmp_path / "pages.tif", np.moveaxis(channels[:3], 0, -1)[None].repeat(2, 0),
                     photometric="minisblack", extrasamples=[0, 0])  # pages of such samples: no composite, refused
    with pytest.raises(InputError, match=r"pages.tif: optical image has shape \(2, 20, 30, 3\)"):
        read_optical(tmp_path / "pages.tif")
    for axes in ("ZCYX", "CZYX", "TZCYX"):  # a hyperstack: channels in several planes
        shape = {"T": 2, "Z": 3, "C": 2, "Y": 20, "X": 30}
        tifffile.imwrite(tmp_path / "zc.ome.tif", np.zeros([shape[a] for a in axes], np.uint16),
                         metadata={"axes": axes})
        held = " of ".join(f"{shape[a]} {name}" for a, name in zip("TZC", ("time points", "focal planes", "channels"))
                           if a in axes) if axes != "CZYX" else "2 channels of 3 focal planes"
        with pytest.raises(InputError, match=f"zc.ome.tif: a stack of {held}, 20×30 px .axes {axes}., not one image; "
                                             "keep the focal plane that shows the tissue sharpest, with all its "
                                             "channels"):
            read_optical(tmp_path / "zc.ome.tif")
    rgba = np.zeros((4, 20, 30), np.uint8)
    rgba[0] = 255  # planar RGBA: red, alpha dropped
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", planarconfig="separate", extrasamples=[2])
    np.testing.assert_array_equal(read_optical(tmp_path / "rgba.tif").pixels[0, 0], [1.0, 0.0, 0.0])


# ----------------------------------------------------------------------------- calibration units


@pytest.mark.parametrize("size, unit, expected", [
    (5000, "Å", 0.5), (250, "nm", 0.25), (0.002, "mm", 2.0), (1.5, "µm", 1.5),
    (3, "pixel", None), (1, "ft", None), (2, "furlong", None),  # not µm: uncalibrated, never 1 unit = 1 µm
    (2e6, "µm", None), (1e-6, "µm", None), (2, "m", None),  # implausible pixel sizes: wrong metadata
])
def test_ome_pixel_size_units(tmp_path, size, unit, expected):
    path = tmp_path / "unit.ome.tif"
    metadata = {"PhysicalSizeX": size, "PhysicalSizeXUnit": unit}
    tifffile.imwrite(path, np.ones((4, 5), np.uint8), ome=True, metadata=metadata)
    pixel_size = read_optical(path).pixel_size_um
    assert pixel_size == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("per_unit, unit, expected", [
    (25400 / 2, "INCH", 2.0), (72, "INCH", None),  # screen dpi is no calibration
    (1e4 / 0.5, "CENTIMETER", 0.5), (1e-3, "CENTIMETER", None),  # 10 m pixels: implausible
])
def test_resolution_tag_units(tmp_path, per_unit, unit, expected):
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, np.ones((4, 5), np.float32), resolution=(per_unit, per_unit), resolutionunit=unit)
    pixel_size = read_ion(path).pixel_size_um
    assert pixel_size == (None if expected is None else pytest.approx(expected))


def test_imagej_units(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.ones((4, 5), np.float32), imagej=True, resolution=(0.5, 0.5), metadata={"unit": "nm"})
    assert read_ion(path).pixel_size_um == pytest.approx(2e-3)
    tifffile.imwrite(path, np.ones((4, 5), np.float32), imagej=True, resolution=(0.5, 0.5), metadata={"unit": "A"})
    assert read_ion(path).pixel_size_um is None  # "A" is not a unit ImageJ saves (it saves "Å")


def test_a_calibrated_pyramid_is_read_at_the_coarsest_level_fine_enough(tmp_path, write_pyramid):
    rng = np.random.default_rng(3)
    full = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    # a slide scanner's OME pyramid: 0.5 µm, then 1 µm and 2 µm levels
    path = write_pyramid(tmp_path / "slide.ome.tif", [full, full[::2, ::2], full[::4, ::4]],
                         {"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    for needed, shape, size in [(None, (64, 96), 0.5), (0.3, (64, 96), 0.5), (1.2, (32, 48), 1.0), (5.0, (16, 24), 2.0)]:
        image = read_optical(path, needed)
        assert image.pixels.shape[:2] == shape and image.pixel_size_um == pytest.approx(size)
        assert image.origin_um == pytest.approx(((size - 0.5) / 2,) * 2)  # its first pixel spans the scan's first ones
    np.testing.assert_allclose(read_optical(path, 5.0).pixels, full[::4, ::4] / 255, atol=1e-6)
    assert read_optical(path, 5.0).downsample == 4 and read_optical(path).downsample == 1


@pytest.mark.parametrize("metadata", [{}, {"PhysicalSizeX": 1000.0, "PhysicalSizeY": 1000.0}])  # none, or wrong
def test_a_pyramid_under_a_stated_pixel_size_is_read_at_its_level(tmp_path, metadata, write_pyramid):
    """``--optical-pixel-size`` in place of a pyramid's missing or wrong calibration still picks the level."""
    full = (np.random.default_rng(4).random((64, 96, 3)) * 255).astype(np.uint8)
    path = write_pyramid(tmp_path / "slide.ome.tif", [full, full[::2, ::2], full[::4, ::4]], metadata)
    image = read_optical(path, 1.2, pixel_size_um=0.5)
    assert image.pixels.shape[:2] == (32, 48) and image.pixel_size_um == pytest.approx(1.0)
    assert image.downsample == 2 and image.origin_um == pytest.approx((0.25, 0.25))
    assert image.calibration_note is None
    assert read_optical(path, None, pixel_size_um=0.5).pixels.shape[:2] == (64, 96)
    assert file_pixel_size_um(path) == (metadata.get("PhysicalSizeX"))
    # levels halved and rounded up, as libvips makes them: still ×2, ×4 and ×8
    odd = write_pyramid(tmp_path / "odd.ome.tif", [np.zeros((*shape, 3), np.uint8) for shape in
                                                   ((1001, 999), (501, 500), (251, 250), (126, 125))])
    level = read_optical(odd, 4.0, pixel_size_um=0.5)
    assert level.downsample == 8 and level.pixel_size_um == 4.0 and level.origin_um == (1.75, 1.75)
    assert level.full_shape == (1001, 999) and read_optical(odd).full_shape is None
    png = tmp_path / "slide.png"
    cv2.imwrite(str(png), full)
    assert read_optical(png, 1.2, pixel_size_um=0.5).pixel_size_um == 0.5 and file_pixel_size_um(png) is None


def test_an_aperio_slide_is_read_at_its_level_with_its_mpp(tmp_path, write_svs):
    """An .svs: calibrated by the MPP in its description, read at the coarsest level fine enough, never its
    thumbnail, label or macro; renamed to .tif it reads the same (by content, not by name)."""
    full = (np.random.default_rng(5).random((64, 96, 3)) * 255).astype(np.uint8)
    path = write_svs(tmp_path / "slide.svs", [full, full[::4, ::4]])
    image = read_optical(path)
    assert image.pixels.shape == (64, 96, 3) and image.pixel_size_um == pytest.approx(0.499)
    np.testing.assert_allclose(image.pixels, full / 255, atol=1e-6)
    level = read_optical(path, 2.5)
    assert level.pixels.shape[:2] == (16, 24) and level.pixel_size_um == pytest.approx(4 * 0.499)
    assert level.downsample == 4 and level.origin_um == pytest.approx((1.5 * 0.499,) * 2)
    np.testing.assert_allclose(level.pixels, full[::4, ::4] / 255, atol=1e-6)
    coarsest = read_optical(path, 10.0)  # the ×8 thumbnail, label and macro would be coarser still: not levels
    assert coarsest.pixels.shape[:2] == (16, 24) and coarsest.downsample == 4
    assert file_pixel_size_um(path) == pytest.approx(0.499)
    renamed = tmp_path / "slide.tif"
    renamed.write_bytes(path.read_bytes())
    assert read_optical(renamed).pixel_size_um == pytest.approx(0.499)


@pytest.mark.parametrize("mpp, size, note", [(None, None, None), ("n/a", None, "its Aperio MPP 'n/a' is not a number"),
                                             ("0.0001", None, "implausible")])
def test_an_aperio_slide_without_a_usable_mpp_is_uncalibrated(tmp_path, write_svs, mpp, size, note):
    image = read_optical(write_svs(tmp_path / "slide.svs", [np.zeros((32, 32, 3), np.uint8)], mpp))
    assert image.pixel_size_um == size
    assert (image.calibration_note is None) if note is None else note in image.calibration_note


def test_a_hamamatsu_ndpi_is_read_at_its_level_with_its_resolution(tmp_path, write_ndpi):
    """An .ndpi (NDP.scan's TIFF-like layout, one JPEG per level, the full resolution's decoded tile by tile from its
    restart markers): calibrated by its resolution in pixels per cm, read at the coarsest level fine enough, never its
    macro photograph, wherever that lies in the file."""
    rows, cols = np.mgrid[0:64, 0:96]
    full = np.stack([cols * 2, rows * 3, 255 - cols - rows], -1).astype(np.uint8)
    levels = [full, cv2.resize(full, (48, 32), interpolation=cv2.INTER_AREA),
              cv2.resize(full, (24, 16), interpolation=cv2.INTER_AREA)]
    path = write_ndpi(tmp_path / "slide.ndpi", levels)
    image = read_optical(path)
    assert image.pixels.shape == (64, 96, 3) and image.pixel_size_um == pytest.approx(0.25)  # 10⁴ µm / 40000
    assert np.abs(image.pixels * 255 - full).mean() < 3  # JPEG at quality 100, chroma halved
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].keyframe.is_tiled  # by McuStarts, as a level wider than a JPEG's 65535 px must be read
    macro_first = read_optical(write_ndpi(tmp_path / "macro_first.ndpi", levels, macro_first=True), 1.2)
    assert macro_first.pixel_size_um == pytest.approx(1.0) and macro_first.pixels.shape[:2] == (16, 24)
    level = read_optical(path, 1.2)
    assert level.pixels.shape[:2] == (16, 24) and level.pixel_size_um == pytest.approx(1.0)
    assert level.downsample == 4 and level.full_shape == (64, 96) and level.origin_um == pytest.approx((0.375,) * 2)
    assert np.abs(level.pixels * 255 - levels[2]).mean() < 3
    assert read_optical(path, 100.0).pixels.shape[:2] == (16, 24)  # the 20×50 macro is no level
    assert file_pixel_size_um(path) == pytest.approx(0.25)
    cut = tmp_path / "cut.ndpi"
    cut.write_bytes(path.read_bytes()[:-40])  # the last page's tags cut short
    with pytest.raises(InputError, match=r"cut.ndpi: cannot read TIFF: it is truncated or damaged \(error: unpack"):
        read_optical(cut)
    data = (tmp_path / "macro_first.ndpi").read_bytes()
    first = struct.unpack_from("<I", data, 4)[0]  # the macro's page: its tags, next-page offset and high bits
    cut.write_bytes(data[:first + 2 + 16 * struct.unpack_from("<H", data, first)[0] + 8])  # the scan's pages gone
    with pytest.raises(InputError, match=r"cut.ndpi: cannot read TIFF: it is truncated or damaged \(IndexError: an "
                                         r"NDPI with no scan, only its macro photograph or map\)"):
        read_optical(cut)  # not the macro read as the image
    assert file_pixel_size_um(cut) is None


def test_an_ndpi_of_several_focal_planes_is_refused_as_a_stack(tmp_path, write_ndpi):
    path = write_ndpi(tmp_path / "z.ndpi", [np.zeros((32, 48, 3), np.uint8)], planes=3)
    with pytest.raises(InputError, match=r"z.ndpi: a stack of 3 colour images of 32×48 px \(axes ZYXS: focal planes "
                                         r"or time points\), not one image; keep the one that shows the tissue and "
                                         r"export it as an OME-TIFF"):
        read_optical(path)


def _non_square_tiffs(tmp_path):
    """An OME-TIFF stating X 25 µm, Y 50 µm (Y in mm) and a plain TIFF whose resolution tags differ the same way."""
    pixels = np.arange(48, dtype=np.float32).reshape(6, 8) + 1
    ome = tmp_path / "ion.ome.tif"
    tifffile.imwrite(ome, pixels, ome=True, metadata={"PhysicalSizeX": 25, "PhysicalSizeXUnit": "µm",
                                                      "PhysicalSizeY": 0.05, "PhysicalSizeYUnit": "mm"})
    tags = tmp_path / "ion.tif"
    tifffile.imwrite(tags, pixels, resolution=(1e4 / 25, 1e4 / 50), resolutionunit="CENTIMETER")
    return [ome, tags]


@pytest.mark.parametrize("reader", [read_ion, read_optical])
def test_non_square_tiff_pixels_are_read_as_uncalibrated_not_made_square(tmp_path, reader):
    for path in _non_square_tiffs(tmp_path):
        image = reader(path)
        assert image.pixel_size_um is None and image.pixels.shape[:2] == (6, 8)


@pytest.mark.parametrize("metadata, resolution, expected", [
    ({"PhysicalSizeX": 25, "PhysicalSizeY": 0.025, "PhysicalSizeYUnit": "mm"}, None, 25.0),  # same size, other unit
    ({"PhysicalSizeX": 25, "PhysicalSizeY": 25.02}, None, 25.0),  # 0.08 % apart: one size (the X one)
    (None, (400.0, 400.2), 25.0),  # resolution tags 0.05 % apart, as rounding makes them
])
def test_square_or_nearly_square_calibration_is_read(tmp_path, metadata, resolution, expected):
    path = tmp_path / "ion.tif"
    pixels = np.arange(20, dtype=np.float32).reshape(4, 5) + 1
    if metadata is not None:
        tifffile.imwrite(path, pixels, ome=True, metadata=metadata)
    else:
        tifffile.imwrite(path, pixels, resolution=resolution, resolutionunit="CENTIMETER")
    assert read_ion(path).pixel_size_um == pytest.approx(expected)


# ----------------------------------------------------------------------------- why a calibration was ignored


def _ome(path, **metadata):
    tifffile.imwrite(path, np.ones((4, 5), np.float32), ome=True, metadata=metadata)


@pytest.mark.parametrize("write, note, size", [
    (lambda p: _ome(p, PhysicalSizeX=3, PhysicalSizeXUnit="pixel"),
     "its OME PhysicalSizeXUnit 'pixel' is not a length unit msifusion knows", None),
    (lambda p: _ome(p, PhysicalSizeX=2e6, PhysicalSizeXUnit="µm"),
     "its pixel size 2e+06 µm is implausible (not between 0.001 and 100000 µm)", None),
    (lambda p: tifffile.imwrite(p, np.ones((4, 5), np.float32), resolution=(1e4 / 25, 1e4 / 50),
                                resolutionunit="CENTIMETER"),
     "its pixels are not square (25 × 50 µm) and msifusion models square pixels", None),
    (lambda p: tifffile.imwrite(p, np.ones((4, 5), np.float32), imagej=True, resolution=(0.5, 0.5),
                                metadata={"unit": "A"}),
     "its ImageJ unit 'A' is not a length unit msifusion knows", None),
    (lambda p: _ome(p, PhysicalSizeX=2.5, PhysicalSizeXUnit="µm"), None, 2.5),  # used: nothing to say
    (lambda p: tifffile.imwrite(p, np.ones((4, 5), np.float32)), None, None),  # no calibration stated
    (lambda p: tifffile.imwrite(p, np.ones((4, 5), np.float32), resolution=(72, 72), resolutionunit="INCH"), None,
     None),  # screen dpi: no calibration
])
@pytest.mark.parametrize("reader", [read_ion, read_optical])
def test_an_ignored_calibration_carries_its_reason(tmp_path, write, note, size, reader):
    path = tmp_path / "image.ome.tif"
    write(path)
    image = reader(path)
    assert image.calibration_note == note
    assert image.pixel_size_um == (None if size is None else pytest.approx(size))


@pytest.mark.parametrize("compression, said", [(None, "it is truncated"), ("zlib", "it is truncated or damaged"),
                                               ("jpeg", "it is truncated or damaged")])
def test_a_truncated_tiff_is_one_line_that_says_so(tmp_path, compression, said):
    if compression == "jpeg":
        pytest.importorskip("imagecodecs")  # a dependency; tifffile falls back to Python's zlib alone without it
    rng = np.random.default_rng(0)
    rgb = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
    whole, cut = tmp_path / "whole.tif", tmp_path / "cut.tif"
    tifffile.imwrite(whole, rgb, photometric="rgb", compression=compression, rowsperstrip=16)
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(InputError, match=f"^{cut}: cannot read TIFF: {said} "):
        read_optical(cut)


def test_a_tiff_read_in_spite_of_a_fault_is_warned_about_not_logged(tmp_path, caplog):
    """tifffile logs a fault it reads past (here the OME description, written after the pixels, cut off: the pixels
    are whole, the pixel size is lost); msifusion reports it as the file's warning, and tifffile prints nothing."""
    grey = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)  # an optical, or an ion image
    whole, cut = tmp_path / "whole.ome.tif", tmp_path / "cut.ome.tif"
    tifffile.imwrite(whole, grey, metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    data = whole.read_bytes()
    cut.write_bytes(data[:data.index(b"<?xml") + 10])
    assert read_optical(whole).warnings == () and read_optical(whole).pixel_size_um == pytest.approx(0.5)
    with caplog.at_level(logging.DEBUG):
        optical, ion = read_optical(cut), read_ion(cut)
    assert caplog.records == []
    assert np.array_equal(optical.pixels, read_optical(whole).pixels) and optical.pixel_size_um is None
    assert np.array_equal(ion.pixels, grey)
    for image in (optical, ion):
        assert len(image.warnings) == 1
        assert re.match(r"cut.ome.tif looks damaged or cut short: tifffile read it in spite of a fault \(.*invalid "
                        r"value offset \d+'\)\); check its pixels and pixel size, or export it again$",
                        image.warnings[0])
    assert file_pixel_size_um(cut) is None and caplog.records == []
    assert logging.getLogger("tifffile").filters == []  # the logger as it was
    tifffile.TiffFile(cut).close()
    assert caplog.records  # tifffile does log this fault, outside msifusion's reads


def test_a_tiff_cut_short_logs_nothing_above_its_one_line(tmp_path, caplog):
    whole, cut = tmp_path / "whole.ome.tif", tmp_path / "cut.ome.tif"
    tifffile.imwrite(whole, np.zeros((64, 64, 3), np.uint8), metadata={"axes": "YXS", "PhysicalSizeX": 0.5})
    cut.write_bytes(whole.read_bytes()[:2000])
    with caplog.at_level(logging.DEBUG), pytest.raises(InputError, match=f"^{cut}: cannot read TIFF: it is truncated"):
        read_optical(cut)
    assert caplog.records == []


def test_an_ion_stack_given_as_the_optical_is_refused(tmp_path):
    stack = np.random.default_rng(0).random((3, 8, 10)).astype(np.float32) * 22
    path = write_tiff(tmp_path / "fused.ome.tiff", stack, 2.0, ["m/z 100.0000", "m/z 200.0000", "m/z 300.0000"])
    with pytest.raises(InputError, match=r"its channels are ion images \(m/z 100.0000, m/z 200.0000, m/z 300.0000\), "
                                         "not a microscope image"):
        read_optical(path)
    assert read_ion(write_tiff(tmp_path / "one.tiff", stack[0], 2.0, ["m/z 100.0000"])).pixels.shape == (8, 10)


def test_a_stack_given_page_by_page_is_the_same_file_as_the_stacked_array(tmp_path):
    pages = [np.random.default_rng(k).random((6, 9)).astype(np.float32) for k in range(3)]
    names = ["m/z 100.0000", "m/z 200.0000", "m/z 300.0000"]
    (tmp_path / "paged").mkdir()
    whole = write_tiff(tmp_path / "stack.ome.tiff", np.stack(pages), 2.5, names)
    paged = write_tiff(tmp_path / "paged" / "stack.ome.tiff", pages, 2.5, names)
    assert paged.read_bytes() == whole.read_bytes()  # pixels, calibration, channel names and content UUID alike
    with pytest.raises(ValueError, match="one shape"):
        write_tiff(tmp_path / "bad.ome.tiff", [pages[0], pages[1][:5]], 2.5)


def test_python_zlib_errors_are_the_same_one_line(tmp_path, monkeypatch):
    import zlib

    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    path = tmp_path / "deflate.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", compression="zlib")

    def broken(*args, **kwargs):  # what tifffile's fallback decoder raises on a cut stream, without imagecodecs
        raise zlib.error("Error -5 while decompressing data: incomplete or truncated stream")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", broken)
    with pytest.raises(InputError, match=f"^{path}: cannot read TIFF: it is truncated or damaged \\(error: Error -5"):
        read_optical(path)


@pytest.mark.parametrize("data, size, error, message", [
    (np.zeros((4, 5)), 25e-6, InputError, r"^pixel_size_um: pixel size 2.5e-05 µm is outside 0.001–100000 µm"),
    (np.zeros((4, 5)), -1.0, InputError, r"^pixel_size_um: pixel size must be a positive number, got -1"),
    (np.zeros((40, 50, 3)), 1.0, ValueError, r"got shape \(40, 50, 3\); a colour image \(H, W, 3\) is written by "
                                             r"write_rgb_tiff$"),
])
def test_write_tiff_refuses_what_would_come_back_wrong(tmp_path, data, size, error, message):
    with pytest.raises(error, match=message):
        write_tiff(tmp_path / "x.tiff", data, size)
    assert not (tmp_path / "x.tiff").exists()


@pytest.mark.parametrize("height, width, levels", [
    (4096, 600, 0), (4097, 600, 3), (600, 4097, 3), (4820, 11920, 4), (8192, 8192, 3), (8193, 600, 4),
    (5000, 7, 0), (5000, 512, 0),  # a thin strip: nothing to gain, and ImageJ's own opener reads it untiled
])
def test_pyramids_halve_large_images_down_to_a_viewer_sized_top(height, width, levels):
    sizes = pyramid_sizes(height, width)
    assert len(sizes) == levels + 1 and sizes[0] == (height, width)
    assert all(size == (-(-h // 2), -(-w // 2)) for size, (h, w) in zip(sizes[1:], sizes))
    assert max(sizes[-1]) <= 1024 or levels == 0


def test_halving_averages_each_2x2_and_keeps_an_odd_edge():
    page = np.arange(15, dtype=np.float32).reshape(3, 5)
    np.testing.assert_array_equal(halved(page), [[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]])
    rgb = np.full((3, 3, 3), 200, np.uint8)
    rgb[0, 0] = 1
    assert halved(rgb).dtype == np.uint8 and halved(rgb)[0, 0, 0] == 150  # (1 + 3·200) / 4, rounded


def test_outputs_are_compressed_and_large_ones_tiled_with_a_pyramid(tmp_path):
    small = np.zeros((40, 50), np.float32)
    with tifffile.TiffFile(write_tiff(tmp_path / "small.tiff", small, 2.0)) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and not tif.pages.first.is_tiled
        assert len(tif.series[0].levels) == 1  # ImageJ's own opener reads stripped TIFFs only
    stack = np.random.default_rng(0).random((2, PYRAMID_ABOVE_PX + 1, 520)).astype(np.float32)
    path = write_tiff(tmp_path / "large.ome.tiff", list(stack), 0.5, ["m/z 1", "m/z 2"])
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [level.shape for level in levels] == [(2, 4097, 520), (2, 2049, 260), (2, 1025, 130), (2, 513, 65)]
        assert tif.pages.first.is_tiled and tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert [level.keyframe.subfiletype for level in levels] == [0, 1, 1, 1]  # reduced-resolution images
        np.testing.assert_array_equal(levels[0].asarray(), stack)
        np.testing.assert_allclose(levels[1].asarray()[1, 0, 0], stack[1, :2, :2].mean(), rtol=1e-6)
        num, den = levels[2].keyframe.tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 0.5 / 4)  # each level calibrated at its own pixel size
    rgb = np.random.default_rng(1).random((PYRAMID_ABOVE_PX + 1, 600, 3))
    written = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    path = write_rgb_tiff(tmp_path / "opt.tiff", rgb, 0.5)
    image = read_optical(path, 2.0)
    assert image.pixels.shape[:2] == (1025, 150) and image.pixel_size_um == pytest.approx(2.0)
    np.testing.assert_allclose(image.pixels, halved(halved(written)) / 255, atol=1e-6)


def test_keeping_each_pyramid_level_to_halve_the_next_writes_the_same_bytes(tmp_path, monkeypatch):
    import msifusion.io.tiff as tiff

    calls = []
    monkeypatch.setattr(tiff, "halved", lambda page: calls.append(page.shape) or halved(page))
    stack = np.random.default_rng(2).random((2, PYRAMID_ABOVE_PX + 1, 520)).astype(np.float32)
    kept = write_tiff(tmp_path / "kept.ome.tiff", list(stack), 0.5).read_bytes()
    assert len(calls) == 2 * 3  # each page halved once per level below the first
    calls.clear()
    monkeypatch.setattr(tiff, "KEEP_LEVELS_BYTES", 0)  # a stack too large to keep: halved from full size each time
    (tmp_path / "again").mkdir()
    again = write_tiff(tmp_path / "again" / "kept.ome.tiff", list(stack), 0.5).read_bytes()
    assert len(calls) == 2 * (1 + 2 + 3) and again == kept


def test_an_optical_beyond_this_machines_memory_is_refused_before_decoding(tmp_path, monkeypatch, write_svs):
    """The pixels and their float32 RGB copy (12 bytes a pixel) must fit; else one line, not the system's kill."""
    import msifusion.runtime as runtime

    full = np.zeros((64, 96, 3), np.uint8)
    path = write_svs(tmp_path / "slide.svs", [full, full[::4, ::4]])
    monkeypatch.setattr(runtime, "machine_memory_bytes", lambda: 64 * 96 * 15 - 1)  # one byte short of the full scan
    with monkeypatch.context() as undecoded:
        undecoded.setattr(tifffile.TiffPageSeries, "asarray", lambda *a, **k: pytest.fail("decoded before refusing"))
        with pytest.raises(InputError, match=r"slide.svs: 64×96 px needs about [\d.]+ [kMG]B to read, more than this "
                                             r"machine's [\d.]+ [kMG]B of memory; .* \(it is a pyramid: "
                                             r"`register` and"):
            read_optical(path)
    assert read_optical(path, 2.5).pixels.shape == (16, 24, 3)  # the level it needs fits
    monkeypatch.setattr(runtime, "machine_memory_bytes", lambda: 16 * 24 * 15 - 1)
    with pytest.raises(InputError, match=r"16×24 px needs .* [kMG]B of memory; save a copy downsampled to the fused "
                                         r"grid's pixel size$"):  # a level asked for: no advice to ask for one
        read_optical(path, 2.5)
    monkeypatch.setattr(runtime, "machine_memory_bytes", lambda: 64 * 96 * 15)
    assert read_optical(path).pixels.shape == (64, 96, 3)
    stack = tmp_path / "planes.ome.tif"  # a stack is refused for what it is before its size counts
    tifffile.imwrite(stack, np.zeros((5, 64, 96, 3), np.uint8), photometric="rgb", ome=True, metadata={"axes": "ZYXS"})
    with pytest.raises(InputError, match="a stack of 5 colour images"):
        read_optical(stack)
