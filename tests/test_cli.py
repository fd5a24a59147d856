import json
import sys

import cv2
import numpy as np
import torch
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
    assert _fuse(opt, ion_path, out, "--method", "lcrn", "--epochs", "6", "--checkpoint-every", "3", "--bf16",
                 "--device", "cpu") == 0  # the CPU ignores --bf16
    assert {p.name for p in out.iterdir()} >= {"fused.tiff", "fused.png", "compare.png", "losses.csv", "losses.png",
                                               "run.json", "checkpoints"}
    assert cv2.imread(str(out / "compare.png")) is not None  # optical | measured | fused, one colour scale
    with tifffile.TiffFile(out / "fused.tiff") as tif:
        fused = tif.asarray()
        assert 'PhysicalSizeX="5.0"' in tif.ome_metadata  # 20 µm / ×4
    assert fused.dtype == np.float32 and fused.shape == (ion.shape[0] * scale, ion.shape[1] * scale)
    from msifusion.fit import FitConfig
    from msifusion.runtime import Runtime
    from msifusion.io.images import read_optical
    from msifusion.methods import MethodOptions, fuse

    options = MethodOptions(FitConfig(max_epochs=6, checkpoint_every=3), Runtime(device="cpu", quiet=True))
    expected = fuse(read_optical(opt).pixels, ion, "lcrn", options).image
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-4)  # what the library gives, in ion units
    run = json.loads((out / "run.json").read_text())
    assert run["bf16_autocast"] is False  # asked for, but autocast applies on CUDA only
    assert run["epochs"] == 6 and run["seed"] == 0 and run["fit_settings"]["lr"] == 3e-4
    assert set(run["timings_s"]) >= {"load", "fuse", "write", "total"} and run["versions"]["opencv"] == cv2.__version__
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_0003.png", "epoch_0003.tiff", "epoch_0006.png", "epoch_0006.tiff"]
    lines = (out / "losses.csv").read_text().splitlines()
    assert lines[0] == "epoch,mse,edge,total,seconds" and len(lines) == 7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_both_methods_and_bf16_applies_there(tmp_path, files):
    opt, ion_path, ion, scale = files
    assert _fuse(opt, ion_path, tmp_path / "gh", "--device", "cuda") == 0
    run = json.loads((tmp_path / "gh" / "run.json").read_text())
    assert run["device"].startswith("cuda") and run["consistency_error"] < 1e-6
    assert run["machine"]["cuda"] and run["machine"]["cuda_devices"] >= 1  # named where the run used it
    on_cpu = tmp_path / "gh_cpu"
    assert _fuse(opt, ion_path, on_cpu, "--device", "cpu") == 0
    np.testing.assert_allclose(tifffile.imread(tmp_path / "gh" / "fused.tiff"), tifffile.imread(on_cpu / "fused.tiff"),
                               rtol=1e-3, atol=1e-3 * float(ion.max()))  # same solver, float32 on both
    assert _fuse(opt, ion_path, tmp_path / "lcrn", "--device", "cuda", "--method", "lcrn", "--epochs", "4", "--bf16") == 0
    run = json.loads((tmp_path / "lcrn" / "run.json").read_text())
    assert run["bf16_autocast"] is True and run["epochs"] == 4


def test_default_method_is_consistent_and_spot_model_reaches_the_solver(tmp_path, files):
    from msifusion.measurement import Measurement
    from msifusion.measurement import block_mean

    opt, ion_path, ion, scale = files
    assert _fuse(opt, ion_path, tmp_path / "box", "--quiet") == 0
    run = json.loads((tmp_path / "box" / "run.json").read_text())
    assert run["method"] == "guided-harmonic" and run["consistency_error"] < 1e-6
    assert run["measurement_model"]["summary"] == f"{scale}×{scale} box average"
    details = run["method_details"]  # why this setting: the coarse-level scores, or why there were none
    assert details["chosen"] in details["ladder"]
    assert details["selection"] == "image too small to test; first setting" and "coarse_mse" not in details  # 8×12
    assert details["texture"] in run["harmonic_settings"]["texture"]["strengths"]
    fused = tifffile.imread(tmp_path / "box" / "fused.tiff")
    np.testing.assert_allclose(block_mean(fused, scale), ion, rtol=1e-4, atol=1e-4 * float(ion.max()))

    assert _fuse(opt, ion_path, tmp_path / "plain", "--quiet", "--no-texture", "--no-spread", "--no-plate",
                 "--edge-weight", "0.01") == 0
    run = json.loads((tmp_path / "plain" / "run.json").read_text())
    assert run["harmonic_settings"]["texture"]["strengths"] == [0.0] and run["method_details"]["texture"] == 0.0
    assert run["harmonic_settings"]["spread"]["widths"] == [] and run["method_details"]["spread_px"] == 0.0
    assert run["harmonic_settings"]["plate"]["lengths"] == [] and run["method_details"]["plate_px"] == 0.0
    assert run["harmonic_settings"]["edge_weight"] == 0.01  # the paper's edge loss as a term, still exact:
    assert run["consistency_error"] < 1e-6

    assert _fuse(opt, ion_path, tmp_path / "spot", "--quiet", "--spot-sigma", "1.5") == 0
    run = json.loads((tmp_path / "spot" / "run.json").read_text())
    um = 1.5 * 20.0 / scale  # the ion's 20 µm pixels, fused ×scale
    assert run["measurement_model"] == {"box_average_px": scale, "spot_sigma_px": 1.5, "spot_sigma_um": um,
                                        "summary": f"{scale}×{scale} box average after a Gaussian spot of σ 1.5 px "
                                                   f"({um:.3g} µm)"}
    assert run["consistency_error"] < 1e-6  # under the stated measurement model, not the plain box
    fused = torch.as_tensor(tifffile.imread(tmp_path / "spot" / "fused.tiff")).double()
    spot = Measurement(tuple(fused.shape), scale, 1.5).A(fused).numpy()  # the spot model's measurement
    np.testing.assert_allclose(spot, ion, rtol=1e-3, atol=1e-3 * float(ion.max()))


