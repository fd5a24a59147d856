"""The instrument workflow on a small imzML written here, with landmarks of a known map."""

import json
import re
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from pyimzml.ImzMLWriter import ImzMLWriter

from msifusion.cli import main
from msifusion.io.imzml import ImzML
from msifusion.io.landmarks import Landmarks, read_landmarks, write_bigwarp_csv
from msifusion.measurement import consistency_error

H, W, SCALE = 12, 16, 4
AXIS = np.array([100.0, 200.0, 300.0])
OFFSET = (8, 6)  # optical pixel (row + 6, col + 8) is registered fine pixel (row, col)


def _truth() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    a = 10.0 + 90.0 * ((yy - 6) ** 2 + (xx - 8) ** 2 < 20)
    b = 5.0 + xx.astype(float)  # a gradient
    return np.stack([a, b, np.zeros_like(a)])  # m/z 300 carries no signal


NO_PIXEL_SIZE = ("no pixel size (sample.imzML gives none in its scan settings): the ion TIFFs carry none and ions.png "
                 "has no scale bar; give --pixel-size UM")


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


def test_fuse_imzml_from_python_is_the_command(tmp_path, files):
    """The library entry (no CLI): the same request gives the command's images; the default method fuses the panel
    together, so each ion's time is its share of it."""
    from msifusion.methods import MethodOptions
    from msifusion.runtime import Runtime
    from msifusion.workflows.from_imzml import ImzmlFuseRequest, fuse_imzml
    from msifusion.register.optical import RegisterSettings
    from msifusion.workflows.fusion import FuseSettings

    imzml, opt, lm, _ = files
    request = ImzmlFuseRequest(imzml, (100.0, 200.0), "0.01da", opt, tmp_path / "py", RegisterSettings(SCALE, lm),
                               FuseSettings(options=MethodOptions(runtime=Runtime(quiet=True))))
    summary = fuse_imzml(request)
    assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "--mz", "200", "--tol", "0.01da", "--optical", str(opt),
                 "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "py" / "fused.ome.tiff"),
                                  tifffile.imread(tmp_path / "cli" / "fused.ome.tiff"))
    assert summary["method"] == "guided-harmonic" and summary["mzs"] == [100.0, 200.0]
    record = json.loads((tmp_path / "py" / "mz_100.0000" / "run.json").read_text())
    assert set(record["timings_s"]) == {"fuse_share_of_panel", "write"}


def test_extract_ions_and_register_files_from_python_are_the_commands(tmp_path, files):
    """The library entries of `ions` and `register` (no CLI) write what the commands write."""
    from msifusion.workflows.from_imzml import RegisterRequest, register_files
    from msifusion.workflows.ions import IonsRequest, extract_ions
    from msifusion.register.optical import RegisterSettings

    imzml, opt, lm, truth = files
    # paths as str and m/z as text, as a notebook may give them
    record = extract_ions(IonsRequest(str(imzml), ("100", 200.0), "0.01da", str(tmp_path / "ions"), quiet=True))
    assert record["outputs"][:2] == ["mz_100.0000.tiff", "mz_200.0000.tiff"] and record["machine"]["cpu_count"] >= 1
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ions" / "mz_100.0000.tiff"), truth[0].astype(np.float32))
    register_files(RegisterRequest(str(opt), str(imzml), str(tmp_path / "reg"), RegisterSettings(SCALE, str(lm)),
                                   quiet=True))
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm), "--scale", str(SCALE),
                 "--out", str(tmp_path / "reg_cli"), "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "reg" / "optical_registered.tiff"),
                                  tifffile.imread(tmp_path / "reg_cli" / "optical_registered.tiff"))
    # what each input was as the run began: the imzML with its .ibd (the data), the optical and the landmarks
    registered = json.loads((tmp_path / "reg" / "run.json").read_text())
    assert registered["register_settings"]["scale"] == SCALE  # named as fuse --imzml names them
    described = registered["input_files"]
    assert {role: (Path(f["path"]).name, f["bytes"]) for role, f in described.items()} == {
        role: (p.name, p.stat().st_size)
        for role, p in {"imzml": imzml, "ibd": imzml.with_suffix(".ibd"), "optical": opt, "landmarks": lm}.items()}
    imzml.with_suffix(".ibd").rename(imzml.with_suffix(".IBD"))  # the reader takes either case: so does the record
    record = extract_ions(IonsRequest(imzml, (100.0,), "0.01da", tmp_path / "ions_upper", quiet=True))
    assert {role: Path(f["path"]).name for role, f in record["input_files"].items()} == {
        "imzml": imzml.name, "ibd": imzml.with_suffix(".IBD").name}


