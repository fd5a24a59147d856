"""``msifusion benchmark``: every method on every case whose truth is known.

A :class:`Case` is a high-resolution truth, the guide registered to it, and the measurement
the protocol derives from the truth: the block mean by the factor (the MSI pixel integrates
its footprint), plus noise for the phantom cases. Each method fuses the measurement with the
guide (:func:`msifusion.methods.fuse`, one fixed seed) and is scored against the truth
(:func:`msifusion.metrics.score`). Three groups of cases:

- ``phantom``: synthetic plant sections (:mod:`msifusion.phantom`), several chemistry
  profiles and kinds, several seeds, ×10 and ×20, with the phantom's own noise model
  (:meth:`~msifusion.phantom.Phantom.measure`). The seeds are not the demo's seed 0; the
  development's seeds are listed in docs/benchmarks.md §1 (seed 2 is one of them).
- ``middlebury``: Middlebury 2014 "Motorcycle" from scikit-image (left RGB = guide,
  disparity = truth), ×8 and ×16, the guided super-resolution community's standard
  benchmark (PixTransform, DADA). The disparity is ``+inf`` where no truth exists: those
  pixels form the invalid part of ``mask`` and every score ignores them. The measurement of a
  block is the mean of its *valid* truth pixels; a block with no valid pixel gets the mean of
  its valid neighbouring blocks (repeated until every block is filled), so the measurement
  is finite everywhere, as a real MSI image is. Those few blocks (see run.json) are
  therefore not exactly "measured"; the truth under them is not scored anyway.
- ``prostate``: real MALDI MSI of a prostate section (25 µm) with its H&E, from the MSIght
  package. The ion images *at 25 µm* are the truth; block means ×4 and ×8 (100 and 200 µm)
  are the measurements; the H&E, registered automatically onto the 25 µm grid
  (:func:`msifusion.register.register_auto` on the TIC and the spectra's principal
  components), is the guide, so guide and truth share a shape. Ions: the 3 strongest peaks
  of the mean spectrum, plus the channel nearest m/z 1217.5 when one lies within 0.05 Da
  (the example's own ion of interest). The registration uses the 25 µm tissue images, which a
  user with only the coarse measurement would not have (registered on the ×8 measurement
  instead, the map moved by 5.5 truth pixels at the median, and the two strongest ions' ×8
  scores by at most 0.05 dB). No noise is added: the truth is a measurement
  already (so it holds the instrument's noise, which no method can predict). Scores count
  only the acquired pixels (``mask``: pixels with a spectrum); the measurement is the plain block mean, the zeros outside the acquisition
  included, like the phantom's background. The data come from
  :func:`msifusion.examples.fetch_prostate` (or ``CaseSelection.prostate_dir``, an error if
  it lacks a file); when they cannot be fetched (e.g. no network) the group is skipped with a
  warning, and the rest of the benchmark runs.

Outputs (all in one staged folder, nothing half-written): ``results.csv`` (one row per case
× method), ``results.md`` (summary per method and group, PSNR per case, one table per
case), ``panels/<case>.png`` (optical | measured | bilinear | … | truth, the paper's
Figure 2 c–f, one colour scale from the truth) and ``run.json`` (settings, machine,
versions, cases, timings).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from msifusion.errors import InputError, check_setting_types
from msifusion.runtime import Runtime

GROUPS = ("phantom", "middlebury", "prostate")

# Display / run order after the default method: baselines first, then by family.
PREFERRED_ORDER = ("bilinear", "bicubic", "guided", "bilinear-bp", "guided-bp", "diffusion", "pls",
                   "cnn3", "unet", "lcrn")

PROSTATE_ION_OF_INTEREST = 1217.5  # the MSIght example's ion; included when present
PROSTATE_TOLERANCE = "5ppm"  # centroided data: one channel per peak
PROSTATE_FILES = ("prostate_example.imzML", "prostate_he_example.tif")


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True, eq=False)
class Case:
    """One benchmark case: truth (H, W), guide (H, W, 3) in [0, 1], measured (H/f, W/f).

    ``mask`` (H, W) bool marks the truth pixels that exist (None = all); ``pixel_size_um`` is
    the *fine* (truth) pixel size when known.
    """

    name: str
    group: str
    guide: np.ndarray
    truth: np.ndarray
    factor: int
    measured: np.ndarray
    mask: np.ndarray | None = None
    pixel_size_um: float | None = None
    description: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        H, W = self.truth.shape
        if self.guide.shape != (H, W, 3):
            raise ValueError(f"{self.name}: guide {self.guide.shape} does not match truth {self.truth.shape}")
        if self.measured.shape != (H // self.factor, W // self.factor) or H % self.factor or W % self.factor:
            raise ValueError(f"{self.name}: measured {self.measured.shape} is not truth {self.truth.shape} / {self.factor}")
        if not np.all(np.isfinite(self.measured)):
            raise ValueError(f"{self.name}: measured image holds non-finite values")

    def summary(self) -> dict:
        """What run.json says about the case (no pixels)."""
        return {"name": self.name, "group": self.group, "factor": self.factor,
                "truth_shape": list(self.truth.shape), "measured_shape": list(self.measured.shape),
                "fine_pixel_size_um": self.pixel_size_um,
                "valid_fraction": None if self.mask is None else float(np.mean(self.mask)),
                "description": self.description, **self.info}


def crop_to_multiple(image: np.ndarray, factor: int) -> np.ndarray:
    """Top-left crop of the first two axes to multiples of ``factor``."""
    H, W = image.shape[:2]
    return image[: H - H % factor, : W - W % factor]


def masked_block_mean(values: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, int]:
    """Block mean over the valid pixels only; blocks without one are filled from their neighbours.

    Returns (measured (H/f, W/f) float32, number of filled blocks). Filling: each empty block
    takes the mean of its valid 8-neighbour blocks, repeated until none is empty.
    """
    from scipy.ndimage import convolve

    from msifusion.measurement import block_mean

    valid = np.asarray(valid, dtype=bool)
    if not valid.any():
        raise ValueError("no valid pixel to measure")
    data = np.where(valid, values, 0.0).astype(np.float64)
    valid_share = block_mean(valid.astype(np.float64), factor).astype(np.float64)
    data_mean = block_mean(data, factor).astype(np.float64)
    has = valid_share > 0
    out = np.where(has, data_mean / np.where(has, valid_share, 1), 0.0)
    n_filled = int((~has).sum())
    kernel = np.ones((3, 3))
    while not has.all():
        total = convolve(out * has, kernel, mode="constant")
        n = convolve(has.astype(np.float64), kernel, mode="constant")
        grow = ~has & (n > 0)
        out[grow] = total[grow] / n[grow]
        has = has | grow
    return out.astype(np.float32), n_filled


def phantom_case(kind: str, ion: str, seed: int, factor: int, fine_shape: tuple[int, int] = (320, 800)) -> Case:
    """A synthetic section at 1 µm (``fine_shape`` cut down to multiples of ``factor``), measured
    at ``factor`` µm with the phantom's own noise model."""
    from msifusion.phantom import PhantomConfig, make_phantom

    h, w = fine_shape
    config = PhantomConfig(fine_shape=(h - h % factor, w - w % factor), seed=seed, kind=kind, ion=ion)
    phantom = make_phantom(config)
    truth, guide, measured = phantom.truth, phantom.guide, phantom.measure(factor)
    return Case(f"phantom-{kind}-{ion}-s{seed}-x{factor}", "phantom", guide, truth, factor, measured,
                pixel_size_um=config.fine_pixel_um,
                description=f"synthetic {kind} section, ion {ion}, seed {seed}, {truth.shape[0]}×{truth.shape[1]} µm "
                            f"at {config.fine_pixel_um:g} µm, measured at {factor * config.fine_pixel_um:g} µm "
                            f"with {config.noise:g}·max Gaussian noise clipped at 0",
                info={"phantom": {"kind": kind, "ion": ion, "seed": seed, "noise": config.noise,
                                  "noise_clipped_at_0": config.clip}})


