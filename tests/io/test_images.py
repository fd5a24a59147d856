import re

import numpy as np
import pytest
import tifffile

from msifusion.errors import InputError
from msifusion.io.images import optical_to_rgb, read_ion, read_optical, write_rgb_tiff, write_tiff


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


def test_csv_with_header_and_row_labels_semicolons(tmp_path):
    path = tmp_path / "cardinal.csv"
    path.write_text('"","V1","V2","V3"\n"1";1;2;3\n"2";4;5;6\n'.replace(",", ";"))
    np.testing.assert_array_equal(read_ion(path).pixels, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("text", [
    ",0,1,2\n0,1,2,3\n1,4,5,6\n",  # pandas DataFrame.to_csv(): empty corner, column numbers, row index
    ",1,2,3\n1,1,2,3\n2,4,5,6\n",  # numbered from 1
    '"","V1","V2","V3"\n"1",1,2,3\n"2",4,5,6\n',  # R's write.csv
])
def test_matrix_exports_skip_their_labels(tmp_path, text):
    path = tmp_path / "export.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_ion(path).pixels, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("text, shape", [("0,1,2\n1,2,3\n4,5,6\n", (3, 3)), ("1,2,3,4\n0,5,2,1\n3,3,0,2\n", (3, 4))])
def test_a_first_row_of_small_integers_is_data(tmp_path, text, shape):
    path = tmp_path / "counts.csv"
    path.write_text(text)
    assert read_ion(path).pixels.shape == shape


@pytest.mark.parametrize("text, expected, warned", [
    ("0,1,2\n5,6,7\n8,9,10\n", [[0, 1, 2], [5, 6, 7], [8, 9, 10]], True),  # maybe pandas' header: kept, told
    ("3,1,2\n5,6,7\n8,9,10\n", [[3, 1, 2], [5, 6, 7], [8, 9, 10]], False),  # an ordinary table of integers
    (",".join(map(str, range(10))) + "\n" + ",".join(["7"] * 10) + "\n" + ",".join(["8"] * 10) + "\n",
     [[7] * 10, [8] * 10], False),  # wide: the counted header is dropped
])
def test_a_first_row_counting_the_columns_kept_as_data_is_warned_about(tmp_path, text, expected, warned):
    path = tmp_path / "pandas.csv"
    path.write_text(text)
    image = read_ion(path)
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.warnings == (("pandas.csv: its first row (0, 1, 2) counts the columns and was read as pixel values; "
                               "if it is pandas' column-number header, delete that row (or write the table with "
                               "header=False)",) if warned else ())


def test_an_empty_corner_before_data_is_a_missing_value(tmp_path):
    path = tmp_path / "nan_corner.csv"
    path.write_text(",2,3,4\n5,6,7,8\n9,10,11,12\n")
    with pytest.raises(InputError, match="1 NaN/inf pixel"):
        read_ion(path)


def test_long_table_with_pandas_index_column(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text(",x,y,intensity\n0,1,1,5\n1,2,1,6\n2,2,2,7\n")
    np.testing.assert_array_equal(read_ion(path).pixels, [[5, 6], [0, 7]])


@pytest.mark.parametrize("text, message", [
    ("x,y,mz_885,tic\n1,1,5,100\n2,1,6,90\n", "exactly one intensity column beside x and y, found: mz_885, tic"),
    ("x,y,intensity\n1,1,5\n2,1,6\n1,1,999\n", "pixel x=1, y=1 appears 2 times"),
    ("x,y,v\n1,1,5\n1,1,6\n2,1,1\n2,1,1\n2,1,1\n", "pixel x=1, y=1 appears 2 times"),
    ("x,y,v\n0,0,5\n25,0,6\n50,25,7\n", "advance in steps of 25, not 1: they look like positions in µm"),
])
def test_ambiguous_long_tables_are_refused(tmp_path, text, message):
    path = tmp_path / "long.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_ion(path)


def test_long_table_is_pivoted_with_missing_pixels_zero(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("x,y,intensity\n1,1,5\n2,1,6\n3,2,7\n")
    np.testing.assert_array_equal(read_ion(path).pixels, [[5, 6, 0], [0, 0, 7]])


@pytest.mark.parametrize("rows, expected", [
    # 1-based (imzML, R), off-tissue first row and column dropped: they stay, as zeros
    ("2,2,5\n3,2,6\n3,3,7\n", [[0, 0, 0], [0, 5, 6], [0, 0, 7]]),
    # 0-based: a 0 anywhere decides
    ("0,1,5\n2,1,6\n2,2,7\n", [[0, 0, 0], [5, 0, 6], [0, 0, 7]]),
    # smallest coordinate larger than 1: still 1-based
    ("3,4,5\n4,4,6\n", [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 5, 6]]),
])
def test_long_table_keeps_its_origin_when_edge_pixels_are_absent(tmp_path, rows, expected):
    path = tmp_path / "long.csv"
    path.write_text("x,y,intensity\n" + rows)
    np.testing.assert_array_equal(read_ion(path).pixels, expected)


def test_a_scils_lab_export_with_its_spot_index_is_a_long_table(tmp_path):
    path = tmp_path / "scils.csv"
    path.write_text("# Exported from SCiLS Lab\nSpot index;x;y;885.55\n0;0;0;1.5\n1;1;0;2.5\n2;0;1;3.5\n3;1;1;4.5\n")
    np.testing.assert_array_equal(read_ion(path).pixels, [[1.5, 2.5], [3.5, 4.5]])


def test_long_table_refuses_negative_coordinates(tmp_path):
    path = tmp_path / "neg.csv"
    path.write_text("x,y,intensity\n-1,0,5\n1,1,6\n")
    with pytest.raises(InputError, match="negative pixel coordinate -1 in the x/y columns; subtract the smallest") as info:
        read_ion(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize(
    "content, message",
    [("1,2\n3\n", "row 2 has 1 values"), ("1,2\n3,abc\n", "non-numeric"), ("1,NA\n3,4\n", "NaN"), ("0,0\n0,0\n", "all zero")],
)
def test_bad_tables(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        read_ion(path)
    assert "bad.csv" in str(info.value)


def test_ion_must_be_2d(tmp_path):
    np.save(tmp_path / "cube.npy", np.ones((3, 4, 5)))
    with pytest.raises(InputError, match="2-D"):
        read_ion(tmp_path / "cube.npy")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_ion(tmp_path / "nothing.tiff")
    (tmp_path / "ion.xyz").write_text("1")
    with pytest.raises(InputError, match="unsupported"):
        read_ion(tmp_path / "ion.xyz")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot decode"):
        read_optical(tmp_path / "broken.png")


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
    image = np.random.default_rng(0).random((4, 5)).astype(np.float32)
    first, again = (write_tiff(tmp_path / name, image, pixel_size_um=2.5).read_bytes() for name in ("a.tiff", "b.tiff"))
    assert first == again
    other = write_tiff(tmp_path / "c.tiff", image + 1, pixel_size_um=2.5)
    with tifffile.TiffFile(tmp_path / "a.tiff") as a, tifffile.TiffFile(other) as c:
        uuids = [re.search(r'UUID="urn:uuid:([0-9a-f-]+)"', tif.ome_metadata).group(1) for tif in (a, c)]
    assert uuids[0] != uuids[1]  # a file's UUID still names its content
    rgb = np.random.default_rng(1).random((4, 5, 3))
    assert (write_rgb_tiff(tmp_path / "d.tiff", rgb).read_bytes() == write_rgb_tiff(tmp_path / "e.tiff", rgb).read_bytes())


def test_rgb_tiff_round_trip_as_optical(tmp_path):
    rgb = np.random.default_rng(0).random((6, 8, 3)).astype(np.float32)
    write_rgb_tiff(tmp_path / "opt.tiff", rgb, pixel_size_um=1.5)
    image = read_optical(tmp_path / "opt.tiff")
    np.testing.assert_allclose(image.pixels, rgb, atol=1 / 255)
    assert image.pixel_size_um == pytest.approx(1.5)


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


# ----------------------------------------------------------------------------- wide integers


def test_wide_integer_optical_is_scaled_by_its_own_maximum(tmp_path):
    grey = np.array([[0, 1000], [2000, 4000]], np.uint32)
    tifffile.imwrite(tmp_path / "u32.tif", grey)
    np.testing.assert_allclose(read_optical(tmp_path / "u32.tif").pixels[..., 0], [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(optical_to_rgb(grey.astype(np.int64))[..., 2], [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(optical_to_rgb(np.array([[-10, 0], [10, 30]], np.int32))[..., 0], [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(optical_to_rgb(np.array([[0, 1000], [0, 0]], np.uint16))[0, 1], 1000 / 65535)
    # signed 8/16-bit: by the type's maximum without negatives, min-max with them (as wide integers)
    np.testing.assert_allclose(optical_to_rgb(np.array([[0, 1000], [0, 0]], np.int16))[0, 1], 1000 / 32767)
    np.testing.assert_allclose(optical_to_rgb(np.array([[-10, 0], [10, 30]], np.int16))[..., 1], [[0, 0.25], [0.5, 1]])


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


# ----------------------------------------------------------------------------- ion tables


@pytest.mark.parametrize("text, expected", [
    ("1,2,3,\n4,5,6,\n", [[1, 2, 3], [4, 5, 6]]),
    ("a\tb\tc\td\n1\t2\t3\t4\t\n5\t6\t7\t8\t\n", [[1, 2, 3, 4], [5, 6, 7, 8]]),  # header without the trailing tab
    ("x,y,intensity,\n1,1,5,\n2,1,6,\n1,2,7,\n2,2,8,\n", [[5, 6], [7, 8]]),
])
def test_trailing_delimiter_is_no_column(tmp_path, text, expected):
    path = tmp_path / "trailing.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_ion(path).pixels, expected)


@pytest.mark.parametrize("text, expected", [
    ("0,5;1,25;2\n3;4,75;-5,5\n", [[0.5, 1.25, 2], [3, 4.75, -5.5]]),
    ('"";"V1";"V2"\n"1";0,5;1,25;\n"2";2;3,5;\n', [[0.5, 1.25], [2, 3.5]]),  # R write.csv2, trailing ';'
    ("x;y;intensity\n1;1;0,5\n2;1;1,5\n1;2;2\n2;2;2,5\n", [[0.5, 1.5], [2, 2.5]]),
    ("1;2\n0.5;1,000\n2;3\n", None),  # points and commas: not decimal commas, the comma is refused
    ("0.5;1.25\n2;3\n", [[0.5, 1.25], [2, 3]]),
    ("0,5\t1,25\n3\t4,75\n", [[0.5, 1.25], [3, 4.75]]),  # a tab-separated export with decimal commas
])
def test_european_csv(tmp_path, text, expected):
    path = tmp_path / "european.csv"
    path.write_text(text)
    if expected is None:
        with pytest.raises(InputError, match="non-numeric value '1,000'"):
            read_ion(path)
    else:
        np.testing.assert_allclose(read_ion(path).pixels, expected)


def test_a_calibrated_pyramid_is_read_at_the_coarsest_level_fine_enough(tmp_path):
    import tifffile

    rng = np.random.default_rng(3)
    full = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path) as tif:  # a slide scanner's OME pyramid: 0.5 µm, then 1 µm and 2 µm levels
        tif.write(full, subifds=2, photometric="rgb", metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tif.write(full[::2, ::2], subfiletype=1, photometric="rgb")
        tif.write(full[::4, ::4], subfiletype=1, photometric="rgb")
    for needed, shape, size in [(None, (64, 96), 0.5), (0.3, (64, 96), 0.5), (1.2, (32, 48), 1.0), (5.0, (16, 24), 2.0)]:
        image = read_optical(path, needed)
        assert image.pixels.shape[:2] == shape and image.pixel_size_um == pytest.approx(size)
        assert image.origin_um == pytest.approx(((size - 0.5) / 2,) * 2)  # its first pixel spans the scan's first ones
    np.testing.assert_allclose(read_optical(path, 5.0).pixels, full[::4, ::4] / 255, atol=1e-6)


def test_a_stack_of_four_greyscale_pages_is_not_taken_for_rgba(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((4, 20, 30), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="a stack of 4 greyscale images"):
        read_optical(tmp_path / "stack.tif")
    planes = np.stack([np.full((20, 30), v, np.uint8) for v in (10, 130, 250)])
    tifffile.imwrite(tmp_path / "z.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match="a stack of 3 greyscale images"):  # three focal planes are no RGB
        read_optical(tmp_path / "z.tif")
    tifffile.imwrite(tmp_path / "c.tif", planes, imagej=True, metadata={"axes": "CYX"})
    np.testing.assert_allclose(read_optical(tmp_path / "c.tif").pixels[0, 0], np.array([10, 130, 250]) / 255)
    rgba = np.zeros((4, 20, 30), np.uint8)
    rgba[0] = 255  # planar RGBA: red, alpha dropped
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", planarconfig="separate", extrasamples=[2])
    np.testing.assert_array_equal(read_optical(tmp_path / "rgba.tif").pixels[0, 0], [1.0, 0.0, 0.0])


# ----------------------------------------------------------------------------- input validation


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


def test_long_table_with_a_stray_coordinate_is_refused_before_allocating(tmp_path):
    path = tmp_path / "stray.csv"
    path.write_text("x,y,value\n1,1,3\n2,2,5\n100000,100000,1\n")  # 10¹⁰ pixels, 80 GB as float64
    with pytest.raises(InputError) as info:
        read_ion(path)
    assert info.value.source == str(path)
    assert info.value.problem.startswith("x and y reach (100000, 100000), a 100000×100000 image (1e+10 pixels), "
                                         "but the table has 3 rows")


def test_sparse_long_tables_of_real_acquisitions_pass(tmp_path):
    # A 1200×1000 raster (over 10⁶ pixels) holding two small sections, radius 60, at opposite corners; only their
    # pixels are listed: 1.9 % of the image, 53 pixels per row.
    yy, xx = np.mgrid[1:1001, 1:1201]
    on = ((yy - 100) ** 2 + (xx - 100) ** 2 <= 60**2) | ((yy - 940) ** 2 + (xx - 1140) ** 2 <= 60**2)
    on[999, 1199] = True  # the raster's last pixel, so the image spans all of it
    values = (xx + 10000 * yy)[on]
    path = tmp_path / "sparse.csv"
    path.write_text("x,y,value\n" + "".join(f"{x},{y},{v}\n" for x, y, v in zip(xx[on], yy[on], values)))
    pixels = read_ion(path).pixels
    assert pixels.shape == (1000, 1200) and np.count_nonzero(pixels) == on.sum() == 22579
    assert pixels[939, 1139] == 1140 + 10000 * 940 and pixels[0, 0] == 0
    # Up to 10⁶ pixels nothing is refused, however few rows: a 1000×1000 image from three.
    path.write_text("x,y,value\n1,1,3\n2,2,5\n1000,1000,1\n")
    assert read_ion(path).pixels.shape == (1000, 1000)


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


def test_a_long_table_offset_far_from_the_origin_is_told_to_subtract_it(tmp_path):
    path = tmp_path / "offset.csv"
    yy, xx = np.mgrid[2001:2101, 1001:1101]
    lines = ["x,y,value"] + [f"{x},{y},1" for x, y in zip(xx.ravel(), yy.ravel())]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"x and y start at \(1001, 2001\), far from the origin: a 1100×2100 image "
                                         r"for 10000 rows; subtract that offset"):
        read_ion(path)



# ----------------------------------------------------------------------------- table headers, thousands, long tables


@pytest.mark.parametrize("text, expected", [
    ("0,1,2\n1.5,2.5,3\n4,5,6.25\n", [[1.5, 2.5, 3], [4, 5, 6.25]]),  # pandas DataFrame(a).to_csv(index=False)
    ("1,2,3\n1.5,2.5,3\n4,5,6.25\n", [[1.5, 2.5, 3], [4, 5, 6.25]]),  # numbered from 1
    ("0;1;2\n0,5;1;2\n3;4;5\n", [[0.5, 1, 2], [3, 4, 5]]),  # pandas with sep=";", decimal=","
    ("0,1,2\n1e3,2,3\n4,5,6\n", [[1000, 2, 3], [4, 5, 6]]),  # an exponent is no integer as written
    (",".join(map(str, range(10))) + "\n" + ",".join(map(str, range(10, 20))) + "\n" + ",".join(["7"] * 10) + "\n",
     [list(range(10, 20)), [7] * 10]),  # wide: a header even above integers
])
def test_a_first_row_counting_the_columns_is_a_header(tmp_path, text, expected):
    path = tmp_path / "pandas.csv"
    path.write_text(text)
    np.testing.assert_allclose(read_ion(path).pixels, expected)


@pytest.mark.parametrize("text, problem", [
    ("12,345\t987\n1,001\t5\n",  # English Excel, tab-separated
     "number '12,345' may be 12345 or 12.345: every number in the table with a ',' has exactly three digits after "
     "it, as with thousands separators; export the table without thousands separators"),
    ("987;1.234;12.345;5\n1.001;2;3;4\n",  # German Excel, integers
     "number '1.234' may be 1234 or 1.234: every number in the table with a '.' has exactly three digits after it, "
     "as with thousands separators; export the table without thousands separators"),
    ('"12,345",987\n5,6\n',  # English Excel, comma-separated: the grouped cells quoted
     "number '12,345' may be 12345 or 12.345: every number in the table with a ',' has exactly three digits after "
     "it, as with thousands separators; export the table without thousands separators"),
    ("876,36;16.259,44\n12,90;5\n", "number '16.259,44' has thousands separators; export the table without them"),
    ("1.234.567\t2\n3\t4\n", "number '1.234.567' has thousands separators; export the table without them"),
    ("0.5\t12,345\n1\t2\n", "number '12,345' has a thousands separator (decimals are written with '.', as in '0.5'); "
                            "export the table without thousands separators"),
    ("0,5;1.234\n1;2\n", "number '1.234' has a thousands separator (decimals are written with ',', as in '0,5'); "
                         "export the table without thousands separators"),
])
def test_thousands_separators_are_refused_quoting_the_cell(tmp_path, text, problem):
    assert _refusal(tmp_path / "excel.csv", text) == (str(tmp_path / "excel.csv"), problem)


def _refusal(path, text: str) -> tuple[str, str]:
    """The (source, problem) of the InputError that reading ``text`` as an ion table raises."""
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_ion(path)
    return info.value.source, info.value.problem


@pytest.mark.parametrize("text, expected", [
    ("0,5;12,3456\n12,345;1\n", [[0.5, 12.3456], [12.345, 1]]),  # decimals of other lengths: "," is decimal
    ("0,5\t12,345\n3\t4\n", [[0.5, 12.345], [3, 4]]),
    ("1.500,2.250\n12.345,3\n", [[1.5, 2.25], [12.345, 3]]),  # a point in a comma-separated table is decimal
    ("123;124\n123,456;124,975\n", [[123, 124], [123.456, 124.975]]),  # a comma in a ";" table is decimal
    ("0.125\t1.5\n2\t0.000\n", [[0.125, 1.5], [2, 0]]),  # a leading 0 is no thousands group
])
def test_three_decimals_are_read_where_the_table_shows_the_decimal_separator(tmp_path, text, expected):
    path = tmp_path / "decimals.csv"
    path.write_text(text)
    np.testing.assert_allclose(read_ion(path).pixels, expected)


def test_a_non_numeric_cell_is_quoted_as_written_in_a_decimal_comma_table(tmp_path):
    path = tmp_path / "typo.csv"
    path.write_text("0,5;1,5\n2;x,y\n")
    with pytest.raises(InputError) as info:
        read_ion(path)
    assert info.value.problem == "non-numeric value 'x,y' in row 2"


@pytest.mark.parametrize("text", [
    "row,col,intensity\n1,1,5\n1,2,6\n2,2,7\n",  # row = y, col = x
    "X,Y,Value\n1,1,5\n2,1,6\n2,2,7\n",
    "y,x,v\n1,1,5\n1,2,6\n2,2,7\n",
    "x_um,y_um,v\n1,1,5\n2,1,6\n2,2,7\n",
    "x (µm),y (µm),v\n1,1,5\n2,1,6\n2,2,7\n",
    "Column [px];Row [px];I\n1;1;5\n2;1;6\n2;2;7\n",
    "col_index\trow_index\tmz_885\n1\t1\t5\n2\t1\t6\n2\t2\t7\n",
])
def test_long_table_coordinate_names(tmp_path, text):
    path = tmp_path / "long.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_ion(path).pixels, [[5, 6], [0, 7]])


@pytest.mark.parametrize("text, problem", [
    ("i,j,intensity\n1,1,5\n2,1,6\n2,2,7\n",
     "3-column table headed 'i', 'j', 'intensity' is not a long table msifusion knows: name its columns x, y (or col, "
     "row; a unit may follow: x_um, x (µm)) and the intensity; for a 3-pixel-wide image, drop the header"),
    ("x_ft,y_ft,v\n1,1,5\n2,1,6\n",  # not a unit we know
     "3-column table headed 'x_ft', 'y_ft', 'v' is not a long table msifusion knows: name its columns x, y (or col, "
     "row; a unit may follow: x_um, x (µm)) and the intensity; for a 3-pixel-wide image, drop the header"),
    ("x,x_um,y,v\n1,25,1,5\n2,50,1,6\n", "long table has 2 x columns (x, x_um); keep one x and one y column, of pixel "
                                        "indices"),
])
def test_unrecognised_or_ambiguous_long_tables_are_refused(tmp_path, text, problem):
    assert _refusal(tmp_path / "long.csv", text)[1] == problem


def test_long_table_positions_in_um_are_still_refused_under_any_coordinate_name(tmp_path):
    path = tmp_path / "um.csv"
    path.write_text("x_um,y_um,v\n0,0,5\n25,0,6\n50,25,7\n")
    with pytest.raises(InputError, match="advance in steps of 25, not 1: they look like positions in µm"):
        read_ion(path)
    path.write_text("row,col,v\n2001,1001,1\n2001,1002,2\n" + "".join(f"2100,{x},1\n" for x in range(1001, 1101)))
    with pytest.raises(InputError, match=r"x and y start at \(1001, 2001\), far from the origin"):
        read_ion(path)


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


def test_ion_tiff_orientation_is_warned_about_not_applied(tmp_path):
    ion = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    tifffile.imwrite(tmp_path / "ion.tif", ion, extratags=[(274, "H", 1, 6, True)])
    image = read_ion(tmp_path / "ion.tif")
    np.testing.assert_array_equal(image.pixels, ion)
    assert image.warnings[0].startswith("ion.tif has Orientation 6 (photo viewers show it rotated 90° clockwise")


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


def test_rgb_layout_reads_gray_alpha_with_few_rows_as_channels_last():
    from msifusion.io.images import rgb_layout

    assert rgb_layout(np.zeros((4, 48, 2))).shape == (4, 48, 3)  # not (48, 2, …): gray + alpha, four rows
    assert rgb_layout(np.zeros((3, 40, 50))).shape == (40, 50, 3)  # channels first
    assert rgb_layout(np.zeros((40, 50))).shape == (40, 50, 3)
