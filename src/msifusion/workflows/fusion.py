"""From files to a finished output folder: load, check, fuse, write, record.

Used by the CLI and usable from Python. Every check on the inputs runs before any work, and
everything is written into a staging folder that becomes ``out`` only on success.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from msifusion.errors import InputError, check_setting_types
from msifusion.fit import CheckpointFn
from msifusion.runtime import check_device, check_fused_size, resolve_device
from msifusion.io.images import Image, read_ion, read_optical, write_tiff
from msifusion.io.imzml import (ACQUIRED_FILE, acquisition_gaps, fill_gaps, gaps_warning, zero_line_pixels,
                                zero_lines, zero_lines_warning)
from msifusion.io.outdir import enclosing_run, unchanged_outputs
from msifusion.io.tiff import file_title
from msifusion.io.units import (check_pixel_size, coarse_optical_warning, replaced_pixel_size_warning,
                                uncalibrated_warning)
from msifusion.methods import (DEFAULT_METHOD, METHODS, SPOT_DIP_WARNING, FusionResult, MethodOptions, check_methods,
                               check_scale, fuse, infer_scale, spot_dip_note)
from msifusion.provenance import OutputRun, run_header
from msifusion.report import detail_window, save_ion_png, save_loss_plot, save_panel, write_loss_csv


@dataclass(frozen=True)
class FuseSettings:
    """What a fusing command runs: the method, and the options it takes (training recipe, seed/device/progress, the
    default's settings, the measurement model). The library's ``fuse(guide, ion, settings.method, settings.options)``
    takes them apart."""

    method: str = DEFAULT_METHOD
    options: MethodOptions = MethodOptions()

    def __post_init__(self) -> None:
        check_setting_types(self)
        check_methods([self.method])
        check_device(self.options.runtime.device)

    @property
    def saves_checkpoints(self) -> bool:
        """Whether a fit's output is saved every ``options.fit.checkpoint_every`` epochs: asked for, and a method that
        fits."""
        return bool(self.options.fit.checkpoint_every) and METHODS[self.method].trains


@dataclass
class RegisteredPair:
    """An optical guide on the ion grid × scale, with the calibration of both."""

    guide: np.ndarray
    ion: np.ndarray
    scale: int
    ion_pixel_size_um: float | None
    ion_name: str = "ion"
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    gaps_filled: int = 0  # pixels without a spectrum given their neighbours' mean (msifusion.io.imzml.fill_gaps)

    @property
    def fused_pixel_size_um(self) -> float | None:
        return self.ion_pixel_size_um / self.scale if self.ion_pixel_size_um else None


ASPECT_TOLERANCE = 0.02  # how far --scale may stretch an optical's aspect ratio onto the ion's


def _turned_hint(optical_shape: tuple[int, int], ion_shape: tuple[int, int]) -> str:
    """A hint, or '', for an optical whose aspect ratio is the ion's with rows and columns swapped (a microscope image
    saved turned by 90°, or transposed), where it is not the ion's as it stands."""
    (H, W), (h, w) = optical_shape, ion_shape
    as_is, swapped = abs(H * w / (W * h) - 1), abs(W * w / (H * h) - 1)
    if swapped <= ASPECT_TOLERANCE < as_is:
        return "it has the ion's aspect ratio with rows and columns swapped: turn it by 90° or transpose it first"
    return ""