@pytest.mark.parametrize("command", [["register"], ["fuse", "--mz", "100", "--tol", "0.01da", "--imzml"]])
def test_the_landmarks_file_is_read_once_per_run(tmp_path, files, monkeypatch, command):
    """Checked before the imzML's pass, sizing the optical's pyramid level, registering: one read, so every step sees
    the same points even if the file changes during the run."""
    import msifusion.io.landmarks as landmarks_io
    import msifusion.register.optical as optical

    imzml, opt, lm, _ = files
    reads = []
    read = landmarks_io.read_landmarks

    def counted(path, *args, **kwargs):
        reads.append(Path(path))
        return read(path, *args, **kwargs)

    for module in (landmarks_io, optical):  # every name the reader is reached by
        monkeypatch.setattr(module, "read_landmarks", counted)
    ion = ["--ion"] if command == ["register"] else []
    assert main([*command, *ion, str(imzml), "--optical", str(opt), "--landmarks", str(lm), "--scale", str(SCALE),
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert reads == [lm]


def test_settings_used_again_read_an_edited_landmarks_file_again(tmp_path, files):
    """A notebook's loop: register, refine the landmarks in BigWarp, register again with the same settings."""
    from msifusion.io.images import read_optical
    from msifusion.io.imzml import ImzML
    from msifusion.register.optical import MsiTissue, RegisterSettings, register_optical

    imzml, opt, lm, _ = files
    settings = RegisterSettings(SCALE, lm)
    with ImzML(imzml) as f:
        msi = MsiTissue.of(f, automatic=False)
    first = register_optical(read_optical(opt), msi, settings, quiet=True)
    rows = lm.read_text().splitlines()
    lm.write_text("\n".join(rows[:-1]) + "\n")  # one landmark fewer
    second = register_optical(read_optical(opt), msi, settings, quiet=True)
    assert len(second.landmarks.fixed) == len(first.landmarks.fixed) - 1


def test_a_panel_summary_gives_its_worst_consistency_and_the_ions_left_smooth(tmp_path, files, capsys):
    imzml, opt, lm, _ = files
    assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "--mz", "200", "--tol", "0.01da", "--optical", str(opt),
                 "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    worst = max(ion["consistency_error"] for ion in summary["ions"].values())
    smooth = sum(ion["method_details"]["kept_smoothest"] for ion in summary["ions"].values())
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "ion(s) fused" in line]
    assert f"2 ion(s) fused ×{SCALE} in " in line and f"consistency error ≤ {worst:.2e}" in line
    assert smooth >= 1 and line.endswith(f"; {smooth} of 2 at the smoothest setting (one scale coarser, the optical's "
                                         "finer edges did not predict them: see run.json)")


def test_a_spectrum_dropped_inside_the_acquisition_is_fused_from_its_neighbours_not_as_a_zero(tmp_path, files,
                                                                                                 monkeypatch):
    """A pixel of the grid without a spectrum holds 0 in the ion images; between acquired ones (a dropped shot) it
    was fused as a measured 0, an empty MSI pixel in the fused image, forced so by the measurement's consistency.
    The same through `ions` and then `fuse --ion` on its TIFF, whose acquired.tiff lies beside it."""
    imzml, opt, lm, truth = files
    dropped = tmp_path / "dropped.imzML"
    with ImzMLWriter(str(dropped), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r in range(H):
            for c in range(W):
                if (r, c) != (6, 8):  # in the bright disc
                    w.addSpectrum(AXIS, truth[:, r, c].astype(np.float32), (c + 1, r + 1))
    warning = ("dropped.imzML: 1 pixel without a spectrum between acquired ones (spectra dropped, rows or columns the "
               "raster skipped, or a notch of the region's outline one or two pixels wide; 0 in acquired.tiff) was "
               "given the mean of its acquired neighbours before fusion, not fused as measured zeros")
    out = tmp_path / "out"
    assert main(["fuse", "--imzml", str(dropped), "--mz", "100", "--tol", "0.01da", "--optical", str(opt),
                 "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["gaps_filled"] == 1 and record["warnings"][0] == warning
    fused = tifffile.imread(out / "fused.tiff")
    block = fused[6 * SCALE:7 * SCALE, 8 * SCALE:9 * SCALE]
    assert block.mean() == pytest.approx(100.0, rel=1e-4)  # its eight neighbours in the disc: all 100
    assert tifffile.imread(out / "ion.tiff")[6, 8] == 0 and tifffile.imread(out / "acquired.tiff")[6, 8] == 0
    # two steps: the ion TIFF of `ions`, fused with the registered optical
    assert main(["ions", str(dropped), "--mz", "100", "--tol", "0.01da", "--out", str(tmp_path / "ions"),
                 "--quiet"]) == 0
    ion = tmp_path / "ions" / "mz_100.0000.tiff"
    again = tmp_path / "again"
    assert main(["fuse", "--ion", str(ion), "--optical", str(out / "optical_registered.tiff"), "--out", str(again),
                 "--quiet"]) == 0
    record = json.loads((again / "run.json").read_text())
    assert record["gaps_filled"] == 1 and record["warnings"][0] == warning.replace("dropped.imzML", ion.name)
    np.testing.assert_allclose(tifffile.imread(again / "fused.tiff"), fused, rtol=1e-5, atol=1e-4)
    # one ion of a panel, refitted: its acquired.tiff is the panel's, one folder up
    panel = tmp_path / "panel"
    assert main(["fuse", "--imzml", str(dropped), "--mz", "100", "--mz", "200", "--tol", "0.01da", "--optical",
                 str(opt), "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(panel), "--quiet"]) == 0
    refit = tmp_path / "refit"
    monkeypatch.chdir(panel / "mz_100.0000")  # given from its own folder too
    assert main(["fuse", "--ion", "ion.tiff", "--optical", str(panel / "optical_registered.tiff"), "--out", str(refit),
                 "--quiet"]) == 0
    assert json.loads((refit / "run.json").read_text())["gaps_filled"] == 1
    monkeypatch.undo()
    # an acquired.tiff with gaps beside the ion TIFF that is not used is said so: edited, or of another shape; one
    # without gaps does not matter
    edited = tmp_path / "ions" / "acquired.tiff"
    acquired = tifffile.imread(edited)
    more = acquired.copy()
    more[2, 2] = 0
    for k, (changed, why) in enumerate((
            (acquired[:-2], f"it is {H - 2}×{W}, the ion image {H}×{W}"),
            (np.stack([acquired] * 3, axis=-1), f"it is {H}×{W}×3, the ion image {H}×{W}"),  # RGB: not a crash
            (more, "it or the ion TIFF changed since the msifusion run that wrote them, or no run.json lists them"),
            (np.ones_like(acquired), None))):
        tifffile.imwrite(edited, changed, photometric="rgb" if changed.ndim == 3 else None)
        told = tmp_path / f"told{k}"
        assert main(["fuse", "--ion", str(ion), "--optical", str(out / "optical_registered.tiff"), "--out", str(told),
                     "--quiet"]) == 0
        record = json.loads((told / "run.json").read_text())
        told_why = [w for w in record["warnings"] if "was not used" in w]
        assert record["gaps_filled"] == 0 and told_why == ([] if why is None else [
            f"{edited} was not used ({why}): the pixels without a spectrum between acquired ones that it marks are "
            "fused as measured zeros"])
    # files over the fingerprints' size limit (a 512×512 float32 ion TIFF) are known by their size: still used
    from msifusion.io import outdir

    monkeypatch.setattr(outdir, "FINGERPRINT_BYTES", 100)
    assert main(["ions", str(dropped), "--mz", "100", "--tol", "0.01da", "--out", str(tmp_path / "big"),
                 "--quiet"]) == 0
    assert main(["fuse", "--ion", str(tmp_path / "big" / ion.name), "--optical", str(out / "optical_registered.tiff"),
                 "--out", str(tmp_path / "big_fused"), "--quiet"]) == 0
    assert json.loads((tmp_path / "big_fused" / "run.json").read_text())["gaps_filled"] == 1


def test_fuse_imzml_with_landmarks_several_ions(tmp_path, files):
    imzml, opt, lm, truth = files
    out = tmp_path / "out"
    code = main(["fuse", "--imzml", str(imzml), "--mz", "100", "--mz", "200", "--tol", "0.01da", "--optical", str(opt),
                 "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(out), "--method", "bilinear", "--quiet"])
    assert code == 0
    registered = tifffile.imread(out / "optical_registered.tiff")
    source = cv2.imread(str(opt))[..., ::-1]
    np.testing.assert_allclose(registered, source[6:6 + H * SCALE, 8:8 + W * SCALE], atol=1)
    with tifffile.TiffFile(out / "optical_registered.tiff") as tif:
        assert f'Name="{opt.name} on the MSI grid of {imzml.name} ×{SCALE}"' in tif.ome_metadata
    with tifffile.TiffFile(out / "fused.ome.tiff") as tif:
        stack = tif.asarray()
        assert 'Name="m/z 100.0000"' in tif.ome_metadata and 'Name="m/z 200.0000"' in tif.ome_metadata
    assert stack.shape == (2, H * SCALE, W * SCALE)
    with tifffile.TiffFile(out / "ions.ome.tiff") as tif:  # the measured stack beside the fused one
        np.testing.assert_array_equal(tif.asarray(), truth[:2])
        assert 'Name="m/z 100.0000"' in tif.ome_metadata and 'Name="m/z 200.0000"' in tif.ome_metadata
    for i, name in enumerate(("100.0000", "200.0000")):
        folder = out / f"mz_{name}"
        np.testing.assert_array_equal(tifffile.imread(folder / "ion.tiff"), truth[i])
        np.testing.assert_array_equal(tifffile.imread(folder / "fused.tiff"), stack[i])
        for written in ("fused.tiff", "ion.tiff"):
            with tifffile.TiffFile(folder / written) as tif:
                assert f'Name="m/z {name}"' in tif.ome_metadata
        record = json.loads((folder / "run.json").read_text())
        assert record["mz"] == float(name) and set(record["timings_s"]) == {"fuse", "write"}  # bilinear: ion by ion
        assert record["cwd"] == os.getcwd() and record["command"] == sys.argv
    summary = json.loads((out / "run.json").read_text())
    assert summary["registration"]["method"] == "landmarks (tps)" and summary["mzs"] == [100.0, 200.0]
    assert summary["register_settings"]["scale"] == SCALE and summary["register_settings"]["landmarks"].endswith(".csv")
    assert summary["method"] == "bilinear" and summary["scale"] == SCALE and summary["seed"] == 0
    assert summary["fused_shape"] == [H * SCALE, W * SCALE] and "numpy" in summary["versions"]
    assert summary["machine"]["cpu_count"] >= 1 and isinstance(summary["command"], list) and "created" in summary
    assert set(summary["ions"]) == {"100.0000", "200.0000"} and summary["ions"]["200.0000"]["mz"] == 200.0
    bilinear_error = consistency_error(stack[0], truth[0], SCALE)  # of the fused file as written
    assert summary["ions"]["100.0000"]["consistency_error"] == pytest.approx(bilinear_error, rel=1e-4)
    assert bilinear_error > 1e-3 and "mz" not in summary  # bilinear does not reproduce the measurement
    assert summary["units"] == "the spectra's summed intensities (detector counts) in each m/z window"
    assert set(summary["timings_s"]) == {"load_and_register", "fuse_panel", "total"}
    assert sorted(summary["outputs"]) == sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    assert cv2.imread(str(out / "ions.png")) is not None and cv2.imread(str(out / "fused.png")) is not None
    assert not (out / "mz_100.0000" / "compare.png").exists()  # a panel's ions are compared in its overviews


def test_checkpoints_of_a_fitted_method_go_into_each_ion_folder(tmp_path, files):
    imzml, opt, lm, _ = files
    out = tmp_path / "out"
    assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "200", "--tol", "0.01da", "--optical", str(opt),
                 "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(out), "--method", "lcrn", "--epochs", "4",
                 "--checkpoint-every", "2", "--quiet"]) == 0
    for name in ("100.0000", "200.0000"):
        folder = out / f"mz_{name}"
        assert sorted(p.name for p in (folder / "checkpoints").glob("*.tiff")) == ["epoch_0002.tiff", "epoch_0004.tiff"]
        last = tifffile.imread(folder / "checkpoints" / "epoch_0004.tiff")
        np.testing.assert_allclose(last, tifffile.imread(folder / "fused.tiff"), rtol=1e-5, atol=1e-5)


def test_single_ion_writes_into_out(tmp_path, files):
    imzml, opt, lm, _ = files
    out = tmp_path / "one"
    assert main(["fuse", "--imzml", str(imzml), "--mz", "200", "--tol", "5ppm", "--optical", str(opt), "--landmarks",
                 str(lm), "--scale", str(SCALE), "--out", str(out), "--method", "bilinear", "--quiet"]) == 0
    assert {"fused.tiff", "fused.png", "compare.png", "ion.tiff", "optical_registered.tiff", "overlay.png",
            "landmarks.csv", "run.json"} <= {p.name for p in out.iterdir()}


def test_normalised_ions_say_so_in_their_units(tmp_path, files):
    imzml, opt, lm, _ = files
    out = tmp_path / "tic"
    assert main(["fuse", "--imzml", str(imzml), "--mz", "200", "--tol", "5ppm", "--optical", str(opt), "--landmarks",
                 str(lm), "--scale", str(SCALE), "--out", str(out), "--method", "bilinear", "--normalize", "tic",
                 "--quiet"]) == 0
    record = json.loads((out / "run.json").read_text())
    tic = _truth().sum(0)  # every spectrum's total: the three m/z
    assert record["normalize_scale"] == pytest.approx(float(np.median(tic)))
    assert record["units"] == ("the summed intensity divided by its spectrum's TIC, times the median TIC over the "
                               f"pixels ({record['normalize_scale']:.6g})")
    np.testing.assert_allclose(tifffile.imread(out / "ion.tiff"), _truth()[1] / tic * np.median(tic), rtol=1e-5)


def test_ions_command_writes_tiffs_stack_and_overview(tmp_path, files, capsys):
    imzml, _, _, truth = files
    out = tmp_path / "ions"
    assert main(["ions", str(imzml), "--mz", "100", "--mz", "200", "--tol", "5ppm", "--out", str(out)]) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "mz_100.0000.tiff"), truth[0])
    with tifffile.TiffFile(out / "ions.ome.tiff") as tif:
        assert tif.asarray().shape == (2, H, W)
        assert 'Name="m/z 100.0000"' in tif.ome_metadata and 'Name="m/z 200.0000"' in tif.ome_metadata
    assert (out / "ions.png").exists() and (out / "run.json").exists()
    outputs = ["mz_100.0000.tiff", "mz_200.0000.tiff", "ions.ome.tiff", "ions.png", "run.json"]
    record = json.loads((out / "run.json").read_text())
    assert record["outputs"] == outputs and record["cwd"] == os.getcwd()
    assert record["warnings"] == [NO_PIXEL_SIZE]
    assert capsys.readouterr().out.splitlines() == [str(out / name) for name in outputs]


def test_ions_take_their_mz_from_a_file_beside_numbers(tmp_path, files, capsys):
    imzml, _, _, truth = files
    listed = tmp_path / "peaks.tsv"
    listed.write_text("# sample.imzML\nm/z\tmean_intensity\n200.0000\t3.0\n")
    assert main(["ions", str(imzml), "--mz", "100", str(listed), "--out", str(tmp_path / "ions"), "--quiet"]) == 0
    assert json.loads((tmp_path / "ions" / "run.json").read_text())["mzs"] == [100.0, 200.0]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ions" / "mz_200.0000.tiff"), truth[1])
    capsys.readouterr()
    listed.write_text("100\n20O\n")
    with pytest.raises(SystemExit) as refused:  # a usage error: argparse exits
        main(["ions", str(imzml), "--mz", str(listed), "--out", str(tmp_path / "bad")])
    assert refused.value.code == 2
    assert capsys.readouterr().err.startswith(f"msifusion: error: argument --mz: {listed}: line 2: '20O' is not an m/z")
    assert not (tmp_path / "bad").exists()


def test_ions_whose_windows_overlap_are_named_on_stderr_and_in_run_json(tmp_path, files, capsys):
    imzml = files[0]
    out = tmp_path / "ions"
    assert main(["ions", str(imzml), "--mz", "100", "100.1", "--tol", "0.2da", "--out", str(out), "--quiet"]) == 0
    warning = ("the m/z windows of 100.0000 and 100.1000 overlap (±0.2Da): their images share counts; narrow --tol to "
               "keep them apart")
    assert warning in capsys.readouterr().err
    record = json.loads((out / "run.json").read_text())
    assert record["warnings"] == [warning, NO_PIXEL_SIZE] and record["machine"]["cpu_count"] >= 1  # the run.json header


def test_peaks_command(files, capsys):
    imzml = files[0]
    assert main(["peaks", str(imzml), "-n", "2", "--quiet"]) == 0  # --quiet as on every command that reads long
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "# sample.imzML: 12×16 px, pixel size unknown, m/z 100.0000–300.0000"
    assert lines[1] == "m/z\tmean_intensity" and lines[2].startswith("100.0000") and len(lines) == 4


def test_non_square_pixels_are_refused_for_automatic_registration_and_named_when_uncalibrated(
        tmp_path, files, capsys, state_imzml_pixel_size):
    imzml, opt, lm, _ = files
    state_imzml_pixel_size(imzml, 10, 20)
    out = tmp_path / "auto"
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--scale", "4", "--out", str(out)]) == 2
    assert "pixels are 10 × 20 µm, not square" in capsys.readouterr().err and not out.exists()
    out = tmp_path / "landmarks"
    assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "--tol", "0.01da", "--optical", str(opt), "--landmarks",
                 str(lm), "--scale", "4", "--out", str(out), "--method", "bilinear", "--quiet"]) == 0
    assert any("not square (10 × 20 µm)" in w for w in json.loads((out / "run.json").read_text())["warnings"])
    out = tmp_path / "ions"
    assert main(["ions", str(imzml), "--mz", "100", "--tol", "0.01da", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["warnings"] == [
        NO_PIXEL_SIZE.replace("sample.imzML gives none in its scan settings", "sample.imzML: " + NOT_SQUARE)]
    capsys.readouterr()
    assert main(["peaks", str(imzml), "-n", "1", "--quiet"]) == 0
    assert f"pixel size not used ({NOT_SQUARE})" in capsys.readouterr().out.splitlines()[0]


NOT_SQUARE = "its pixels are not square (10 × 20 µm) and msifusion models square pixels"


@pytest.mark.parametrize("x, y, used, note", [
    ("25", "25.1", 25.0, None),  # within a scanner's rounding (1 %), as for TIFFs
    ("2.5e-5", "2.5e-5", None, "its pixel size 2.5e-05 µm is implausible (not between 0.001 and 100000 µm)"),  # metres
])
def test_an_imzml_pixel_size_follows_the_tiff_rule(tmp_path, files, x, y, used, note, state_imzml_pixel_size):
    imzml, *_ = files
    state_imzml_pixel_size(imzml, x, y)
    with ImzML(imzml) as f:
        assert (f.pixel_size_um, f.pixel_size_note) == (used, note)


def test_pixel_size_given_for_an_imzml_calibrates_every_output(tmp_path, files, capsys, state_imzml_pixel_size):
    """An imzML that states no pixel size (pyimzML's writer states none) could be calibrated only by exporting its ions
    and fusing them one by one with --ion; `fuse --imzml`, `ions` and `register` take --pixel-size."""

    from msifusion.errors import InputError
    from msifusion.io.images import read_ion, read_optical, write_tiff
    from msifusion.register.optical import MsiTissue
    from msifusion.workflows.from_imzml import _tissue_for
    from msifusion.workflows.ions import IonsRequest

    imzml, opt, lm, _ = files
    in_pixels = ["--landmarks", str(lm), "--fixed-pixel-size", "1"]  # the landmarks' ion side is in pixels
    runs = {"fuse": ["fuse", "--imzml", str(imzml), "--mz", "100", "--optical", str(opt), *in_pixels, "--scale", "4"],
            "ions": ["ions", str(imzml), "--mz", "100"],
            "register": ["register", "--ion", str(imzml), "--optical", str(opt), *in_pixels, "--scale", "4"]}
    written = {"fuse": ("fused.tiff", 5.0), "ions": ("mz_100.0000.tiff", 20.0), "register": ("optical_registered.tiff",
                                                                                            5.0)}
    for command, argv in runs.items():
        out = tmp_path / command
        assert main([*argv, "--pixel-size", "20", "--out", str(out), "--quiet"]) == 0
        name, pixel_um = written[command]
        reader = read_optical if command == "register" else read_ion
        assert reader(out / name).pixel_size_um == pytest.approx(pixel_um)
        assert "no pixel size" not in capsys.readouterr().err
    oblong = tmp_path / "oblong" / imzml.name  # the same pair, to state other pixels in
    oblong.parent.mkdir()
    for suffix in (".imzML", ".ibd"):
        shutil.copy(imzml.with_suffix(suffix), oblong.with_suffix(suffix))
    state_imzml_pixel_size(imzml, 25)
    out = tmp_path / "stated"
    assert main([*runs["ions"], "--pixel-size", "20", "--out", str(out), "--quiet"]) == 0
    assert read_ion(out / "mz_100.0000.tiff").pixel_size_um == pytest.approx(20.0)
    assert capsys.readouterr().err.strip() == ("msifusion: warning: --pixel-size 20 µm is used in place of the 25 µm "
                                               "sample.imzML states")
    state_imzml_pixel_size(oblong, 20, 40)  # not square: automatic registration refuses it, unless a size is given
    with ImzML(oblong, 20.0) as f:
        assert f.warnings == ["--pixel-size 20 µm is used in place of the 20 × 40 µm sample.imzML states"]
        assert MsiTissue.of(f, automatic=True).pixel_size_um == 20.0
    with ImzML(oblong) as f, pytest.raises(InputError, match="not square"):
        MsiTissue.of(f, automatic=True)
    with pytest.raises(InputError, match=r"^--pixel-size: pixel size 1e-05 µm is outside"):
        IonsRequest(imzml, (100.0,), "5ppm", tmp_path / "x", pixel_size_um=1e-5)
    calibrated = write_tiff(tmp_path / "ion.tiff", np.ones((12, 16), np.float32), 25.0)  # register --ion TIFF
    tissue = _tissue_for(calibrated, False, 20.0)
    assert tissue.pixel_size_um == 20.0
    assert tissue.warnings == ("--pixel-size 20 µm is used in place of the 25 µm ion.tiff states",)


@pytest.mark.parametrize("extra, message", [
    (["--transform", "affine"], "--transform: describes the landmarks; it needs --landmarks"),
    (["--fixed-scale", "10"], "--fixed-scale: describes the landmarks; it needs --landmarks"),
    (["--fixed-pixel-size", "2"], "--fixed-pixel-size: describes the landmarks; it needs --landmarks"),
])
def test_landmark_options_without_landmarks_are_errors(tmp_path, files, capsys, extra, message):
    imzml, opt, _, _ = files
    out = tmp_path / "reg"
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--scale", "4", "--out", str(out),
                 *extra]) == 2
    assert capsys.readouterr().err.strip() == f"msifusion: error: {message}"
    assert not out.exists()


def test_an_mz_without_signal_is_one_line_naming_the_peaks_command(tmp_path, files, capsys):
    imzml, *_ = files
    assert main(["ions", str(imzml), "--mz", "100", "250", "--tol", "0.01da", "--out", str(tmp_path / "ions")]) == 2
    assert capsys.readouterr().err == (f"msifusion: error: {imzml}: no signal anywhere within the window of m/z "
                                       "250.0000 (±0.01Da); check the m/z or widen --tol (`msifusion peaks "
                                       "sample.imzML` lists its strongest peaks)\n")
    assert not (tmp_path / "ions").exists()


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")  # ions.png's colour map at 3e38
def test_an_ion_that_cannot_be_fused_is_refused_before_registration_naming_the_file_and_mz(tmp_path, files, capsys,
                                                                                            monkeypatch):
    import msifusion.workflows.from_imzml as from_imzml

    _, opt, lm, truth = files
    truth[1, 3, 4] = 3e38  # one value of m/z 200 near float32's largest: its fused image could overflow
    imzml = tmp_path / "hot.imzML"
    with ImzMLWriter(str(imzml), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r in range(H):
            for c in range(W):
                w.addSpectrum(AXIS, truth[:, r, c].astype(np.float32), (c + 1, r + 1))
    monkeypatch.setattr(from_imzml, "register_optical", lambda *a, **k: pytest.fail("registered before refusing"))
    out = tmp_path / "out"
    assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "200", "--tol", "0.01da", "--optical", str(opt),
                 "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"msifusion: error: {imzml}: the ion image of m/z 200.0000 values reach "
                                              "3e+38, too near float32's largest")
    assert not out.exists()
    assert main(["ions", str(imzml), "--mz", "100", "200", "--tol", "0.01da", "--out", str(out), "--quiet"]) == 0
    assert tifffile.imread(out / "mz_200.0000.tiff")[3, 4] == np.float32(3e38)  # exported as it is: no fusing


def test_register_lists_what_it_wrote(tmp_path, files):
    imzml, opt, lm, _ = files
    out = tmp_path / "reg"
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm), "--scale", "4",
                 "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert sorted(record["outputs"]) == sorted(p.name for p in out.iterdir())
    assert "landmarks.csv" in record["outputs"] and record["command"] == sys.argv


def test_landmarks_on_one_transform_are_not_reported_as_accurate(tmp_path, files, capsys):
    """The fixture's landmarks are one affine map's samples, as a run's own landmarks.csv fed back is: their
    leave-one-out errors are 0 by construction, which the summary says instead of naming a "largest" at 0.00."""
    imzml, opt, lm, _ = files
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm), "--scale", "4",
                 "--out", str(tmp_path / "reg")]) == 0
    err = capsys.readouterr().err
    assert ("registered (landmarks (tps)): leave-one-out error 0.00 ion pixels at every landmark: they lie on one "
            "transform, as a run's own landmarks.csv does, so this says nothing of its accuracy") in err


