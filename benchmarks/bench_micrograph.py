"""Benchmark: the default method guided by a real micrograph, with truths the project did not draw.

The phantoms' optical images are drawn by the project, so their texture, noise and colours are ours. Here the guide
is a real bright-field micrograph shipped with scikit-image (``skimage.data.immunohistochemistry()``: 512×512 RGB,
hematoxylin and DAB, from the Human Protein Atlas), and four ion truths are made from it:

- ``dab``: the DAB stain's optical density (scikit-image's ``rgb2hed``), an ion that sits where one stain does;
- ``nuclei``: the hematoxylin density, an ion of the nuclei;
- ``dab_gradient``: the DAB density times a left-to-right gradient (0.3 → 1) the optical does not show;
- ``unrelated``: a smooth random field (Gaussian of 24 px) that owes nothing to the micrograph, where following
  the optical's edges can only hurt.

Each truth is scaled to [0, 1], block-averaged at ×8 and ×16 and given Gaussian noise of ``--noise`` × its maximum
(default 0.02, the benchmark's), then fused by each method and scored against the truth (PSNR, SSIM; the same
settings everywhere). Prints a markdown table (date, machine). Run: ``python benchmarks/bench_micrograph.py
[--noise 0.02]`` (about 25 s on 2 cores).
"""

from __future__ import annotations

import argparse

import numpy as np

from bench_options import at_least, header

COMPARED = ("diffusion", "bilinear-bp", "guided-bp", "bicubic", "bilinear")  # after the default method


def truths(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The four ion truths of the module's docstring, each in [0, 1]."""
    from scipy import ndimage
    from skimage.color import rgb2hed

    hed = rgb2hed(rgb)
    hema, dab = (np.clip(hed[..., i], 0, None) for i in (0, 2))
    ramp = np.linspace(0.3, 1.0, rgb.shape[1])[None, :]
    field = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal(rgb.shape[:2]), 24)
    made = {"dab": dab, "nuclei": hema, "dab_gradient": dab * ramp, "unrelated": field - field.min()}
    return {name: (t / t.max()).astype(np.float32) for name, t in made.items()}


def measure(truth: np.ndarray, factor: int, seed: int, noise_level: float) -> np.ndarray:
    """Block means at ``factor`` plus Gaussian noise of ``noise_level`` × the truth's maximum, clipped at 0 like
    counts (the phantoms' noise model)."""
    from msifusion.measurement import block_mean
    from msifusion.phantom import with_noise

    return with_noise(block_mean(truth, factor), float(truth.max()), noise_level, 0.0,
                      np.random.default_rng([seed, factor]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=at_least(0, float), default=0.02,
                        help="Gaussian noise × the truth's maximum (default: %(default)s)")
    args = parser.parse_args()
    import torch
    from skimage import data

    from msifusion.runtime import Runtime
    from msifusion.methods import DEFAULT_METHOD, MethodOptions, fuse
    from msifusion.metrics import psnr, ssim

    torch.set_num_threads(min(2, torch.get_num_threads()))
    methods = (DEFAULT_METHOD, *COMPARED)
    options = MethodOptions(runtime=Runtime(quiet=True))
    rgb = data.immunohistochemistry()
    guide = (rgb / 255.0).astype(np.float32)
    print(header(f"msifusion guided by a real micrograph (scikit-image IHC, 512×512), noise {args.noise:g} × max")
          + "\n")
    print("| truth | factor | " + " | ".join(methods) + " | default first in |")
    print("|---" * (3 + len(methods)) + "|")
    firsts, rows, margins = {"PSNR": 0, "SSIM": 0}, 0, []
    for seed, (name, truth) in enumerate(truths(rgb).items()):
        for factor in (8, 16):
            measured = measure(truth, factor, seed, args.noise)
            scores = {m: (lambda im: (psnr(im, truth), ssim(im, truth)))(fuse(guide, measured, m, options).image)
                      for m in methods}
            first = [k for i, k in enumerate(("PSNR", "SSIM"))
                     if round(scores[DEFAULT_METHOD][i], 3) >= max(round(s[i], 3) for s in scores.values())]
            for k in first:
                firsts[k] += 1
            rows += 1
            margins.append(scores[DEFAULT_METHOD][0] - max(s[0] for m, s in scores.items() if m != DEFAULT_METHOD))
            cells = " | ".join(f"{p:.2f} / {s:.3f}" for p, s in scores.values())
            print(f"| {name} | ×{factor} | {cells} | {', '.join(first) or '—'} |", flush=True)
    print(f"\nDefault first in PSNR on {firsts['PSNR']} of {rows}, in SSIM on {firsts['SSIM']} of {rows}; "
          f"PSNR margin over the next best method: mean {np.mean(margins):+.2f} dB, least {min(margins):+.2f} dB.")


if __name__ == "__main__":
    main()