def pair_images(optical: Image, ion: Image, scale: int | None = None, ion_pixel_size_um: float | None = None) -> RegisteredPair:
    """Check that the optical is registered to the ion grid, resizing it to ``scale`` when asked.

    Without ``scale`` the optical shape must be the ion shape times one integer ≥ 2. With it,
    an optical of the ion's aspect ratio (within :data:`ASPECT_TOLERANCE`) is resized to ion × scale. An
    optical with fewer pixels than the ion on both sides is refused: the two files were most likely given
    the wrong way round.
    """
    (H, W), (h, w) = optical.shape2d, ion.shape2d
    src = optical.path
    notes: list[str] = []
    guide = optical.pixels
    if H < h and W < w:
        raise InputError(src, f"optical {H}×{W} has fewer pixels than ion {h}×{w}; the microscope image must be the "
                         "finer one (are --optical and --ion the wrong way round?)")
    if scale is None:
        try:
            scale = infer_scale((H, W), (h, w))
        except ValueError as exc:
            turned = _turned_hint((H, W), (h, w))
            off = abs(H * w / (W * h) - 1)
            resize = (", or pass --scale N to resize it" if off <= ASPECT_TOLERANCE else
                      f" (resizing would stretch it: its aspect ratio is {off:.1%} off the ion's)")
            raise InputError(src, f"{exc}; {turned + '; else ' if turned else ''}register it to the ion grid"
                                  f"{resize}") from None
        if scale < 2:
            raise InputError(src, f"optical {H}×{W} has the ion image's shape; it must be the ion shape × an integer "
                             f"≥ 2 (e.g. {2 * h}×{2 * w}): the microscope image registered to the ion grid at the "
                             "fused resolution")
    else:
        check_scale(scale)
        check_fused_size((h, w), scale)
        if (H, W) != (h * scale, w * scale):
            off = abs(H * w / (W * h) - 1)
            if off > ASPECT_TOLERANCE:
                raise InputError(src, f"optical {H}×{W} does not have the aspect ratio of ion {h}×{w} "
                                 f"({off:.1%} off; resizing would stretch it): " + (_turned_hint((H, W), (h, w)) or
                                 "it is not registered to the ion grid (use `msifusion register`)"))
            guide = _resize(guide, (h * scale, w * scale))
            notes.append(f"optical resized from {H}×{W} to {h * scale}×{w * scale}")
    warnings = [*optical.warnings, *ion.warnings]
    if scale is not None and H % h == 0 and H // h > scale and (H // h) * w == W:
        k = H // h  # registered finer: a mistyped --scale throws its detail away (a coarser one: warned below)
        warnings.append(f"{src.name if src else 'the optical'} is already the ion grid ×{k} ({H}×{W}); resized to "
                        f"×{scale} ({h * scale}×{w * scale}) as --scale asks: drop --scale to fuse at ×{k}")
    pixel_size = ion_pixel_size_um or ion.pixel_size_um
    if ion_pixel_size_um:
        notes.append("ion pixel size as given (--pixel-size)")
        replaced = replaced_pixel_size_warning(ion_pixel_size_um, ion.pixel_size_um,
                                               ion.path.name if ion.path else "the ion image")
        warnings += [replaced] if replaced else []
    if pixel_size is None and optical.pixel_size_um:
        pixel_size = optical.pixel_size_um * H / h
        notes.append("ion pixel size taken from the optical's calibration")
    elif pixel_size and optical.pixel_size_um:
        implied = optical.pixel_size_um * H / h  # the ion pixel the optical's calibration implies
        if not 1 / PAIRED_CALIBRATION <= pixel_size / implied <= PAIRED_CALIBRATION:
            source = "--pixel-size" if ion_pixel_size_um else f"the calibration of {ion.path.name if ion.path else 'the ion'}"
            warnings.append(f"{source} ({pixel_size:.3g} µm per ion pixel) disagrees with the optical's calibration "
                            f"({optical.pixel_size_um:.3g} µm per optical pixel, i.e. {implied:.3g} µm per ion pixel) "
                            f"by {max(pixel_size / implied, implied / pixel_size):.1f}×; the outputs use "
                            f"{pixel_size:.3g} µm per ion pixel")
    coarse = coarse_optical_warning(h / H, scale, pixel_size)
    warnings += [coarse] if coarse else []
    name = ion.name or (file_title(ion.path) if ion.path else "ion")  # an OME channel name (m/z …) before the file's
    return RegisteredPair(guide, ion.pixels, scale, pixel_size, name, notes, warnings)