@pytest.mark.parametrize("transform", ["tps", "affine"])
def test_register_reports_how_far_each_landmark_lies_from_the_transform(tmp_path, files, capsys, transform):
    """The centre landmark placed 2 ion pixels (8 optical pixels) off four exact corners: the spline through the
    corners puts it 2 ion pixels away (and, five being few, each corner about as far: the spline through the other
    three and the misplaced one extrapolates to it); the affine fit misses it by less (it leans towards it), and
    warns."""
    imzml, opt, lm, _ = files
    landmarks = read_landmarks(lm)
    off = Landmarks(landmarks.moving + np.array([[0, 0]] * 4 + [[8.0, 0.0]]), landmarks.fixed, landmarks.names)
    moved = write_bigwarp_csv(off, tmp_path / "moved.csv")
    out = tmp_path / "reg"
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(moved), "--scale", "4",
                 "--transform", transform, "--out", str(out)]) == 0
    errors = json.loads((out / "run.json").read_text())["registration"]["landmark_errors"]
    err = capsys.readouterr().err
    assert [row["landmark"] for row in errors["per_landmark"]] == [f"Pt-{i}" for i in range(5)]
    centre = errors["per_landmark"][4]["ion_px"]
    if transform == "tps":
        assert errors["measure"] == "leave-one-out" and centre == pytest.approx(2.0, abs=0.01)
        line = "registered (landmarks (tps)): leave-one-out error median 1.90, largest 2.03 ion pixels (Pt-0)"
        assert line in err and "affine fit" not in err
        assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "--tol", "0.01da", "--optical", str(opt),
                     "--landmarks", str(moved), "--scale", "4", "--method", "bilinear", "--out", str(out / "f")]) == 0
        assert line in capsys.readouterr().err  # fuse --imzml's summary says it too
    else:
        assert errors["measure"] == "affine fit residual" and errors["largest"] == {"landmark": "Pt-4", "ion_px": 1.602}
        assert "warning: the affine fit through moved.csv misses 'Pt-4' by 1.6 ion pixels (median 0.4" in err


def test_a_zeiss_czi_optical_fuses_as_its_png_does(tmp_path, files, write_czi):
    """The optical saved as ZEN saves it (a CZI, colour stored B, G, R, its scene away from the stage origin; the
    section in the slide's second scene): the panel is registered and fused exactly as from the PNG."""
    imzml, opt, lm, _ = files
    rgb = cv2.imread(str(opt))[..., ::-1]
    czi = write_czi(tmp_path / "optical.czi", rgb[::-1], location=(1200, -300), more=[(1, rgb, (1200, 400))])
    for optical, out in ((opt, "from_png"), (czi, "from_czi")):
        scene = ["--optical-scene", "2"] if optical == czi else []  # a second section on the slide
        assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "200", "--tol", "0.01da", "--optical", str(optical),
                     *scene, "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(tmp_path / out),
                     "--quiet"]) == 0
    for name in ("optical_registered.tiff", "fused.ome.tiff"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "from_czi" / name),
                                      tifffile.imread(tmp_path / "from_png" / name))


