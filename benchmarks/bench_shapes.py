"""Benchmark: the default method on synthetic cases of other kinds than the plant phantoms.

The default's self-supervised choices (the ladder of edge settings, the optical-texture step
β) were developed on the plant phantoms of :mod:`msifusion.phantom`. This script checks that
they hold away from them, on 25 synthetic guide/truth pairs made without that module (numpy,
scipy and scikit-image only): piecewise-constant shapes and Voronoi regions, guides with extra
marks (stripes, text, blobs) or missing edges, smooth chemistries the guide does not show, an
ion that is a nonlinear function of a dim noisy guide's brightness, an inverted guide, cells
with dark walls holding less / as much / more of the ion than the cells, sparse ions (shown
by the guide or not), fine grain the chemistry follows, and blurred / faint / hue-only guides.
Each is measured as the block mean at ×4 to ×16, with no noise, Gaussian noise (a fraction of
the peak block) or counting noise (the peak block holds a given number of counts).

Methods: the default (guided-harmonic), the default without the texture step (β = 0 only),
bilinear-bp, diffusion and guided-bp. Prints a markdown table (date, machine): PSNR / SSIM of
each method against the truth, the default's chosen setting (edge quantile %, refinement
passes) and β, and where the default is first among the three peers (ties to the printed
precision count as first); then the means and the count of firsts.
Run: ``python benchmarks/bench_shapes.py [--cases NAME,...]`` (about 40 seconds on 2 cores).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk, ellipse, line_aa

from bench_options import comma_list, header

Pair = tuple[np.ndarray, np.ndarray]  # guide (H, W, 3) float32 in [0, 1], truth (H, W) ≥ 0
Noise = tuple[str, float] | None  # ("gauss", fraction of the peak block) or ("poisson", counts in the peak block)


# ----------------------------------------------------------------------------- building blocks

def voronoi_labels(H: int, W: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Labels 0..n-1 of the Voronoi regions of n uniform random points."""
    pts = np.stack([rng.uniform(0, H, n), rng.uniform(0, W, n)], 1)
    yy, xx = np.mgrid[0:H, 0:W]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    return np.argmin(d, -1)


