import json

import cv2
import numpy as np
import pytest
import tifffile

from msifusion.cli import main
from msifusion.io.images import write_tiff


@pytest.fixture
def files(tmp_path, small_pair):
    guide, ion, scale = small_pair
    opt = tmp_path / "optical.png"
    cv2.imwrite(str(opt), (guide[..., ::-1] * 255).round().astype(np.uint8))
    ion_path = tmp_path / "ion.tiff"
    write_tiff(ion_path, ion, pixel_size_um=20.0)
    return opt, ion_path, ion, scale


def _fuse(opt, ion, out, *extra):
    return main(["fuse", "--optical", str(opt), "--ion", str(ion), "--out", str(out), "--quiet", *extra])


def test_fuse_writes_the_contracted_outputs(tmp_path, files):
    opt, ion_path, ion, scale = files
    out = tmp_path / "out"
    assert _fuse(opt, ion_path, out, "--method", "lcrn", "--epochs", "6", "--checkpoint-every", "3") == 0
    assert {p.name for p in out.iterdir()} >= {"fused.tiff", "fused.png", "losses.csv", "losses.png", "run.json", "checkpoints"}
    with tifffile.TiffFile(out / "fused.tiff") as tif:
        fused = tif.asarray()
        assert 'PhysicalSizeX="5.0"' in tif.ome_metadata  # 20 µm / ×4
    assert fused.dtype == np.float32 and fused.shape == (ion.shape[0] * scale, ion.shape[1] * scale)
    from msifusion.fit import FitConfig, Runtime
    from msifusion.io.images import read_optical
    from msifusion.methods import MethodOptions, fuse

    options = MethodOptions(FitConfig(max_epochs=6, checkpoint_every=3), Runtime(quiet=True))
    expected = fuse(read_optical(opt).pixels, ion, "lcrn", options).image
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-4)  # what the library gives, in ion units
    run = json.loads((out / "run.json").read_text())
    assert run["epochs"] == 6 and run["seed"] == 0 and run["fit_settings"]["lr"] == 3e-4
    assert set(run["timings_s"]) >= {"load", "fuse", "write", "total"} and "torch" in run["versions"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_0003.png", "epoch_0003.tiff", "epoch_0006.png", "epoch_0006.tiff"]
    lines = (out / "losses.csv").read_text().splitlines()
    assert lines[0] == "epoch,mse,edge,total,seconds" and len(lines) == 7


def test_scale_resizes_a_registered_optical(tmp_path, files):
    opt, ion_path, ion, _ = files
    out = tmp_path / "out"
    assert _fuse(opt, ion_path, out, "--method", "bilinear", "--scale", "2") == 0
    assert tifffile.imread(out / "fused.tiff").shape == (ion.shape[0] * 2, ion.shape[1] * 2)


def _assert_one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, files, capsys):
    opt, ion_path, ion, _ = files
    out = tmp_path / "out"
    nan_ion = tmp_path / "nan.npy"
    bad = ion.copy()
    bad[0, 0] = np.nan
    np.save(nan_ion, bad)
    zero_ion = tmp_path / "zero.npy"
    np.save(zero_ion, np.zeros_like(ion))
    odd = tmp_path / "odd.png"
    cv2.imwrite(str(odd), np.zeros((33, 48, 3), np.uint8))
    cube = tmp_path / "cube.npy"
    np.save(cube, np.ones((2, 3, 4)))
    cases = [
        ((tmp_path / "missing.png", ion_path), ("missing.png", "not found")),
        ((opt, nan_ion), ("nan.npy", "NaN")),
        ((opt, zero_ion), ("zero.npy", "all zero")),
        ((odd, ion_path), ("odd.png", "integer multiple")),
        ((opt, cube), ("cube.npy", "2-D")),
    ]
    for (o, i), needles in cases:
        assert _fuse(o, i, out) == 2
        _assert_one_line_error(capsys, *needles)
    assert _fuse(opt, ion_path, out, "--scale", "1") == 2
    _assert_one_line_error(capsys, "scale")
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_existing_output_needs_overwrite(tmp_path, files, capsys):
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    assert _fuse(opt, ion_path, out, "--method", "bilinear") == 2
    _assert_one_line_error(capsys, "out", "--overwrite")
    assert (out / "mine.txt").read_text() == "precious"
    assert _fuse(opt, ion_path, out, "--method", "bilinear", "--overwrite") == 0
    assert (out / "fused.tiff").exists() and not (out / "mine.txt").exists()


def test_usage_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fuse", "--out", "x", "--epochs", "0"])
    assert info.value.code == 2
    _assert_one_line_error(capsys, "--epochs")


def test_methods_lists_default(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "lcrn" in out and "(* = default)" in out