def middlebury_case(factor: int, downscale: int = 1, crop: tuple[int, int, int, int] | None = None) -> Case:
    """Middlebury 2014 Motorcycle: left RGB guide, disparity truth (+inf = no truth → mask).

    ``downscale`` block-averages the RGB and the disparity first (a pixel stays valid only if
    all its parts are); ``crop`` = (row, col, height, width) then cuts a window out of that.
    Last, the image is cut down to multiples of ``factor``. Disparities stay in the full-size
    image's pixel units.
    """
    from skimage.data import stereo_motorcycle

    from msifusion.measurement import block_mean

    left, _, disparity = stereo_motorcycle()
    rgb = left.astype(np.float32) / 255.0
    disparity = np.asarray(disparity, dtype=np.float64)
    valid = np.isfinite(disparity)
    if downscale > 1:
        rgb = crop_to_multiple(rgb, downscale)
        disparity, valid = crop_to_multiple(disparity, downscale), crop_to_multiple(valid, downscale)
        rgb = block_mean(rgb.transpose(2, 0, 1), downscale).transpose(1, 2, 0)
        all_valid = block_mean(valid.astype(np.float32), downscale) == 1  # a fine pixel is valid if all its parts are
        disparity = np.where(all_valid, block_mean(np.where(valid, disparity, 0.0), downscale), np.inf)
        valid = all_valid
    if crop is not None:
        r, c, h, w = crop
        rgb, disparity, valid = (a[r:r + h, c:c + w] for a in (rgb, disparity, valid))
    rgb, disparity, valid = (crop_to_multiple(a, factor) for a in (rgb, disparity, valid))
    if not valid.any():
        raise ValueError(f"crop {crop} holds no pixel with a known disparity")
    measured, filled = masked_block_mean(disparity, valid, factor)
    truth = np.where(valid, disparity, np.inf).astype(np.float32)
    H, W = truth.shape
    return Case(f"middlebury-motorcycle-x{factor}", "middlebury", np.ascontiguousarray(rgb, dtype=np.float32),
                truth, factor, measured, mask=valid,
                description=f"Middlebury 2014 Motorcycle (scikit-image), {H}×{W} px"
                            f"{f' (downscaled ×{downscale})' if downscale > 1 else ''}"
                            f"{f' (crop {crop})' if crop else ''}, disparity truth, "
                            f"{100 * valid.mean():.1f}% valid; measured = masked block mean",
                info={"middlebury": {"downscale": downscale, "crop": crop, "filled_blocks": filled}})