def test_scale_resizes_a_registered_optical_and_says_so(tmp_path, files, capsys):
    """An optical already at ion × k resized to another --scale loses (or invents) resolution: said on stderr."""
    import json

    opt, ion_path, ion, k = files
    out = tmp_path / "out"
    assert _fuse(opt, ion_path, out, "--method", "bilinear", "--scale", "2") == 0
    assert tifffile.imread(out / "fused.tiff").shape == (ion.shape[0] * 2, ion.shape[1] * 2)
    said = (f"{opt.name} is already the ion grid ×{k} ({ion.shape[0] * k}×{ion.shape[1] * k}); resized to ×2 "
            f"({ion.shape[0] * 2}×{ion.shape[1] * 2}) as --scale asks: drop --scale to fuse at ×{k}")
    assert said in capsys.readouterr().err
    assert said in json.loads((out / "run.json").read_text())["warnings"]


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
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def _exit_code(argv: list[str]) -> int:
    """main()'s exit code, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("command, option, value, expected", [
    ("fuse", "--scale", "0", "expected an integer ≥ 2, got '0'"),
    ("fuse", "--scale", "-2", "expected an integer ≥ 2, got '-2'"),
    ("fuse", "--scale", "1", "expected an integer ≥ 2, got '1'"),
    ("fuse", "--pixel-size", "0", "expected a number > 0, got '0'"),
    ("fuse", "--pixel-size", "inf", "expected a finite number > 0, got 'inf'"),
    ("fuse", "--pixel-size", "10um",
     "expected a number > 0, got '10um'; pixel sizes are plain numbers in µm: drop the unit"),
    ("ions", "--normalize", "tics", "expected tic, rms or none, got 'tics'"),
    ("fuse", "--lr", "nan", "expected a finite number > 0, got 'nan'"),
    ("fuse", "--w-edge", "-1", "expected a number ≥ 0, got '-1'"),
    ("fuse", "--patience", "-1", "expected an integer ≥ 0, got '-1'"),
    ("fuse", "--checkpoint-every", "-3", "expected an integer ≥ 0, got '-3'"),
    ("fuse", "--seed", "-1", "expected an integer ≥ 0 and ≤ 4294967295, got '-1'"),
    ("fuse", "--fixed-scale", "0", "expected an integer ≥ 1, got '0'"),
    ("fuse", "--mz", "0", "expected a number > 0, got '0'"),
    ("register", "--scale", "0", "expected an integer ≥ 2, got '0'"),
    ("register", "--optical-pixel-size", "-1", "expected a number > 0, got '-1'"),
    ("register", "--fixed-pixel-size", "0", "expected a number > 0, got '0'"),
    ("ions", "--mz", "-5", "expected a number > 0, got '-5'"),
    ("ions", "--mz", "missing_panel.tsv", "missing_panel.tsv: no such file (--mz takes m/z values, or a file listing "
                                          "them)"),
    ("fuse", "--mz", "lists/a", "lists/a: no such file"),
    ("fuse", "--mz", "12.5abc", "expected a number > 0, got '12.5abc' (or a file listing m/z)"),
    ("peaks", "-n", "0", "expected an integer ≥ 1, got '0'"),
    ("study", "--scale", "1", "expected an integer ≥ 2, got '1'"),
    ("study", "--phantom-seed", "-1", "expected an integer ≥ 0 and ≤ 4294967295, got '-1'"),
    ("study", "--w-mse", "nan", "expected a finite number ≥ 0, got 'nan'"),
    ("benchmark", "--seeds", "1,-2", "expected seeds (integers ≥ 0) separated by commas, got '1,-2'"),
    ("benchmark", "--epochs", "0", "expected an integer ≥ 1, got '0'"),
    ("demo", "--scale", "-2", "invalid choice: -2"),
])
def test_bad_numbers_are_one_line_errors_naming_the_option(tmp_path, files, capsys, command, option, value, expected):
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    base = {"fuse": ["fuse", "--optical", str(opt), "--ion", str(ion_path), "--out", str(out), "--method", "bilinear"],
            "register": ["register", "--optical", str(opt), "--ion", str(ion_path), "--scale", "4", "--out", str(out)],
            "ions": ["ions", "f.imzML", "--out", str(out)], "peaks": ["peaks", "f.imzML"],
            "study": ["study", "--out", str(out)], "benchmark": ["benchmark", "--out", str(out)],
            "demo": ["demo", "--out", str(out)]}[command]
    assert _exit_code([*base, option, value]) == 2
    _assert_one_line_error(capsys, f"argument {option}: {expected}")
    assert not out.exists()


@pytest.mark.parametrize("command,option", [("fuse", "--pixel-size"), ("register", "--optical-pixel-size")])
def test_a_pixel_size_not_in_micrometres_is_refused_before_any_work(tmp_path, files, capsys, command, option):
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    args = {"fuse": ["fuse", "--optical", str(opt), "--ion", str(ion_path), "--method", "bilinear"],
            "register": ["register", "--optical", str(opt), "--ion", str(ion_path), "--scale", "4"]}[command]
    assert _exit_code([*args, "--out", str(out), option, "10e-6"]) == 2  # metres typed where µm are asked
    _assert_one_line_error(capsys, "pixel size 1e-05 µm is outside 0.001–100000 µm")
    assert not out.exists()


def test_an_uncalibrated_pair_is_fused_with_a_warning_and_calibrated_with_pixel_size(tmp_path, files, capsys):
    opt, _, ion, _ = files
    table = tmp_path / "ion.csv"
    np.savetxt(table, ion, delimiter=",")
    assert _fuse(opt, table, tmp_path / "bare", "--method", "bilinear") == 0
    warning = ("msifusion: warning: no pixel size (ion: neither the ion image nor the optical is calibrated): the "
               "fused TIFFs carry none and fused.png has no scale bar; give --pixel-size UM")
    assert warning in capsys.readouterr().err.splitlines()
    assert json.loads((tmp_path / "bare" / "run.json").read_text())["warnings"] == [warning.split("warning: ", 1)[1]]
    with tifffile.TiffFile(tmp_path / "bare" / "fused.tiff") as tif:
        assert "PhysicalSizeX" not in tif.ome_metadata
    assert _fuse(opt, table, tmp_path / "calibrated", "--method", "bilinear", "--pixel-size", "20") == 0
    assert "warning" not in capsys.readouterr().err
    with tifffile.TiffFile(tmp_path / "calibrated" / "fused.tiff") as tif:
        assert 'PhysicalSizeX="5.0"' in tif.ome_metadata
    stated = write_tiff(tmp_path / "stated.tiff", ion.astype(np.float32), 25.0)  # a calibration it replaces
    assert _fuse(opt, stated, tmp_path / "replaced", "--method", "bilinear", "--pixel-size", "20") == 0
    replaced = "--pixel-size 20 µm is used in place of the 25 µm stated.tiff states"
    assert capsys.readouterr().err.splitlines() == [f"msifusion: warning: {replaced}"]
    assert json.loads((tmp_path / "replaced" / "run.json").read_text())["warnings"] == [replaced]
    assert _fuse(opt, stated, tmp_path / "agreed", "--method", "bilinear", "--pixel-size", "25.1") == 0
    assert "warning" not in capsys.readouterr().err  # within 1 %


def test_usage_errors_have_the_prefix_of_every_other_error(capsys):
    assert _exit_code(["fuse", "--optical", "o.png", "--ion", "i.tif", "--out", "o", "--scale", "x"]) == 2
    err = capsys.readouterr().err
    assert err == ("msifusion: error: argument --scale: expected an integer ≥ 2, got 'x' "
                   "(see `msifusion fuse --help`)\n")


def test_demo_passes_the_training_options_to_its_lcrn_column():
    from msifusion.cli import _settings, build_parser

    args = build_parser().parse_args(["demo", "--epochs", "3", "--bf16", "--spot-sigma", "1.5"])
    options = _settings(args).options  # every option applies to one of the demo's methods: none refused
    assert options.fit.max_epochs == 3 and options.runtime.bf16 and options.measurement.spot_sigma_px == 1.5


def test_demo_honours_checkpoint_every_and_says_how_lcrn_ran(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    import msifusion.workflows.demo as demo
    from msifusion.phantom import PhantomConfig

    run_demo, small = demo.run_demo, PhantomConfig(fine_shape=(80, 160))
    monkeypatch.setattr(demo, "run_demo", lambda request: run_demo(replace(request, phantom=small)))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--method", "bilinear", "--epochs", "2", "--checkpoint-every", "1"]) == 0
    assert sorted(p.name for p in (out / "checkpoints" / "lcrn").glob("*.tiff")) == ["epoch_0001.tiff",
                                                                                       "epoch_0002.tiff"]
    training = json.loads((out / "run.json").read_text())["training"]
    assert set(training) == {"lcrn"} and training["lcrn"]["fit_settings"]["checkpoint_every"] == 1
    assert (training["lcrn"]["epochs"], training["lcrn"]["stop_reason"]) == (2, "reached the cap of 2 epochs")
    assert "lcrn: 2 epochs (reached the cap of 2 epochs)" in capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("extra, error", [
    (["--epochs", "5"], "--epochs: applies only to fitted methods (lcrn, cnn3, unet), not to --method guided-harmonic"),
    (["--checkpoint-every", "1", "--lr", "1e-3"],
     "--lr, --checkpoint-every: applies only to fitted methods (lcrn, cnn3, unet), not to --method guided-harmonic"),
    (["--method", "bilinear", "--patience", "0"],
     "--patience: applies only to fitted methods (lcrn, cnn3, unet), not to --method bilinear"),
    (["--method", "lcrn", "--spot-sigma", "2"], "--spot-sigma: applies only to the methods made exact under the "
     "measurement model (guided-harmonic, bilinear-bp, guided-bp, diffusion), not to --method lcrn"),
    (["--method", "bicubic", "--no-texture"], "--no-texture: applies only to guided-harmonic, not to --method bicubic"),
    (["--method", "diffusion", "--no-spread"],
     "--no-spread: applies only to guided-harmonic, not to --method diffusion"),
    (["--method", "lcrn", "--edge-weight", "1"],
     "--edge-weight: applies only to guided-harmonic, not to --method lcrn"),
    (["--bf16"], "--bf16: applies only to fitted methods (lcrn, cnn3, unet), not to --method guided-harmonic"),
    (["--method", "cnn3", "--w-edge", "7"],
     "--w-edge: --method cnn3 does not use this; its training takes --epochs, --lr, --patience, --edge-kernel, "
     "--checkpoint-every, --bf16"),
    (["--method", "unet", "--epochs", "2"], "--epochs: unet trains in three stages of at least one epoch each: give "
                                            "at least 3, not 2"),
    (["--method", "unet", "--patience", "2", "--edge-kernel", "sobel"],
     "--patience, --edge-kernel: --method unet does not use these; its training takes --epochs, --lr, "
     "--checkpoint-every, --bf16"),
])
def test_options_the_method_would_ignore_are_errors(tmp_path, files, capsys, extra, error):
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    assert _fuse(opt, ion_path, out, *extra) == 2
    _assert_one_line_error(capsys, f"msifusion: error: {error}")
    assert not out.exists()


def test_the_demo_refuses_guided_harmonic_options_for_another_method_but_takes_training_ones_and_the_spot(
        tmp_path, capsys, monkeypatch):
    """The demo fits lcrn beside the chosen method, so --epochs applies whatever the method, and it measures the leaf
    through the spot for every method it scores; --no-texture is the default method's alone."""
    import msifusion.workflows.demo as demo

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--method", "bilinear", "--no-texture", "--epochs", "2"]) == 2
    _assert_one_line_error(capsys, "msifusion: error: --no-texture: applies only to guided-harmonic, not to --method "
                                   "bilinear")
    assert main(["demo", "--out", str(out), "--method", "unet", "--epochs", "2"]) == 2  # its three stages ran 3
    _assert_one_line_error(capsys, "msifusion: error: --epochs: unet trains in three stages of at least one epoch each")
    assert not out.exists()
    asked = []
    scores = {"bilinear": {"psnr": 1.0, "ssim": 0.5, "consistency": 0.0}}
    monkeypatch.setattr(demo, "run_demo", lambda request: asked.append(request) or {"training": {}, "scores": scores})
    assert main(["demo", "--out", str(out), "--method", "bilinear", "--spot-sigma", "3", "--epochs", "2"]) == 0
    (request,) = asked
    assert request.settings.options.measurement.spot_sigma_px == 3 and request.settings.options.fit.max_epochs == 2


