"""Zeiss CZI opticals, written here through Zeiss's own libCZI as ZEN lays them out."""

import sys

import numpy as np
import pytest
from pylibCZIrw import czi as pyczi
from pylibCZIrw.czi import CziReader

import msifusion.io.czi as czi_io
import msifusion.runtime as runtime
from msifusion.errors import InputError
from msifusion.io.images import file_pixel_size_um, read_ion, read_optical


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
    pixel's centre 1.5 full pixels in; the same in bands of any size."""
    path = write_czi(tmp_path / "section.czi", section, pixel_size_um=0.5)
    image = read_optical(path, 2.1)  # 4 full pixels of 0.5 µm are the coarsest within 2.1 µm
    means = section[:36, :48].reshape(9, 4, 12, 4, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(np.rint(image.pixels * 255), np.rint(means))
    assert image.pixel_size_um == pytest.approx(2.0) and image.downsample == 4.0 and image.full_shape == (37, 50)
    assert image.origin_um == pytest.approx((0.75, 0.75))
    monkeypatch.setattr(czi_io, "BAND_BYTES", 1)  # one output row per band
    np.testing.assert_array_equal(read_optical(path, 2.1).pixels, image.pixels)
    assert read_optical(path, 0.9).pixels.shape == (37, 50, 3)  # finer than two pixels: full resolution


def test_a_grey_16_bit_czi_is_scaled_by_its_camera_depth(tmp_path, write_czi):
    grey = np.array([[0, 1000], [2000, 4095]], np.uint16)  # a 12-bit camera's values
    image = read_optical(write_czi(tmp_path / "grey.czi", grey))
    np.testing.assert_allclose(image.pixels[..., 1], grey / 4095, rtol=1e-6)
    assert np.array_equal(image.pixels[..., 0], image.pixels[..., 2]) and image.pixel_size_um is None


@pytest.mark.parametrize("size_um, note", [(None, None), (0.5e6, "its pixel size 5e+05 µm is implausible")])
def test_an_uncalibrated_czi_takes_the_pixel_size_given(tmp_path, write_czi, section, size_um, note):
    """ZEN writes 0 for no calibration; a scaling written in µm where the format wants metres is no calibration."""
    path = write_czi(tmp_path / "section.czi", section, pixel_size_um=size_um)
    image = read_optical(path, 2.0)
    assert image.pixel_size_um is None and image.pixels.shape == (37, 50, 3)
    assert (image.calibration_note or "").startswith(note or "") and bool(image.calibration_note) == bool(note)
    given = read_optical(path, 2.0, pixel_size_um=1.0)  # --optical-pixel-size: averaged down by 2
    assert given.pixels.shape == (18, 25, 3) and given.pixel_size_um == 2.0 and given.calibration_note is None


@pytest.mark.parametrize("more, held", [
    ([(1, np.zeros((10, 12, 3), np.uint8), (100, 0))], r"holds 2 scenes \(50×37, 12×10 px\), not one image; export the "
                                                       "scene that holds the section as an OME-TIFF"),
    ([({"C": 1}, np.zeros((37, 50), np.uint16), (0, 0)), ({"C": 2}, np.zeros((37, 50), np.uint16), (0, 0))],
     "holds 3 channels, not one image; save the plane"),
    ([({"Z": 1}, np.zeros((37, 50), np.uint16), (0, 0))], "holds 2 focal planes, not one image"),
])
def test_a_czi_of_several_images_is_refused_with_what_it_holds(tmp_path, write_czi, more, held):
    first = np.zeros((37, 50, 3), np.uint8) if isinstance(more[0][0], int) else np.zeros((37, 50), np.uint16)
    path = write_czi(tmp_path / "many.czi", first, more=more)
    with pytest.raises(InputError, match=rf"many.czi: {held}"):
        read_optical(path)


def test_a_damaged_czi_or_a_missing_reader_is_one_line(tmp_path, write_czi, section, monkeypatch):
    path = write_czi(tmp_path / "section.czi", section)
    cut = tmp_path / "cut.czi"
    cut.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(InputError, match=r"cut.czi: cannot read CZI: it is truncated or damaged \(Not enough data"):
        read_optical(cut)
    assert file_pixel_size_um(cut) is None
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
        with pytest.raises(InputError, match=r"section.czi: 37×50 px needs about [\d.]+ GB to read, .*; save a copy "
                                             r"downsampled to the fused grid's pixel size \(it is a CZI: `register`"):
            read_optical(path)
    assert read_optical(path, 1.0).pixels.shape == (18, 25, 3)  # averaged down, it fits


def test_a_czi_given_as_the_ion_is_named_a_microscope_image(tmp_path, write_czi, section):
    with pytest.raises(InputError, match=r"unsupported ion image format .czi; .*; a slide scan or micrograph is a "
                                         "microscope image: give it as the optical"):
        read_ion(write_czi(tmp_path / "section.czi", section))
