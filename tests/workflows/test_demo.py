import json
from dataclasses import asdict

import numpy as np
import pytest
import tifffile

from msifusion.workflows.demo import DemoRequest, run_demo
from msifusion.fit import FitConfig
from msifusion.runtime import Runtime
from msifusion.measurement import upsample
from msifusion.methods import MethodOptions
from msifusion.metrics import score
from msifusion.phantom import PhantomConfig, make_phantom
from msifusion.workflows.fusion import FuseFilesRequest, FuseSettings, fuse_files


def test_demo_writes_inputs_outputs_panel_and_true_scores(tmp_path):
    phantom = PhantomConfig(fine_shape=(160, 320), seed=2)
    settings = FuseSettings("diffusion", MethodOptions(fit=FitConfig(max_epochs=4), runtime=Runtime(quiet=True)))
    out = tmp_path / "demo"
    record = run_demo(DemoRequest(out, settings, scale=10, phantom=phantom))
    names = {p.name for p in out.iterdir()}
    assert {"optical.png", "optical.tiff", "ion.tiff", "truth.tiff", "fused.tiff", "fused.png", "panel.png",
            "run.json"} <= names
    assert set(record["scores"]) == {"bilinear", "lcrn", "diffusion"}
    truth = make_phantom(phantom).truth
    np.testing.assert_allclose(tifffile.imread(out / "truth.tiff"), truth)
    for name, channel in (("ion.tiff", "synthetic leaf ion, measured"), ("truth.tiff", "synthetic leaf ion, truth")):
        with tifffile.TiffFile(out / name) as tif:
            assert f'Name="{channel}"' in tif.ome_metadata
    measured = tifffile.imread(out / "ion.tiff")
    fused = tifffile.imread(out / "fused.tiff")
    expected = score(fused, truth, measured, 10, make_phantom(phantom).guide)
    assert record["scores"]["diffusion"]["psnr"] == expected.psnr
    for optical in ("optical.tiff", "optical.png"):  # the demo's own inputs, fused again, give its output
        fuse_files(FuseFilesRequest(out / optical, out / "ion.tiff", tmp_path / optical, settings))
        np.testing.assert_array_equal(tifffile.imread(tmp_path / optical / "fused.tiff"), fused)
    run = json.loads((out / "run.json").read_text())
    bilinear = score(upsample(measured, 10), truth, measured, 10, make_phantom(phantom).guide)
    assert run["scores"]["bilinear"]["ssim"] == pytest.approx(bilinear.ssim, rel=1e-6)  # the panel's other columns
    assert run["scores"]["lcrn"]["ssim"] < run["scores"]["diffusion"]["ssim"]  # 4 epochs of the paper's recipe
    assert set(run["timings_s"]["compared"]) == {"bilinear", "lcrn"}  # the panel's other columns, timed too
    assert run["fit_settings"] is None  # diffusion fits nothing; the lcrn column's fit is under "training"
    assert run["training"] == {"lcrn": {"fit_settings": asdict(settings.options.fit), "epochs": 4,
                                        "stop_reason": "reached the cap of 4 epochs"}}
    assert not (out / "checkpoints").exists()  # none asked for


def test_a_demo_of_the_laser_spot_measures_through_it_and_scores_under_it(tmp_path):
    from msifusion.measurement import MeasurementModel

    phantom = PhantomConfig(fine_shape=(80, 160), seed=2)
    spot = MeasurementModel(2.0)
    settings = FuseSettings(options=MethodOptions(fit=FitConfig(max_epochs=2), runtime=Runtime(quiet=True),
                                                  measurement=spot))
    record = run_demo(DemoRequest(tmp_path / "demo", settings, scale=10, phantom=phantom))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "demo" / "ion.tiff"),
                                  make_phantom(phantom).measure(10, 2.0).astype(np.float32))
    # the default is exact under the spot it was told of, and its score says so (under the box model: about 0.2)
    assert record["scores"]["guided-harmonic"]["consistency"] == pytest.approx(record["consistency_error"], abs=1e-9)
    assert record["consistency_error"] < 1e-6


def test_demo_checkpoints_and_records_every_fitted_method(tmp_path):
    phantom = PhantomConfig(fine_shape=(80, 160), seed=2)
    fit = FitConfig(max_epochs=4, checkpoint_every=2, patience=0)
    settings = FuseSettings("cnn3", MethodOptions(fit=fit, runtime=Runtime(quiet=True)))
    out = tmp_path / "demo"
    record = run_demo(DemoRequest(out, settings, scale=10, phantom=phantom))
    run = json.loads((out / "run.json").read_text())
    assert set(run["training"]) == {"lcrn", "cnn3"} and run["training"] == record["training"]
    expected = {"fit_settings": asdict(fit), "epochs": 4, "stop_reason": "reached the cap of 4 epochs"}
    cnn3 = dict(expected, fit_settings={k: v for k, v in asdict(fit).items() if k not in ("w_mse", "w_edge")})
    assert run["training"] == {"lcrn": expected, "cnn3": cnn3} and record["training"] == run["training"]
    assert (run["epochs"], run["fit_settings"]) == (4, cnn3["fit_settings"])  # cnn3 (its loss is fixed) is the chosen method
    phantom_images = make_phantom(phantom)
    measured = tifffile.imread(out / "ion.tiff")
    for name in ("lcrn", "cnn3"):
        assert sorted(p.name for p in (out / "checkpoints" / name).iterdir()) == [
            "epoch_0002.png", "epoch_0002.tiff", "epoch_0004.png", "epoch_0004.tiff"]
        last = tifffile.imread(out / "checkpoints" / name / "epoch_0004.tiff")  # the output scored, in ion units
        psnr = score(last, phantom_images.truth, measured, 10, phantom_images.guide).psnr
        assert psnr == pytest.approx(run["scores"][name]["psnr"], abs=1e-3)
    np.testing.assert_allclose(tifffile.imread(out / "checkpoints" / "cnn3" / "epoch_0004.tiff"),
                               tifffile.imread(out / "fused.tiff"), rtol=1e-5, atol=1e-5)