# ----------------------------------------------------------------------------- prostate


class CasesUnavailable(Exception):
    """A group of cases cannot be built here (data missing); the message says why."""


def prostate_files(prostate_dir: Path | None = None) -> tuple[Path, Path]:
    """(imzML, H&E TIFF) of the MSIght prostate example, from ``prostate_dir`` or
    :func:`msifusion.examples.fetch_prostate` (downloads once, then cached). Data that cannot be fetched skip the
    group (:class:`CasesUnavailable`); a ``prostate_dir`` the user named that lacks a file is an InputError."""
    given = prostate_dir is not None
    if prostate_dir is None:
        try:
            from msifusion.examples import fetch_prostate
        except ImportError:
            raise CasesUnavailable("msifusion.examples.fetch_prostate is not available in this build") from None
        try:
            prostate_dir = Path(fetch_prostate())
        except Exception as exc:  # noqa: BLE001 - any failure to fetch only skips the group
            raise CasesUnavailable(f"could not fetch the MSIght prostate example: {exc}") from None
    paths = tuple(Path(prostate_dir) / name for name in PROSTATE_FILES)
    missing = [p.name for p in (*paths, paths[0].with_suffix(".ibd")) if not p.exists()]
    if missing:
        if given:
            raise InputError(prostate_dir, f"lacks {', '.join(missing)} (the MSIght prostate example's files)")
        raise CasesUnavailable(f"{prostate_dir} lacks {', '.join(missing)}")
    return paths  # type: ignore[return-value]


