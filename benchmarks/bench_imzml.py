"""Benchmark: many ion images from one imzML in one pass vs pyimzML's getionimage per ion.

Data: the MSIght prostate example (``msifusion.examples.fetch_prostate``; 274×163 px,
33 035 spectra, 422 channels, continuous). Ions: the ``--n`` strongest peaks of the mean
spectrum. Window: ±``--da`` Da for both readers (getionimage only knows Da).

Prints one markdown table row (date, machine, timings, speed-up, agreement). Agreement
counts the ion images that pyimzML gets exactly right: its ``getionimage`` bisects the m/z
array, which is wrong on this file's unsorted m/z axis for some ions.

Run: ``python benchmarks/bench_imzml.py [--data DIR] [--n 50] [--da 0.01]``
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from bench_options import at_least, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder holding prostate_example.imzML/.ibd")
    parser.add_argument("--n", type=at_least(1), default=50,
                        help="how many of the strongest peaks to extract (default 50)")
    parser.add_argument("--da", type=at_least(1e-6, float), default=0.01,
                        help="half-width of each m/z window in Da (default 0.01)")
    args = parser.parse_args()

    from pyimzml.ImzMLParser import ImzMLParser, getionimage

    from msifusion.examples import fetch_prostate
    from msifusion.io.imzml import ImzML, Tolerance

    folder = args.data or fetch_prostate()
    path = folder / "prostate_example.imzML"
    warnings.simplefilter("ignore")

    t0 = time.perf_counter()
    f = ImzML(path)
    t_parse = time.perf_counter() - t0
    mzs = [mz for mz, _ in f.strongest_peaks(args.n)]
    t0 = time.perf_counter()
    ours = f.ion_images(mzs, Tolerance(args.da, "da")).images
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    p = ImzMLParser(str(path))
    t_parse_pyimzml = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = [getionimage(p, mz, tol=args.da) for mz in mzs]
    t_theirs = time.perf_counter() - t0
    p.m.close()

    agree = sum(bool(np.allclose(a, b, rtol=1e-6, atol=0)) for a, b in zip(ours, theirs))
    date = datetime.date.today().isoformat()
    print("| date | machine | data | ions | parse XML (s) | msifusion one pass (s) | pyimzML getionimage ×n (s) "
          "| speed-up | images equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows, cols = f.shape
    print(f"| {date} | {machine()}, Python {platform.python_version()} | {path.stem} {cols}×{rows}, "
          f"{f.n_spectra} spectra, {f.summary()['mode']} | {len(mzs)} "
          f"| {t_parse:.2f} / {t_parse_pyimzml:.2f} | {t_ours:.3f} | {t_theirs:.1f} | {t_theirs / t_ours:.0f}× "
          f"| {agree}/{len(mzs)} |")


if __name__ == "__main__":
    main()