def test_run_json_names_the_cpu_for_a_method_that_never_uses_the_gpu(tmp_path, files, monkeypatch):
    """With --device auto on a CUDA machine the record said cuda for bilinear, which runs on the CPU."""
    import json

    import torch

    import msifusion.workflows.fusion as fusion

    monkeypatch.setattr(fusion, "resolve_device", lambda device: torch.device("cuda", 0))  # as on a CUDA machine
    opt, ion_path, _, _ = files
    for method, device in (("bilinear", "cpu"), ("guided-bp", "cpu"), ("guided-harmonic", "cuda:0")):
        assert _fuse(opt, ion_path, tmp_path / method, "--method", method) == 0
        assert json.loads((tmp_path / method / "run.json").read_text())["device"] == device


def test_the_spot_is_taken_by_every_method_made_exact_under_it(tmp_path, files):
    import json

    from msifusion.cli import MEASURING_METHODS
    from msifusion.methods import METHODS

    assert set(MEASURING_METHODS) == {name for name, m in METHODS.items() if m.uses_measurement}
    opt, ion_path, _, _ = files
    for method in ("bilinear-bp", "diffusion"):
        out = tmp_path / method
        assert _fuse(opt, ion_path, out, "--method", method, "--spot-sigma", "1") == 0
        record = json.loads((out / "run.json").read_text())
        assert record["consistency_error"] < 1e-6