def test_a_czi_of_several_scenes_is_refused_before_the_imzml_is_read(tmp_path, files, write_czi, monkeypatch,
                                                                      capsys):
    """Its headers are checked with the landmarks, before the MSI file's pass (minutes on a large imzML)."""
    import msifusion.workflows.from_imzml as from_imzml

    imzml, _, lm, _ = files
    section = np.zeros((60, 80, 3), np.uint8)
    slide = write_czi(tmp_path / "slide.czi", section, more=[(1, section, (500, 0))])
    monkeypatch.setattr(from_imzml, "ImzML", lambda *a, **k: pytest.fail("the imzML was read first"))
    assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "--tol", "0.01da", "--optical", str(slide),
                 "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(tmp_path / "out")]) == 2
    assert "slide.czi: holds 2 scenes (1: 60×80 px, 2: 60×80 px), not one image" in capsys.readouterr().err
    assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "--tol", "0.01da", "--optical", str(slide),
                 "--optical-scene", "3", "--landmarks", str(lm), "--scale", str(SCALE), "--out",
                 str(tmp_path / "out")]) == 2
    assert ("--optical-scene: slide.czi has no scene 3; its scenes are 1: 60×80 px, 2: 60×80 px"
            in capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_calibrated_czi_is_registered_averaged_down_to_the_fused_grid(tmp_path, files, state_imzml_pixel_size,
                                                                        write_czi):
    """A 1.25 µm CZI scan, the fused grid at 5 µm: read averaged down by 4 (not at full resolution), it registers as the
    PNG of those averages does, with landmarks placed in µm on the full scan (its pixel centres at i·1.25 µm)."""
    imzml, opt, lm, _ = files
    state_imzml_pixel_size(imzml, 20.0)
    landmarks = read_landmarks(lm)
    lm_png = write_bigwarp_csv(Landmarks(landmarks.moving * 5, landmarks.fixed * 20, landmarks.names),
                               tmp_path / "a.csv")
    lm_scan = write_bigwarp_csv(Landmarks(landmarks.moving * 5 + 1.875, landmarks.fixed * 20, landmarks.names),
                                tmp_path / "b.csv")
    png = cv2.imread(str(opt))[..., ::-1]
    scan = write_czi(tmp_path / "scan.czi", png.repeat(4, 0).repeat(4, 1), pixel_size_um=1.25)
    base = ["register", "--ion", str(imzml), "--scale", "4", "--quiet"]
    assert main([*base, "--optical", str(opt), "--landmarks", str(lm_png), "--optical-pixel-size", "5",
                 "--out", str(tmp_path / "png")]) == 0
    assert main([*base, "--optical", str(scan), "--landmarks", str(lm_scan), "--out", str(tmp_path / "czi")]) == 0
    record = json.loads((tmp_path / "czi" / "run.json").read_text())
    assert record["registration"]["optical_shape_read"] == list(png.shape[:2]) and record["warnings"] == []
    np.testing.assert_allclose(tifffile.imread(tmp_path / "czi" / "optical_registered.tiff"),
                               tifffile.imread(tmp_path / "png" / "optical_registered.tiff"), atol=1e-6)


def _bigwarp_json(path, csv_path, kind: str):
    """The landmarks of ``csv_path`` as BigWarp's transform export of type ``kind``."""
    lm = read_landmarks(csv_path)
    path.write_text(json.dumps({"type": kind, "landmarks": {
        "type": "BigWarpLandmarks", "numDimensions": 2, "movingPoints": lm.moving.tolist(),
        "fixedPoints": lm.fixed.tolist(), "active": [True] * len(lm.fixed), "names": list(lm.names)}}))
    return path


def test_a_bigwarp_export_is_fitted_with_the_transform_it_names(tmp_path, files, capsys):
    imzml, opt, lm, _ = files
    bent = tmp_path / "bent.csv"  # one point moved: an affine and a thin-plate spline fit now differ
    points = read_landmarks(lm)
    moving = points.moving.copy()
    moving[4] += 3.0
    write_bigwarp_csv(Landmarks(moving, points.fixed, points.names), bent)

    def register(landmarks, *extra):
        out = tmp_path / f"reg{len(list(tmp_path.iterdir()))}"
        code = main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(landmarks),
                     "--scale", "4", "--out", str(out), "--quiet", *extra])
        return code, out

    _, affine_csv = register(bent, "--transform", "affine")
    _, tps_csv = register(bent)
    _, affine_json = register(_bigwarp_json(tmp_path / "affine.json", bent, "Affine"))
    registered = lambda out: tifffile.imread(out / "optical_registered.tiff")  # noqa: E731
    np.testing.assert_array_equal(registered(affine_json), registered(affine_csv))
    assert np.abs(registered(affine_csv).astype(int) - registered(tps_csv)).max() > 0
    assert json.loads((affine_json / "run.json").read_text())["registration"]["method"] == "landmarks (affine)"
    capsys.readouterr()
    code, out = register(_bigwarp_json(tmp_path / "similarity.json", bent, "Similarity"))
    assert code == 2 and not out.exists()
    assert "BigWarp transform type 'Similarity' is not one msifusion fits" in capsys.readouterr().err
    code, out = register(tmp_path / "affine.json", "--transform", "tps")
    assert code == 0 and "--transform tps overrides the transform type 'Affine' that affine.json was exported with" \
        in capsys.readouterr().err
    np.testing.assert_array_equal(registered(out), registered(tps_csv))


def test_deformable_with_landmarks_is_an_error(tmp_path, files, capsys):
    imzml, opt, lm, _ = files
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm), "--scale", "4",
                 "--deformable", "--out", str(tmp_path / "reg")]) == 2
    assert capsys.readouterr().err.strip() == ("msifusion: error: --deformable: applies to automatic registration "
                                               "only, not with --landmarks")


def test_several_ions_collect_every_fusion_warning(tmp_path, files, capsys, monkeypatch):
    from msifusion.fit import FitResult
    from msifusion.methods import METHODS, Method
    from msifusion.measurement import upsample

    monkeypatch.setitem(METHODS, "negated", Method("negated", lambda p, o: FitResult(-upsample(p.ion, p.scale)), "test"))
    imzml, opt, lm, _ = files
    out = tmp_path / "out"
    assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "--mz", "200", "--tol", "0.01da", "--optical", str(opt),
                 "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(out), "--method", "negated",
                 "--quiet"]) == 0
    uncalibrated, *warnings = json.loads((out / "run.json").read_text())["warnings"]
    assert uncalibrated.startswith("no pixel size (sample.imzML gives none in its scan settings)")
    assert [w.split(" is not in")[0] for w in warnings] == ["m/z 100.0000: the negated output",
                                                            "m/z 200.0000: the negated output"]
    for name, warning in zip(("100.0000", "200.0000"), warnings):
        assert json.loads((out / f"mz_{name}" / "run.json").read_text())["warnings"] == [uncalibrated, warning]
    assert capsys.readouterr().err.splitlines() == [f"msifusion: warning: {w}" for w in [uncalibrated, *warnings]]


def test_a_panels_registration_warnings_are_told_before_the_fusion_and_once(tmp_path, files, capsys, monkeypatch):
    from msifusion.fit import FitResult
    from msifusion.methods import METHODS, Method
    from msifusion.measurement import upsample

    said_before_fusion = []

    def spy(problem, options):
        said_before_fusion.append(capsys.readouterr().err)
        return FitResult(upsample(problem.ion, problem.scale))

    monkeypatch.setitem(METHODS, "spy", Method("spy", spy, "test"))
    imzml, opt, lm, _ = files
    assert main(["fuse", "--imzml", str(imzml), "--mz", "100", "100.005", "--tol", "0.01da", "--optical", str(opt),
                 "--landmarks", str(lm), "--scale", str(SCALE), "--out", str(tmp_path / "out"), "--method", "spy",
                 "--quiet"]) == 0
    before = said_before_fusion[0].splitlines()
    assert before[0].startswith("msifusion: warning: the m/z windows of 100.0000 and 100.0050 overlap")
    assert before[1].startswith("msifusion: warning: no pixel size (sample.imzML gives none")
    assert capsys.readouterr().err == ""  # not said again at the end


def _tiny_imzml(path: Path) -> Path:
    """3×4 spectra: too few for automatic registration (16 needed)."""
    with ImzMLWriter(str(path), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r in range(3):
            for c in range(4):
                w.addSpectrum(AXIS, np.array([5.0, 1.0, 1.0], np.float32), (c + 1, r + 1))
    return path


def test_empty_msi_tissue_names_the_imzml(tmp_path, files, capsys):
    _, opt, _, _ = files
    tiny = _tiny_imzml(tmp_path / "tiny.imzML")
    out = tmp_path / "out"
    assert main(["fuse", "--imzml", str(tiny), "--mz", "100", "--optical", str(opt), "--scale", "4",
                 "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"msifusion: error: {tiny}: the MSI tissue image is too small (3×4): 12 pixels with signal, 16 needed to "
        "register automatically; give --landmarks")
    assert not out.exists()


def test_landmarks_that_miss_the_optical_name_the_optical_and_the_landmarks(tmp_path, files, capsys):
    imzml, opt, _, _ = files
    fixed = np.array([[0, 0], [15, 0], [0, 11], [15, 11]], float)
    moving = fixed * 0.5 + np.array([W * SCALE + 20.0, 0.0])  # right of the optical, within check_landmarks' margin
    lm = write_bigwarp_csv(Landmarks(moving, fixed, tuple("abcd")), tmp_path / "right.csv")
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm), "--scale", "4",
                 "--out", str(tmp_path / "reg")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"msifusion: error: {opt}: the landmark transform (tps) from right.csv maps the whole ion grid outside this "
        "image; check the landmarks' units (pixels vs µm) and which image is fixed")


def test_landmarks_that_put_part_of_the_measured_grid_off_the_optical_are_warned(tmp_path, files, capsys):
    imzml, opt, lm, _ = files
    out = tmp_path / "reg"
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm), "--scale", "4",
                 "--out", str(out), "--quiet"]) == 0
    assert "outside" not in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["registration"]["measured_outside_optical"] == 0.0
    fixed = np.array([[0, 0], [15, 0], [0, 11], [15, 11], [7, 5]], float)
    # MSI column c's centre lands at x = 4c + 45.5: c ≥ 9 (7 of 16) lie past the optical's 80 px
    moving = 4 * fixed + 1.5 + np.array([OFFSET[0] + 36.0, OFFSET[1]])
    shifted = write_bigwarp_csv(Landmarks(moving, fixed, tuple("abcde")), tmp_path / "shifted.csv")
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(shifted), "--scale", "4",
                 "--out", str(tmp_path / "off"), "--quiet"]) == 0
    warned = capsys.readouterr().err
    assert "msifusion: warning: 44% of the MSI's measured pixels lie outside optical.png: the registered optical is " \
           "black there, so they are fused without a guide; check the landmarks and overlay.png" in warned
    share = json.loads((tmp_path / "off" / "run.json").read_text())["registration"]["measured_outside_optical"]
    assert share == round(7 / 16, 4)


@pytest.mark.parametrize("command", ["fuse", "register"])
def test_a_missing_optical_or_landmark_file_is_found_before_the_imzml_is_read(tmp_path, files, capsys, monkeypatch,
                                                                              command):
    from msifusion.io.imzml import ImzML

    imzml, opt, lm, _ = files
    monkeypatch.setattr(ImzML, "tic", lambda *_: pytest.fail("the imzML was read first"))
    monkeypatch.setattr(ImzML, "ion_images", lambda *_: pytest.fail("the imzML was read first"))
    source = ["--imzml", str(imzml), "--mz", "100", "--tol", "0.01da"] if command == "fuse" else ["--ion", str(imzml)]
    for optical, landmarks, needle in [(tmp_path / "nope.png", lm, "nope.png: optical image file not found"),
                                       (opt, tmp_path / "nope.csv", "nope.csv: landmarks file not found")]:
        assert main([command, *source, "--optical", str(optical), "--landmarks", str(landmarks), "--scale", "4",
                     "--out", str(tmp_path / "o"), "--quiet"]) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_automatic_registration_that_misses_the_optical_does_not_blame_landmarks(tmp_path, files, capsys, monkeypatch):
    from msifusion.register import optical as registration
    from msifusion.register import AffineMap, Registration

    far = AffineMap(np.array([[1.0, 0.0, 1e5], [0.0, 1.0, 1e5]]))

    def off_the_image(optical, tissue, fixed, moving, options):
        return Registration(far, fixed, moving, far, 0.9, 0.5, 1.1, float("nan"), 0, 1)

    monkeypatch.setattr(registration, "register_auto", off_the_image)
    imzml, opt, _, _ = files
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--scale", "4",
                 "--out", str(tmp_path / "reg")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"msifusion: error: {opt}: automatic registration against the MSI tissue image of sample.imzML "
                   "placed the whole ion grid outside this image; check that both images show the same section")
    assert "landmark" not in err


