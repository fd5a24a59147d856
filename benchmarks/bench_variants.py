"""Benchmark: the default method on synthetic sections the quality benchmark does not hold.

The quality benchmark (``msifusion benchmark``) fixes its phantom ions, factors and noise;
this script checks that the defaults hold up away from them: both tissue kinds × four ions
(pheophytin is not in the benchmark) × three measurement models, on a seed the benchmark
and the development never used (11), 360×720 µm at 1 µm:

- ×8, noise-free;
- ×15, Gaussian noise 0.05·max (2.5× the benchmark's);
- ×12, Gaussian noise 0.01·max plus counting (shot) noise 0.05.

Prints a markdown table (date, machine): PSNR / SSIM of each method, and where the default
is not first, then each method's mean. Run: ``python benchmarks/bench_variants.py [--seed 11]`` (about 2 minutes on 2
cores). ``--unclipped`` leaves the noise signed and unbiased, where the benchmark's (and by default this script's)
measurement is clipped at zero as intensities are.
``--models 3:0.02:0,7:0.02:0`` runs other measurement models (factor:Gaussian noise:shot noise each), e.g.
odd factors; a factor that does not divide 360×720 gets the section drawn at the largest multiple of it that fits
(×7: 357×714), so another section of the same seed.
"""

from __future__ import annotations

import argparse
import math

from bench_options import at_least, header

METHODS = ("guided-harmonic", "diffusion", "bilinear-bp", "guided-bp", "bicubic")
MODELS = ((8, 0.0, 0.0), (15, 0.05, 0.0), (12, 0.01, 0.05))  # (factor, Gaussian noise, shot noise)
SIDE = 360  # the section: SIDE × 2·SIDE µm at 1 µm


def measurement_models(text: str) -> tuple[tuple[int, float, float], ...]:
    """``--models``: comma-separated ``factor:noise:shot`` triples."""
    try:
        models = tuple((int(f), float(n), float(s)) for f, n, s in (item.split(":") for item in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected factor:noise:shot triples separated by commas, got {text!r}")
    if any(not 2 <= f <= SIDE // 8 for f, _, _ in models):
        raise argparse.ArgumentTypeError(f"factors must be between 2 and {SIDE // 8} (8 MSI pixels across {SIDE} µm)")
    if any(not (math.isfinite(n) and math.isfinite(s) and n >= 0 and s >= 0) for _, n, s in models):
        raise argparse.ArgumentTypeError("noise levels must be finite and at least 0")
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=at_least(0), default=11,
                        help="phantom seed (default 11; the benchmark uses 1 and 2)")
    parser.add_argument("--models", type=measurement_models, default=MODELS,
                        help="factor:noise:shot triples, comma-separated (default: "
                             + ",".join(f"{f}:{n:g}:{s:g}" for f, n, s in MODELS) + ")")
    parser.add_argument("--unclipped", action="store_true",
                        help="leave the noisy measurement signed (unbiased) instead of clipping it at 0")
    args = parser.parse_args()
    import torch

    from msifusion.runtime import Runtime
    from msifusion.methods import MethodOptions, fuse
    from msifusion.metrics import psnr, ssim
    from msifusion.phantom import PhantomConfig, make_phantom

    torch.set_num_threads(min(2, torch.get_num_threads()))
    options = MethodOptions(runtime=Runtime(quiet=True))
    print(header(f"msifusion on unseen synthetic variants, seed {args.seed}"
                 + (", noise not clipped at 0" if args.unclipped else "")) + "\n")
    print("| kind | ion | factor | noise | shot | " + " | ".join(METHODS) + " | default first in |")
    print("|---" * (6 + len(METHODS)) + "|")
    firsts = {"PSNR": 0, "SSIM": 0}
    rows = 0
    totals = {method: [0.0, 0.0] for method in METHODS}
    for kind in ("leaf", "stem"):
        for ion in ("pheophytin", "apigenin", "sucrose", "gradient"):
            for factor, noise, shot in args.models:
                shape = (SIDE - SIDE % factor, 2 * SIDE - 2 * SIDE % factor)
                phantom = make_phantom(PhantomConfig(fine_shape=shape, seed=args.seed, kind=kind, ion=ion,
                                                     noise=noise, shot=shot, clip=not args.unclipped))
                measured = phantom.measure(factor)
                scores = {}
                for method in METHODS:
                    image = fuse(phantom.guide, measured, method, options).image
                    scores[method] = (psnr(image, phantom.truth), ssim(image, phantom.truth))
                    totals[method] = [t + v for t, v in zip(totals[method], scores[method])]
                first = [name for i, name in enumerate(("PSNR", "SSIM"))
                         if round(scores[METHODS[0]][i], 3) >= max(round(s[i], 3) for s in scores.values())]
                for name in first:
                    firsts[name] += 1
                rows += 1
                cells = " | ".join(f"{p:.2f} / {s:.3f}" for p, s in scores.values())
                print(f"| {kind} | {ion} | ×{factor} | {noise:g} | {shot:g} | {cells} | {', '.join(first) or '—'} |",
                      flush=True)
    print(f"\nDefault first in PSNR on {firsts['PSNR']} of {rows}, in SSIM on {firsts['SSIM']} of {rows}.")
    print("Means: " + "; ".join(f"{m} {p / rows:.2f} / {q / rows:.3f}" for m, (p, q) in totals.items()) + ".")


if __name__ == "__main__":
    main()
