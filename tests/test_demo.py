import json

import numpy as np
import tifffile

from msifusion.demo import DemoRequest, run_demo
from msifusion.fit import FitConfig, Runtime
from msifusion.metrics import score
from msifusion.phantom import PhantomConfig, make_phantom
from msifusion.pipeline import FuseSettings


def test_demo_writes_inputs_outputs_panel_and_true_scores(tmp_path):
    phantom = PhantomConfig(fine_shape=(160, 320), seed=2)
    settings = FuseSettings(fit=FitConfig(max_epochs=4), runtime=Runtime(quiet=True), method="diffusion")
    out = tmp_path / "demo"
    record = run_demo(DemoRequest(out, settings, scale=10, phantom=phantom))
    names = {p.name for p in out.iterdir()}
    assert {"optical.png", "optical.tiff", "ion.tiff", "truth.tiff", "fused.tiff", "fused.png", "panel.png",
            "run.json"} <= names
    assert set(record["scores"]) == {"bilinear", "lcrn", "diffusion"}
    truth = make_phantom(phantom).truth
    np.testing.assert_allclose(tifffile.imread(out / "truth.tiff"), truth)
    measured = tifffile.imread(out / "ion.tiff")
    fused = tifffile.imread(out / "fused.tiff")
    expected = score(fused, truth, measured, 10, make_phantom(phantom).guide)
    assert record["scores"]["diffusion"]["psnr"] == expected.psnr
    assert json.loads((out / "run.json").read_text())["scores"]["lcrn"]["ssim"] < 1.0