def test_a_failed_polish_is_a_warning(tmp_path, files, monkeypatch):
    """SimpleITK's polish can fail (every sample mapped off the optical): the searched pose was then used silently,
    the error only in run.json's details. It is warned now."""
    from msifusion.register import optical as registration
    from msifusion.register import AffineMap, Registration

    known = AffineMap(np.array([[4.0, 0.0, 1.5 + OFFSET[0]], [0.0, 4.0, 1.5 + OFFSET[1]]]))
    itk = ("ITK ERROR: MattesMutualInformationImageToImageMetricv4(0x55d9a0c67450): All samples map outside moving "
           "image buffer. The images do not sufficiently overlap. They need to be initialized to have more overlap "
           "before this metric will work.")

    def unpolished(optical, tissue, fixed, moving, options):
        return Registration(known, fixed, moving, known, 0.6, 0.5, 1.1, float("nan"), 1, 1,
                            {"polish_error": [itk], "search_block_factor": 2})

    monkeypatch.setattr(registration, "register_auto", unpolished)
    imzml, opt, _, _ = files
    out = tmp_path / "reg"
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--scale", "4", "--out", str(out),
                 "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["warnings"] == [
        "automatic registration's affine polish failed (All samples map outside moving image buffer): the searched "
        "pose is used, which can be a few MSI pixels off; check overlay.png, and refine landmarks.csv in BigWarp if "
        "needed"]


PC1_PC2 = ("principal component 1 of the spectra (used) and principal component 2 of the spectra both match the "
           "optical (scores 0.60 and 0.55) but align up to {apart:.1f} MSI pixels apart")
PC1_TWICE = ("principal component 1 of the spectra matches the optical in two alignments up to {apart:.1f} MSI pixels "
             "apart (scores 0.60, used, and 0.55); the other is ")
MIRROR_HINT = (" (a mirror image has nearly the same outline: tell the two apart by a feature known to lie on one "
               "side, a notch, a bundle, the slide's label, in overlay.png and overlay_rival.png)")
SERIAL_HINT = (" (serial sections look alike: tell the two apart by a tear, a fold or a missing part in overlay.png "
               "and overlay_rival.png, or crop the optical image to the acquired section)")


@pytest.mark.parametrize("apart, rival, what", [
    (3.2, {"channel": 2, "sign": -1}, PC1_PC2),
    (0.4, {"channel": 2, "sign": -1}, None),
    (3.2, {"channel": 1, "sign": -1, "mirrored": False, "turned_deg": 2.0}, PC1_TWICE + "moved"),
    (74.3, {"channel": 1, "sign": 1, "mirrored": True, "turned_deg": -150.0},
     PC1_TWICE + "mirrored, turned by 150°" + MIRROR_HINT),
    (74.3, {"channel": 2, "sign": 1, "mirrored": True, "turned_deg": 0.0},
     PC1_PC2 + ", the other mirrored" + MIRROR_HINT),
    (96.0, {"channel": 1, "sign": 1, "mirrored": True, "turned_deg": 0.0, "other_section": True},
     PC1_TWICE + "mirrored, on another of the optical's 2 separate sections" + SERIAL_HINT)])
def test_an_ambiguous_automatic_registration_is_a_warning(tmp_path, files, capsys, monkeypatch, apart, rival, what):
    """Two tissue images that match the optical in alignments apart, or one that matches it in two (a section
    nearly mirror-symmetric, or two serial sections alike on one slide), are warned about, with both alignments drawn
    and the other written as landmarks."""
    from msifusion.register import optical as registration
    from msifusion.register import AffineMap, Registration

    known = AffineMap(np.array([[4.0, 0.0, 1.5 + OFFSET[0]], [0.0, 4.0, 1.5 + OFFSET[1]]]))  # the landmarks' map
    other = AffineMap(known.matrix + np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))  # 2 optical pixels to the right
    rival = {**rival, "score": 0.55, "disagreement_px": apart}
    warned = what is not None

    def with_a_rival(optical, tissue, fixed, moving, options):
        return Registration(known, fixed, moving, known, 0.6, 0.5, 1.1, float("nan"), 1, 1,
                            {"rival": rival, "optical_sections": 2}, other)

    monkeypatch.setattr(registration, "register_auto", with_a_rival)
    imzml, opt, _, _ = files
    out = tmp_path / "reg"
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--scale", "4", "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["registration"]["rival"] == rival
    polish = record["registration"]["options"]["polish"]
    assert polish["seed"] == 1 and polish["deformable"] is False
    expected = [(f"automatic registration is ambiguous: {what.format(apart=apart)}; compare them in alignments.png "
                 "(the optical's outline under each, on the MSI tissue image), overlay.png and overlay_rival.png, and "
                 "to use the other alignment rerun into a new --out with --landmarks landmarks_rival.csv (all in this "
                 "run's output folder), or refine either in BigWarp")] if warned else []
    assert [w for w in record["warnings"] if "ambiguous" in w] == expected
    assert [w for w in capsys.readouterr().err.splitlines() if "ambiguous" in w] == [f"msifusion: warning: {w}"
                                                                                     for w in expected]
    assert (out / "overlay_rival.png").exists() == (out / "landmarks_rival.csv").exists() == warned
    assert (out / "alignments.png").exists() == warned
    if warned:  # the other alignment, taken up as landmarks: the optical 2 pixels further right
        monkeypatch.undo()
        again = tmp_path / "again"
        assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--scale", "4", "--landmarks",
                     str(out / "landmarks_rival.csv"), "--out", str(again)]) == 0
        source = cv2.imread(str(opt))[..., ::-1]
        np.testing.assert_allclose(tifffile.imread(again / "optical_registered.tiff"),
                                   source[OFFSET[1]:OFFSET[1] + H * SCALE, OFFSET[0] + 2:OFFSET[0] + 2 + W * SCALE],
                                   atol=1)