def prostate_ions(imzml) -> list[float]:
    """The 3 strongest peaks of the mean spectrum, then the channel nearest m/z 1217.5 if within 0.05 Da."""
    mzs = [mz for mz, _ in imzml.strongest_peaks(3)]
    axis, mean = imzml.mean_spectrum()
    i = int(np.argmin(np.abs(axis - PROSTATE_ION_OF_INTEREST)))
    near = float(axis[i])
    if abs(near - PROSTATE_ION_OF_INTEREST) <= 0.05 and mean[i] > 0 and all(abs(near - m) > 1e-3 for m in mzs):
        mzs.append(near)
    return mzs


def prostate_cases(factors: Sequence[int], prostate_dir: Path | None = None,
                   strongest: int | None = None) -> tuple[list[Case], dict]:
    """Cases from the real prostate example; raises :class:`CasesUnavailable` when the data are missing.

    The ions: :func:`prostate_ions`, or the ``strongest`` peaks of the mean spectrum.
    """
    from msifusion.io.images import read_optical
    from msifusion.io.imzml import ImzML
    from msifusion.measurement import block_mean
    from msifusion.register import Grid, ResampleOptions, register_auto, resample_optical

    imzml_path, he_path = prostate_files(prostate_dir)
    with ImzML(imzml_path) as f:
        tissue = f.tissue_images()  # TIC and principal components: what register_auto matches
        pixel_um = f.pixel_size_um or 25.0
        mzs = [mz for mz, _ in f.strongest_peaks(strongest)] if strongest else prostate_ions(f)
        stack = f.ion_images(mzs, PROSTATE_TOLERANCE)
    he = read_optical(he_path).pixels
    grid = Grid(stack.images.shape[1:], pixel_um)
    registration = register_auto(he, tissue, grid)
    guide = resample_optical(he, registration.transform, grid, None, ResampleOptions(fill=1.0))  # white slide outside
    guide = np.clip(guide, 0, 1).astype(np.float32)
    crop = math.lcm(*factors)
    guide = crop_to_multiple(guide, crop)
    acquired = crop_to_multiple(stack.acquired, crop)  # pixels with a spectrum
    info = {"imzml": str(imzml_path), "he": str(he_path), "mzs": mzs, "tolerance": PROSTATE_TOLERANCE,
            "registration": {k: getattr(registration, k) for k in ("score", "correlation", "nmi", "metric")
                             if isinstance(getattr(registration, k, None), (int, float))}}
    cases = []
    for mz, image in zip(mzs, stack.images):
        truth = crop_to_multiple(image, crop).astype(np.float32)
        for factor in factors:
            H, W = truth.shape
            cases.append(Case(f"prostate-mz{mz:.4f}-x{factor}", "prostate", guide, truth, factor,
                              block_mean(truth, factor), mask=acquired, pixel_size_um=pixel_um,
                              description=f"prostate MALDI MSI m/z {mz:.4f} ±{PROSTATE_TOLERANCE} at {pixel_um:g} µm "
                                          f"({H}×{W}) as truth, measured at {factor * pixel_um:g} µm; H&E registered "
                                          f"automatically (correlation {registration.correlation:.2f})",
                              info={"prostate": {"mz": mz}}))
    return cases, info


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CaseSelection:
    """Which cases the benchmark builds: the groups, and each group's profiles, seeds, sizes and factors. Phantom
    cases: every profile (kind, ion) × seed × factor. ``prostate_dir``: the example's folder (None: fetched)."""

    groups: tuple[str, ...] = GROUPS
    phantom_profiles: tuple[tuple[str, str], ...] = (("leaf", "apigenin"), ("stem", "sucrose"), ("leaf", "gradient"))
    phantom_seeds: tuple[int, ...] = (1, 2)
    phantom_factors: tuple[int, ...] = (10, 20)
    phantom_shape: tuple[int, int] = (320, 800)
    middlebury_factors: tuple[int, ...] = (8, 16)
    middlebury_downscale: int = 1
    prostate_factors: tuple[int, ...] = (4, 8)
    prostate_dir: Path | None = None

    def __post_init__(self) -> None:
        bad = [g for g in self.groups if g not in GROUPS]
        if bad:
            raise InputError("--groups", f"unknown group(s) {', '.join(bad)}; choose from {', '.join(GROUPS)}")
        if any(f < 2 for f in (*self.phantom_factors, *self.middlebury_factors, *self.prostate_factors)):
            raise InputError("factors", "every factor must be at least 2")


