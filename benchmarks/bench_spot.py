"""Benchmark: the default method under the laser-spot measurement model (``--spot-sigma``).

The plant phantoms (leaf/apigenin and stem/sucrose, seeds 1 and 2, 320×800 µm at 1 µm) are measured
through a Gaussian spot of σ fine pixels, then the f×f box average, with Gaussian noise of 0.02 × the
truth's maximum clipped at zero (:meth:`msifusion.phantom.Phantom.measure`), at ×10 and ×20. Each
measurement is fused by the default told the right σ, by the default without the texture step, by the default
told nothing of the spot (the box model: not exact under the spot, but no deblurring either), and by bilinear
upsampling made exact under the same spot (the baseline every exact method starts from).

Prints a markdown table (date, machine): PSNR / SSIM against the truth, the default's chosen setting and β,
its consistency error under the spot, the share of its pixels below zero and its least value over its
greatest; then the means per σ. σ = 0 is the box model (the benchmark's own measurement).
Run: ``python benchmarks/bench_spot.py [--sigmas 0,0.5,1,2.5,5] [--seeds 1,2] [--factors 10,20]`` (16 minutes on 2
cores).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from bench_options import at_least, comma_list, header

CASES = (("leaf", "apigenin"), ("stem", "sucrose"))
SECTION = (320, 800)  # the phantoms' rows × columns at 1 µm (PhantomConfig's default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=comma_list(at_least(0, float)), default="0,0.5,1,2.5,5",
                        help="spot σ in fine pixels, comma-separated (default: %(default)s); wider than half a factor "
                             "is not run")
    parser.add_argument("--seeds", type=comma_list(at_least(0)), default="1,2",
                        help="phantom seeds, comma-separated (default: %(default)s)")
    parser.add_argument("--factors", type=comma_list(at_least(2)), default="10,20",
                        help=f"scale factors dividing the phantom's {SECTION[0]}×{SECTION[1]} µm, comma-separated "
                             "(default: %(default)s)")
    args = parser.parse_args()
    if any(SECTION[0] % f or SECTION[1] % f for f in args.factors):
        parser.error(f"--factors: each must divide the phantom's {SECTION[0]}×{SECTION[1]} µm")
    if all(sigma > f / 2 for sigma in args.sigmas for f in args.factors):
        parser.error("--sigmas: every σ is wider than half of every factor (an oversampled acquisition): "
                     "nothing to run")
    import numpy as np
    import torch

    from msifusion.runtime import Runtime
    from msifusion.harmonic import HarmonicConfig, TextureSettings
    from msifusion.measurement import MeasurementModel, project_consistent, upsample
    from msifusion.methods import MethodOptions, fuse
    from msifusion.metrics import psnr, ssim
    from msifusion.phantom import PhantomConfig, make_phantom

    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(header("msifusion under a laser spot") + "\n")
    skipped = [(s, f) for s in args.sigmas for f in args.factors if s > f / 2]
    if skipped:
        print("Not run (σ wider than half the factor: an oversampled acquisition, refused): "
              + ", ".join(f"σ {s:g} at ×{f}" for s, f in skipped) + "\n")
    print("| case | factor | σ px | default | default, no texture | default, spot ignored | bilinear, exact "
          "| setting, β | consistency | share < 0 | min / max |")
    print("|---" * 11 + "|")
    means = defaultdict(list)
    for seed in args.seeds:
        for kind, ion in CASES:
            phantom = make_phantom(PhantomConfig(seed=seed, kind=kind, ion=ion))
            for f in args.factors:
                for sigma in args.sigmas:
                    if sigma > f / 2:
                        continue  # refused: an oversampled acquisition
                    model = MeasurementModel(sigma)
                    measured = phantom.measure(f, sigma)
                    scores = []
                    for texture, stated in ((TextureSettings(), model), (TextureSettings.off(), model),
                                            (TextureSettings(), MeasurementModel())):
                        options = MethodOptions(runtime=Runtime(quiet=True), measurement=stated,
                                                harmonic=HarmonicConfig(texture=texture))
                        result = fuse(phantom.guide, measured, "guided-harmonic", options)
                        scores.append((psnr(result.image, phantom.truth), ssim(result.image, phantom.truth)))
                        if len(scores) == 1:
                            image, details = result.image, result.fit.details
                    baseline = project_consistent(upsample(measured, f), measured, f, sigma)
                    scores.append((psnr(baseline, phantom.truth), ssim(baseline, phantom.truth)))
                    means[(f, sigma)].append(scores)
                    setting = f"{details['chosen'][0]:g}/{details['chosen'][1]}, {details['texture']:g}"
                    cells = " | ".join(f"{p:.2f} / {s:.3f}" for p, s in scores)
                    print(f"| {kind} {ion} s{seed} | ×{f} | {sigma:g} | {cells} | {setting} | "
                          f"{model.consistency_error(image, measured, f):.0e} | {(image < 0).mean():.2f} | "
                          f"{image.min() / image.max():.3f} |", flush=True)
    print("\n| factor | σ px | default | default, no texture | default, spot ignored | bilinear, exact |\n"
          "|---|---|---|---|---|---|")
    for (f, sigma), rows in means.items():
        mean = np.mean(rows, axis=0)
        print(f"| ×{f} | {sigma:g} | " + " | ".join(f"{p:.2f} / {s:.3f}" for p, s in mean) + " |")


if __name__ == "__main__":
    main()
