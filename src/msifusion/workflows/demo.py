"""The embedded demo: a synthetic leaf cross-section whose truth is known.

Writes the demo's inputs (so ``msifusion fuse`` can be re-run on them), the fusion outputs
of the chosen method, a panel optical | measured ion | bilinear | lcrn | chosen | truth, and
PSNR / SSIM of each against the truth. Each fitted method among them records its recipe, epochs
and stop reason in run.json's ``training``, and with ``checkpoint_every`` saves its checkpoints
under ``checkpoints/<method>/``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from msifusion.io.images import Image, optical_to_rgb, rgb_to_uint8, write_rgb_tiff, write_tiff
from msifusion.methods import METHODS, FusionResult
from msifusion.metrics import score
from msifusion.phantom import PhantomConfig, make_phantom
from msifusion.provenance import OutputRun
from msifusion.report import save_panel, save_rgb_png
from msifusion.workflows.fusion import FuseSettings, RegisteredPair, fuse_pair, pair_images, write_fusion_outputs


COMPARED = ("bilinear", "lcrn")  # shown beside the chosen method: the paper's baseline and the paper's method


@dataclass(frozen=True)
class DemoRequest:
    out: Path
    settings: FuseSettings = FuseSettings()
    scale: int = 10
    overwrite: bool = False
    phantom: PhantomConfig = PhantomConfig()


def run_demo(request: DemoRequest) -> dict:
    """Make the phantom, fuse it at ``request.scale``, score against the truth; returns run.json's dict."""
    run = OutputRun(request.out, request.overwrite)
    phantom = make_phantom(request.phantom)
    spot = request.settings.options.measurement.spot_sigma_px  # a demo of the spot model measures through that spot
    measured = phantom.measure(request.scale, spot)
    ion_px = request.phantom.fine_pixel_um * request.scale
    guide = optical_to_rgb(rgb_to_uint8(phantom.guide))  # as optical.png and .tiff hold it: fusing them gives the same
    pair = pair_images(Image(guide, request.phantom.fine_pixel_um), Image(measured, ion_px))
    pair.ion_name = "synthetic leaf ion"
    with run.staged() as stage:
        save_rgb_png(stage / "optical.png", guide)
        write_rgb_tiff(stage / "optical.tiff", guide, request.phantom.fine_pixel_um)
        write_tiff(stage / "ion.tiff", measured, ion_px, [f"{pair.ion_name}, measured"])
        write_tiff(stage / "truth.tiff", phantom.truth, request.phantom.fine_pixel_um, [f"{pair.ion_name}, truth"])
        result = _fuse(stage, pair, request.settings)
        compared = {name: _fuse(stage, pair, replace(request.settings, method=name))
                    for name in COMPARED if name != result.method}
        compared[result.method] = result
        scores = {name: vars(score(r.image, phantom.truth, measured, request.scale, guide,
                                   spot_sigma_px=spot)) for name, r in compared.items()}
        panels = [("optical (guide)", guide), (f"measured ion ({ion_px:g} µm)", measured)]
        panels += [(f"{name}  PSNR {scores[name]['psnr']:.1f} dB  SSIM {scores[name]['ssim']:.3f}", r.image)
                   for name, r in compared.items()]
        panels.append(("truth", phantom.truth))
        title = f"synthetic leaf cross-section, ×{request.scale}" + (f", laser spot σ {spot:g} px" if spot else "")
        save_panel(stage / "panel.png", panels, request.phantom.fine_pixel_um, reference=phantom.truth, title=title)
        extra = {"demo": {"phantom": vars(request.phantom)}, "scores": scores,
                 "training": _training(compared, request.settings)}
        record = write_fusion_outputs(stage, pair, result, request.settings, extra)
        return run.finish(stage, record, compared={name: r.seconds for name, r in compared.items() if r is not result})


def _fuse(stage: Path, pair: RegisteredPair, settings: FuseSettings) -> FusionResult:
    """Fuse with ``settings.method``; a fitted one saves its checkpoints (when ``checkpoint_every`` asks) under
    ``checkpoints/<method>/``, a folder per method because the demo may fit two networks."""
    return fuse_pair(pair, settings, stage / "checkpoints" / settings.method)


def _training(results: dict[str, FusionResult], settings: FuseSettings) -> dict:
    """How each fitted method among ``results`` ran (recipe, epochs, stop reason): their scores depend on it."""
    return {name: {"fit_settings": METHODS[name].fit_settings(settings.options.fit), "epochs": r.fit.epochs,
                   "stop_reason": r.fit.stop_reason}
            for name, r in results.items() if METHODS[name].trains}