def test_stating_the_default_box_model_is_not_an_ignored_option(tmp_path, files):
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    assert _fuse(opt, ion_path, out, "--method", "bilinear-bp", "--spot-sigma", "-0") == 0
    spot = json.loads((out / "run.json").read_text())["measurement_model"]["spot_sigma_px"]
    assert spot == 0 and str(spot) == "0.0"  # not -0.0


@pytest.mark.parametrize("extra, named", [
    (["--mz", "100"], "--mz"),
    (["--tol", "5ppm"], "--tol"),
    (["--normalize", "tic"], "--normalize"),
    (["--normalize", "none"], "--normalize"),  # what an ion image is anyway, yet asked of spectra there are none of
    (["--landmarks", "lm.csv"], "--landmarks"),
    (["--transform", "affine"], "--transform"),
    (["--optical-pixel-size", "2"], "--optical-pixel-size"),
    (["--fixed-pixel-size", "2"], "--fixed-pixel-size"),
    (["--fixed-scale", "2"], "--fixed-scale"),
    (["--deformable"], "--deformable"),
    (["--mz", "100", "--tol", "0.01da"], "--mz, --tol"),
])
def test_imzml_only_options_with_ion_are_errors(tmp_path, files, capsys, extra, named):
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    assert _fuse(opt, ion_path, out, "--method", "bilinear", *extra) == 2
    _assert_one_line_error(capsys, f"msifusion: error: {named}: only with --imzml (imzML extraction and registration); "
                                   "with --ion the optical must already be registered to the ion image")
    assert not out.exists()


def test_fill_zero_lines_with_imzml_is_an_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["fuse", "--imzml", "a.imzML", "--mz", "100", "--optical", "o.png", "--scale", "4", "--out", str(out),
                 "--fill-zero-lines"]) == 2
    _assert_one_line_error(capsys, "msifusion: error: --fill-zero-lines: only with --ion: an imzML says which pixels "
                                   "have a spectrum, and fuse --imzml fills those without one")
    assert not out.exists()


def _register_method(monkeypatch, name: str, transform) -> None:
    """A stand-in method whose output is ``transform(bilinear upsampling)``."""
    from msifusion.fit import FitResult
    from msifusion.methods import METHODS, Method
    from msifusion.measurement import upsample

    def run(problem, options):
        return FitResult(transform(upsample(problem.ion, problem.scale, "bilinear")))

    monkeypatch.setitem(METHODS, name, Method(name, run, "test stand-in"))