def test_a_mirror_symmetric_section_is_warned_through_its_imzmls_several_tissue_images(tmp_path):
    """The command matches the optical against the TIC and principal components: the TIC agreed with the mirrored
    pose used, and another tissue image's pose in the right basin scored low, so the right pose on the best tissue
    image was not looked at and the run was silent, 329 optical pixels off. It is warned now, with the hint that
    outlines cannot tell a mirror image."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "register"))
    from test_automatic import _synthetic_pair

    optical, msi, _, truth = _synthetic_pair(asymmetry=0.0)
    opt = tmp_path / "section.png"
    cv2.imwrite(str(opt), (optical[..., ::-1] * 255).round().astype(np.uint8))
    imzml = tmp_path / "section.imzML"
    axis = np.linspace(300.0, 900.0, 2000)
    shapes = [np.exp(-0.5 * ((axis - mz) / 0.3) ** 2) for mz in (400.0, 550.0, 700.0)]
    rng = np.random.default_rng(1)
    with ImzMLWriter(str(imzml), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r, c in zip(*np.nonzero(msi)):  # two peaks follow the section, one its complement; noisy spectra
            v = float(msi[r, c])
            spectrum = 0.01 + (100 * v + 5) * shapes[0] + (100 * (1.2 - v) + 5) * shapes[1] + (50 * v + 5) * shapes[2]
            w.addSpectrum(axis, (spectrum + rng.normal(0, 0.5, axis.shape).clip(0)).astype(np.float32),
                          (int(c) + 1, int(r) + 1))
    out = tmp_path / "reg"
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--scale", "4", "--pixel-size", "10",
                 "--out", str(out), "--quiet"]) == 0
    rival = json.loads((out / "run.json").read_text())["registration"]["rival"]
    assert rival["mirrored"] is True and rival["disagreement_px"] > 50
    warned = [w for w in json.loads((out / "run.json").read_text())["warnings"] if "ambiguous" in w]
    assert len(warned) == 1 and "a mirror image has nearly the same outline" in warned[0]
    # one of the two is the section's own alignment (to an optical pixel; the grid begins at the first spectrum)
    errors = []
    for name in ("landmarks.csv", "landmarks_rival.csv"):
        placed = read_landmarks(out / name)
        at = truth(placed.fixed + 10.0 * np.argwhere(msi)[:, ::-1].min(axis=0))
        errors.append(np.hypot(*(at - placed.moving).T).max())
    assert min(errors) < 1.0 < max(errors)


def test_landmarks_on_an_imzml_whose_spectra_start_away_from_the_origin_are_told_where_the_grid_begins(tmp_path,
                                                                                                         files):
    import re

    imzml, opt, lm, _ = files
    moved = tmp_path / "moved.imzML"
    shutil.copy(imzml.with_suffix(".ibd"), moved.with_suffix(".ibd"))
    text = imzml.read_text(encoding="iso-8859-1")  # every spectrum 100 columns and 50 rows further out
    for accession, shift in (("IMS:1000050", 100), ("IMS:1000051", 50)):
        text = re.sub(rf'(accession="{accession}"[^>]*value=")(\d+)"', lambda m: f'{m[1]}{int(m[2]) + shift}"', text)
    moved.write_text(text, encoding="iso-8859-1")
    for source, told in ((imzml, False), (moved, True)):
        out = tmp_path / source.stem
        assert main(["register", "--optical", str(opt), "--ion", str(source), "--scale", str(SCALE), "--landmarks",
                     str(lm), "--out", str(out), "--quiet"]) == 0
        record = json.loads((out / "run.json").read_text())
        assert record["registered_shape"] == [H * SCALE, W * SCALE]  # the same grid: the empty frame is not imaged
        said = [w for w in record["warnings"] if w.startswith("moved.imzML's spectra begin 100 columns and 50 rows in")]
        assert len(said) == told
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "moved" / "optical_registered.tiff"),
                                  tifffile.imread(tmp_path / "sample" / "optical_registered.tiff"))
    # the landmarks.csv that run wrote is on its own grid: fed back, it is not warned about; one that a run on an
    # export of the ion image keeping the empty columns and rows wrote is on that export's grid, and is
    assert main(["register", "--optical", str(opt), "--ion", str(moved), "--scale", str(SCALE), "--landmarks",
                 str(tmp_path / "moved" / "landmarks.csv"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert json.loads((tmp_path / "again" / "run.json").read_text())["warnings"] == []
    from msifusion.io.images import write_tiff

    nudged = tmp_path / "nudged.imzML"  # 3 columns and 2 rows further out: landmarks 3 and 2 off stay on the image
    shutil.copy(imzml.with_suffix(".ibd"), nudged.with_suffix(".ibd"))
    text = imzml.read_text(encoding="iso-8859-1")
    for accession, shift in (("IMS:1000050", 3), ("IMS:1000051", 2)):
        text = re.sub(rf'(accession="{accession}"[^>]*value=")(\d+)"', lambda m: f'{m[1]}{int(m[2]) + shift}"', text)
    nudged.write_text(text, encoding="iso-8859-1")
    with ImzML(imzml) as f:
        export = write_tiff(tmp_path / "export.tiff", np.pad(f.tic(), ((2, 0), (3, 0))).astype(np.float32), None)
    landmarks = read_landmarks(lm)
    on_export = write_bigwarp_csv(Landmarks(landmarks.moving, landmarks.fixed + (3, 2), landmarks.names),
                                  tmp_path / "on_export.csv")
    assert main(["register", "--optical", str(opt), "--ion", str(export), "--scale", str(SCALE), "--landmarks",
                 str(on_export), "--out", str(tmp_path / "export_run"), "--quiet"]) == 0
    assert main(["register", "--optical", str(opt), "--ion", str(nudged), "--scale", str(SCALE), "--landmarks",
                 str(tmp_path / "export_run" / "landmarks.csv"), "--out", str(tmp_path / "from_export"),
                 "--quiet"]) == 0
    said = json.loads((tmp_path / "from_export" / "run.json").read_text())["warnings"]
    assert any(w.startswith("nudged.imzML's spectra begin 3 columns and 2 rows in") for w in said)


def test_an_optical_registered_already_is_named_when_registered_again(tmp_path, files, capsys, monkeypatch):
    from msifusion.register import optical as registration
    from msifusion.register import AffineMap, Registration

    imzml, opt, lm, _ = files
    first = tmp_path / "first"
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--scale", "4", "--landmarks", str(lm),
                 "--out", str(first), "--quiet"]) == 0
    known = np.array([[4.0, 0.0, 1.5], [0.0, 4.0, 1.5]])  # the registered optical onto the ion grid
    turned = np.array([[0.0, -4.0, 63.5], [4.0, 0.0, 1.5]])  # the same shape, found turned by 90°: not registered
    maps = iter([known, turned, known])

    def found(optical, tissue, fixed, moving, options):
        m = AffineMap(next(maps))
        return Registration(m, fixed, moving, m, 0.9, 0.8, 1.1, float("nan"), 0, 1)

    monkeypatch.setattr(registration, "register_auto", found)
    named = "optical_registered.tiff is 48×64, exactly the ion grid × 4: it looks registered already"
    registered = first / "optical_registered.tiff"
    for i, (optical, expected) in enumerate(((registered, True), (registered, False), (opt, False))):
        out = tmp_path / f"again_{i}"
        assert main(["register", "--optical", str(optical), "--ion", str(imzml), "--scale", "4", "--out", str(out),
                     "--quiet"]) == 0
        warnings = json.loads((out / "run.json").read_text())["warnings"]
        told = [w for w in warnings if w.startswith(named) and w.endswith("--optical optical_registered.tiff`")]
        assert len(told) == expected
    capsys.readouterr()


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


def test_an_mz_outside_the_range_is_refused_before_the_passes_over_the_spectra(tmp_path, files, capsys, monkeypatch):
    """Automatic registration reads the whole file twice (its mean spectrum, then its tissue images): an m/z the file
    cannot give is refused before those minutes on a large file."""
    from msifusion.io.imzml import ImzML

    imzml, opt, _, _ = files
    monkeypatch.setattr(ImzML, "tissue_images", lambda self: pytest.fail("the spectra were read first"))
    assert main(["fuse", "--imzml", str(imzml), "--optical", str(opt), "--scale", "4", "--mz", "900",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "outside the acquired m/z range" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("transform, fit", [("tps", "a thin-plate spline"), ("affine", "an affine map")])
def test_collinear_landmarks_are_refused_in_the_words_of_the_transform_asked_for(tmp_path, files, capsys, transform,
                                                                               fit):
    imzml, opt, _, _ = files
    line = write_bigwarp_csv(Landmarks(np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]]),
                                       np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), ("a", "b", "c")),
                             tmp_path / "line.csv")
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(line), "--transform",
                 transform, "--scale", "4", "--out", str(tmp_path / "reg")]) == 2
    assert capsys.readouterr().err == (f"msifusion: error: {line}: landmarks are collinear or nearly so (their spread "
                                       f"across the line under 0.1% of their spread along it); {fit} needs three not "
                                       "on one line\n")
    assert not (tmp_path / "reg").exists()


def test_landmarks_in_the_wrong_units_are_refused(tmp_path, files, capsys):
    imzml, opt, lm, _ = files
    code = main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm), "--scale", "4",
                 "--fixed-pixel-size", "0.01", "--out", str(tmp_path / "reg")])
    assert code == 2
    assert "pixels" in capsys.readouterr().err and not (tmp_path / "reg").exists()


def test_a_too_wide_spot_is_refused_before_registration(tmp_path, files, capsys):
    _, opt, _, _ = files
    tiny = _tiny_imzml(tmp_path / "tiny.imzML")  # registering it would fail: the spot is refused first
    assert main(["fuse", "--imzml", str(tiny), "--mz", "100", "--optical", str(opt), "--scale", "4",
                 "--spot-sigma", "3", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("msifusion: error: --spot-sigma: a laser spot of σ 3 fused-grid pixels is "
                                              "wider than half an MSI pixel (2 px at ×4)")


def test_register_warns_when_the_optical_is_coarser_than_the_fused_grid(tmp_path, files):
    imzml, opt, lm, _ = files  # the optical has 4 pixels per ion pixel
    for scale, expected in ((SCALE, []), (12, ["the optical's pixels cover 0.25 MSI pixels of the section, coarser "
                                               "than the fused grid's 0.0833 MSI pixels at ×12: the fused image has no "
                                               "optical detail at its resolution; ×4 would do as well"])):
        out = tmp_path / f"x{scale}"
        assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm),
                     "--scale", str(scale), "--out", str(out)]) == 0
        assert json.loads((out / "run.json").read_text())["warnings"] == expected


def test_landmarks_that_scale_two_calibrated_images_apart_are_warned(tmp_path, files, capsys):
    """Both images in µm, yet the landmarks stretch one 4× onto the other: landmarks on a preview, or in pixels."""
    imzml, opt, lm, _ = files
    base = ["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm), "--scale", "4"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0  # uncalibrated: nothing to compare
    assert "scale the optical" not in capsys.readouterr().err
    assert main([*base, "--fixed-pixel-size", "1", "--optical-pixel-size", "1", "--out", str(tmp_path / "px")]) == 0
    assert "scale the optical" not in capsys.readouterr().err  # 1 and 1: both in pixels, as the docs say them
    assert main([*base, "--fixed-pixel-size", "20", "--optical-pixel-size", "20", "--out", str(tmp_path / "um")]) == 0
    err = capsys.readouterr().err
    assert ("the landmarks in lm.csv scale the optical's µm to the ion image's by 4.0×, where the two calibrations "
            "say 1: either they were placed on a downsampled preview or in pixels where an image is calibrated in µm "
            "(check overlay.png), or --optical-pixel-size (20 µm per pixel) is wrong and its pixels are 5 µm") in err
    record = json.loads((tmp_path / "um" / "run.json").read_text())
    assert any("by 4.0×" in w for w in record["warnings"]) and "--optical-pixel-size 5" not in err
    assert record["registration"]["optical_pixel_size_matched_um"] == pytest.approx(5.0, rel=1e-3)


def test_landmarks_placed_in_the_optical_pixels_are_named_so(tmp_path, files, state_imzml_pixel_size, capsys):
    """The optical calibrated at 5 µm, the ion image at 20 µm; landmarks in µm on the ion image but in pixels on the
    optical: their scale is the optical's pixel size; told so, with --optical-pixel-size 1, which is then silent."""
    imzml, opt, lm, _ = files
    state_imzml_pixel_size(imzml, 20.0)
    tifffile.imwrite(tmp_path / "optical.tif", cv2.imread(str(opt))[..., ::-1], resolution=(2000, 2000),
                     resolutionunit="CENTIMETER")  # 5 µm per pixel
    landmarks = read_landmarks(lm)
    mixed = write_bigwarp_csv(Landmarks(landmarks.moving, landmarks.fixed * 20, landmarks.names), tmp_path / "m.csv")
    base = ["register", "--optical", str(tmp_path / "optical.tif"), "--ion", str(imzml), "--landmarks", str(mixed),
            "--scale", "4", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "as_um")]) == 0
    assert ("the landmarks in m.csv put 0.2 of the optical's units in a µm of the ion image, 1 / its pixel size (5 "
            "µm): they look placed in pixels of optical.tif, not in its µm; if so, give --optical-pixel-size 1"
            ) in capsys.readouterr().err
    assert main([*base, "--optical-pixel-size", "1", "--out", str(tmp_path / "as_px")]) == 0
    assert "scale the optical" not in capsys.readouterr().err
    assert json.loads((tmp_path / "as_px" / "run.json").read_text())["warnings"] == []


