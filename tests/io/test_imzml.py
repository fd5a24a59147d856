"""imzML ion images: exact window sums on files written with pyimzML, both storage modes."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pyimzml.ImzMLParser import ImzMLParser, getionimage
from pyimzml.ImzMLWriter import ImzMLWriter

from msifusion.errors import InputError
from msifusion.io import imzml
from msifusion.io.imzml import (
    ImzML,
    Tolerance,
    parse_tolerance,
    write_ion_tiffs,
)

pytestmark = pytest.mark.filterwarnings("ignore:Accession IMS")  # pyimzML's own parser, used for comparison

# The project's shared/ folder lies beside the checkout (CI copies it beside its clone).
EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "imzml-examples"

H, W = 4, 5
# Continuous axis, deliberately unsorted; 200 and 200.0009 are 4.5 ppm apart, 200.0011 is 5.5 ppm away.
AXIS = np.array([300.0, 100.0, 200.0011, 200.0, 150.0, 200.0009, 100.04], dtype=np.float64)
MISSING = {(0, 0), (3, 4)}  # (row, col) without a spectrum


def _pixels() -> list[tuple[int, int]]:
    return [(r, c) for r in range(H) for c in range(W) if (r, c) not in MISSING]


@pytest.fixture
def continuous(tmp_path: Path, state_imzml_pixel_size) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    path = tmp_path / "cont.imzML"
    spectra = {}
    with ImzMLWriter(str(path), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r, c in _pixels():
            it = rng.integers(1, 100, AXIS.size).astype(np.float32)
            spectra[(r, c)] = it
            w.addSpectrum(AXIS, it, (c + 1, r + 1))
    state_imzml_pixel_size(path, 20.0)
    return path, spectra


@pytest.fixture
def processed(tmp_path: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(1)
    path = tmp_path / "proc.imzML"
    spectra = {}
    with ImzMLWriter(str(path), mode="processed", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for i, (r, c) in enumerate(_pixels()):
            n = 3 + i % 4
            mz = np.sort(rng.uniform(99.0, 301.0, n))
            mz[0] = 200.0 + (i % 3) * 0.0005  # always a peak near 200
            if i % 2:
                mz = mz[::-1].copy()  # some spectra stored unsorted
            it = rng.integers(1, 100, n).astype(np.float32)
            spectra[(r, c)] = (mz, it)
            w.addSpectrum(mz, it, (c + 1, r + 1))
    return path, spectra


def _expected(spectra: dict, mz: float, d: float, axis: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros((H, W), np.float64)
    for (r, c), value in spectra.items():
        m, it = (axis, value) if axis is not None else value
        sel = (m >= mz - d) & (m <= mz + d)
        out[r, c] = it[sel].sum()
    return out


# ----------------------------------------------------------------------------- tolerance


@pytest.mark.parametrize("text, value, unit", [("5ppm", 5.0, "ppm"), ("3 ppm", 3.0, "ppm"), ("0.01da", 0.01, "da"),
                                               ("0.01Da", 0.01, "da"), ("10mDa", 0.01, "da"), ("1e-2 Da", 0.01, "da")])
def test_parse_tolerance(text: str, value: float, unit: str) -> None:
    tol = parse_tolerance(text)
    assert tol.unit == unit and tol.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["5", "abc", "-5ppm", "0ppm", "0da", "5 ppb", "", "1e6ppm", "2000000 ppm"])
def test_bad_tolerance_names_the_option(text: str) -> None:
    with pytest.raises(InputError) as err:
        parse_tolerance(text)
    assert err.value.source == "--tol"


def test_half_width() -> None:
    assert Tolerance(5, "ppm").half_width(200.0) == pytest.approx(0.001)
    assert Tolerance(0.02, "da").half_width(200.0) == pytest.approx(0.02)


def _ions(path: Path, mzs: list[float], tol, normalize=None):
    with ImzML(path) as f:
        return f.ion_images(mzs, tol, normalize)


# ----------------------------------------------------------------------------- continuous


def test_pixels_without_a_spectrum_are_marked_apart_from_measured_zeros(continuous, tmp_path) -> None:
    """They hold 0 in every ion image, as a measured 0 would: acquired.tiff (and the summary's count) says which."""
    path, _ = continuous
    stack = _ions(path, [200.0], "5ppm")
    expected = np.ones((H, W), bool)
    for r, c in MISSING:
        expected[r, c] = False
    np.testing.assert_array_equal(stack.acquired, expected)
    with imzml.ImzML(path) as f:
        assert f.summary()["pixels_without_spectrum"] == len(MISSING)
    (written,) = imzml.write_acquired(stack, tmp_path)
    assert written == tmp_path / "acquired.tiff"
    with tifffile.TiffFile(written) as tif:
        np.testing.assert_array_equal(tif.asarray(), expected.astype(np.float32))
        assert 'PhysicalSizeX="20.0"' in tif.ome_metadata and 'Name="acquired"' in tif.ome_metadata
    full = imzml.IonStack(stack.images, stack.mzs, stack.tolerance, 20.0, acquired=np.ones((H, W), bool))
    assert imzml.write_acquired(full, tmp_path / "full") == []


def test_continuous_window_sums_exact(continuous) -> None:
    path, spectra = continuous
    stack = _ions(path, [200.0, 100.0, 150.0], "5ppm")
    assert stack.images.shape == (3, H, W) and stack.images.dtype == np.float32
    for img, mz in zip(stack.images, [200.0, 100.0, 150.0]):
        np.testing.assert_array_equal(img, _expected(spectra, mz, mz * 5e-6, AXIS))
    # 200 ± 5 ppm takes the channels 200.0 and 200.0009 but not 200.0011.
    r, c = 1, 2
    it = spectra[(r, c)]
    assert stack.images[0, r, c] == it[3] + it[5]
    assert stack.images[0, 0, 0] == 0.0  # no spectrum there
    assert stack.pixel_size_um == 20.0
    assert stack.names == ["200.0000", "100.0000", "150.0000"]
    assert stack.mz_range == (100.0, 300.0)


def test_continuous_da_window(continuous) -> None:
    path, spectra = continuous
    stack = _ions(path, [100.02], Tolerance(0.03, "da"))
    np.testing.assert_array_equal(stack.images[0], _expected(spectra, 100.02, 0.03, AXIS))  # 100 and 100.04


def test_continuous_in_small_chunks_and_irregular_offsets(continuous, monkeypatch) -> None:
    path, spectra = continuous
    monkeypatch.setattr(imzml, "_CHUNK_BYTES", 3 * AXIS.size * 4)  # three spectra per chunk
    ref = _ions(path, [200.0, 300.0], "5ppm").images
    # Swap the intensity offsets of the first two spectra: offsets no longer at a constant
    # stride (the memmap block view is refused, spectra are gathered one by one).
    text = path.read_text(encoding="iso-8859-1")
    offs = re.findall(r'name="external offset" value="(\d+)"', text)
    ints = offs[1::2]
    text = text.replace(f'name="external offset" value="{ints[0]}"', 'name="external offset" value="A"', 1)
    text = text.replace(f'name="external offset" value="{ints[1]}"', f'name="external offset" value="{ints[0]}"', 1)
    text = text.replace('name="external offset" value="A"', f'name="external offset" value="{ints[1]}"', 1)
    path.write_text(text, encoding="iso-8859-1")
    f = ImzML(path)
    assert f._intensity_block() is None
    swapped = f.ion_images([200.0, 300.0], "5ppm").images
    (r0, c0), (r1, c1) = _pixels()[:2]
    expected = ref.copy()
    expected[:, r0, c0], expected[:, r1, c1] = ref[:, r1, c1], ref[:, r0, c0]
    np.testing.assert_array_equal(swapped, expected)


def test_tic_and_normalisation(continuous) -> None:
    path, spectra = continuous
    with ImzML(path) as f:
        tic, pixel_size = f.tic(), f.pixel_size_um
    assert pixel_size == 20.0
    expected_tic = np.zeros((H, W))
    for (r, c), it in spectra.items():
        expected_tic[r, c] = it.sum()
    np.testing.assert_allclose(tic, expected_tic, rtol=1e-6)

    raw = _ions(path, [150.0], "5ppm").images[0]
    norm = _ions(path, [150.0], "5ppm", normalize="tic").images[0]
    med = np.median([it.sum() for it in spectra.values()])
    ok = expected_tic > 0
    np.testing.assert_allclose(norm[ok], raw[ok] / expected_tic[ok] * med, rtol=1e-5)
    assert norm[0, 0] == 0.0

    rms = _ions(path, [150.0], "5ppm", normalize="rms").images[0]
    rms_px = {k: np.sqrt(np.mean(it.astype(np.float64) ** 2)) for k, it in spectra.items()}
    med_rms = np.median(list(rms_px.values()))
    r, c = 2, 3
    assert rms[r, c] == pytest.approx(raw[r, c] / rms_px[(r, c)] * med_rms, rel=1e-5)


def test_tissue_images(continuous) -> None:
    path, spectra = continuous
    f = ImzML(path)
    stack = f.tissue_images(n_components=2, n_peaks=7, tol="1ppm")
    assert stack.shape == (3, H, W)
    np.testing.assert_allclose(stack[0], f.tic(), rtol=1e-6)
    assert np.all(stack[:, 0, 0] == 0) and np.all(stack[:, 3, 4] == 0)
    # The components are the leading principal axes of sqrt(window sums / TIC): uncorrelated scores.
    rows, cols = zip(*_pixels())
    pc = stack[1:, list(rows), list(cols)]
    assert abs(np.dot(pc[0], pc[1])) < 1e-3 * np.linalg.norm(pc[0]) * np.linalg.norm(pc[1])
    assert np.var(pc[0]) >= np.var(pc[1])


def test_strongest_peaks_continuous(continuous) -> None:
    path, spectra = continuous
    mean = np.mean(np.stack(list(spectra.values())), axis=0)
    # pyimzML writes "centroid spectrum" by default: every channel is a peak.
    with ImzML(path) as f:
        peaks = f.strongest_peaks(3)
        images = f.ion_images([mz for mz, _ in peaks], "5ppm").images  # what `ions --mz` gives at the default window
    window = [np.abs(AXIS - mz) <= 5e-6 * mz for mz in AXIS]  # each channel's ion window
    by_window = np.array([mean[w].sum() for w in window])
    cluster = np.abs(AXIS - 200.0) < 0.002  # 200.0, 200.0009 and 200.0011: one peak, the strongest window kept
    kept = [int(np.flatnonzero(cluster)[np.argmax(by_window[cluster])])] + list(np.flatnonzero(~cluster))
    kept = sorted(kept, key=lambda i: -by_window[i])[:3]
    assert [p[0] for p in peaks] == pytest.approx(list(AXIS[kept]))
    assert [p[1] for p in peaks] == pytest.approx(list(by_window[kept]), rel=1e-6)
    assert [p[1] for p in peaks] == pytest.approx(list(images.sum((1, 2)) / len(spectra)), rel=1e-6)
    assert peaks[0][1] > mean.max()  # 200.0009's window holds 200.0 and 200.0011 too: one centroid, jittered


def test_peaks_closer_than_the_separation_count_once(continuous) -> None:
    path, spectra = continuous
    mean = np.mean(np.stack(list(spectra.values())), axis=0)
    with ImzML(path) as f:
        peaks = [mz for mz, _ in f.strongest_peaks(len(AXIS))]
    near_200 = [i for i, m in enumerate(AXIS) if abs(m - 200.0) < 0.002]  # 200.0, 200.0009, 200.0011: 4.5–5.5 ppm apart
    strongest = AXIS[max(near_200, key=lambda i: mean[np.abs(AXIS - AXIS[i]) <= 5e-6 * AXIS[i]].sum())]
    assert [m for m in peaks if abs(m - 200.0) < 0.002] == [pytest.approx(strongest)]
    assert len(peaks) == len(AXIS) - 2


def test_write_ion_tiffs(continuous, tmp_path: Path) -> None:
    path, _ = continuous
    stack = _ions(path, [200.0, 150.0], "5ppm")
    out = tmp_path / "ions"
    paths = write_ion_tiffs(stack, out)
    assert [p.name for p in paths] == ["mz_200.0000.tiff", "mz_150.0000.tiff", "ions.ome.tiff"]
    np.testing.assert_array_equal(tifffile.imread(out / "mz_150.0000.tiff"), stack.images[1])
    with tifffile.TiffFile(out / "ions.ome.tiff") as tif:
        data = tif.series[0].asarray()
        ome = tif.ome_metadata
    np.testing.assert_array_equal(data, stack.images)
    assert 'PhysicalSizeX="20.0"' in ome and 'Name="m/z 200.0000"' in ome and 'Name="m/z 150.0000"' in ome
    assert stack.labels == ["m/z 200.0000", "m/z 150.0000"] and stack.names == ["200.0000", "150.0000"]


# ----------------------------------------------------------------------------- processed


def test_processed_window_sums_exact(processed) -> None:
    path, spectra = processed
    f = ImzML(path)
    assert not f.continuous
    mzs = [200.0, 150.0, 250.5]
    stack = f.ion_images(mzs, "5ppm")
    for img, mz in zip(stack.images, mzs):
        np.testing.assert_allclose(img, _expected(spectra, mz, mz * 5e-6), rtol=1e-6)
    assert stack.images[0].sum() > 0  # the planted peaks near 200
    da = f.ion_images([200.0], "0.5da").images[0]
    np.testing.assert_allclose(da, _expected(spectra, 200.0, 0.5), rtol=1e-6)
    np.testing.assert_array_equal(f.ion_images(200.0, "0.5da").images, da[None])  # one m/z: a stack of one
    assert f.pixel_size_um is None
    one = stack.image(2)  # one ion as a calibrated Image, named by its m/z
    np.testing.assert_array_equal(one.pixels, stack.images[2])
    assert one.pixel_size_um is None and one.path == path and one.name == "m/z 250.5000"


def test_processed_range_from_the_xml(processed) -> None:
    path, spectra = processed
    f = ImzML(path)
    lo = min(m.min() for m, _ in spectra.values())
    hi = max(m.max() for m, _ in spectra.values())
    assert f.mz_range == pytest.approx((lo, hi), rel=2e-6)
    with pytest.raises(InputError, match="outside the acquired m/z range"):
        f.ion_images([hi + 1.0], "5ppm")


def test_processed_peaks_and_tic(processed) -> None:
    path, spectra = processed
    f = ImzML(path)
    tic = f.tic()
    for (r, c), (_, it) in spectra.items():
        assert tic[r, c] == pytest.approx(it.sum())
    mz, mean = f.mean_spectrum(bin_ppm=5.0)
    total = sum(it.sum() for _, it in spectra.values())
    assert mean.sum() * len(spectra) == pytest.approx(total)
    peaks = f.strongest_peaks(2)
    assert len(peaks) == 2 and peaks[0][1] >= peaks[1][1]
    # The strongest bin's m/z is a real peak position (intensity-weighted mean within 5 ppm).
    all_mz = np.concatenate([m for m, _ in spectra.values()])
    assert np.min(np.abs(all_mz - peaks[0][0])) / peaks[0][0] < 5e-6


def _profile_imzml(path: Path, mode: str) -> Path:
    """Profile spectra sampled every 1 Da: a strong peak at 345 and a weaker one at 349."""
    axis = np.arange(340.0, 351.0)
    profile = 100 * np.exp(-0.5 * ((axis - 345) / 1.2) ** 2) + 30 * np.exp(-0.5 * ((axis - 349) / 0.8) ** 2)
    with ImzMLWriter(str(path), mode=mode, spec_type="profile", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r in range(3):
            for c in range(3):
                w.addSpectrum(axis, (profile * (1 + r + c)).astype(np.float32), (c + 1, r + 1))
    return path


@pytest.mark.parametrize("mode", ["processed", "continuous"])
def test_profile_peaks_are_local_maxima_not_neighbouring_points(tmp_path: Path, mode: str) -> None:
    f = ImzML(_profile_imzml(tmp_path / f"{mode}.imzML", mode))
    assert f.layout.centroid is False and f.continuous == (mode == "continuous")
    peaks = f.strongest_peaks(4)
    # 344 and 346 are the flanks of the peak at 345; only the two maxima are peaks
    assert [mz for mz, _ in peaks] == pytest.approx([345.0, 349.0])
    assert [v for _, v in peaks] == pytest.approx([300.0, 91.16], rel=1e-3)  # mean over 9 pixels, (1+r+c) averages 3


@pytest.mark.parametrize("mode", ["processed", "continuous"])
def test_a_window_holding_one_profile_point_is_warned(tmp_path: Path, mode: str) -> None:
    with ImzML(_profile_imzml(tmp_path / f"{mode}.imzML", mode)) as f:
        narrow = f.ion_images([345.0, 349.0], "5ppm")  # one sample of each peak: the spectra are sampled every 1 Da
        wide = f.ion_images([345.0], "1da")  # 344–346: three samples, short of the ¹³C isotope 1.003 Da away
    assert narrow.one_point_windows == (345.0, 349.0) and wide.one_point_windows == ()
    assert narrow.window_warnings() == [
        "the m/z windows of 345.0000, 349.0000 (±5ppm) hold a single point of the profile spectra, which are sampled "
        "more coarsely: each image is one sample of the peak's profile, not its area; widen --tol to the peak's width"]
    assert wide.window_warnings() == []
    assert wide.images.sum() > narrow.images[0].sum()  # the area holds more of the peak than its top sample


def test_processed_profile_spectra_sampled_finer_than_the_window_are_not_warned(tmp_path: Path) -> None:
    """Processed spectra each sampled every 1 ppm around 500 (offset from one another): a 2 ppm window holds 3–5
    points of every spectrum, though the pooled mean profile's 5 ppm bins hold one; 0.2 ppm holds one or none."""
    path = tmp_path / "fine.imzML"
    with ImzMLWriter(str(path), mode="processed", spec_type="profile", mz_dtype=np.float64,
                     intensity_dtype=np.float32) as w:
        for k in range(9):
            mz = 500 * (1 + (np.arange(-40, 41) + k / 9) * 1e-6)
            peak = 100 * np.exp(-0.5 * ((mz - 500) / 0.004) ** 2)
            w.addSpectrum(mz, peak.astype(np.float32), (k % 3 + 1, k // 3 + 1))
    with ImzML(path) as f:
        assert f.ion_images([500.0], "2ppm").one_point_windows == ()
        assert f.ion_images([500.0], "0.2ppm").one_point_windows == (500.0,)


# ----------------------------------------------------------------------------- the imzML.org examples


@pytest.mark.parametrize("mode", ["continuous", "processed"])
def test_our_own_files_agree_with_getionimage(tmp_path: Path, mode: str) -> None:
    """pyimzML's reader as the outside reference, on files made here (sorted spectra, as getionimage needs)."""
    rng = np.random.default_rng(4)
    path = tmp_path / f"{mode}.imzML"
    axis = np.array([99.97, 100.0, 100.04, 150.0, 150.3, 199.95, 200.02, 250.0])
    with ImzMLWriter(str(path), mode=mode, mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r, c in _pixels():
            keep = np.sort(rng.choice(axis.size, axis.size - (0 if mode == "continuous" else 2), replace=False))
            w.addSpectrum(axis[keep], rng.uniform(1, 100, keep.size).astype(np.float32), (c + 1, r + 1))
    peaks = [100.0, 150.0, 200.0]  # each window (±0.1 Da) holds one to three of the points, none on its edge
    ours = ImzML(path).ion_images(peaks, "0.1da").images
    with ImzMLParser(str(path)) as p:
        for img, mz in zip(ours, peaks):
            theirs = getionimage(p, mz, tol=0.1)
            assert theirs.shape == img.shape and theirs.sum() > 0
            np.testing.assert_allclose(img, theirs, rtol=1e-6)


@pytest.mark.parametrize("name", ["Example_Continuous.imzML", "Example_Processed.imzML"])
def test_examples_agree_with_getionimage(name: str) -> None:
    path = EXAMPLES / name
    if not path.exists():
        pytest.skip("imzML examples not available")
    f = ImzML(path)
    assert f.shape == (3, 3)
    peaks = [mz for mz, _ in f.strongest_peaks(5)]
    ours = f.ion_images(peaks, "0.1da").images
    with ImzMLParser(str(path)) as p:
        for img, mz in zip(ours, peaks):
            np.testing.assert_allclose(img, getionimage(p, mz, tol=0.1), rtol=1e-6)


def test_example_below_range_is_an_error_not_the_first_peak() -> None:
    path = EXAMPLES / "Example_Continuous.imzML"
    if not path.exists():
        pytest.skip("imzML examples not available")
    with ImzMLParser(str(path)) as p:
        assert getionimage(p, 50.0, tol=0.1).sum() > 0  # pyimzML's bug: the first peak
    with pytest.raises(InputError, match="outside the acquired m/z range"):
        _ions(path, [50.0], "0.1da")


# ----------------------------------------------------------------------------- bad input


def test_mz_out_of_range(continuous) -> None:
    path, _ = continuous
    with pytest.raises(InputError) as err:
        _ions(path, [500.0], "5ppm")
    assert err.value.source == str(path) and "outside the acquired m/z range 100.0000–300.0000" in err.value.problem
    # A window that reaches into the range is imaged, and said to sum the range's edge.
    edge = _ions(path, [99.99, 300.005, 200.0], "0.02da")
    assert edge.window_warnings() == [
        "m/z 99.9900 is outside the acquired m/z range 100.0000–300.0000, and its window (±0.02Da) reaches in only "
        "from its start to 100.0100: its image sums the spectra's edge, not a peak at that m/z",
        "m/z 300.0050 is outside the acquired m/z range 100.0000–300.0000, and its window (±0.02Da) reaches in only "
        "from 299.9850 to its end: its image sums the spectra's edge, not a peak at that m/z"]


def test_bad_mz_lists(continuous) -> None:
    path, _ = continuous
    with pytest.raises(InputError) as err:
        _ions(path, [150.0, 200.0, 200.00001], "5ppm")
    assert err.value.source == "--mz"
    assert err.value.problem == ("m/z 200.0 and 200.00001 share the output name mz_200.0000 (m/z to 4 decimals); "
                                 "give only one of them")
    with pytest.raises(InputError) as err:
        _ions(path, [200.0, 150.0, 200.0], "5ppm")
    assert err.value.problem == "m/z 200.0 given more than once"
    with pytest.raises(InputError) as err:
        _ions(path, [], "5ppm")
    assert err.value.source == "--mz"


def test_truncated_ibd(continuous) -> None:
    path, _ = continuous
    ibd = path.with_suffix(".ibd")
    data = ibd.read_bytes()
    ibd.write_bytes(data[:-10])
    with pytest.raises(InputError) as err:
        ImzML(path)
    assert err.value.source == str(ibd) and "truncated" in err.value.problem
    assert f"needs {len(data)} bytes" in err.value.problem


def test_missing_files(continuous, tmp_path: Path) -> None:
    path, _ = continuous
    with pytest.raises(InputError, match="imzML file not found"):
        ImzML(tmp_path / "nope.imzML")
    path.with_suffix(".ibd").unlink()
    with pytest.raises(InputError, match=r"cont\.ibd not found"):
        ImzML(path)


def test_not_xml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.imzML"
    bad.write_text("this is not XML at all\n")
    bad.with_suffix(".ibd").write_bytes(b"\0" * 64)
    with pytest.raises(InputError) as err:
        ImzML(bad)
    assert err.value.source == str(bad) and "XML" in err.value.problem


def test_ibd_given_instead_of_imzml(continuous) -> None:
    path, _ = continuous
    with pytest.raises(InputError, match="binary half"):
        ImzML(path.with_suffix(".ibd"))


def test_uppercase_ibd_suffix(continuous, tmp_path: Path) -> None:
    path, spectra = continuous
    other = tmp_path / "upper"
    other.mkdir()
    shutil.copy(path, other / "cont.imzML")
    shutil.copy(path.with_suffix(".ibd"), other / "cont.IBD")
    img = _ions(other / "cont.imzML", [150.0], "5ppm").images[0]
    np.testing.assert_array_equal(img, _expected(spectra, 150.0, 150.0 * 5e-6, AXIS))


def test_tolerance_reaching_mz_zero_is_refused(continuous) -> None:
    path, spectra = continuous
    with pytest.raises(InputError) as err:
        _ions(path, [150.0], "5000da")  # would be [-4850, 5150]: the whole spectrum, labelled m/z 150
    assert err.value.source == "--tol"
    assert err.value.problem.startswith("tolerance 5000Da at m/z 150 gives the window -4850.0000–5150.0000, which "
                                        "reaches m/z 0")
    with pytest.raises(InputError, match="window 0.0000–300.0000"):
        _ions(path, [150.0], "150da")  # the lower edge at exactly 0
    with pytest.raises(InputError, match=r"1e\+06ppm is ±100 % or more of the m/z"):
        _ions(path, [150.0], "1e6ppm")
    img = _ions(path, [150.0], "149.99da").images[0]  # wide, but a window above 0: allowed
    np.testing.assert_allclose(img, _expected(spectra, 150.0, 149.99, AXIS), rtol=1e-6)


@pytest.mark.parametrize("positions, problem", [
    ([(1 + 1000 * i, 1 + 1000 * j) for i in range(10) for j in range(5)],
     "its spectra's positions advance x in steps of 1000 and y in steps of 1000, not 1: positions in µm rather than "
     "pixel indices? An imzML's positions are pixel indices (the positions divided by the pixel size)"),
    ([(1 + 25 * i, 1) for i in range(8)],  # one line, in µm: a small image, but 96 % of it empty
     "its spectra's positions advance x in steps of 25, not 1: positions in µm rather than pixel indices? An imzML's "
     "positions are pixel indices (the positions divided by the pixel size)"),
    ([(1 + i, 1 + j) for i in range(10) for j in range(5)] + [(1, 200_000)],
     "its 51 spectra span 10×200000 pixels, one in 39215 of them: a stray coordinate? An imzML's positions are pixel "
     "indices"),
])
def test_positions_that_are_not_pixel_indices_are_refused(tmp_path: Path, positions, problem) -> None:
    """50 spectra at x = 1, 1001, 2001 … (positions in µm) made 2001×19001-pixel ion images, 50 pixels set, exit 0."""
    path = tmp_path / "sparse.imzML"
    with ImzMLWriter(str(path), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for x, y in positions:
            w.addSpectrum(AXIS, np.ones(AXIS.size, np.float32), (x, y))
    with pytest.raises(InputError) as err:
        ImzML(path)
    assert err.value.problem == problem


def test_two_regions_far_apart_on_one_raster_are_read(tmp_path: Path) -> None:
    """A slide's two sections at the two ends of its raster fill 0.1 % of it: a real file, read (as before), with a
    warning: a stray spectrum at (5000, 5000) beside 2700 others made 5000×5000 images of zeros without a word."""
    path = tmp_path / "two.imzML"
    with ImzMLWriter(str(path), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for x0, y0 in ((1, 1), (2001, 1001)):
            for i in range(20):
                for j in range(10):
                    w.addSpectrum(AXIS, np.ones(AXIS.size, np.float32), (x0 + i, y0 + j))
    with ImzML(path) as f:
        assert f.shape == (1010, 2020) and f.n_spectra == 400
        assert f.warnings == ["two.imzML: its 400 spectra fill 0.02 % of the 2020×1010-pixel images (a stray spectrum, "
                              "or regions far apart?): each ion image is mostly zeros, and fusing it takes as much "
                              "memory as its whole grid"]


def test_ion_images_below_zero_are_warned_about(tmp_path: Path) -> None:
    """Negative intensities (baseline-subtracted spectra) were exported and fused without a word."""
    path = tmp_path / "signed.imzML"
    with ImzMLWriter(str(path), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for x, y in [(1 + i, 1 + j) for i in range(4) for j in range(3)]:
            w.addSpectrum(np.array([100.0, 200.0, 300.0]), np.array([1.0, -2.0 * x, 3.0], np.float32), (x, y))
    stack = _ions(path, [100.0, 200.0], "0.1da")
    assert stack.negative_warnings() == [
        "the ion image of m/z 200.0000 (down to -8) holds values below zero, which counts never are "
        "(baseline-subtracted spectra?); the default method keeps such an ion's fused values above its lowest "
        "measured one"]
    assert _ions(path, [100.0], "0.1da").negative_warnings() == []


def _twin(tmp_path: Path, name: str) -> Path:
    """A continuous file with the same layout and spectra as every other twin, but its own identifier."""
    path = tmp_path / name
    rng = np.random.default_rng(5)
    with ImzMLWriter(str(path), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r, c in _pixels():
            w.addSpectrum(AXIS, rng.integers(1, 100, AXIS.size).astype(np.float32), (c + 1, r + 1))
    return path


def _file_uuid(path: Path) -> uuid.UUID:
    return uuid.UUID(re.search(r'accession="IMS:1000080"[^>]*value="([^"]+)"', path.read_text()).group(1))


def test_ibd_of_another_imzml_is_refused(tmp_path: Path) -> None:
    a, b = _twin(tmp_path, "a.imzML"), _twin(tmp_path, "b.imzML")
    assert a.with_suffix(".ibd").stat().st_size == b.with_suffix(".ibd").stat().st_size  # the size check cannot tell
    shutil.copy(b.with_suffix(".ibd"), a.with_suffix(".ibd"))
    with pytest.raises(InputError) as err:
        ImzML(a)
    assert err.value.source == str(a.with_suffix(".ibd"))
    assert err.value.problem == (f"the .ibd's identifier {_file_uuid(b)} does not match the imzML's {_file_uuid(a)} "
                                 "(a.imzML): they are not one pair; put this imzML's own .ibd beside it")


def test_ibd_identifier_check_is_skipped_without_one_and_accepts_guid_order(tmp_path: Path) -> None:
    a, b = _twin(tmp_path, "a.imzML"), _twin(tmp_path, "b.imzML")
    ibd = b.with_suffix(".ibd").read_bytes()
    # The imzML's identifier written little-endian (Microsoft GUID order, pyimzML before 2017): the pair holds.
    a.with_suffix(".ibd").write_bytes(_file_uuid(a).bytes_le + ibd[16:])
    assert ImzML(a).n_spectra == H * W - len(MISSING)
    # An imzML that states no identifier: nothing to compare, the .ibd is read as it is.
    text = re.sub(r'<cvParam[^>]*accession="IMS:1000080"[^>]*/>', "", a.read_text())
    a.write_text(text)
    a.with_suffix(".ibd").write_bytes(ibd)
    with ImzML(a) as f, ImzML(b) as g:
        np.testing.assert_array_equal(f.tic(), g.tic())


def test_example_with_another_examples_ibd_is_refused(tmp_path: Path) -> None:
    if not (EXAMPLES / "Example_Continuous.imzML").exists():
        pytest.skip("imzML examples not available")
    shutil.copy(EXAMPLES / "Example_Continuous.imzML", tmp_path / "Example_Continuous.imzML")
    shutil.copy(EXAMPLES / "Example_Processed.ibd", tmp_path / "Example_Continuous.ibd")
    with pytest.raises(InputError, match="the .ibd's identifier 9d501bdc-5344-4916-b7e9-7e795b02c856 does not match "
                                         "the imzML's 51bb7c6f-9974-4626-b35f-5b65547bae6b"):
        ImzML(tmp_path / "Example_Continuous.imzML")


def test_a_file_that_is_not_imzml_is_called_so(tmp_path: Path) -> None:
    tif = tmp_path / "some.tif"
    tifffile.imwrite(tif, np.ones((4, 4), np.float32))
    with pytest.raises(InputError) as err:
        ImzML(tif)
    assert err.value.source == str(tif) and err.value.problem == "expected an .imzML file (with its .ibd beside it)"


def test_overlapping_and_isotope_wide_windows_are_named():
    tol = imzml.parse_tolerance("0.2da")
    images = np.zeros((3, 2, 2), np.float32)
    stack = imzml.IonStack(images, (1150.4739, 1150.2901, 1200.0), tol, None,
                           windows=((1150.2739, 1150.6739), (1150.0901, 1150.4901), (1199.8, 1200.2)))
    assert stack.window_warnings() == ["the m/z windows of 1150.2901 and 1150.4739 overlap (±0.2Da): their images "
                                       "share counts; narrow --tol to keep them apart"]
    apart = imzml.IonStack(images[:2], (1150.2901, 1200.0), tol, None, windows=((1150.0901, 1150.4901), (1199.8, 1200.2)))
    assert apart.window_warnings() == []
    wide = imzml.IonStack(images[:1], (1217.5,), imzml.parse_tolerance("3000ppm"), None,
                          windows=((1217.5 - 3.6525, 1217.5 + 3.6525),))
    assert wide.window_warnings() == ["the m/z window of 1217.5000 (±3000ppm) reaches the ¹³C isotope peak 1.00336 Da "
                                      "away: its image sums several peaks; narrow --tol unless that is meant"]


def _two_peak_imzml(path: Path, mode: str) -> Path:
    """Centroided spectra: peaks at 400.0 and 400.1 (a fifth of it), and one at 450; processed spectra jitter by ±1 ppm."""
    rng = np.random.default_rng(2)
    with ImzMLWriter(str(path), mode=mode, mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r in range(3):
            for c in range(4):
                jitter = 1 + rng.uniform(-1e-6, 1e-6) * (mode == "processed")
                w.addSpectrum(np.array([400.0, 400.1, 450.0]) * jitter, np.array([100, 20, 50], np.float32) * (1 + r),
                              (c + 1, r + 1))
    return path


@pytest.mark.parametrize("mode", ["processed", "continuous"])
def test_a_window_over_two_peaks_is_named(tmp_path: Path, mode: str) -> None:
    f = ImzML(_two_peak_imzml(tmp_path / f"{mode}.imzML", mode))
    wide = f.ion_images([400.05, 450.0], "0.1da")
    assert [list(p) for p in wide.window_peaks] == [pytest.approx([400.0, 400.1], abs=1e-3), pytest.approx([450.0])]
    assert len(wide.window_warnings()) == 1
    assert re.fullmatch(r"the m/z window of 400\.0500 \(±0\.1Da\) holds 2 peaks of the mean spectrum, at (400\.000|"
                        r"399\.999)\d and 400\.(100|099)\d: its image sums them; narrow --tol to keep one",
                        wide.window_warnings()[0])
    narrow = f.ion_images([400.0, 400.1], "20ppm")
    assert [len(p) for p in narrow.window_peaks] == [1, 1] and narrow.window_warnings() == []


def _drifting_imzml(path: Path, ppm: float, pixels: int, seed: int) -> Path:
    """Processed centroid spectra: one peak at 600 whose m/z drifts from spectrum to spectrum by ``ppm`` (1 σ), as a
    TOF's calibration does, with intensities that vary by pixel."""
    rng = np.random.default_rng(seed)
    with ImzMLWriter(str(path), mode="processed", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for k in range(pixels):
            mz = np.array([600.0 * (1 + ppm * 1e-6 * rng.standard_normal()), 700.0])
            w.addSpectrum(mz, rng.uniform(50, 150, 2).astype(np.float32), (k % 10 + 1, k // 10 + 1))
    return path


@pytest.mark.parametrize("ppm, pixels", [(10.0, 16), (20.0, 100), (20.0, 900)])
def test_a_drifting_peak_is_one_peak(tmp_path: Path, ppm: float, pixels: int) -> None:
    """Bins of 5 ppm cut a drifting centroid into a ragged hump; its stray tail bins are not a second peak."""
    for seed in range(5):
        f = ImzML(_drifting_imzml(tmp_path / f"d{seed}.imzML", ppm, pixels, seed))
        stack = f.ion_images([600.0], f"{3 * ppm:g}ppm")
        assert len(stack.window_peaks[0]) == 1 and stack.window_warnings() == [], seed


def test_peaks_rank_a_jittering_centroid_by_its_ion_image(tmp_path: Path) -> None:
    """A centroid at 700 jittering by 3 ppm (1 σ) over 5-ppm bins, at intensity 3 in every spectrum, beside a steady
    one at 600 of intensity 2: the bin that holds most of 700 holds only part of it, and ranked it below 600. Its
    intensity is its ion image's mean at the default window, as `ions` gives it."""
    rng = np.random.default_rng(0)
    path = tmp_path / "jitter.imzML"
    with ImzMLWriter(str(path), mode="processed", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for k in range(600):
            mz = np.array([600.0, 700.0 * (1 + 3e-6 * rng.standard_normal())])
            w.addSpectrum(mz, np.array([2.0, 3.0], np.float32), (k % 30 + 1, k // 30 + 1))
    with ImzML(path) as f:
        (top, top_value), (second, second_value) = f.strongest_peaks(2)
        image = f.ion_images([top], "5ppm").images[0]
    assert top == pytest.approx(700.0, abs=7e-3) and second == pytest.approx(600.0)
    assert second_value == pytest.approx(2.0)
    assert top_value == pytest.approx(image.sum() / 600, rel=1e-6) and top_value > 2.6  # ±5 ppm: ±1.7 σ, 91 %


@pytest.mark.parametrize("mode", ["continuous", "processed"])
def test_window_sums_beyond_float32_are_normalised_in_float64(tmp_path: Path, mode: str) -> None:
    """The window sums are kept in float32 (a panel's largest array) only where nothing divides them later: a float64
    file's sum of 4e38 divided by its TIC is an ordinary number, not 'NaN or infinite intensities'."""
    path = tmp_path / "huge.imzML"
    with ImzMLWriter(str(path), mode=mode, mz_dtype=np.float64, intensity_dtype=np.float64) as w:
        w.addSpectrum(np.array([300.0, 300.001, 500.0]), np.array([2e38, 2e38, 1.0]), (1, 1))  # window sum 4e38
        for k in range(1, 4):
            w.addSpectrum(np.array([300.0, 300.001, 500.0]), np.array([1.0, 1.0, float(k)]), (k + 1, 1))
    with ImzML(path) as f:
        image = f.ion_images([300.0], "0.01da", normalize="tic").images[0]
    tic = np.array([4e38 + 1, 3, 4, 5])
    np.testing.assert_allclose(image[0], np.array([4e38, 2, 2, 2]) / tic * np.median(tic), rtol=1e-6)


def test_a_weak_peak_beside_strong_ones_keeps_its_intensity(tmp_path: Path) -> None:
    """Window sums from a running sum would cancel a peak 1e-18 of the strong ones' to zero (as on
    Example_Continuous's profile spectra); each peak is summed on its own."""
    path = tmp_path / "weak.imzML"
    with ImzMLWriter(str(path), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float64) as w:
        for k in range(4):
            w.addSpectrum(np.array([300.0, 400.0, 500.0]), np.array([1e12, 2e-6, 0.0]), (k + 1, 1))
    with ImzML(path) as f:
        assert f.strongest_peaks(5) == [(300.0, pytest.approx(1e12)), (400.0, pytest.approx(2e-6, rel=1e-9))]


def _with_max_dimensions(path: Path, x: float, y: float, add_scan_settings, unit: str = "") -> Path:
    """A 3×2 imzML (ImzMLWriter states no pixel size, and no "max dimension") given a "max dimension x/y" (with the
    fixture ``add_scan_settings``)."""
    with ImzMLWriter(str(path), mode="continuous") as w:
        for r in range(2):
            for c in range(3):
                w.addSpectrum(np.array([100.0, 200.0]), np.array([1.0, 2.0]), (c + 1, r + 1))
    add_scan_settings(path, "".join(f'<cvParam cvRef="IMS" accession="IMS:10000{a}" name="max dimension {axis}" '
                                    f'value="{v}"{unit}/>' for a, axis, v in ((44, "x", x), (45, "y", y))))
    return path


def test_a_pixel_size_is_derived_from_max_dimension_where_none_is_stated(tmp_path: Path, state_imzml_pixel_size,
                                                                         add_scan_settings) -> None:
    with ImzML(_with_max_dimensions(tmp_path / "dims.imzML", 75, 50, add_scan_settings)) as f:
        assert f.pixel_size_um == 25.0
        assert f.warnings == ['dims.imzML states no pixel size; 25 µm is its "max dimension" over its "max count of '
                              'pixels" (75 µm / 3 in x, 50 µm / 2 in y)']
    millimetres = ' unitCvRef="UO" unitAccession="UO:0000016" unitName="millimeter"'
    with ImzML(_with_max_dimensions(tmp_path / "mm.imzML", 0.3, 0.2, add_scan_settings, millimetres)) as f:
        assert f.pixel_size_um == pytest.approx(100.0)
    oblong = _with_max_dimensions(tmp_path / "oblong.imzML", 75, 60, add_scan_settings)
    with ImzML(oblong) as f:  # 25 × 30 µm: not square, not used
        assert f.pixel_size_um is None and f.warnings == []
    stated = _with_max_dimensions(tmp_path / "stated.imzML", 75, 50, add_scan_settings)
    state_imzml_pixel_size(stated, 20.0)  # a stated pixel size wins, silently
    with ImzML(stated) as f:
        assert f.pixel_size_um == 20.0 and f.warnings == []
    wrong = _with_max_dimensions(tmp_path / "wrong.imzML", 75, 50, add_scan_settings)
    text = wrong.read_text(encoding="iso-8859-1").replace('name="max count of pixels x" value="3"',
                                                          'name="max count of pixels x" value="3000"')
    wrong.write_text(text, encoding="iso-8859-1")
    with ImzML(wrong) as f:  # a count gone wrong derives nothing
        assert f.pixel_size_um is None and len(f.warnings) == 1 and "3000 pixels in x" in f.warnings[0]
    text = text.replace('name="max count of pixels y" value="2"', 'name="max count of pixels y" value="2000"')
    wrong.write_text(text, encoding="iso-8859-1")
    with ImzML(wrong) as f:  # both wrong alike (75 / 3000 = 50 / 2000 µm, square): still nothing derived
        assert f.pixel_size_um is None and len(f.warnings) == 1 and "3000 pixels in x" in f.warnings[0]
    short = _with_max_dimensions(tmp_path / "short.imzML", 75, 50, add_scan_settings)
    text = short.read_text(encoding="iso-8859-1").replace('name="max count of pixels x" value="3"',
                                                          'name="max count of pixels x" value="2"')
    short.write_text(text, encoding="iso-8859-1")
    with ImzML(short) as f:  # counts short of the spectra's span are not the image's size: 75 µm / 2 would be wrong
        assert f.shape == (2, 3) and f.pixel_size_um is None and f.warnings == []
    one_axis = _with_max_dimensions(tmp_path / "x_only.imzML", 75, 50, add_scan_settings)
    text = re.sub(r'<cvParam[^>]*name="max dimension y"[^>]*/>', "", one_axis.read_text(encoding="iso-8859-1"))
    one_axis.write_text(text, encoding="iso-8859-1")
    with ImzML(one_axis) as f:  # one axis says nothing of the other
        assert f.pixel_size_um is None and f.warnings == []


@pytest.mark.parametrize("unit, words", [(None, "detector counts"),  # as ImzMLWriter and instruments state it
                                         ('unitAccession="MS:1000132" unitName="percent of base peak"',
                                          "percent of base peak"),
                                         ("", None)])
def test_the_intensity_unit_the_file_states_is_carried(tmp_path: Path, unit, words, add_scan_settings) -> None:
    path = _with_max_dimensions(tmp_path / "unit.imzML", 75, 50, add_scan_settings)
    text = path.read_text(encoding="iso-8859-1")
    if unit is not None:
        text, n = re.subn(r'unitAccession="MS:1000131" unitName="number of detector counts"', unit, text)
        assert n == 1
    path.write_text(text, encoding="iso-8859-1")
    with ImzML(path) as f:
        stack = f.ion_images([100.0], "5ppm")
        assert stack.intensity_unit == words
        assert stack.units == f"the spectra's summed intensities{f' ({words})' if words else ''} in each m/z window"
        assert f.ion_images([100.0], "5ppm", "tic").units.startswith("the summed intensity divided by its spectrum's")


@pytest.mark.parametrize("declared, shape, warned", [((5, 4), (4, 5), False), ((10, 8), (8, 10), False),
                                                     ((11, 8), (8, 5), True), ((60000, 60000), (4, 5), True)])
def test_a_declared_image_size_is_kept_up_to_twice_the_spectra_span(continuous, declared, shape, warned) -> None:
    """"max count of pixels" adds trailing rows and columns without spectra, unless it declares more than twice the
    spectra's span: a header gone wrong (60000×60000 px would be 13 GB of nothing), read as the span, with a warning."""
    path, spectra = continuous
    text = path.read_text(encoding="iso-8859-1")
    for accession, value in zip(("IMS:1000042", "IMS:1000043"), declared):
        text, n = re.subn(rf'(accession="{accession}"[^>]*value=")[^"]*"', rf'\g<1>{value}"', text)
        assert n == 1
    path.write_text(text, encoding="iso-8859-1")
    with ImzML(path) as f:
        assert f.shape == shape
        image = f.ion_images([150.0], "5ppm").images[0]
        assert image[: H, : W].sum() == pytest.approx(sum(it[AXIS == 150.0].sum() for it in spectra.values()))
        told = [f"{declared[0]} pixels in x, where its spectra span {W}"] if declared[0] > 2 * W else []
        told += [f"{declared[1]} pixels in y, where its spectra span {H}"] if declared[1] > 2 * H else []
        assert f.warnings == ([f"cont.imzML declares {' and '.join(told)} (its \"max count of pixels\"): the ion "
                               "images keep to the spectra's span"] if warned else [])
    if warned:
        from msifusion.workflows.ions import IonsRequest, extract_ions

        record = extract_ions(IonsRequest(path, (150.0,), "5ppm", path.parent / "ions", quiet=True))
        assert record["shape"] == list(shape) and record["warnings"][0] == f.warnings[0]


@pytest.mark.parametrize("edit, problem", [
    ((r'<cvParam[^>]*accession="IMS:1000050"[^>]*/>', ""),
     r"spectrum 1 \(spectrum=1\) has no position x \(IMS:1000050\)"),
    ((r'<cvParam[^>]*accession="IMS:1000102"[^>]*/>', ""),
     r"spectrum 1 \(spectrum=1\)'s binary data array 1 \(mzArray\) has no external offset \(IMS:1000102\)"),
    ((r'(accession="IMS:1000103"[^>]*value=")[^"]*"', r'\g<1>abc"'),
     r"spectrum 1 \(spectrum=1\)'s binary data array 1 \(mzArray\) has external array length 'abc', not an integer"),
    ((r"(?s).*", '<?xml version="1.0"?><svg><g/></svg>'), r"its root element is <svg>, not an imzML's <mzML>"),
])
def test_a_malformed_imzml_says_what_is_missing_and_where(continuous, edit, problem) -> None:
    path, _ = continuous
    text, n = re.subn(*edit, path.read_text(encoding="iso-8859-1"), count=1)  # the first spectrum's, or all
    assert n == 1
    path.write_text(text, encoding="iso-8859-1")
    with pytest.raises(InputError, match=f"^{path}: not a valid imzML file: {problem}$"):
        ImzML(path)


def test_windows_named_by_another_warning_are_not_named_again(tmp_path: Path) -> None:
    f = ImzML(_two_peak_imzml(tmp_path / "c.imzML", "continuous"))
    overlapping = f.ion_images([400.0, 400.1], "0.1da")  # each window holds both peaks, and the overlap says so
    assert len(overlapping.window_warnings()) == 1 and "overlap" in overlapping.window_warnings()[0]
    wide = f.ion_images([400.05], "1.5da")  # reaches the ¹³C peak: that warning covers it; no spectrum is gathered
    assert wide.window_peaks == (None,) and len(wide.window_warnings()) == 1 and "¹³C" in wide.window_warnings()[0]
    from msifusion.workflows.ions import IonsRequest, extract_ions

    record = extract_ions(IonsRequest(f.path, (400.05,), "1.5da", tmp_path / "ions", quiet=True))
    assert record["window_peaks"] == [None]  # null: not looked at, where [] would read as "no peaks"


def test_peaks_of_a_file_whose_stated_range_is_narrower_than_its_data(processed) -> None:
    path, _ = processed
    text = path.read_text(encoding="iso-8859-1")
    f = ImzML(path)
    low, high = f.mz_range
    assert low < 150 < high
    # one spectrum's stated lowest observed m/z raised above its data: the file's range starts above some points
    text = re.sub(r'(accession="MS:1000528"[^>]*value=")[^"]*"', r'\g<1>150.0"', text)
    path.write_text(text, encoding="iso-8859-1")
    g = ImzML(path)
    assert g.mz_range[0] == pytest.approx(150.0, abs=1e-3)  # the stated range, now narrower than the data
    assert all(g.mz_range[0] <= mz <= g.mz_range[1] for mz, _ in g.strongest_peaks(5))


@pytest.mark.parametrize("size, unit, expected_um", [
    (20.0, ("micrometer", "UO:0000017"), 20.0),
    (20000.0, ("nanometer", "UO:0000018"), 20.0),
    (0.02, ("millimeter", "UO:0000016"), 20.0),
    (7.0, ("pixel", "UO:0000999"), None),  # a unit that is no length: the size is not used
])
def test_the_pixel_size_is_read_in_its_stated_unit(continuous, size, unit, expected_um, state_imzml_pixel_size):
    path, _ = continuous
    text = path.read_text(encoding="iso-8859-1")
    path.write_text(re.sub(r'<cvParam cvRef="IMS" accession="IMS:100004[67]"[^>]*/>', "", text), encoding="iso-8859-1")
    state_imzml_pixel_size(path, size, unit=unit)
    with ImzML(path) as f:
        assert f.pixel_size_um == pytest.approx(expected_um) if expected_um else f.pixel_size_um is None


def _grid_imzml(path: Path, mode: str, first_xy: tuple[int, int] = (1, 1), nan_at: int | None = None,
                nan_mz: bool = False) -> Path:
    """3 rows × 4 columns of centroided spectra (peaks 400 and 450) from the file coordinates ``first_xy``; with
    ``nan_at``, that spectrum's 400 peak is NaN (its m/z with ``nan_mz``, else its intensity)."""
    with ImzMLWriter(str(path), mode=mode, mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for i in range(12):
            r, c = divmod(i, 4)
            it = np.array([np.nan if i == nan_at and not nan_mz else 10.0 + i, 5.0], np.float32)
            mz = np.array([np.nan if i == nan_at and nan_mz else 400.0, 450.0])
            w.addSpectrum(mz, it, (first_xy[0] + c, first_xy[1] + r))
    return path


@pytest.mark.parametrize("mode", ["processed", "continuous"])
def test_a_nan_intensity_in_the_file_is_refused_naming_its_pixel(tmp_path: Path, mode: str) -> None:
    f = ImzML(_grid_imzml(tmp_path / f"{mode}.imzML", mode, nan_at=6))
    message = r"spectrum 7 \(pixel x=3, y=2\) holds NaN or infinite intensities: the file is damaged"
    spoiled = [lambda: f.ion_images([400.0], "5ppm"), lambda: f.ion_images([450.0], "5ppm", "tic"), f.tic,
               lambda: f.strongest_peaks(2)]
    if mode == "processed":  # 450's own window is clean, but a processed file's running sum carries the NaN into it
        spoiled.append(lambda: f.ion_images([450.0], "5ppm"))
    else:  # a continuous file's clean channels are read alone
        np.testing.assert_array_equal(f.ion_images([450.0], "5ppm").images[0], np.full((3, 4), 5.0, np.float32))
    for read in spoiled:
        with pytest.raises(InputError, match=message) as caught:
            read()
        assert caught.value.source == str(f.layout.ibd)


@pytest.mark.parametrize("mode", ["processed", "continuous"])
def test_an_acquisition_region_away_from_the_origin_is_not_padded(tmp_path: Path, mode: str) -> None:
    f = ImzML(_grid_imzml(tmp_path / f"{mode}.imzML", mode, first_xy=(101, 51)))
    image = f.ion_images([400.0], "5ppm").images[0]
    assert f.shape == (3, 4) and f.summary()["first_pixel_xy"] == (101, 51)
    np.testing.assert_array_equal(image, 10.0 + np.arange(12, dtype=np.float32).reshape(3, 4))
    assert f.layout.file_xy(5) == (102, 52)


@pytest.mark.parametrize("mode, spectrum, pixel", [("processed", 7, "x=3, y=2"), ("continuous", 1, "x=1, y=1")])
def test_a_nan_mz_in_the_file_is_refused(tmp_path: Path, mode: str, spectrum: int, pixel: str) -> None:
    f = ImzML(_grid_imzml(tmp_path / f"{mode}.imzML", mode, nan_at=0 if mode == "continuous" else 6, nan_mz=True))
    with pytest.raises(InputError, match=rf"spectrum {spectrum} \(pixel {pixel}\) holds NaN or infinite m/z values"):
        f.ion_images([450.0], "5ppm")  # a continuous file's one m/z axis is the first spectrum's


@pytest.mark.parametrize("mzs, expected", [("656.7762", [656.7762]), (656, [656.0]), (["1", 2.5], [1.0, 2.5])])
def test_mz_values_are_taken_as_numbers_or_their_text(mzs, expected):
    from msifusion.io.imzml import as_mz_list

    assert as_mz_list(mzs) == expected


def test_an_mz_that_is_no_number_is_named():
    from msifusion.io.imzml import as_mz_list

    with pytest.raises(InputError, match=r"^--mz: 'abc' is not an m/z$"):
        as_mz_list(["656.7", "abc"])


def test_zero_padding_at_mz_0_is_not_the_start_of_the_range(tmp_path: Path) -> None:
    """A processed spectrum padded with a point at m/z 0 (its stated lowest observed m/z is then 0): the range starts
    at the data's lowest positive m/z, and the mean spectrum's log-spaced bins, which peaks and registration use,
    are built from there (they failed on m/z 0)."""
    path = tmp_path / "padded.imzML"
    with ImzMLWriter(str(path), mode="processed") as w:
        w.addSpectrum(np.array([0.0, 100.0, 200.0]), np.array([0.0, 1.0, 2.0]), (1, 1))
        w.addSpectrum(np.array([150.0, 200.0]), np.array([3.0, 4.0]), (2, 1))
    with ImzML(path) as f:
        assert f.mz_range == (100.0, 200.0)
        assert [round(m) for m, _ in f.strongest_peaks(3)] == [200, 150, 100]


def test_continuous_rows_padded_apart_up_to_the_last_rows_end(continuous) -> None:
    """Intensity rows at a constant stride longer than a row, the padding after the last row cut off at the end of
    the .ibd: read as one strided view (it asked for the last row's padding too, past the file's end)."""
    path, spectra = continuous
    reference = _ions(path, [150.0, 300.0], "5ppm").images
    text = path.read_text(encoding="iso-8859-1")
    offsets = [int(v) for v in re.findall(r'name="external offset" value="(\d+)"', text)]
    ints = offsets[1::2]
    row = AXIS.size * 4
    ibd = path.with_suffix(".ibd")
    data = ibd.read_bytes()
    padded = data[: ints[0]] + b"".join(data[o: o + row] + b"\xff" * 8 for o in ints)[:-8]
    ibd.write_bytes(padded)
    moved = iter([offsets[0] if i % 2 == 0 else ints[0] + (i // 2) * (row + 8) for i in range(len(offsets))])
    path.write_text(re.sub(r'(name="external offset" value=")\d+"', lambda m: f'{m.group(1)}{next(moved)}"', text),
                    encoding="iso-8859-1")
    with ImzML(path) as f:
        assert f._intensity_block() is not None
        np.testing.assert_array_equal(f.ion_images([150.0, 300.0], "5ppm").images, reference)


def test_rms_does_not_depend_on_the_zeros_a_file_stores(tmp_path: Path) -> None:
    """The same spectra written continuous (zeros kept) and processed (zeros dropped) give the same RMS-normalised
    images, as they give the same TIC-normalised ones; the processed RMS counts the longest spectrum's points."""
    axis = np.array([100.0, 150.0, 200.0, 250.0])
    spectra = [np.array([4.0, 0.0, 5.0, 0.0]), np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.0, 6.0, 1.0])]
    paths = {}
    for mode in ("continuous", "processed"):
        paths[mode] = tmp_path / f"{mode}.imzML"
        with ImzMLWriter(str(paths[mode]), mode=mode) as w:
            for c, it in enumerate(spectra):
                keep = it > 0 if mode == "processed" else slice(None)
                w.addSpectrum(axis[keep], it[keep], (c + 1, 1))
    rms = {mode: _ions(path, [200.0], "5ppm", normalize="rms") for mode, path in paths.items()}
    np.testing.assert_allclose(rms["continuous"].images, rms["processed"].images, rtol=1e-6)
    norms = np.sqrt([np.mean(it**2) for it in spectra])
    np.testing.assert_allclose(rms["continuous"].images[0, 0], [5, 3, 6] / norms * np.median(norms), rtol=1e-6)


@pytest.mark.parametrize("where", ["group", "array"])
def test_compressed_arrays_are_refused_where_their_compression_is_written(continuous, where) -> None:
    """zlib named in the arrays' referenceable group, or in a spectrum's own array (mzML allows both): refused, not
    read as raw numbers."""
    path, _ = continuous
    zlib = '<cvParam cvRef="MS" accession="MS:1000574" name="zlib compression" value=""/>'
    text = path.read_text(encoding="iso-8859-1")
    if where == "group":
        text, n = re.subn(r'(?s)(<referenceableParamGroup id="intensityArray">(?:(?!</referenceableParam).)*?)'
                          r'<cvParam[^>]*no compression[^>]*/>', rf"\g<1>{zlib}", text)
    else:
        text, n = re.subn(r'(<referenceableParamGroupRef ref="intensityArray"/>)', rf"\g<1>{zlib}", text, count=1)
    assert n == 1
    path.write_text(text, encoding="iso-8859-1")
    with pytest.raises(InputError, match=r": its binary arrays are compressed \(zlib compression\), which is not "
                                         r"supported; export uncompressed imzML$"):
        ImzML(path)


def test_an_array_without_its_parameter_group_is_named(continuous) -> None:
    path, _ = continuous
    text, n = re.subn(r'<referenceableParamGroupRef ref="mzArray"/>', "", path.read_text(encoding="iso-8859-1"))
    assert n > 1
    path.write_text(text, encoding="iso-8859-1")
    with pytest.raises(InputError, match=r"spectrum 1 \(spectrum=1\)'s binary data array 1 refers to no "
                                         r"referenceableParamGroup"):
        ImzML(path)


def test_acquisition_gaps_are_gaps_up_to_two_pixels_wide_filled_with_their_neighbours_mean() -> None:
    """Spectra dropped here and there, or rows and columns a raster skipped, lie inside the acquisition: they are not
    measured zeros. A wider gap, or an irregular region's outside, is no gap."""
    acquired = np.zeros((9, 12), bool)
    acquired[0:8, 1:11] = True
    acquired[:, 3] = False  # a skipped column, reaching the acquisition's edge (row 0)
    acquired[:, 6:8] = False  # two
    acquired[4, 9] = False  # a dropped spectrum
    expected = np.zeros_like(acquired)
    expected[0:8, 3] = expected[0:8, 6:8] = expected[4, 9] = True
    np.testing.assert_array_equal(imzml.acquisition_gaps(acquired), expected)
    wider = acquired.copy()
    wider[:, 5] = False  # with columns 6 and 7: three
    assert not imzml.acquisition_gaps(wider)[:, 5:8].any() and imzml.acquisition_gaps(wider)[4, 9]
    images = np.arange(2 * 9 * 12, dtype=np.float32).reshape(2, 9, 12) * acquired
    filled, gaps = imzml.fill_gaps(images, acquired)
    np.testing.assert_array_equal(gaps, expected)
    assert filled[1, 4, 9] == pytest.approx(images[1, 3:6, 8:11].sum() / 8)  # the mean of its eight neighbours
    assert filled[0, 2, 3] == pytest.approx(images[0, 1:4, [2, 4]].mean())  # of the six acquired around it
    np.testing.assert_array_equal(filled[:, ~gaps], images[:, ~gaps])
    alone, none = imzml.fill_gaps(images[0], np.ones((9, 12), bool))
    assert not none.any() and alone.dtype == np.float32


def test_zero_lines_are_lines_of_zeros_between_non_zero_ones_not_an_outline_nor_a_weak_ions_zeros() -> None:
    """An ion TIFF from elsewhere has no acquired.tiff: a raster's skipped lines show as whole lines of zeros inside
    the tissue, which a measured ion seldom gives."""
    rng = np.random.default_rng(0)
    tissue = np.zeros((30, 40))
    tissue[5:25, 5:35] = 1 + rng.random((20, 30))
    none = (np.array([], int), np.array([], int))
    np.testing.assert_array_equal(imzml.zero_lines(tissue), none)  # its outline is none
    skipped = tissue.copy()
    skipped[:, 10] = skipped[:, 20:22] = skipped[:, 24:27] = 0  # one, two, three (too wide) columns
    skipped[12, :] = 0
    rows, columns = imzml.zero_lines(skipped)
    assert rows.tolist() == [12] and columns.tolist() == [10, 20, 21]
    interleaved = tissue.copy()
    interleaved[:, ::2] = 0  # every other column, as a skipped raster leaves it
    assert imzml.zero_lines(interleaved)[1].tolist() == list(range(6, 33, 2))
    for kept in (0.5, 0.2, 0.05):  # a weak ion's zeros are scattered, not whole lines
        np.testing.assert_array_equal(imzml.zero_lines(tissue * (rng.random(tissue.shape) < kept)), none)
    assert imzml.zero_lines_warning("ion.tiff", rows, np.arange(10, 15)).startswith(
        "ion.tiff: 1 row (12) and 5 columns (10, 11, 12, …), numbered from 0, hold only zeros between lines that do "
        "not; where they are pixels without a spectrum (a raster's skipped lines), not a gap in the tissue, they are "
        "fused as measured zeros")
    assert imzml.zero_lines_warning("ion.tiff", rows, columns[:0]).startswith("ion.tiff: 1 row (12), numbered from 0, "
                                                                             "holds only zeros")
    crossing = imzml.zero_line_pixels(skipped, rows, columns)  # where the lines cross the tissue, not around it
    expected = np.zeros_like(crossing)
    expected[12, 5:35] = True
    expected[5:25, [10, 20, 21]] = True
    expected[12, [10, 20, 21, 24, 25, 26]] = False  # where it meets the other lines: between zeros
    np.testing.assert_array_equal(crossing, expected)
