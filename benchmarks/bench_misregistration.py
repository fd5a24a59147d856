"""Benchmark: what a registration error costs each method, on synthetic sections with the guide shifted.

A real registration is never exact (on the prostate example two tissue images align about 6 MSI pixels apart at the
acquired area's corners, docs/benchmarks.md §4). Here the guide of a synthetic section is shifted by a known amount,
the same along both axes, by linear interpolation (edges repeated), and every method fuses the measurement with it;
methods that ignore the guide (bilinear-bp, bicubic) are the floor a guided method falls to when its guide misleads.
Sections: both tissue kinds × four ions, on a seed the benchmark and the development never used (11), 360×720 µm at
1 µm, measured at ×10 and ×20 with the benchmark's noise (Gaussian 0.02·max, clipped at zero).

Prints markdown tables (date, machine): per shift (in MSI pixels along each axis), each method's mean PSNR / SSIM
over the 16 cases and on how many the default is first. Run (37 minutes on 2 cores beside other work):
``python benchmarks/bench_misregistration.py [--seed 11] [--shifts 0,0.1,0.25,0.5,1]``.
"""

from __future__ import annotations

import argparse

from bench_options import at_least, comma_list, header

GUIDED = ("guided-harmonic", "diffusion", "guided-bp")
UNGUIDED = ("bilinear-bp", "bicubic")  # fused once per case: the guide does not enter
IONS = ("apigenin", "sucrose", "gradient", "pheophytin")
FACTORS = (10, 20)
SIDE = 360  # the section: SIDE × 2·SIDE µm at 1 µm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=at_least(0), default=11,
                        help="phantom seed (default 11; the benchmark uses 1 and 2)")
    parser.add_argument("--shifts", type=comma_list(at_least(0.0, float)), default=[0.0, 0.1, 0.25, 0.5, 1.0],
                        help="guide shifts in MSI pixels along each axis, comma-separated (default 0,0.1,0.25,0.5,1)")
    args = parser.parse_args()
    import numpy as np
    import torch
    from scipy.ndimage import shift as shifted

    from msifusion.methods import MethodOptions, fuse
    from msifusion.metrics import psnr, ssim
    from msifusion.phantom import PhantomConfig, make_phantom
    from msifusion.runtime import Runtime

    torch.set_num_threads(min(2, torch.get_num_threads()))
    options = MethodOptions(runtime=Runtime(quiet=True))
    methods = GUIDED + UNGUIDED
    scores = {s: {m: [] for m in methods} for s in args.shifts}  # shift → method → [(psnr, ssim) per case]
    print(header(f"msifusion with a shifted guide, seed {args.seed}") + "\n")
    print("| kind | ion | factor | shift (MSI px) | " + " | ".join(methods) + " |")
    print("|---" * (4 + len(methods)) + "|")
    for kind in ("leaf", "stem"):
        for ion in IONS:
            for factor in FACTORS:
                phantom = make_phantom(PhantomConfig(fine_shape=(SIDE, 2 * SIDE), seed=args.seed, kind=kind, ion=ion))
                measured = phantom.measure(factor)
                fixed = {}
                for method in UNGUIDED:
                    image = fuse(phantom.guide, measured, method, options).image
                    fixed[method] = (psnr(image, phantom.truth), ssim(image, phantom.truth))
                for s in args.shifts:
                    guide = shifted(phantom.guide, (s * factor, s * factor, 0), order=1, mode="nearest")
                    row = dict(fixed)
                    for method in GUIDED:
                        image = fuse(np.clip(guide, 0, 1), measured, method, options).image
                        row[method] = (psnr(image, phantom.truth), ssim(image, phantom.truth))
                    for method in methods:
                        scores[s][method].append(row[method])
                    cells = " | ".join(f"{p:.2f} / {q:.3f}" for p, q in (row[m] for m in methods))
                    print(f"| {kind} | {ion} | ×{factor} | {s:g} | {cells} |", flush=True)
    print("\nMeans over the cases (PSNR dB / SSIM), and on how many the default is first (PSNR, SSIM):\n")
    print("| shift (MSI px) | " + " | ".join(methods) + " | default first |")
    print("|---" * (2 + len(methods)) + "|")
    for s, by_method in scores.items():
        means = {m: np.mean(v, axis=0) for m, v in by_method.items()}
        n = len(by_method[methods[0]])
        first = [sum(round(by_method[methods[0]][c][i], 3) >= max(round(v[c][i], 3) for v in by_method.values())
                     for c in range(n)) for i in (0, 1)]
        cells = " | ".join(f"{p:.2f} / {q:.3f}" for p, q in means.values())
        print(f"| {s:g} | {cells} | {first[0]} / {first[1]} of {n} |")


if __name__ == "__main__":
    main()