def test_an_uncalibrated_pyramid_is_registered_at_its_level_under_the_stated_pixel_size(tmp_path, files,
                                                                                      state_imzml_pixel_size,
                                                                                      write_pyramid):
    """A whole-slide pyramid without a calibration, given ``--optical-pixel-size``: the level as fine as the fused grid
    is read (not the full scan, which can be tens of GB as float), and registers as that level saved alone would."""
    imzml, opt, lm, _ = files
    state_imzml_pixel_size(imzml, 20.0)  # fused grid at ×4: 5 µm, the PNG's pixel
    landmarks = read_landmarks(lm)  # in pixels: to µm, the PNG's 5 and the ion's 20 per pixel
    lm_png = write_bigwarp_csv(Landmarks(landmarks.moving * 5, landmarks.fixed * 20, landmarks.names),
                               tmp_path / "a.csv")
    # in the full scan's frame (centres at i·1.25 µm, as in BigWarp) a PNG pixel's centre is 1.875 µm on
    lm_slide = write_bigwarp_csv(Landmarks(landmarks.moving * 5 + 1.875, landmarks.fixed * 20, landmarks.names),
                                 tmp_path / "b.csv")
    png = cv2.imread(str(opt))[..., ::-1]
    # 1.25 µm, then 2.5 µm and 5 µm levels, none calibrated
    slide = write_pyramid(tmp_path / "slide.ome.tif",
                          [png.repeat(4, 0).repeat(4, 1), png.repeat(2, 0).repeat(2, 1), png])
    base = ["register", "--ion", str(imzml), "--scale", "4", "--quiet"]
    assert main([*base, "--optical", str(opt), "--landmarks", str(lm_png), "--optical-pixel-size", "5",
                 "--out", str(tmp_path / "png")]) == 0
    assert main([*base, "--optical", str(slide), "--landmarks", str(lm_slide), "--optical-pixel-size", "1.25",
                 "--out", str(tmp_path / "slide")]) == 0
    record = json.loads((tmp_path / "slide" / "run.json").read_text())
    assert record["registration"]["optical_shape_read"] == list(png.shape[:2])
    assert record["registration"]["moving_pixel_size"] == 5.0 and record["warnings"] == []
    np.testing.assert_allclose(tifffile.imread(tmp_path / "slide" / "optical_registered.tiff"),
                               tifffile.imread(tmp_path / "png" / "optical_registered.tiff"), atol=1e-6)
    # landmarks in the full scan's pixels, as Fiji shows an uncalibrated image (--optical-pixel-size 1), on a scan of
    # 2.5 µm with levels ×2 (the PNG) and ×4 (10 µm, coarser than the fused grid): the level is picked by the size
    # of a fused pixel on the optical as the landmarks place it (2 of their units), not as if they were µm (5)
    coarse = png.reshape(png.shape[0] // 2, 2, png.shape[1] // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)
    slide = write_pyramid(tmp_path / "slide2.ome.tif", [png.repeat(2, 0).repeat(2, 1), png, coarse])
    in_pixels = write_bigwarp_csv(Landmarks(landmarks.moving * 2 + 0.5, landmarks.fixed * 20, landmarks.names),
                                  tmp_path / "c.csv")
    assert main([*base, "--optical", str(slide), "--landmarks", str(in_pixels), "--optical-pixel-size", "1",
                 "--out", str(tmp_path / "pixels")]) == 0
    record = json.loads((tmp_path / "pixels" / "run.json").read_text())
    assert record["registration"]["optical_shape_read"] == list(png.shape[:2])
    assert not any("coarser than the fused grid" in w for w in record["warnings"])  # read at 10 µm, it was
    # a landmark beyond the optical's edge is told in the full scan's pixels, as Fiji showed them, not the level's
    moved = landmarks.moving * 5 + 1.875
    moved[0] = (-40.0, -40.0)
    off = write_bigwarp_csv(Landmarks(moved, landmarks.fixed * 20, landmarks.names), tmp_path / "off.csv")
    assert main([*base, "--optical", str(tmp_path / "slide.ome.tif"), "--landmarks", str(off),
                 "--optical-pixel-size", "1.25", "--out", str(tmp_path / "off")]) == 0
    warning = json.loads((tmp_path / "off" / "run.json").read_text())["warnings"][0]
    h, w = png.shape[:2]
    assert f"up to 31.5 pixels beyond its edge (image spans x -0.625–{w * 5 - 0.625:.4g}, y -0.625–{h * 5 - 0.625:.4g} " \
           "in units of 1.25 per pixel)" in warning
    np.testing.assert_allclose(tifffile.imread(tmp_path / "pixels" / "optical_registered.tiff"),
                               tifffile.imread(tmp_path / "png" / "optical_registered.tiff"), atol=1e-6)


def test_a_landmarks_csv_fed_back_with_another_optical_pixel_size_is_converted_to_it(tmp_path, files, capsys):
    """The first run read the PNG in pixels and wrote landmarks.csv in them; the second states 2 µm per optical pixel:
    read as µm, the points would land at half their places; converted, the registration is the first run's. A copy
    of that file elsewhere (no record says what units it is in) is read as it stands."""
    imzml, opt, lm, _ = files
    base = ["register", "--optical", str(opt), "--ion", str(imzml), "--scale", str(SCALE)]
    assert main([*base, "--landmarks", str(lm), "--out", str(tmp_path / "first"), "--quiet"]) == 0
    first = tmp_path / "first" / "landmarks.csv"
    assert main([*base, "--landmarks", str(first), "--optical-pixel-size", "2", "--out", str(tmp_path / "again")]) == 0
    assert (f"warning: {first} was written by the msifusion run in that folder, which read optical.png in pixels; "
            "its optical points are converted to this run's reading, at 2 µm per pixel (--optical-pixel-size)"
            in capsys.readouterr().err)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "again" / "optical_registered.tiff"),
                                  tifffile.imread(tmp_path / "first" / "optical_registered.tiff"))
    np.testing.assert_allclose(read_landmarks(tmp_path / "again" / "landmarks.csv").moving,
                               read_landmarks(first).moving * 2)  # written back in the units it was read in
    copy = tmp_path / "copy.csv"
    copy.write_bytes(first.read_bytes())
    assert main([*base, "--landmarks", str(copy), "--optical-pixel-size", "2", "--out", str(tmp_path / "copied")]) == 0
    assert "converted" not in capsys.readouterr().err
    assert not np.array_equal(tifffile.imread(tmp_path / "copied" / "optical_registered.tiff"),
                              tifffile.imread(tmp_path / "first" / "optical_registered.tiff"))  # read as 2 µm units


def test_a_landmarks_csv_fed_back_with_another_msi_pixel_size_is_converted_to_it(tmp_path, files, capsys):
    """The first run read the uncalibrated imzML in pixels and wrote landmarks.csv in them; fed back with
    --pixel-size 20 they would be read as µm (a twentieth of their places: refused); converted, the registration is
    the first run's, a switched-off landmark's point too. A run at 20 fed back at 30, by `fuse --imzml` too, and one
    at --fixed-scale 4 fed back without it (the grid's origin moves), give the same registration again;
    --fixed-pixel-size 1 reads the file as the first run wrote it. A copy of the file elsewhere, and another imzML
    of the same name and size (its .ibd's differs), are read as they stand."""
    imzml, opt, lm, _ = files
    base = ["register", "--optical", str(opt), "--ion", str(imzml), "--scale", str(SCALE), "--quiet"]
    parked = read_landmarks(lm)
    parked = Landmarks(parked.moving, parked.fixed, parked.names, inactive=(("off", 9.0, 9.0, 2.0, 3.0),))
    assert main([*base, "--landmarks", str(write_bigwarp_csv(parked, tmp_path / "parked.csv")),
                 "--out", str(tmp_path / "first")]) == 0
    first = tmp_path / "first"
    record = json.loads((first / "run.json").read_text())
    assert record["registration"]["landmarks_fixed_frame"] == {"pixel_size": 1.0, "origin": [0.0, 0.0]}
    capsys.readouterr()
    assert main([*base, "--landmarks", str(first / "landmarks.csv"), "--pixel-size", "20",
                 "--out", str(tmp_path / "at20")]) == 0
    assert (f"warning: {first / 'landmarks.csv'} was written by the msifusion run in that folder, which placed its "
            "ion-image points on sample.imzML at 1 unit per MSI pixel; they are moved to the same MSI pixels at this "
            "run's 20 units per MSI pixel (--pixel-size, --fixed-pixel-size, --fixed-scale)" in capsys.readouterr().err)
    at20 = tmp_path / "at20"
    guide = tifffile.imread(first / "optical_registered.tiff")
    np.testing.assert_array_equal(tifffile.imread(at20 / "optical_registered.tiff"), guide)
    from msifusion.io.images import Image, read_optical
    from msifusion.register.optical import MsiTissue, RegisterSettings, register_optical

    with ImzML(imzml, 20.0) as f:  # from Python, the optical given as pixels: its side has no file to compare
        msi = MsiTissue(f.tic()[None], f.pixel_size_um, imzml)
    in_memory = register_optical(Image(read_optical(opt).pixels), msi, RegisterSettings(SCALE, first / "landmarks.csv"),
                                 quiet=True)
    np.testing.assert_allclose(in_memory.guide * 255, guide, atol=0.51)
    written = read_landmarks(at20 / "landmarks.csv")
    np.testing.assert_allclose(written.fixed, read_landmarks(first / "landmarks.csv").fixed * 20)  # in its units
    assert written.inactive == (("off", 9.0, 9.0, 40.0, 60.0),)
    fused = ["fuse", "--imzml", str(imzml), "--mz", "100", "--tol", "0.01da", "--optical", str(opt),
             "--scale", str(SCALE), "--landmarks", str(at20 / "landmarks.csv"), "--pixel-size", "30", "--quiet"]
    assert main([*fused, "--out", str(tmp_path / "at30")]) == 0
    assert "at this run's 30 units per MSI pixel" in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "at30" / "optical_registered.tiff"), guide)
    on_enlarged = Landmarks(parked.moving, parked.fixed * 4 + 1.5, parked.names)  # placed on the ion image ×4
    assert main([*base, "--landmarks", str(write_bigwarp_csv(on_enlarged, tmp_path / "x4.csv")), "--fixed-scale", "4",
                 "--fixed-pixel-size", "1", "--out", str(tmp_path / "enlarged")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "enlarged" / "optical_registered.tiff"), guide)
    capsys.readouterr()
    assert main([*base, "--landmarks", str(tmp_path / "enlarged" / "landmarks.csv"),
                 "--out", str(tmp_path / "unenlarged")]) == 0
    assert ("at 4 units per MSI pixel, the first pixel's centre at (1.5, 1.5); they are moved to the same MSI pixels "
            "at this run's 1 unit per MSI pixel (" in capsys.readouterr().err)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "unenlarged" / "optical_registered.tiff"), guide)
    assert main([*base, "--landmarks", str(first / "landmarks.csv"), "--fixed-pixel-size", "1", "--pixel-size", "20",
                 "--out", str(tmp_path / "described")]) == 0
    assert "was written by the msifusion run" not in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "described" / "optical_registered.tiff"), guide)
    copy = tmp_path / "copy.csv"
    copy.write_bytes((at20 / "landmarks.csv").read_bytes())
    other = tmp_path / "other" / imzml.name  # another acquisition: an .imzML of the same size, not its .ibd
    other.parent.mkdir()
    shutil.copy(imzml, other)
    other.with_suffix(".ibd").write_bytes(imzml.with_suffix(".ibd").read_bytes() + bytes(16))
    for landmarks, ion in ((copy, imzml), (at20 / "landmarks.csv", other)):
        out = tmp_path / f"as_it_stands_{ion.parent.name}"
        assert main(["register", "--optical", str(opt), "--ion", str(ion), "--scale", str(SCALE), "--landmarks",
                     str(landmarks), "--pixel-size", "30", "--out", str(out)]) == 0
        assert "was written by the msifusion run" not in capsys.readouterr().err
        assert not np.array_equal(tifffile.imread(out / "optical_registered.tiff"), guide)  # read as 30 µm units


def test_a_fed_back_landmarks_csv_picks_the_pyramid_level_in_this_runs_units(tmp_path, files, write_pyramid,
                                                                            state_imzml_pixel_size):
    """A scan stating 5 µm per pixel where it is 1.25: the first run's landmarks in its 5-µm units, fed back with
    --optical-pixel-size 1.25, choose the level the fused grid needs in 1.25-µm units (the scan's 4× coarser level,
    the PNG's own pixels, not the 8× one that their 5-µm reading would allow), as landmarks placed at 1.25 µm do, and
    register the same."""
    imzml, opt, lm, _ = files
    state_imzml_pixel_size(imzml, 20.0)
    landmarks = read_landmarks(lm)
    png = cv2.imread(str(opt))[..., ::-1]
    meta = {"PhysicalSizeX": 5.0, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 5.0, "PhysicalSizeYUnit": "µm"}
    coarse = png.reshape(png.shape[0] // 2, 2, png.shape[1] // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)
    slide = write_pyramid(tmp_path / "slide.ome.tif", [png.repeat(4, 0).repeat(4, 1), png.repeat(2, 0).repeat(2, 1),
                                                       png, coarse], meta)
    full = landmarks.moving * 4 + 1.5  # the full scan's pixels
    at_5 = write_bigwarp_csv(Landmarks(full * 5.0, landmarks.fixed * 20, landmarks.names), tmp_path / "at_5.csv")
    at_1_25 = write_bigwarp_csv(Landmarks(full * 1.25, landmarks.fixed * 20, landmarks.names), tmp_path / "at_1.csv")
    base = ["register", "--ion", str(imzml), "--scale", str(SCALE), "--quiet", "--optical", str(slide)]
    assert main([*base, "--landmarks", str(at_5), "--out", str(tmp_path / "first")]) == 0
    for landmarks_csv, out in ((tmp_path / "first" / "landmarks.csv", "again"), (at_1_25, "placed")):
        assert main([*base, "--landmarks", str(landmarks_csv), "--optical-pixel-size", "1.25", "--out",
                     str(tmp_path / out)]) == 0
    records = {out: json.loads((tmp_path / out / "run.json").read_text()) for out in ("again", "placed")}
    assert records["again"]["registration"]["optical_shape_read"] == list(png.shape[:2])
    assert records["placed"]["registration"]["optical_shape_read"] == list(png.shape[:2])
    assert not any("coarser than the fused grid" in w for w in records["again"]["warnings"])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "again" / "optical_registered.tiff"),
                                  tifffile.imread(tmp_path / "placed" / "optical_registered.tiff"))