def test_output_not_in_ion_units_warns_on_stderr_and_in_run_json(tmp_path, files, capsys, monkeypatch):
    opt, ion_path, ion, scale = files
    n = ion.size * scale * scale
    _register_method(monkeypatch, "negated", lambda up: -up)  # all negative: consistency error 2
    _register_method(monkeypatch, "tripled", lambda up: 3 * up)  # positive, consistency error 2
    expected = {
        "negated": f"ion: the negated output is not in the ion's units: negative values (min -500, 100.00% of the ion's peak; {n} of {n} pixels) "
                   "from a non-negative ion image; consistency error 2 > 0.5 (averaged back over each MSI pixel it "
                   "does not give the measured image); look at the fused image, or try another method",
        "tripled": "ion: the tripled output is not in the ion's units: consistency error 2 > 0.5 (averaged back "
                   "over each MSI pixel it does not give the measured image); look at the fused image, or try another method",
        "bilinear": None,
    }
    for method, warning in expected.items():
        out = tmp_path / method
        assert _fuse(opt, ion_path, out, "--method", method) == 0
        run = json.loads((out / "run.json").read_text())
        err = capsys.readouterr().err.strip()
        if warning is None:
            assert run["warnings"] == [] and err == ""
        else:
            assert run["warnings"] == [warning]
            assert err == f"msifusion: warning: {warning}"  # one line, even with --quiet


def test_output_above_zero_from_an_ion_at_or_below_zero_is_warned(tmp_path, files, capsys, monkeypatch):
    """The mirror of the warning above: an ion image ≤ 0 everywhere (a log or baseline-subtracted export) is fused as
    its mirror image by the default method, so an output that rises above zero is as suspect as a negative one."""
    opt, _, ion, scale = files
    negative = tmp_path / "negative.npy"
    np.save(negative, -ion)
    n = ion.size * scale * scale
    _register_method(monkeypatch, "negated", lambda up: -up)
    assert _fuse(opt, negative, tmp_path / "out", "--method", "negated", "--pixel-size", "10") == 0
    warning = json.loads((tmp_path / "out" / "run.json").read_text())["warnings"]
    assert warning == [f"negative: the negated output is not in the ion's units: positive values (max 500, 100.00% of the ion's peak; "
                       f"{n} of {n} pixels) from an ion image that is ≤ 0 everywhere; consistency error 2 > 0.5 (averaged back over "
                       "each MSI pixel it does not give the measured image); look at the fused image, or try another method"]
    assert _fuse(opt, negative, tmp_path / "default", "--pixel-size", "10") == 0  # the default keeps it ≤ 0
    assert json.loads((tmp_path / "default" / "run.json").read_text())["warnings"] == []
    capsys.readouterr()


def test_existing_output_needs_overwrite(tmp_path, files, capsys):
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    for overwrite in ((), ("--overwrite",)):  # not an earlier output: kept, whatever --overwrite says
        assert _fuse(opt, ion_path, out, "--method", "bilinear", *overwrite) == 2
        _assert_one_line_error(capsys, "out", "no earlier msifusion output")
    assert (out / "mine.txt").read_text() == "precious"
    (out / "mine.txt").unlink()
    assert _fuse(opt, ion_path, out, "--method", "bilinear") == 0
    (out / "mine.txt").write_text("a note beside an earlier run")
    assert _fuse(opt, ion_path, out, "--method", "bilinear") == 2
    _assert_one_line_error(capsys, "out", "holds an earlier run; pass --overwrite")
    assert _fuse(opt, ion_path, out, "--method", "bilinear", "--overwrite") == 2  # run.json lists what the run wrote
    _assert_one_line_error(capsys, "out", "holds files its run did not write (mine.txt); --overwrite would delete "
                                          "them: move them out first")
    assert (out / "mine.txt").read_text() == "a note beside an earlier run"
    (out / "mine.txt").unlink()
    assert _fuse(opt, ion_path, out, "--method", "bilinear", "--overwrite") == 0
    assert (out / "fused.tiff").exists()


def test_usage_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fuse", "--out", "x", "--epochs", "0"])
    assert info.value.code == 2
    _assert_one_line_error(capsys, "--epochs")