QUICK_CASES = CaseSelection(groups=("phantom", "middlebury"), phantom_profiles=(("leaf", "apigenin"),),
                            phantom_seeds=(1,), phantom_factors=(10,), phantom_shape=(160, 400),
                            middlebury_factors=(8,), middlebury_downscale=2)  # `benchmark --quick`


@dataclass(frozen=True)
class BenchmarkConfig:
    """What the benchmark runs. Use :meth:`preset` for the full and ``--quick`` settings.

    ``methods``: empty = all registered, the default method first. ``cases``: which cases. ``epoch_cap``: the
    maximum epochs of the trained methods (None = each method's own default, e.g. LCRN's 2000 with early stopping).
    ``runtime``: the one seed every method runs with, the device, and whether to print a line per result (its
    ``quiet``; the methods themselves run quietly). ``panels``: write ``panels/<case>.png``.
    """

    quick: bool = False
    methods: tuple[str, ...] = ()
    cases: CaseSelection = CaseSelection()
    epoch_cap: int | None = None
    runtime: Runtime = Runtime()
    panels: bool = True

    def __post_init__(self) -> None:
        from msifusion.runtime import check_device
        from msifusion.methods import check_methods

        check_methods(self.methods, "--methods")
        if self.epoch_cap is not None and self.epoch_cap < 1:
            raise InputError("--epochs", "epoch cap must be at least 1")
        check_device(self.runtime.device)

    @classmethod
    def preset(cls, quick: bool = False, **overrides) -> "BenchmarkConfig":
        """The full benchmark, or with ``quick`` a few-minute version on 2 CPU cores:
        one phantom (160×400, ×10), Middlebury downscaled ×2 at ×8, no prostate, trained
        methods capped at 30 epochs. ``overrides`` replace any field, of this config or of its
        :class:`CaseSelection` (None: not given)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        selection = {k: given.pop(k) for k in list(given) if k in CaseSelection.__dataclass_fields__}
        if "cases" in given and selection:
            raise ValueError(f"give either cases or its fields ({', '.join(selection)}), not both")
        cases = replace(given.pop("cases", QUICK_CASES if quick else CaseSelection()), **selection)
        return cls(**{**(dict(quick=True, epoch_cap=30) if quick else {}), **given, "cases": cases})

    def method_order(self) -> list[str]:
        """The methods to run: as given, or all registered with the default first."""
        from msifusion.methods import DEFAULT_METHOD, METHODS

        if self.methods:
            return list(dict.fromkeys(self.methods))
        first = [DEFAULT_METHOD] if DEFAULT_METHOD in METHODS else []
        known = [m for m in PREFERRED_ORDER if m in METHODS and m not in first]
        return first + known + sorted(m for m in METHODS if m not in first and m not in known)


def build_cases(config: BenchmarkConfig, log=None) -> tuple[list[Case], list[str], dict]:
    """All cases of ``config``; returns (cases, skip messages, extra facts for run.json)."""
    cases: list[Case] = []
    skipped: list[str] = []
    facts: dict = {}
    if "phantom" in config.cases.groups:
        for kind, ion in config.cases.phantom_profiles:
            for seed in config.cases.phantom_seeds:
                for factor in config.cases.phantom_factors:
                    cases.append(phantom_case(kind, ion, seed, factor, config.cases.phantom_shape))
    if "middlebury" in config.cases.groups:
        for factor in config.cases.middlebury_factors:
            cases.append(middlebury_case(factor, config.cases.middlebury_downscale))
    if "prostate" in config.cases.groups:
        try:
            prostate, facts["prostate"] = prostate_cases(config.cases.prostate_factors, config.cases.prostate_dir)
            cases += prostate
        except CasesUnavailable as exc:  # no network: the other groups run (a bad --prostate-dir is an error)
            skipped.append(f"prostate cases skipped: {exc}")
            if log:
                log(skipped[-1])
    return cases, skipped, facts


# ----------------------------------------------------------------------------- running

FIELDS = ("case", "group", "factor", "truth_shape", "method", "psnr", "ssim", "mse", "edge", "consistency",
          "seconds", "epochs", "epoch_cap", "stop_reason", "error")


def run_case(case: Case, method: str, config: BenchmarkConfig) -> tuple[dict, np.ndarray | None]:
    """Fuse one case with one method and score it; returns (row, fused image or None on error)."""
    from msifusion.fit import FitConfig
    from msifusion.methods import METHODS, MethodOptions, fuse
    from msifusion.metrics import score

    trains = METHODS[method].trains
    fit = FitConfig(max_epochs=config.epoch_cap) if (trains and config.epoch_cap) else FitConfig()
    options = MethodOptions(fit, replace(config.runtime, quiet=True))
    row = {"case": case.name, "group": case.group, "factor": case.factor,
           "truth_shape": "×".join(map(str, case.truth.shape)), "method": method,
           "epoch_cap": fit.max_epochs if (trains and config.epoch_cap) else "", "error": ""}
    try:
        result = fuse(case.guide, case.measured, method, options)
        scores = score(result.image, case.truth, case.measured, case.factor, case.guide, case.mask)
    except Exception as exc:  # noqa: BLE001 - one failing method must not end the benchmark
        row.update({k: math.nan for k in ("psnr", "ssim", "mse", "edge", "consistency", "seconds")},
                   epochs=0, stop_reason="", error=f"{type(exc).__name__}: {exc}")
        return row, None
    row.update(asdict(scores), seconds=result.seconds, epochs=result.fit.epochs, stop_reason=result.fit.stop_reason)
    return row, result.image


@dataclass(frozen=True)
class BenchmarkRequest:
    """``msifusion benchmark``: what to run, into which folder. ``cases`` replaces the cases ``config`` describes
    (your own :class:`Case` objects); None builds them."""

    out: Path
    config: BenchmarkConfig = field(default_factory=BenchmarkConfig)  # built on use: it checks the methods (torch)
    overwrite: bool = False
    cases: tuple[Case, ...] | None = None

    def __post_init__(self) -> None:
        check_setting_types(self)  # e.g. (config, out) in the order run_benchmark once took them
        if self.cases is not None:
            object.__setattr__(self, "cases", tuple(self.cases))


def run_benchmark(request: BenchmarkRequest) -> list[dict]:
    """Run every method on every case, write the outputs to ``request.out``; returns the result rows."""
    from msifusion.provenance import OutputRun

    config = request.config
    run = OutputRun(request.out, request.overwrite, {"prostate": config.cases.prostate_dir})
    log = (lambda msg: None) if config.runtime.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    methods = config.method_order()
    skipped: list[str] = []
    facts: dict = {}
    cases: Sequence[Case] | None = request.cases
    if cases is None:  # a skipped group is a warning: said under --quiet too
        cases, skipped, facts = build_cases(config, lambda msg: print(f"msifusion: warning: {msg}", file=sys.stderr))
    if not cases:
        raise InputError("benchmark", "no case to run (" + "; ".join(skipped or ["no group selected"]) + ")")
    build_s = run.seconds()
    rows: list[dict] = []
    case_seconds: dict[str, float] = {}
    with run.staged() as stage:
        if config.panels:
            (stage / "panels").mkdir()
        total = len(cases) * len(methods)
        _warm_up()
        for ci, case in enumerate(cases):
            tc = time.perf_counter()
            fused: dict[str, np.ndarray] = {}
            for mi, method in enumerate(methods):
                row, image = run_case(case, method, config)
                rows.append(row)
                if image is not None:
                    fused[method] = image
                log(_progress_line(ci * len(methods) + mi + 1, total, row))
                write_csv(stage / "results.csv", rows)  # inside the stage: complete or absent
            if config.panels:
                save_case_panel(stage / "panels" / f"{case.name}.png", case, fused, rows[-len(methods):])
            case_seconds[case.name] = time.perf_counter() - tc
        write_csv(stage / "results.csv", rows)
        (stage / "results.md").write_text(results_markdown(rows, config, cases, skipped))
        run.finish(stage, _run_record(config, methods, cases, skipped, facts, run.header("msifusion benchmark")),
                   build_cases=build_s, cases=case_seconds)
    return rows


def _warm_up() -> None:
    """One untimed fusion of a tiny image: the process's first (about a second: lazy imports, the seeding's set-up)
    would otherwise be charged to whichever method runs first."""
    from msifusion.methods import MethodOptions, fuse
    from msifusion.runtime import Runtime

    ion = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    fuse(np.full((16, 16, 3), 0.5, np.float32), ion, "bilinear", MethodOptions(runtime=Runtime(quiet=True)))


def _progress_line(i: int, total: int, row: dict) -> str:
    if row["error"]:
        return f"[{i}/{total}] {row['case']} · {row['method']}: FAILED {row['error']}"
    return (f"[{i}/{total}] {row['case']} · {row['method']}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}, "
            f"consistency {row['consistency']:.1e}, {row['seconds']:.1f} s, {row['epochs']} epochs")


def write_csv(path: Path, rows: Iterable[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def save_case_panel(path: Path, case: Case, fused: dict[str, np.ndarray], rows: Sequence[dict]) -> Path:
    """optical | measured | bilinear | each method | truth, one colour scale (the truth's)."""
    from msifusion.measurement import upsample
    from msifusion.report import save_panel

    scores = {r["method"]: r for r in rows}
    truth = np.where(case.mask, case.truth, np.nan) if case.mask is not None else case.truth
    coarse = case.pixel_size_um * case.factor if case.pixel_size_um else None
    panels = [("optical (guide)", case.guide),
              (f"measured ×{case.factor}" + (f" ({coarse:g} µm)" if coarse else ""), case.measured)]
    if "bilinear" not in fused:
        panels.append(("bilinear", upsample(case.measured, case.factor, "bilinear")))
    ordered = (["bilinear"] if "bilinear" in fused else []) + [m for m in fused if m != "bilinear"]
    for method in ordered:
        r = scores[method]
        panels.append((f"{method}  {r['psnr']:.1f} dB  SSIM {r['ssim']:.3f}", fused[method]))
    panels.append(("truth", truth))
    return save_panel(path, panels, case.pixel_size_um, title=case.name, reference=truth)


# ----------------------------------------------------------------------------- report


def _fmt(value, digits: int = 2) -> str:
    if value == "" or value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return f"{value:.{digits}f}"


def _mean_cell(values: Iterable[float], text: Callable[[float], str]) -> str:
    """A group's mean. Cases a method failed on (NaN) are left out and the cell says over how many it is; a perfect
    case (PSNR +inf) is kept, so the mean says so rather than hiding it."""
    values = list(values)
    ran = [v for v in values if not math.isnan(v)]
    if not ran:
        return "–"
    cell = text(sum(ran) / len(ran))
    return cell if len(ran) == len(values) else f"{cell} ({len(ran)} of {len(values)} cases)"


def results_markdown(rows: Sequence[dict], config: BenchmarkConfig, cases: Sequence[Case],
                     skipped: Sequence[str] = ()) -> str:
    """The tables of results.md: summary per method and group, PSNR per case, one table per case."""
    from msifusion.provenance import machine

    host = machine()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    groups = [g for g in dict.fromkeys(c.group for c in cases)]
    names = [c.name for c in cases]
    by = {(r["case"], r["method"]): r for r in rows}
    lines = [f"# msifusion benchmark{' (quick)' if config.quick else ''}", "",
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {host['processor']}, "
             f"{host['cpu_count']} CPUs, {host['torch_threads']} torch threads; seed {config.runtime.seed}; "
             f"{len(cases)} cases × {len(methods)} methods.", ""]
    if any(r["epoch_cap"] != "" for r in rows):  # a cap that applied to some method run
        lines += [f"**Trained methods capped at {config.epoch_cap} epochs** (quick settings, not their defaults; "
                  "epochs that hit the cap are marked (cap)).", ""]
    lines += [f"- {s}" for s in skipped] + ([""] if skipped else [])
    lines += ["PSNR uses the truth's data range; consistency = mean|blockmean(fused) − measured| / mean|measured| "
              "(0 = quantitative); edge = the paper's edge perceptual loss vs the optical (normalised units).", ""]

    lines += ["## Summary: mean over each group's cases", ""]
    head = ["method"] + [f"{g} PSNR" for g in groups] + [f"{g} SSIM" for g in groups] + ["mean consistency", "total s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        cells = [m] + [_mean_cell((r["psnr"] for r in mine if r["group"] == g), _fmt) for g in groups]
        cells += [_mean_cell((r["ssim"] for r in mine if r["group"] == g), lambda v: _fmt(v, 3)) for g in groups]
        cells += [_mean_cell((r["consistency"] for r in mine), lambda v: f"{v:.1e}"),
                  _fmt(sum(r["seconds"] for r in mine if math.isfinite(r["seconds"])), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["## PSNR (dB) per case", ""]
    lines += ["| method | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_fmt(by[(n, m)]["psnr"]) if (n, m) in by else "" for n in names) + " |")
    lines.append("")

    lines += ["## Per case", ""]
    for case in cases:
        mine = [by[(case.name, m)] for m in methods if (case.name, m) in by]
        best = max((r["psnr"] for r in mine if math.isfinite(r["psnr"])), default=math.nan)
        lines += [f"### {case.name}", "", case.description, "",
                  "| method | PSNR dB | SSIM | edge | consistency | seconds | epochs |", "|---|---|---|---|---|---|---|"]
        for r in mine:
            psnr = _fmt(r["psnr"])
            if r["psnr"] == best:
                psnr = f"**{psnr}**"
            epochs = f"{r['epochs']}" + (" (cap)" if r["epoch_cap"] != "" and r["epochs"] >= r["epoch_cap"] else "")
            if r["error"]:
                lines.append(f"| {r['method']} | failed: {r['error']} | | | | | |")
                continue
            lines.append(f"| {r['method']} | {psnr} | {_fmt(r['ssim'], 3)} | {r['edge']:.3g} | {r['consistency']:.1e} "
                         f"| {_fmt(r['seconds'], 1)} | {epochs} |")
        lines.append("")
    return "\n".join(lines)


def _run_record(config: BenchmarkConfig, methods: list[str], cases: Sequence[Case], skipped: list[str],
                facts: dict, header: dict) -> dict:
    from msifusion.runtime import resolve_device

    return {**header, "settings": asdict(config),
            "device": str(resolve_device(config.runtime.device)), "methods": methods,
            "cases": [c.summary() for c in cases], "skipped": skipped, **facts}
