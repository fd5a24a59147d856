"""Benchmark: automatic registration on a real micrograph with a known transform.

The MSI side is made from scikit-image's IHC micrograph (``skimage.data.immunohistochemistry()``, 512×512 RGB): an
imzML of 64×64 pixels whose three peaks are the hematoxylin and DAB densities block-averaged ×8 (scaled to 1000,
Gaussian noise of 10) and a flat one. The optical is the micrograph itself on a white canvas (128 px of margin),
turned, scaled and mirrored by a known map; ``msifusion register`` (automatic, ×8, no pixel sizes: the search must
find the scale too) is run on each, and the landmarks it writes are compared with the known map at the ion grid.
Prints a markdown table: the largest and mean landmark error in MSI pixels, the search score, the MSI tissue image
matched (0: the TIC, 1 and 2: principal components of the spectra), the warnings.
Run: ``python benchmarks/bench_registration.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_options import header

FACTOR = 8
PAD = 128
POSES = ((0.0, 1.0, False), (25.0, 1.0, False), (-60.0, 1.0, False), (10.0, 0.6, False), (0.0, 1.7, False),
         (30.0, 1.0, True))  # (degrees, zoom, mirrored)


def write_imzml(path: Path, rgb: np.ndarray) -> None:
    """The micrograph's stains as a continuous imzML, ×FACTOR coarser."""
    from pyimzml.ImzMLWriter import ImzMLWriter
    from skimage.color import rgb2hed

    hed = rgb2hed(rgb)
    h, w = rgb.shape[0] // FACTOR, rgb.shape[1] // FACTOR
    blocks = [np.clip(hed[..., i], 0, None).reshape(h, FACTOR, w, FACTOR).mean((1, 3)) for i in (0, 2)]
    blocks = [b / b.max() * 1000 for b in blocks]
    rng = np.random.default_rng(0)
    with ImzMLWriter(str(path), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as writer:
        for r in range(h):
            for c in range(w):
                values = np.array([blocks[0][r, c], blocks[1][r, c], 50.0]) + rng.normal(0, 10, 3)
                writer.addSpectrum(np.array([400.0, 500.0, 600.0]), np.clip(values, 0, None).astype(np.float32),
                                   (c + 1, r + 1))


def posed_optical(rgb: np.ndarray, degrees: float, zoom: float, mirrored: bool) -> tuple[np.ndarray, np.ndarray]:
    """The micrograph on a white canvas, turned about its centre, scaled and mirrored; and the 2×3 map from the
    canvas's pixels to the result's."""
    import cv2

    canvas = np.full((rgb.shape[0] + 2 * PAD, rgb.shape[1] + 2 * PAD, 3), 245, np.uint8)
    canvas[PAD:PAD + rgb.shape[0], PAD:PAD + rgb.shape[1]] = rgb
    size = (canvas.shape[1], canvas.shape[0])
    m = cv2.getRotationMatrix2D((size[0] / 2, size[1] / 2), degrees, zoom)
    if mirrored:
        m = np.array([[-1.0, 0.0, size[0] - 1], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0.0, 0.0, 1.0]])
    return cv2.warpAffine(canvas, m, size, borderValue=(245, 245, 245)), m


def landmark_errors(landmarks_csv: Path, m: np.ndarray) -> np.ndarray:
    """Each landmark's distance from where the known map puts its fixed point, in MSI pixels."""
    from msifusion.io.landmarks import read_landmarks

    lm = read_landmarks(landmarks_csv)
    fine = lm.fixed * FACTOR + (FACTOR - 1) / 2  # an ion pixel's centre in the micrograph's pixels
    expected = (m @ np.c_[fine + PAD, np.ones(len(fine))].T).T
    return np.hypot(*(expected - lm.moving).T) / FACTOR


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options: --help, not a run
    import cv2
    from skimage import data

    rgb = data.immunohistochemistry()
    print(header(f"msifusion automatic registration, IHC micrograph ×{FACTOR}") + "\n")
    print("| turned | zoom | mirrored | largest error (MSI px) | mean | score | tissue image | warnings |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_imzml(folder / "ihc.imzML", rgb)
        for degrees, zoom, mirrored in POSES:
            optical, m = posed_optical(rgb, degrees, zoom, mirrored)
            cv2.imwrite(str(folder / "optical.png"), optical[..., ::-1])
            out = folder / f"reg_{degrees:g}_{zoom:g}_{mirrored}"
            command = ["register", "--optical", str(folder / "optical.png"), "--ion", str(folder / "ihc.imzML"),
                       "--scale", str(FACTOR), "--out", str(out), "--quiet"]
            run = subprocess.run([sys.executable, "-m", "msifusion", *command], capture_output=True, text=True)
            if run.returncode:
                why = (run.stderr.strip().splitlines() or ["no message"])[-1]
                print(f"| {degrees:g}° | {zoom:g} | {'yes' if mirrored else 'no'} | failed: {why} | | | | |")
                continue
            errors = landmark_errors(out / "landmarks.csv", m)
            record = json.loads((out / "run.json").read_text())
            warned = "; ".join(w.split(":")[0][:60] for w in record["warnings"]) or "—"
            registration = record["registration"]
            print(f"| {degrees:g}° | {zoom:g} | {'yes' if mirrored else 'no'} | {errors.max():.2f} | "
                  f"{errors.mean():.2f} | {registration['score']:.2f} | {registration['tissue_channel']} | {warned} |",
                  flush=True)


if __name__ == "__main__":
    main()