def test_methods_lists_default(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "lcrn" in out and "(* = default)" in out


def test_methods_table_is_aligned(capsys):
    from msifusion.methods import METHODS

    assert main(["methods"]) == 0
    rows = capsys.readouterr().out.splitlines()[:-1]
    assert [row[2:].split()[0] for row in rows] == sorted(METHODS)
    columns = {row.index(METHODS[row[2:].split()[0]].summary) for row in rows}
    assert columns == {2 + max(map(len, METHODS)) + 2}  # every summary starts in one column, after the longest name


@pytest.mark.parametrize("command, extra", [
    ("ions", ["f.imzML", "--out", "o"]),
    ("fuse", ["--imzml", "f.imzML", "--optical", "o.png", "--out", "o"]),
])
def test_mz_takes_several_values_as_repeating_it_does(command, extra):
    from msifusion.cli import build_parser

    def mzs(*argv: str) -> list[float]:
        return build_parser().parse_args([command, *extra, *argv]).mz

    assert mzs("--mz", "100", "200") == mzs("--mz", "100", "--mz", "200") == [100.0, 200.0]
    assert mzs("--mz", "328.9167", "345", "--mz", "12.5") == [328.9167, 345.0, 12.5]


def test_mz_takes_several_values_in_one_quoted_argument():
    """``--mz "$PANEL"``: a shell variable holding the panel, as one argument."""
    from msifusion.cli import _mzs, build_parser

    def mzs(*argv: str) -> tuple[float, ...]:
        return _mzs(build_parser().parse_args(["ions", "f.imzML", "--out", "o", *argv]))

    assert mzs("--mz", "328.9167  345\t12.5\n") == mzs("--mz", "328.9167", "345 12.5") == (328.9167, 345.0, 12.5)


def test_an_imzml_file_after_mz_is_told_where_it_goes(tmp_path, capsys):
    assert _exit_code(["ions", "--out", str(tmp_path / "o"), "--mz", "100", "200", "f.imzML"]) == 2
    _assert_one_line_error(capsys, "argument --mz: expected a number > 0, got 'f.imzML'; give the .imzML file "
                                   "before --mz")


@pytest.mark.parametrize("command, outputs", [
    ("fuse", ["fused.tiff", "fused.png", "compare.png", "losses.csv", "checkpoints/epoch_NNNN.tiff", "ion.tiff", "mz_<m/z>/",
              "fused.ome.tiff", "ions.ome.tiff", "ions.png", "optical_registered.tiff and .png", "overlay.png",
              "landmarks.csv",
              "overlay_rival.png", "alignments.png", "landmarks_rival.csv", "run.json"]),
    ("register", ["optical_registered.tiff / .png", "overlay.png", "landmarks.csv", "run.json", "overlay_rival.png",
                  "alignments.png", "landmarks_rival.csv"]),
    ("ions", ["mz_<m/z>.tiff", "ions.ome.tiff", "ions.png", "run.json"]),
    ("demo", ["optical.tiff", "ion.tiff", "truth.tiff", "fused.tiff", "panel.png", "losses.csv", "run.json",
              "checkpoints/<method>/epoch_NNNN.tiff"]),
])
def test_help_names_every_file_the_command_writes(capsys, command, outputs):
    assert _exit_code([command, "--help"]) == 0
    shown = capsys.readouterr().out
    text = " ".join(shown.split())
    assert [name for name in outputs if name not in text] == []
    if command == "fuse":  # its description in paragraphs: what --ion writes, what --imzml writes
        assert "\n\nWith --ion, DIR gets" in shown and "\n\nWith --imzml, DIR first gets" in shown


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, files, capsys, monkeypatch):
    import msifusion.workflows.fusion as fusion

    def full(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(fusion, "write_tiff", full)
    opt, ion_path, _, _ = files
    assert _fuse(opt, ion_path, tmp_path / "out", "--method", "bilinear") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("msifusion: error: ") and "No space left on device; nothing written" in err[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("error", [
    MemoryError("Unable to allocate 3.52 GiB for an array with shape (30720, 30720) and data type float32"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 3779067904 bytes. Error code 12 (Cannot allocate memory)"),
])
def test_running_out_of_memory_is_one_line_and_leaves_nothing(tmp_path, files, capsys, monkeypatch, error):
    """Past the up-front memory checks (a lower bound; another program may take memory meanwhile) NumPy or torch
    may still fail to allocate: one line saying so and what to do, exit 1, nothing written."""
    from dataclasses import replace

    from msifusion.methods import METHODS

    def greedy(problem, options):
        raise error

    monkeypatch.setitem(METHODS, "bilinear", replace(METHODS["bilinear"], run=greedy))
    opt, ion_path, _, _ = files
    assert _fuse(opt, ion_path, tmp_path / "out", "--method", "bilinear") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("msifusion: error: out of memory (") and err[0].endswith(
        "); nothing written: use a smaller --scale or crop the images (the fitted methods need about 30 times the "
        "default's memory)")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("error, message", [
    (OSError(28, "No space left on device"), "writing into {out}: No space left on device"),
    (OSError("9996 requested and 968 written"),
     "writing into {out}: 9996 requested and 968 written (a short write: is the disk full?)"),
])
def test_a_write_error_without_a_file_name_names_the_output_folder(tmp_path, files, capsys, monkeypatch, error, message):
    """A full disk seen by a writer that names no file (a short write, or errno without a path): the one line names
    the folder being written, and a short write says what it likely means."""
    import msifusion.workflows.fusion as fusion

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(fusion, "write_tiff", full)
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    assert _fuse(opt, ion_path, out, "--method", "bilinear") == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"msifusion: error: {message.format(out=out)}; nothing written"]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("option", ["--landmarks", "--method", "--imzml", "--ion", "--optical"])
def test_an_empty_value_is_refused_not_read_as_the_option_left_out(tmp_path, files, capsys, option):
    """`--landmarks "$LM"` with LM unset ran automatic registration in place of the user's landmarks, exit 0."""
    opt, ion_path, _, _ = files
    given = {"--optical": str(opt), "--ion": str(ion_path), "--method": "bilinear"}
    argv = ["fuse", "--out", str(tmp_path / "out"), "--scale", "4"]
    for name, value in given.items():
        if name != option:
            argv += [name, value]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, option, ""])
    assert exit_.value.code == 2
    _assert_one_line_error(capsys, f"argument {option}: empty: an unset shell variable? Give a value, or leave the "
                                   "option out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["fuse", "ions", "benchmark"])
def test_a_single_valued_option_given_twice_is_refused_not_read_as_the_last(tmp_path, files, capsys, command):
    """`fuse --ion a.tif --ion b.tif` fused b.tif alone, exit 0: argparse keeps the last value."""
    opt, ion_path, _, _ = files
    other = tmp_path / "other.tiff"
    argv = {"fuse": ["fuse", "--optical", str(opt), "--ion", str(ion_path), "--ion", str(other)],
            "ions": ["ions", str(tmp_path / "x.imzML"), "--mz", "500", "--tol", "5ppm", "--tol", "0.01"],
            "benchmark": ["benchmark", "--quick", "--seed", "1", "--seed", "2"]}[command]
    named = {"fuse": f"--ion: given twice ({ion_path}, then {other})", "ions": "--tol: given twice (5ppm, then 0.01)",
             "benchmark": "--seed: given twice (1, then 2)"}[command]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    _assert_one_line_error(capsys, f"msifusion: error: argument {named}; it takes one value")
    assert not (tmp_path / "out").exists()


def test_a_single_valued_option_given_twice_alike_is_read_once(tmp_path, files):
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    assert main(["fuse", "--optical", str(opt), "--ion", str(ion_path), "--method", "bilinear", "--method", "bilinear",
                 "--out", str(out), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["method"] == "bilinear"


def test_comma_separated_m_z_and_an_empty_out_get_their_own_messages(tmp_path, files, capsys):
    opt, ion_path, _, _ = files
    for listed, named in (("500,1234",) * 2, ("500.5, 1234.25",) * 2, ("500,5 1234,25", "500,5")):
        with pytest.raises(SystemExit) as exit_:
            main(["ions", str(tmp_path / "x.imzML"), "--mz", listed, "--out", str(tmp_path / "o")])
        assert exit_.value.code == 2
        _assert_one_line_error(capsys, f"got {named!r}: separate several m/z by spaces, not commas (--mz 500 1234)")
    with pytest.raises(SystemExit):  # an unset shell variable: not the current folder
        _fuse(opt, ion_path, "")
    _assert_one_line_error(capsys, "argument --out: empty: name the output folder")


def test_a_unit_apart_from_its_number_and_an_imzml_given_as_ion_get_a_hint(tmp_path, files, capsys):
    opt, ion_path, _, _ = files
    with pytest.raises(SystemExit) as exit_:  # a usage error, as argparse gives
        main(["ions", str(tmp_path / "x.imzML"), "--mz", "300", "--tol", "5", "ppm", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    _assert_one_line_error(capsys, "unrecognized arguments: ppm", "without a space (e.g. --tol 5ppm)", "msifusion ions --help")
    with pytest.raises(SystemExit):
        _fuse(opt, ion_path, tmp_path / "o", "--pixel-size", "10", "um")
    _assert_one_line_error(capsys, "unrecognized arguments: um", "plain numbers in µm: drop the unit")
    # σ is in fused pixels: "drop the unit" would be wrong advice there, however the option is spelt
    for spot in (["--spot-sigma", "2", "um"], ["--spot-sigma=2", "um"], ["--spot", "2", "μm"], ["--spot-sigma", "2µm"]):
        with pytest.raises(SystemExit):
            _fuse(opt, ion_path, tmp_path / "o", *spot)
        _assert_one_line_error(capsys, "--spot-sigma" if spot[-1] == "2µm" else f"unrecognized arguments: {spot[-1]}",
                               "σ is in pixels of the fused grid, not µm: a spot σ of s µm is s × scale / MSI pixel µm")
    imzml = tmp_path / "run.imzML"
    imzml.write_text("<mzML/>")
    assert _fuse(opt, imzml, tmp_path / "o") == 2
    _assert_one_line_error(capsys, "run.imzML", "`fuse --imzml`")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("tol", ["-5ppm", "-0.01da"])
def test_a_negative_tolerance_is_told_so_not_a_missing_argument(tmp_path, capsys, tol):
    imzml = tmp_path / "x.imzML"
    imzml.write_text("<mzML/>")
    assert main(["ions", str(imzml), "--mz", "300", "--tol", tol, "--out", str(tmp_path / "o")]) == 2
    _assert_one_line_error(capsys, "--tol: tolerance must be a positive number, got -")
    assert not (tmp_path / "o").exists()


def test_a_reader_that_stops_early_ends_the_command_quietly():
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-m", "msifusion", "methods"],  # python -m msifusion: the command
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        run.stdout.close()  # as `msifusion methods | head -0` does
        err = run.stderr.read()
        assert run.wait() == 0 and err == b""


@pytest.mark.skipif(sys.platform != "linux", reason="other systems' file systems refuse such names")
def test_a_name_that_is_not_utf8_is_one_line_not_a_crash(tmp_path, files, capsys):
    import os

    opt, ion_path, _, _ = files
    odd = os.fsdecode(bytes(tmp_path / "ion") + b"\xfe.tiff")  # a Latin-1 name on a UTF-8 system
    os.link(ion_path, odd)
    for extra in (["--ion", odd, "--out", str(tmp_path / "o")], ["--ion", str(ion_path), "--out", odd + "_out"]):
        with pytest.raises(SystemExit) as exited:
            main(["fuse", "--optical", str(opt), *extra, "--quiet"])
        assert exited.value.code == 2
        _assert_one_line_error(capsys, "ion\ufffd.tiff", "bytes that are not UTF-8 text", "rename it")
    assert not (tmp_path / "o").exists()


def test_a_kill_says_so_and_leaves_nothing(tmp_path, files):
    import signal
    import subprocess
    import sys
    import time

    opt, ion_path, _, _ = files
    out = tmp_path / "o"
    command = [sys.executable, "-m", "msifusion", "fuse", "--optical", str(opt), "--ion", str(ion_path), "--out",
               str(out), "--method", "lcrn", "--epochs", "100000", "--patience", "0", "--quiet"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as run:
        deadline = time.monotonic() + 180  # generous: a loaded CI machine imports torch slowly
        while not list(tmp_path.glob(".o.partial-*")) and time.monotonic() < deadline:  # at work in its staging folder
            time.sleep(0.1)
        began = bool(list(tmp_path.glob(".o.partial-*")))
        run.send_signal(signal.SIGTERM)
        code, err = run.wait(180), run.stderr.read()
    assert began, "the run never began writing"
    assert code == 143 and err.strip() == "msifusion: terminated; nothing written", err
    assert not out.exists() and not list(tmp_path.glob(".o.*"))


def test_python_dash_m_msifusion_is_the_command_and_the_version_is_the_packages():
    import subprocess
    import sys

    import msifusion

    out = subprocess.run([sys.executable, "-m", "msifusion", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"msifusion {msifusion.__version__}"


@pytest.mark.parametrize("option, value, expected", [
    ("--methods", "", "expected method names separated by commas, got ''"),
    ("--methods", ",", "expected method names separated by commas, got ','"),
    ("--methods", "bilinear,,bicubic", "expected method names separated by commas, got 'bilinear,,bicubic'"),
    ("--groups", ",", "expected group names separated by commas, got ','"),
    ("--groups", "phantom,", "expected group names separated by commas, got 'phantom,'"),
    ("--seeds", ",", "expected seeds (integers ≥ 0) separated by commas, got ','"),
    ("--seeds", "", "expected seeds (integers ≥ 0) separated by commas, got ''"),
    ("--seeds", "1,x", "expected seeds (integers ≥ 0) separated by commas, got '1,x'"),
])
def test_benchmark_refuses_an_empty_or_malformed_list_instead_of_running_the_defaults(tmp_path, capsys, monkeypatch,
                                                                                        option, value, expected):
    import msifusion.workflows.benchmark as benchmark

    monkeypatch.setattr(benchmark, "run_benchmark", lambda *a, **k: pytest.fail("ran with a malformed list"))
    out = tmp_path / "out"
    assert _exit_code(["benchmark", "--groups", "phantom", "--seeds", "1", "--epochs", "1", "--out", str(out),
                       option, value]) == 2
    _assert_one_line_error(capsys, f"argument {option}: {expected}")
    assert not out.exists()


def test_benchmark_lists_add_up_when_the_option_is_repeated(tmp_path, monkeypatch):
    import msifusion.workflows.benchmark as benchmark

    seen = []
    monkeypatch.setattr(benchmark, "run_benchmark", lambda request: seen.append(request.config) or [])
    assert main(["benchmark", "--out", str(tmp_path / "o"), "--quiet", "--methods", "bilinear", "--methods",
                 "bicubic,bilinear", "--groups", "phantom", "--groups", "middlebury", "--seeds", "3",
                 "--seeds", "4,3"]) == 0
    config, = seen
    assert config.methods == ("bilinear", "bicubic") and config.cases.groups == ("phantom", "middlebury")
    assert config.cases.phantom_seeds == (3, 4)  # each once, in order: a repeated seed would be the same case twice
    assert (config.runtime.seed, config.runtime.device, config.runtime.quiet) == (0, "auto", True)


@pytest.mark.parametrize("extra, named", [
    (["--phantom-kind", "stem"], "--phantom-kind"),
    (["--phantom-ion", "sucrose"], "--phantom-ion"),
    (["--phantom-seed", "1"], "--phantom-seed"),  # the default's value, given: refused all the same
    (["--phantom-kind", "leaf", "--phantom-seed", "3"], "--phantom-kind, --phantom-seed"),
])
def test_study_refuses_phantom_options_with_files(tmp_path, files, capsys, extra, named):
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    assert _exit_code(["study", "--optical", str(opt), "--ion", str(ion_path), "--out", str(out), *extra]) == 2
    _assert_one_line_error(capsys, f"msifusion: error: {named}: only for the synthetic phantom (study without "
                                   "--optical and --ion)")
    assert not out.exists()


@pytest.mark.parametrize("extra, named", [
    (["--pixel-size", "10"], "--pixel-size"),
    (["--truth", "t.tiff", "--pixel-size", "10"], "--truth, --pixel-size"),
])
def test_study_refuses_file_options_on_the_phantom(tmp_path, capsys, extra, named):
    out = tmp_path / "out"
    assert _exit_code(["study", "--out", str(out), *extra]) == 2
    _assert_one_line_error(capsys, f"msifusion: error: {named}: only with --optical and --ion; the synthetic phantom "
                                   "brings its own truth and pixel size")
    assert not out.exists()


def test_study_phantom_options_reach_the_phantom_and_default_as_documented(tmp_path, monkeypatch):
    import msifusion.workflows.study as study
    from msifusion.phantom import PhantomConfig

    seen = []
    monkeypatch.setattr(study, "run_study", lambda request: seen.append(request.config) or {})
    monkeypatch.setattr(study, "summary_line", lambda record: "")
    assert main(["study", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["study", "--out", str(tmp_path / "b"), "--quiet", "--phantom-kind", "stem", "--phantom-ion",
                 "sucrose", "--phantom-seed", "0"]) == 0
    assert seen[0].phantom == PhantomConfig(seed=1) == study.StudyConfig().phantom
    assert seen[1].phantom == PhantomConfig(seed=0, kind="stem", ion="sucrose")


def test_checkpoints_that_the_fit_never_reached_are_warned_about(tmp_path, files, capsys):
    opt, ion_path, _, _ = files
    out = tmp_path / "out"
    assert _fuse(opt, ion_path, out, "--method", "lcrn", "--epochs", "4", "--checkpoint-every", "10") == 0
    warning = "no checkpoint written: the fit stopped at epoch 4, before the first checkpoint (--checkpoint-every 10)"
    assert warning in json.loads((out / "run.json").read_text())["warnings"] and not (out / "checkpoints").exists()
    assert warning in capsys.readouterr().err