def test_a_registrations_warnings_follow_what_reading_the_files_found(tmp_path, files, state_imzml_pixel_size):
    """What reading found (here a stand-in for `--pixel-size 20 µm is used in place of …`) is told before the
    warnings that build on it: landmarks that scale the optical's µm to the ion image's by 2.5× are judged with the
    pixel size the first warning names."""
    from msifusion.io.images import read_optical
    from msifusion.register.optical import MsiTissue, RegisterSettings, register_optical

    imzml, opt, lm, _ = files
    state_imzml_pixel_size(imzml, 20.0)
    landmarks = read_landmarks(lm)
    shrunk = write_bigwarp_csv(Landmarks(landmarks.moving * 5, landmarks.fixed * 8, landmarks.names),
                               tmp_path / "shrunk.csv")
    with ImzML(imzml) as f:
        msi = MsiTissue(f.tic()[None], f.pixel_size_um, imzml, warnings=("read first",))
    warnings = register_optical(read_optical(opt, None, 5.0), msi, RegisterSettings(4, shrunk, optical_pixel_size=5.0),
                                quiet=True).warnings
    assert warnings[0] == "read first"
    assert warnings[1].startswith("the landmarks in shrunk.csv scale the optical's µm to the ion image's by 2.5×")


def test_register_optical_from_python_takes_the_stated_optical_pixel_size(tmp_path, files, state_imzml_pixel_size):
    """``RegisterSettings.optical_pixel_size`` holds for an optical read without it, as for the command's own read."""
    from msifusion.io.images import read_optical
    from msifusion.register.optical import MsiTissue, RegisterSettings, read_moving_optical, register_optical

    imzml, opt, lm, _ = files
    state_imzml_pixel_size(imzml, 20.0)
    landmarks = read_landmarks(lm)
    lm_um = write_bigwarp_csv(Landmarks(landmarks.moving * 5, landmarks.fixed * 20, landmarks.names),
                              tmp_path / "um.csv")
    settings = RegisterSettings(4, lm_um, optical_pixel_size=5.0)
    with ImzML(imzml) as f:
        msi = MsiTissue(f.tic()[None], f.pixel_size_um, imzml)
    plain = register_optical(read_optical(opt), msi, settings, quiet=True)
    np.testing.assert_array_equal(plain.guide, register_optical(read_moving_optical(opt, settings, msi), msi,
                                                                settings, quiet=True).guide)
    assert plain.info["moving_pixel_size"] == 5.0
    # overlay.png's landmarks: on the guide's grid (fine pixel j's centre at ion pixel (j + 0.5)/4 − 0.5), errors 0
    np.testing.assert_allclose([(m.column, m.row) for m in plain.marks], 4 * landmarks.fixed + 1.5)
    assert [m.name for m in plain.marks] == list(landmarks.names) and plain.marks_measure == "leave-one-out"
    np.testing.assert_allclose([m.error for m in plain.marks], 0, atol=1e-9)


def test_landmarks_whose_spline_folds_are_refused_naming_them(tmp_path, files, capsys):
    imzml, opt, lm, _ = files
    landmarks = read_landmarks(lm)
    landmarks.moving[[0, 4]] = landmarks.moving[[4, 0]]  # two partners clicked in the wrong order
    swapped = write_bigwarp_csv(landmarks, tmp_path / "swapped.csv")
    out = tmp_path / "reg"
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(swapped), "--scale",
                 str(SCALE), "--quiet", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and not out.exists()
    assert re.match(rf"msifusion: error: {swapped}: the thin-plate spline through these landmarks folds the optical "
                    r"over itself near ion pixel \(column \d+, row \d+\); leaving out .*'Pt-[04]' at \(", error)


def test_register_reports_an_ion_tiff_read_in_spite_of_a_fault(tmp_path, files):
    _, opt, lm, truth = files
    whole, cut = tmp_path / "ion.ome.tif", tmp_path / "cut.ome.tif"
    tifffile.imwrite(whole, truth[0].astype(np.float32), metadata={"axes": "YX"})  # its description after the pixels
    data = whole.read_bytes()
    cut.write_bytes(data[:data.index(b"<?xml") + 10])
    assert main(["register", "--optical", str(opt), "--ion", str(cut), "--landmarks", str(lm), "--scale", str(SCALE),
                 "--quiet", "--out", str(tmp_path / "reg")]) == 0
    warnings = json.loads((tmp_path / "reg" / "run.json").read_text())["warnings"]
    assert any(w.startswith("cut.ome.tif looks damaged or cut short") for w in warnings)


def test_register_reports_an_imzml_header_declaring_far_more_pixels_than_its_spectra(tmp_path, files):
    imzml, opt, lm, _ = files
    text = imzml.read_text(encoding="iso-8859-1")
    for accession in ("IMS:1000042", "IMS:1000043"):
        text, n = re.subn(rf'(accession="{accession}"[^>]*value=")[^"]*"', r'\g<1>60000"', text)
        assert n == 1
    imzml.write_text(text, encoding="iso-8859-1")
    assert main(["register", "--optical", str(opt), "--ion", str(imzml), "--landmarks", str(lm), "--scale",
                 str(SCALE), "--quiet", "--out", str(tmp_path / "reg")]) == 0
    record = json.loads((tmp_path / "reg" / "run.json").read_text())
    assert record["ion_shape"] == [H, W]
    assert (f"declares 60000 pixels in x, where its spectra span {W} and 60000 pixels in y, where its spectra span "
            f"{H} (its \"max count of pixels\")") in " ".join(record["warnings"])


def test_a_panel_beyond_the_machines_memory_is_fused_in_parts_with_the_same_outputs(tmp_path, files, monkeypatch,
                                                                                   capsys):
    import msifusion.runtime as runtime

    imzml, opt, lm, _ = files
    args = ["fuse", "--imzml", str(imzml), "--mz", "100", "200", "--tol", "0.01da", "--optical", str(opt),
            "--landmarks", str(lm), "--scale", str(SCALE), "--quiet", "--out"]
    assert main([*args, str(tmp_path / "whole")]) == 0
    pixels = H * SCALE * W * SCALE
    monkeypatch.setattr(runtime, "machine_memory_bytes", lambda: pixels * (runtime.BYTES_PER_FUSED_PIXEL + 2))
    assert main([*args, str(tmp_path / "parts")]) == 0  # one ion's memory and a little: two parts of one ion
    warning = ("2 ions fused ×4 (48×64 each) do not fit in this machine's memory together: fused in 2 parts of at "
               f"most 1 ion, each image kept in a scratch file in the output folder (about {2 * pixels * 4 / 1e3:.0f} "
               "kB of disk) until the stack is written; a shared basis is sought within each part only")
    assert f"msifusion: warning: {warning}" in capsys.readouterr().err.splitlines()
    whole, parts = (json.loads((tmp_path / name / "run.json").read_text()) for name in ("whole", "parts"))
    assert (whole["panel_parts"], parts["panel_parts"]) == (1, 2) and warning in parts["warnings"]
    # these ions are too small to share a basis, so each is fused alone either way: the same images
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "whole" / "fused.ome.tiff"),
                                  tifffile.imread(tmp_path / "parts" / "fused.ome.tiff"))
    assert sorted(parts["files_written"]) == sorted(whole["files_written"])  # the spilled stack is not left behind
    assert parts["ions"]["100.0000"]["panel_part"] == "1 of 2" and "panel_part" not in whole["ions"]["100.0000"]
    # a drive too full for the scratch file is told before registration, not found full after the fusion
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    monkeypatch.setattr("msifusion.workflows.from_imzml.register_optical",
                        lambda *a, **k: pytest.fail("registered first"))
    assert main([*args, str(tmp_path / "full")]) == 2
    assert re.search(r"a scratch file of about \d+ kB beside the outputs, but the drive has 1.0 kB free",
                     capsys.readouterr().err)
    assert not (tmp_path / "full").exists()
    assert not list((tmp_path / "parts").glob(".*"))


def test_a_drive_that_may_be_too_small_for_the_outputs_is_warned_before_the_fusion(tmp_path, files, capsys,
                                                                                  monkeypatch):
    imzml, opt, lm, _ = files
    args = ["fuse", "--imzml", str(imzml), "--mz", "100", "--mz", "200", "--tol", "0.01da", "--optical", str(opt),
            "--landmarks", str(lm), "--scale", str(SCALE), "--method", "bilinear", "--quiet", "--out"]
    assert main([*args, str(tmp_path / "roomy")]) == 0
    assert "may need up to" not in capsys.readouterr().err
    fused = H * SCALE * W * SCALE
    need = fused * 4 * 2 * 2 + fused * 3  # two ions' TIFFs and their stack, float32 uncompressed, and the optical
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": need - 1})())
    assert main([*args, str(tmp_path / "tight")]) == 0  # a warning, not a refusal: compression may make them fit
    warning = (f"the outputs may need up to {need / 1e3:.0f} kB (uncompressed; zlib usually saves a third) and the "
               f"output folder's drive has {need / 1e3:.0f} kB free")  # sizes read in the units that show them
    assert warning in capsys.readouterr().err
    assert any(w.startswith(warning) for w in json.loads((tmp_path / "tight" / "run.json").read_text())["warnings"])


def test_normalize_none_is_the_raw_sums_as_without_the_option(tmp_path, files):
    imzml, _, _, truth = files
    assert main(["ions", str(imzml), "--mz", "100", "--tol", "0.01da", "--normalize", "none", "--quiet",
                 "--out", str(tmp_path / "none")]) == 0
    assert json.loads((tmp_path / "none" / "run.json").read_text())["normalize"] is None
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "none" / "mz_100.0000.tiff"), truth[0].astype(np.float32))


def test_lines_of_zeros_in_an_ion_tiff_of_ions_are_measured_where_its_acquired_tiff_says_so(tmp_path, files):
    """An acquired.tiff written with the ion TIFF (an irregular region: a corner without spectra, no gap) says that
    every other pixel has a spectrum, so a column of zeros is measured and not warned about; the TIFF copied away
    from it is warned about."""
    imzml, opt, lm, truth = files
    corner = tmp_path / "corner.imzML"
    with ImzMLWriter(str(corner), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r in range(H):
            for c in range(W):
                if (r, c) != (0, 0):
                    values = truth[:, r, c].copy()
                    values[0] *= c != 5  # m/z 100 absent from column 5
                    w.addSpectrum(AXIS, values.astype(np.float32), (c + 1, r + 1))
    assert main(["ions", str(corner), "--mz", "100", "--tol", "0.01da", "--out", str(tmp_path / "ions"),
                 "--quiet"]) == 0
    ion = tmp_path / "ions" / "mz_100.0000.tiff"
    assert (tmp_path / "ions" / "acquired.tiff").is_file()
    optical = tmp_path / "optical.tif"
    tifffile.imwrite(optical, np.random.default_rng(0).integers(0, 255, (H * SCALE, W * SCALE, 3), dtype=np.uint8))
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ion, alone / ion.name)
    for given, warned in ((ion, False), (alone / ion.name, True)):
        out = tmp_path / f"fused_{warned}"
        assert main(["fuse", "--ion", str(given), "--optical", str(optical), "--out", str(out), "--quiet"]) == 0
        warnings = json.loads((out / "run.json").read_text())["warnings"]
        assert any("1 column (5), numbered from 0, holds only zeros" in w for w in warnings) == warned
    out = tmp_path / "asked"  # asked to fill them all the same: its acquired.tiff knows better
    assert main(["fuse", "--ion", str(ion), "--optical", str(optical), "--out", str(out), "--quiet",
                 "--fill-zero-lines"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["gaps_filled"] == 0 and record["warnings"][0] == (
        "--fill-zero-lines was not used: the acquired.tiff beside the ion image tells which pixels have a spectrum")