def walls_of(labels: np.ndarray, width: int) -> np.ndarray:
    """Boolean mask of the boundaries between labels, about ``width`` px thick."""
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:] |= labels[1:] != labels[:-1]
    if width > 1:
        edge = ndi.binary_dilation(edge, iterations=width // 2)
    return edge


def random_colours(n: int, rng: np.random.Generator, lo: float = 0.15, hi: float = 0.9) -> np.ndarray:
    """n uniform random RGB colours, (n, 3), each channel in [lo, hi)."""
    return rng.uniform(lo, hi, (n, 3))


def smooth_noise(H: int, W: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """White noise blurred by a Gaussian of ``sigma`` px, rescaled to [0, 1]."""
    z = ndi.gaussian_filter(rng.standard_normal((H, W)), sigma)
    z -= z.min()
    return z / max(z.max(), 1e-12)


def shapes_labels(H: int, W: int, rng: np.random.Generator, n_disks: int = 8, n_rects: int = 6) -> tuple[np.ndarray, int]:
    """Rectangles then disks painted over a background (label 0); returns the labels and their count."""
    lab = np.zeros((H, W), int)
    k = 1
    for _ in range(n_rects):
        r0, c0 = rng.integers(0, H - 40), rng.integers(0, W - 40)
        hh, ww = rng.integers(20, H // 3), rng.integers(20, W // 3)
        lab[r0:r0 + hh, c0:c0 + ww] = k
        k += 1
    for _ in range(n_disks):
        rr, cc = disk((rng.uniform(0, H), rng.uniform(0, W)), rng.uniform(10, min(H, W) / 5), shape=(H, W))
        lab[rr, cc] = k
        k += 1
    return lab, k


def label_guide(lab: np.ndarray, n: int, rng: np.random.Generator, jitter: float = 0.02) -> np.ndarray:
    """A random colour per label plus Gaussian pixel noise of ``jitter``; (H, W, 3), not clipped."""
    return random_colours(n, rng)[lab] + jitter * rng.standard_normal(lab.shape + (3,))


def finish(guide: np.ndarray) -> np.ndarray:
    """The guide clipped to [0, 1], float32."""
    return np.clip(guide, 0, 1).astype(np.float32)


def stripes(H: int, W: int, period: float, angle: float) -> np.ndarray:
    """Binary stripes of ``period`` px at ``angle`` radians, 0 or 1."""
    yy, xx = np.mgrid[0:H, 0:W]
    t = np.cos(angle) * xx + np.sin(angle) * yy
    return (np.sin(2 * np.pi * t / period) > 0).astype(float)


def text_marks(H: int, W: int, rng: np.random.Generator, n: int = 60) -> np.ndarray:
    """n little glyphs of 2–4 antialiased strokes each, in [0, 1]."""
    m = np.zeros((H, W))
    for _ in range(n):
        r, c = int(rng.integers(5, H - 5)), int(rng.integers(5, W - 20))
        for _ in range(rng.integers(2, 5)):
            r1 = int(np.clip(r + rng.integers(-6, 7), 0, H - 1))
            c1 = int(np.clip(c + rng.integers(0, 12), 0, W - 1))
            rr, cc, v = line_aa(r, c, r1, c1)
            m[rr, cc] = np.maximum(m[rr, cc], v)
            r, c = r1, c1
    return m


def blob_mask(H: int, W: int, rng: np.random.Generator, n: int = 25, rmax: float = 18) -> np.ndarray:
    """Union of n random rotated ellipses with semi-axes 4 to ``rmax`` px."""
    m = np.zeros((H, W), bool)
    for _ in range(n):
        rr, cc = ellipse(rng.uniform(0, H), rng.uniform(0, W), rng.uniform(4, rmax), rng.uniform(4, rmax),
                         shape=(H, W), rotation=rng.uniform(0, np.pi))
        m[rr, cc] = True
    return m


def measure(truth: np.ndarray, f: int, noise: Noise, rng: np.random.Generator) -> np.ndarray:
    """The block mean of the truth at ×f plus the noise, float32."""
    from msifusion.measurement import block_mean

    y = block_mean(truth, f).astype(np.float64)
    peak = float(y.max())
    if noise is not None and noise[0] == "gauss":
        y = y + noise[1] * peak * rng.standard_normal(y.shape)
    elif noise is not None and noise[0] == "poisson":
        c = noise[1] / peak
        y = rng.poisson(y * c) / c
    return y.astype(np.float32)


# ----------------------------------------------------------------------------- cases

def case_shapes(seed: int, H: int, W: int, extra: str | None = None) -> Pair:
    """Ion constant per shape; the guide shows the shapes, with dark stripes or text marks over them if asked."""
    rng = np.random.default_rng(seed)
    lab, n = shapes_labels(H, W, rng)
    truth = rng.uniform(0.1, 1.0, n)[lab]
    g = label_guide(lab, n, rng)
    if extra == "stripes":
        g = g * (1 - 0.25 * stripes(H, W, 11, 0.5)[..., None])
    elif extra == "text":
        g = g * (1 - 0.8 * text_marks(H, W, rng, 80)[..., None])
    return finish(g), truth


def case_voronoi(seed: int, H: int, W: int, n: int = 40, extra: str | None = None) -> Pair:
    """Ion constant per Voronoi region; the guide shows the regions, with blobs of one colour over them if asked."""
    rng = np.random.default_rng(seed)
    lab = voronoi_labels(H, W, n, rng)
    truth = rng.uniform(0.05, 1.0, n)[lab]
    g = label_guide(lab, n, rng)
    if extra == "blobs":
        m = blob_mask(H, W, rng, 30)
        g = np.where(m[..., None], 0.5 * g + 0.5 * random_colours(1, rng)[0], g)
    return finish(g), truth


def case_missing_edges(seed: int, H: int, W: int) -> Pair:
    """Ion constant per shape; the guide shows only about half of the shapes (the rest take the background's colour)."""
    rng = np.random.default_rng(seed)
    lab, n = shapes_labels(H, W, rng)
    truth = rng.uniform(0.1, 1.0, n)[lab]
    shown = rng.random(n) < 0.5
    shown[0] = True
    g = label_guide(np.where(shown[lab], lab, 0), n, rng)
    return finish(g), truth


def case_gradient_unrelated(seed: int, H: int, W: int) -> Pair:
    """Ion a linear gradient; the guide shows Voronoi regions unrelated to it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    truth = 0.2 + 0.8 * (0.6 * xx / xx.max() + 0.4 * yy / yy.max())
    g = label_guide(voronoi_labels(H, W, 50, rng), 50, rng)
    return finish(g), truth


def case_bumps_unrelated(seed: int, H: int, W: int) -> Pair:
    """Ion seven Gaussian bumps; the guide is smooth colour texture plus blobs, unrelated to it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    truth = np.full((H, W), 0.05)
    for _ in range(7):
        cy, cx, s = rng.uniform(0, 1) * H / max(H, W), rng.uniform(0, 1) * W / max(H, W), rng.uniform(0.04, 0.12)
        truth += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    t = np.stack([smooth_noise(H, W, 3, rng) for _ in range(3)], -1)
    m = blob_mask(H, W, rng, 40, 14)
    g = 0.6 * t + 0.4 * m[..., None] * random_colours(1, rng)[0]
    return finish(g), truth


def case_nonlinear(seed: int, H: int, W: int) -> Pair:
    """Ion a nonlinear (gamma, then saturating) function of a dim noisy guide's brightness (smooth + sharp)."""
    rng = np.random.default_rng(seed)
    lab, n = shapes_labels(H, W, rng)
    b = 0.5 * rng.uniform(0.1, 1, n)[lab] + 0.5 * smooth_noise(H, W, 12, rng)
    g = b[..., None] * np.array([0.9, 0.7, 0.8]) + 0.02 * rng.standard_normal((H, W, 3))
    truth = np.tanh(3 * b ** 2.2) + 0.02
    return finish(g), truth


def case_inverted(seed: int, H: int, W: int) -> Pair:
    """Ion piecewise constant plus smooth; the guide is dark where the ion is high (an absorbing stain)."""
    rng = np.random.default_rng(seed)
    lab = voronoi_labels(H, W, 30, rng)
    truth = 0.7 * rng.uniform(0.1, 1, 30)[lab] + 0.3 * smooth_noise(H, W, 20, rng)
    v = 1 - truth / truth.max()
    g = np.stack([0.1 + 0.85 * v, 0.05 + 0.7 * v, 0.2 + 0.75 * v], -1) + 0.02 * rng.standard_normal((H, W, 3))
    return finish(g), truth


def case_cells(seed: int, H: int, W: int, wall_ratio: float, n: int = 60, wall_px: int = 3) -> Pair:
    """Light cells with dark walls; the walls hold ``wall_ratio`` × the ion of the cell they lie in."""
    rng = np.random.default_rng(seed)
    lab = voronoi_labels(H, W, n, rng)
    wall = walls_of(lab, wall_px)
    truth = rng.uniform(0.2, 1.0, n)[lab]
    truth = np.where(wall, wall_ratio * truth, truth)
    g = random_colours(n, rng, 0.55, 0.95)[lab] * (1 + 0.05 * rng.standard_normal((H, W, 1)))
    g = np.where(wall[..., None], np.array([0.25, 0.12, 0.3]), g)
    g = ndi.gaussian_filter(g, (0.7, 0.7, 0))
    return finish(g), truth


def case_sparse(seed: int, H: int, W: int, visible: bool = True) -> Pair:
    """Ion in six small disks on zero; the guide shows unrelated regions, and the disks in red if ``visible``."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((H, W))
    g = label_guide(voronoi_labels(H, W, 25, rng), 25, rng) * 0.8 + 0.1
    hot = np.zeros((H, W), bool)
    for _ in range(6):
        rr, cc = disk((rng.uniform(20, H - 20), rng.uniform(20, W - 20)), rng.uniform(3, 12), shape=(H, W))
        truth[rr, cc] = rng.uniform(0.5, 1.0)
        hot[rr, cc] = True
    truth = ndi.gaussian_filter(truth, 0.8)
    if visible:
        g = np.where(hot[..., None], np.array([0.85, 0.2, 0.2]), g)
    return finish(g), truth


def case_mixed(seed: int, H: int, W: int) -> Pair:
    """Ion a level per Voronoi region times a horizontal gradient; the guide shows the regions, not the gradient."""
    rng = np.random.default_rng(seed)
    lab = voronoi_labels(H, W, 25, rng)
    grad = 0.4 + 0.6 * np.arange(W) / W
    truth = grad * rng.uniform(0.2, 1, 25)[lab]
    g = label_guide(lab, 25, rng)
    return finish(g), truth


def case_fine_texture(seed: int, H: int, W: int) -> Pair:
    """Ion a level per region times the guide's fine grain (σ 1.2 px), linearly."""
    rng = np.random.default_rng(seed)
    lab = voronoi_labels(H, W, 20, rng)
    grain = smooth_noise(H, W, 1.2, rng)
    truth = rng.uniform(0.3, 1, 20)[lab] * (0.6 + 0.4 * grain)
    g = random_colours(20, rng, 0.3, 0.9)[lab] * (0.7 + 0.3 * grain[..., None])
    return finish(g), truth


def case_blurred_guide(seed: int, H: int, W: int) -> Pair:
    """Ion constant per shape; the guide shows the shapes blurred (σ 3 px)."""
    rng = np.random.default_rng(seed)
    lab, n = shapes_labels(H, W, rng)
    truth = rng.uniform(0.1, 1, n)[lab]
    g = ndi.gaussian_filter(label_guide(lab, n, rng, 0.0), (3, 3, 0)) + 0.01 * rng.standard_normal((H, W, 3))
    return finish(g), truth


def case_faint_guide(seed: int, H: int, W: int) -> Pair:
    """Ion constant per region; the guide shows the regions faintly (low contrast) under strong noise."""
    rng = np.random.default_rng(seed)
    lab = voronoi_labels(H, W, 35, rng)
    truth = rng.uniform(0.1, 1, 35)[lab]
    g = 0.5 + 0.08 * (random_colours(35, rng, 0, 1)[lab] - 0.5) + 0.04 * rng.standard_normal((H, W, 3))
    return finish(g), truth


def case_hue_only(seed: int, H: int, W: int) -> Pair:
    """Ion constant per region; the regions differ in hue only (equal brightness)."""
    rng = np.random.default_rng(seed)
    lab = voronoi_labels(H, W, 30, rng)
    truth = rng.uniform(0.1, 1, 30)[lab]
    ang = rng.uniform(0, 2 * np.pi, 30)[lab]
    g = 0.5 + 0.25 * np.stack([np.cos(ang), np.cos(ang - 2.094), np.cos(ang + 2.094)], -1)
    g = g + 0.01 * rng.standard_normal((H, W, 3))
    return finish(g), truth


@dataclass(frozen=True)
class Spec:
    """One case: its name, builder (seed and size bound in), measurement factor and noise."""

    name: str
    build: Callable[[], Pair]
    factor: int
    noise: Noise


SPECS = [
    Spec("shapes_f4", partial(case_shapes, 1, 192, 256), 4, None),
    Spec("shapes_f8_g02", partial(case_shapes, 2, 256, 384), 8, ("gauss", 0.02)),
    Spec("shapes_stripes_f8", partial(case_shapes, 3, 256, 384, "stripes"), 8, ("gauss", 0.01)),
    Spec("shapes_text_f10", partial(case_shapes, 4, 320, 480, "text"), 10, None),
    Spec("voronoi_f8", partial(case_voronoi, 5, 256, 384), 8, ("gauss", 0.01)),
    Spec("voronoi_f16_pois", partial(case_voronoi, 6, 320, 480), 16, ("poisson", 200)),
    Spec("voronoi_blobs_f8", partial(case_voronoi, 7, 256, 384, extra="blobs"), 8, None),
    Spec("missing_edges_f8", partial(case_missing_edges, 8, 256, 384), 8, ("gauss", 0.01)),
    Spec("gradient_unrel_f8", partial(case_gradient_unrelated, 9, 256, 384), 8, ("gauss", 0.01)),
    Spec("bumps_unrel_f10", partial(case_bumps_unrelated, 10, 320, 480), 10, ("gauss", 0.02)),
    Spec("nonlinear_f8", partial(case_nonlinear, 11, 256, 384), 8, None),
    Spec("inverted_f8", partial(case_inverted, 12, 256, 384), 8, ("gauss", 0.01)),
    Spec("cells_less_f8", partial(case_cells, 13, 256, 384, 0.3), 8, None),
    Spec("cells_equal_f8", partial(case_cells, 14, 256, 384, 1.0), 8, None),
    Spec("cells_more_f10", partial(case_cells, 15, 320, 480, 2.5), 10, ("gauss", 0.02)),
    Spec("cells_more_f16_pois", partial(case_cells, 16, 320, 480, 2.5, n=40), 16, ("poisson", 100)),
    Spec("cells_less_f4_g03", partial(case_cells, 17, 192, 256, 0.3, n=40), 4, ("gauss", 0.03)),
    Spec("sparse_visible_f8", partial(case_sparse, 18, 256, 384, True), 8, ("poisson", 50)),
    Spec("sparse_hidden_f16", partial(case_sparse, 19, 320, 480, False), 16, None),
    Spec("shapes_f4_g05", partial(case_shapes, 20, 192, 256), 4, ("gauss", 0.05)),
    Spec("mixed_grad_regions_f10", partial(case_mixed, 21, 320, 480), 10, ("gauss", 0.01)),
    Spec("fine_texture_f8", partial(case_fine_texture, 22, 256, 384), 8, None),
    Spec("blurred_guide_f8", partial(case_blurred_guide, 23, 256, 384), 8, ("gauss", 0.01)),
    Spec("faint_guide_f10", partial(case_faint_guide, 24, 320, 480), 10, None),
    Spec("hue_only_f16", partial(case_hue_only, 25, 320, 480), 16, ("gauss", 0.02)),
]


def make_cases(names: set[str] | None = None) -> Iterator[tuple[Spec, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (spec, guide, truth, measured) for each case (those in ``names`` only, if given).

    The measurement noise of the i-th case in :data:`SPECS` is drawn with seed 1000 + i, so a
    subset gives the same numbers as the full run.
    """
    for i, spec in enumerate(SPECS):
        if names is not None and spec.name not in names:
            continue
        guide, truth = spec.build()
        truth = np.maximum(truth, 0).astype(np.float32)
        H, W = truth.shape
        if guide.shape != (H, W, 3) or H % spec.factor or W % spec.factor:
            raise ValueError(f"{spec.name}: guide {guide.shape}, truth {truth.shape}, factor {spec.factor}")
        yield spec, guide, truth, measure(truth, spec.factor, spec.noise, np.random.default_rng(1000 + i))


def noise_label(noise: Noise) -> str:
    """The noise as the table shows it."""
    if noise is None:
        return "—"
    return f"Gaussian {noise[1]:g}" if noise[0] == "gauss" else f"counts {noise[1]:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=comma_list(str), default=None,
                        help="comma-separated case names (default: all 25)")
    args = parser.parse_args()
    names = None
    if args.cases:
        names = set(args.cases)
        unknown = names - {spec.name for spec in SPECS}
        if unknown:
            parser.error(f"unknown case(s): {', '.join(sorted(unknown))}; known: {', '.join(s.name for s in SPECS)}")
    import torch

    from msifusion.runtime import Runtime
    from msifusion.harmonic import HarmonicConfig, TextureSettings
    from msifusion.methods import MethodOptions, fuse
    from msifusion.metrics import psnr, ssim

    torch.set_num_threads(min(2, torch.get_num_threads()))
    options = MethodOptions(runtime=Runtime(quiet=True))
    no_texture = MethodOptions(runtime=Runtime(quiet=True), harmonic=HarmonicConfig(texture=TextureSettings.off()))
    runs = (("guided-harmonic", "guided-harmonic", options), ("no texture", "guided-harmonic", no_texture),
            ("bilinear-bp", "bilinear-bp", options), ("diffusion", "diffusion", options),
            ("guided-bp", "guided-bp", options))
    peers = ("bilinear-bp", "diffusion", "guided-bp")

    print(header("msifusion on synthetic cases of other kinds") + "\n")
    print("| case | factor | noise | " + " | ".join(label for label, _, _ in runs)
          + " | default's setting, β | default first in |")
    print("|---" * (5 + len(runs)) + "|")
    all_scores: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in runs}
    firsts = {"PSNR": 0, "SSIM": 0}
    rows = 0
    for spec, guide, truth, measured in make_cases(names):
        scores, setting = {}, "—"
        for label, method, opts in runs:
            result = fuse(guide, measured, method, opts)
            scores[label] = (psnr(result.image, truth, None), ssim(result.image, truth, None))
            if label == "guided-harmonic":
                details = result.fit.details or {}
                q, passes = details["chosen"]
                setting = f"({q:g}, {passes}), β {details['texture']:g}" + (
                    f", spread σ {details['spread_px']:g} px" if details.get("spread_px") else "")
        for label, score in scores.items():
            all_scores[label].append(score)
        first = [name for i, (name, digits) in enumerate((("PSNR", 2), ("SSIM", 3)))
                 if round(scores["guided-harmonic"][i], digits) >= max(round(scores[p][i], digits) for p in peers)]
        for name in first:
            firsts[name] += 1
        rows += 1
        cells = " | ".join(f"{p:.2f} / {s:.3f}" for p, s in scores.values())
        print(f"| {spec.name} | ×{spec.factor} | {noise_label(spec.noise)} | {cells} | {setting} | "
              f"{', '.join(first) or '—'} |", flush=True)
    means = ", ".join(f"{label} {np.mean([p for p, _ in s]):.2f} / {np.mean([q for _, q in s]):.3f}"
                      for label, s in all_scores.items())
    print(f"\nMean PSNR / SSIM: {means}.")
    print(f"Default first in PSNR on {firsts['PSNR']} of {rows}, in SSIM on {firsts['SSIM']} of {rows}.")


if __name__ == "__main__":
    main()
