"""The instrument workflow on a small imzML written here, with landmarks of a known map."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from pyimzml.ImzMLWriter import ImzMLWriter

from msifusion.cli import main
from msifusion.io.landmarks import Landmarks, write_bigwarp_csv

H, W, SCALE = 12, 16, 4
AXIS = np.array([100.0, 200.0, 300.0])
OFFSET = (8, 6)  # optical pixel (row + 6, col + 8) is registered fine pixel (row, col)


def _truth() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    a = 10.0 + 90.0 * ((yy - 6) ** 2 + (xx - 8) ** 2 < 20)
    b = 5.0 + xx.astype(float)  # a gradient
    return np.stack([a, b, np.zeros_like(a)])  # m/z 300 carries no signal


@pytest.fixture
def files(tmp_path: Path):
    truth = _truth()
    imzml = tmp_path / "sample.imzML"
    with ImzMLWriter(str(imzml), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r in range(H):
            for c in range(W):
                w.addSpectrum(AXIS, truth[:, r, c].astype(np.float32), (c + 1, r + 1))
    rng = np.random.default_rng(0)
    optical = cv2.GaussianBlur(rng.random((H * SCALE + 12, W * SCALE + 16, 3)).astype(np.float32), (0, 0), 1.5)
    opt_path = tmp_path / "optical.png"
    cv2.imwrite(str(opt_path), (optical[..., ::-1] * 255).round().astype(np.uint8))
    # Fixed points in ion pixels (uncalibrated); fine pixel j has its centre at j/4 − 3/8, so
    # moving = 4·fixed + 1.5 + offset.
    fixed = np.array([[0, 0], [15, 0], [0, 11], [15, 11], [7, 5]], float)
    moving = 4 * fixed + 1.5 + np.array(OFFSET, float)
    lm_path = write_bigwarp_csv(Landmarks(moving, fixed, tuple(f"Pt-{i}" for i in range(5))), tmp_path / "lm.csv")
    return imzml, opt_path, lm_path, truth


def test_fuse_imzml_with_landmarks_several_ions(tmp_path, files):
    imzml, opt, lm, truth = files
    out = tmp_path / "out"
    code = main(["fuse", "--imzml", str(imzml), "--mz", "100", "--mz", "200", "--tol", "0.01da", "--optical", str(opt),
                 "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(out), "--method", "bilinear", "--quiet"])
    assert code == 0
    registered = tifffile.imread(out / "optical_registered.tiff")
    source = cv2.imread(str(opt))[..., ::-1]
    np.testing.assert_allclose(registered, source[6:6 + H * SCALE, 8:8 + W * SCALE], atol=1)
    with tifffile.TiffFile(out / "fused.ome.tiff") as tif:
        stack = tif.asarray()
        assert 'Name="m/z 100.0000"' in tif.ome_metadata and 'Name="m/z 200.0000"' in tif.ome_metadata
    assert stack.shape == (2, H * SCALE, W * SCALE)
    for i, name in enumerate(("100.0000", "200.0000")):
        folder = out / f"mz_{name}"
        np.testing.assert_array_equal(tifffile.imread(folder / "ion.tiff"), truth[i])
        np.testing.assert_array_equal(tifffile.imread(folder / "fused.tiff"), stack[i])
        assert json.loads((folder / "run.json").read_text())["mz"] == float(name)
    summary = json.loads((out / "run.json").read_text())
    assert summary["registration"]["method"] == "landmarks (tps)" and summary["mzs"] == [100.0, 200.0]


def test_single_ion_writes_into_out(tmp_path, files):
    imzml, opt, lm, _ = files
    out = tmp_path / "one"
    assert main(["fuse", "--imzml", str(imzml), "--mz", "200", "--tol", "5ppm", "--optical", str(opt), "--landmarks",
                 str(lm), "--scale", str(SCALE), "--out", str(out), "--method", "bilinear", "--quiet"]) == 0
    assert {"fused.tiff", "fused.png", "ion.tiff", "optical_registered.tiff", "overlay.png", "landmarks.csv",
            "run.json"} <= {p.name for p in out.iterdir()}


def test_ions_command_writes_tiffs_stack_and_overview(tmp_path, files, capsys):
    imzml, _, _, truth = files
    out = tmp_path / "ions"
    assert main(["ions", str(imzml), "--mz", "100", "--mz", "200", "--tol", "5ppm", "--out", str(out)]) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "mz_100.0000.tiff"), truth[0])
    assert tifffile.imread(out / "ions.ome.tiff").shape == (2, H, W)
    assert (out / "ions.png").exists() and (out / "run.json").exists()


def test_peaks_command(files, capsys):
    imzml = files[0]
    assert main(["peaks", str(imzml), "-n", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1] == "m/z\tmean_intensity" and lines[2].startswith("100.0000") and len(lines) == 4


@pytest.mark.parametrize("extra, needle", [
    (["--mz", "300"], "no signal"),           # a window without signal
    (["--mz", "900"], "outside the acquired"),  # outside the m/z range
    (["--mz", "100", "--tol", "0ppm"], "--tol"),
])
def test_bad_ion_requests_exit_2_and_write_nothing(tmp_path, files, capsys, extra, needle):
    imzml, opt, lm, _ = files
    out = tmp_path / "out"
    code = main(["fuse", "--imzml", str(imzml), "--optical", str(opt), "--landmarks", str(lm), "--scale", "4",
                 "--out", str(out), "--method", "bilinear", "--quiet", *extra])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not out.exists()


def test_landmarks_in_the_wrong_units_are_refused(tmp_path, files, capsys):
    imzml, opt, lm, _ = files
    code = main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm), "--scale", "4",
                 "--fixed-pixel-size", "0.01", "--out", str(tmp_path / "reg")])
    assert code == 2
    assert "pixels" in capsys.readouterr().err and not (tmp_path / "reg").exists()