def _resize(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    shrink = shape[0] < rgb.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(rgb, (shape[1], shape[0]), interpolation=interp)


def fuse_pair(pair: RegisteredPair, settings: FuseSettings, checkpoints: Path | None = None) -> FusionResult:
    """One registered pair; a fitted method saves its output every ``checkpoint_every`` epochs into
    ``checkpoints`` (in ion units, calibrated) when both are given."""
    options = settings.options
    if checkpoints is not None and settings.saves_checkpoints:
        options = replace(options, on_checkpoint=checkpoint_writer(checkpoints, float(np.max(np.abs(pair.ion))),
                                                                   pair.fused_pixel_size_um, pair.ion_name))
    return fuse(pair.guide, pair.ion, settings.method, options)


PAIRED_CALIBRATION = 1.25  # an optical registered to the ion grid: its calibration × scale is the ion's pixel size


def checkpoint_writer(folder: Path, intensity_scale: float, pixel_size_um: float | None,
                      ion_name: str = "ion") -> CheckpointFn:
    """A callback that saves the network's output every N epochs as PNG + TIFF (ion units; the TIFF's channel named
    after the ion and the epoch); the folder is made at the first save, so a run that stops before it leaves none."""

    def write(epoch: int, image: np.ndarray) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        image = image * intensity_scale
        write_tiff(folder / f"epoch_{epoch:04d}.tiff", image, pixel_size_um, [f"{ion_name}, epoch {epoch}"])
        save_ion_png(folder / f"epoch_{epoch:04d}.png", image, pixel_size_um, title=f"epoch {epoch}")

    return write


def write_fusion_outputs(folder: Path, pair: RegisteredPair, result: FusionResult, settings: FuseSettings,
                         extra: dict | None = None, compare: bool = False) -> dict:
    """fused.tiff, fused.png, with ``compare`` compare.png (optical | measured | fused: a lone ion's; a panel has its
    overviews) and losses.csv/png (network methods); returns the folder's run.json record, for the caller to complete
    and write (:meth:`msifusion.provenance.OutputRun.finish`, or :func:`msifusion.provenance.write_run_json`)."""
    start = time.perf_counter()
    px = pair.fused_pixel_size_um
    write_tiff(folder / "fused.tiff", result.image, px, [pair.ion_name])
    units = (extra or {}).get("units", "ion intensity")
    save_ion_png(folder / "fused.png", result.image, px, title=f"{pair.ion_name} · {result.method} ×{result.scale}",
                 units=units)
    if compare:
        ion_px = f", {pair.ion_pixel_size_um:.3g} µm" if pair.ion_pixel_size_um else ""
        fused_px = f", {px:.3g} µm" if px else ""
        detail = detail_window(pair.ion, result.scale)
        title = pair.ion_name + (", and below a window of it at full resolution (outlined above)" if detail else "")
        filled = f", {pair.gaps_filled} gap{'s' if pair.gaps_filled > 1 else ''} filled" if pair.gaps_filled else ""
        panels = [("optical, registered", pair.guide), (f"measured{ion_px}{filled}", pair.ion),
                  (f"fused ×{result.scale} ({result.method}{fused_px})", result.image)]
        save_panel(folder / "compare.png", panels,
                   px, title=title, reference=pair.ion, units=units, detail=detail,  # the measurement's scale
                   detail_titles=("optical, detail", "measured, detail", f"fused ×{result.scale}, detail"))
    if result.fit.history:
        write_loss_csv(folder / "losses.csv", result.fit.history)
        save_loss_plot(folder / "losses.png", result.fit.history, title=f"{result.method}: {result.fit.stop_reason}")
    record = run_record(pair, result, settings, extra)
    record["timings_s"]["write"] = time.perf_counter() - start
    return record


def run_record(pair: RegisteredPair, result: FusionResult, settings: FuseSettings, extra: dict | None = None) -> dict:
    trains = METHODS[result.method].trains
    options = settings.options
    device = resolve_device(options.runtime.device) if METHODS[result.method].runs_on_device else "cpu"
    record = {
        **run_header(),
        "method": result.method,
        "method_summary": METHODS[result.method].summary,
        "scale": result.scale,
        "ion_name": pair.ion_name,
        "ion_shape": list(pair.ion.shape),
        "gaps_filled": pair.gaps_filled,
        "fused_shape": list(result.image.shape),
        "ion_pixel_size_um": pair.ion_pixel_size_um,
        "fused_pixel_size_um": pair.fused_pixel_size_um,
        "units": "the ion image's own intensity units",
        "intensity_scale": result.intensity_scale,
        "seed": options.runtime.seed,
        "device": str(device),
        "fit_settings": METHODS[result.method].fit_settings(options.fit),
        "bf16_autocast": options.runtime.bf16_on(device) if trains else None,
        "harmonic_settings": asdict(options.harmonic) if result.method == "guided-harmonic" else None,
        "epochs": result.fit.epochs,
        "stop_reason": result.fit.stop_reason,
        "method_details": result.fit.details or None,
        "measurement_model": options.measurement.describe(result.scale, pair.fused_pixel_size_um),
        "consistency_error": result.consistency_error,
        "timings_s": {("fuse_share_of_panel" if result.panel_share else "fuse"): result.seconds},
        "notes": pair.notes,
    }
    if extra:
        record.update(extra)
    record["warnings"] = [*record.get("warnings", []), *pair.warnings,
                          *(f"{pair.ion_name}: {warning}" for warning in result.warnings)]
    every = options.fit.checkpoint_every
    if settings.saves_checkpoints and result.fit.epochs < every:
        record["warnings"].append(f"no checkpoint written: the fit stopped at epoch {result.fit.epochs}, before the "
                                  f"first checkpoint (--checkpoint-every {every})")
    return record


PER_ION_KEYS = ("ion_name", "mz", "window", "window_peaks", "panel_part", "intensity_scale", "epochs", "stop_reason",
                "method_details", "consistency_error", "timings_s", "warnings")


def panel_record(records: Sequence[dict], names: Sequence[str], shared_warnings: Sequence[str]) -> dict:
    """The run.json of a panel of ions: the settings, versions and machine all ions share, once, and
    per ion (by folder name) what differs (its ``timings_s``: in a panel fused together, its share of the panel's
    fusion, labelled so by :func:`run_record`); the panel's own timings are the caller's to add."""
    summary = {k: v for k, v in records[0].items() if k not in PER_ION_KEYS}
    summary["ions"] = {n: {k: r[k] for k in PER_ION_KEYS if k in r} for n, r in zip(names, records)}
    per_ion = [w for r in records for w in r["warnings"]]
    spot = summary.get("measurement_model", {}).get("spot_sigma_px", 0)
    note = spot_dip_note(spot) if spot else None
    dipped = [n for n, r in zip(names, records) if note and any(w.endswith(note) for w in r["warnings"])]
    if len(dipped) > 1:  # one line for the panel, not one per ion; each ion's own stays under "ions"
        listed = ", ".join(dipped[:5]) + (", …" if len(dipped) > 5 else "")
        per_ion = [w for w in per_ion if not w.endswith(note)]
        per_ion.append(f"the {summary['method']} outputs for {len(dipped)} of {len(records)} ions ({listed}) have "
                       f"wrong-signed values beyond {SPOT_DIP_WARNING:.0%} of their peak (each ion's under \"ions\" "
                       f"in run.json): {note}")
    summary["warnings"] = list(dict.fromkeys([*shared_warnings, *per_ion]))
    return summary


@dataclass(frozen=True)
class FuseFilesRequest:
    """``msifusion fuse --optical --ion``: files in, one output folder out."""

    optical: Path
    ion: Path
    out: Path
    settings: FuseSettings = FuseSettings()
    scale: int | None = None
    ion_pixel_size_um: float | None = None
    overwrite: bool = False
    fill_zero_lines: bool = False  # lines of zeros between non-zero ones taken for pixels without a spectrum

    def __post_init__(self) -> None:
        check_scale(self.scale)
        check_pixel_size("--pixel-size", self.ion_pixel_size_um)


def _acquired_beside(ion: Image) -> tuple[Path | None, np.ndarray | None, str | None]:
    """The ``acquired.tiff`` of the msifusion run (``ions``, ``fuse --imzml``) that wrote an ion TIFF, lying beside it
    (a panel's one folder up): its path, its mask where it can be used (it and the ion TIFF unchanged, of one shape;
    None where it has no gaps: the ion's zeros are measured), and why not where it marks gaps but cannot be used (or
    cannot be read). No path where there is none, or one without gaps that is not the ion TIFF's (it tells nothing)."""
    import tifffile

    folder = Path(ion.path).resolve().parent if ion.path is not None else None
    panel = enclosing_run(folder) if folder is not None else None  # a panel's mz_<m/z>/ folder: the panel's file
    beside = next((f / ACQUIRED_FILE for f in (folder, panel) if f is not None and (f / ACQUIRED_FILE).is_file()), None)
    if beside is None:
        return None, None, None
    try:
        acquired = np.asarray(tifffile.imread(beside)) > 0
    except Exception as exc:  # a damaged file: tifffile and its codecs raise many kinds
        return beside, None, f"it cannot be read: {exc}"
    gaps = acquired.ndim == 2 and bool(acquisition_gaps(acquired).any())
    ours = acquired.shape == ion.pixels.shape and unchanged_outputs(ion.path, beside)
    if ours:
        return beside, acquired if gaps else None, None
    if not gaps and acquired.ndim == 2:
        return None, None, None
    if acquired.shape != ion.pixels.shape:
        return beside, None, (f"it is {'×'.join(map(str, acquired.shape))}, the ion image "
                              f"{'×'.join(map(str, ion.pixels.shape))}")
    return beside, None, "it or the ion TIFF changed since the msifusion run that wrote them, or no run.json lists them"


def _gaps_filled(ion: Image, fill_zero_lines: bool = False) -> tuple[Image, np.ndarray, list[str]]:
    """The ion image with its pixels without a spectrum between acquired ones filled (:func:`fill_gaps`) where they
    are known: from its run's ``acquired.tiff`` beside it (:func:`_acquired_beside`), or, with ``fill_zero_lines`` and
    no such file to use, its lines of zeros where they cross non-zero pixels (:func:`zero_line_pixels`: a raster's
    skipped lines); those gaps; and what to tell the user (an ``acquired.tiff`` not used and why, lines of zeros
    found or filled)."""
    none = np.zeros(ion.pixels.shape, bool)
    name = Path(ion.path).name if ion.path is not None else "the ion image"
    beside, acquired, why = _acquired_beside(ion)
    if beside is not None and why is None:  # the run's own: it tells which pixels have a spectrum
        told = (["--fill-zero-lines was not used: the acquired.tiff beside the ion image tells which pixels have a "
                 "spectrum"] if fill_zero_lines else [])
        if acquired is None:
            return ion, none, told
        filled, gaps = fill_gaps(ion.pixels, acquired)
        return replace(ion, pixels=filled), gaps, [gaps_warning(name, gaps), *told]
    rows, columns = zero_lines(ion.pixels)
    lines = bool(len(rows) or len(columns))
    unused = []
    if why is not None:  # said with what becomes of the gaps it marks, where no filled lines say it
        then = "" if lines and fill_zero_lines else (": the pixels without a spectrum between acquired ones that it "
                                                      "marks are fused as measured zeros")
        unused = [f"{beside} was not used ({why}){then}"]
    if not lines:
        return ion, none, unused
    if not fill_zero_lines:
        return ion, none, [*unused, zero_lines_warning(name, rows, columns)]
    filled, gaps = fill_gaps(ion.pixels, ~zero_line_pixels(ion.pixels, rows, columns))
    return replace(ion, pixels=filled), gaps, [*unused, zero_lines_warning(name, rows, columns, int(gaps.sum()))]


def fuse_files(request: FuseFilesRequest) -> dict:
    """Run one fusion from files to ``request.out``; returns the run record."""
    run = OutputRun(request.out, request.overwrite, {"optical": request.optical, "ion": request.ion})
    optical, ion = read_optical(request.optical), read_ion(request.ion)
    ion, gaps, told = _gaps_filled(ion, request.fill_zero_lines)
    pair = replace(pair_images(optical, ion, request.scale, request.ion_pixel_size_um), gaps_filled=int(gaps.sum()))
    load_s = run.seconds()
    with run.staged() as stage:
        result = fuse_pair(pair, request.settings, stage / "checkpoints")
        given = {"inputs": {"optical": str(request.optical), "optical_shape": list(optical.pixels.shape),
                            "optical_pixel_size_um": optical.pixel_size_um, "ion": str(request.ion)},
                 "input_files": run.input_files}
        record = write_fusion_outputs(stage, pair, result, request.settings, given, compare=True)
        record["warnings"][:0] = told
        if pair.ion_pixel_size_um is None:
            ignored = [f"{im.path.name}'s was ignored: {im.calibration_note}" for im in (ion, optical)
                       if im.calibration_note]
            why = ("neither image has a usable calibration; " + "; ".join(ignored) if ignored else
                   "neither the ion image nor the optical is calibrated")
            record["warnings"].append(uncalibrated_warning(f"{pair.ion_name}: {why}", "give --pixel-size UM"))
        return run.finish(stage, record, load=load_s)
