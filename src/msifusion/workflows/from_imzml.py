"""From instrument files to fused ions: the commands that register and fuse MSI data, an imzML file (or, for
``register``, an ion image).

:func:`register_files` (``msifusion register``) and :func:`fuse_imzml` (``msifusion fuse --imzml``: imzML +
microscope image → registered guide → fused ions, in parts where a panel does not fit in memory). Registration itself
is :mod:`msifusion.register.optical`; ``msifusion ions`` is :mod:`msifusion.workflows.ions`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from msifusion.errors import InputError, fields_as_paths
from msifusion.runtime import amount, elapsed_bar, panel_part_size, progress_bar
from msifusion.io.images import check_optical, validate_ion, write_tiff
from msifusion.io.imzml import ImzML, IonStack, fill_gaps, gaps_warning, write_acquired, write_ion_stack
from msifusion.io.landmarks import Landmarks
from msifusion.io.units import check_pixel_size, replaced_pixel_size_warning, uncalibrated_warning
from msifusion.io.outdir import free_bytes
from msifusion.methods import METHODS, bytes_per_fused_pixel, fuse_many
from msifusion.provenance import OutputRun, write_run_json
from msifusion.register.optical import (MsiTissue, RegisterSettings, read_moving_optical, register_optical,
                                         write_registration)
from msifusion.report import save_ion_grid
from msifusion.workflows.fusion import FuseSettings, RegisteredPair, fuse_pair, panel_record, write_fusion_outputs
from msifusion.workflows.ions import check_ion_options, checked_stack, grid_title, imzml_files, no_pixel_size_reason


# ----------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class RegisterRequest:
    optical: Path
    ion: Path  # an ion image file or an .imzML
    out: Path
    settings: RegisterSettings
    overwrite: bool = False
    quiet: bool = False  # no progress bar
    pixel_size_um: float | None = None  # the ion's, in place of its file's (--pixel-size)

    def __post_init__(self) -> None:
        fields_as_paths(self, "optical", "ion", "out")
        check_pixel_size("--pixel-size", self.pixel_size_um)


def _tissue_for(ion_path: Path, automatic: bool, pixel_size_um: float | None) -> MsiTissue:
    """The fixed side from an .imzML (see :meth:`MsiTissue.of`) or from an ion image file; ``pixel_size_um`` in place
    of the file's."""
    if ion_path.suffix.lower() == ".imzml":
        with ImzML(ion_path, pixel_size_um) as f:
            return MsiTissue.of(f, automatic)
    from msifusion.io.images import read_ion

    ion = read_ion(ion_path)
    stated = ion.pixel_size_um
    replaced = replaced_pixel_size_warning(pixel_size_um, stated, ion_path.name)
    return MsiTissue(ion.pixels[None], pixel_size_um if pixel_size_um is not None else stated, ion_path,
                     warnings=(*ion.warnings, *([replaced] if replaced else [])))


def _check_before_reading(optical: Path, settings: RegisterSettings) -> Landmarks | None:
    """The optical file and the landmarks are checked before the MSI file's pass (minutes on a large imzML), so that
    a typo in either costs nothing; returns the landmarks read, which every later step of the run takes."""
    check_optical(optical, settings.optical_scene)
    return settings.read_landmarks()


def register_files(request: RegisterRequest) -> dict:
    """``msifusion register``: the optical resampled onto the ion grid × scale, with a check picture."""
    run = OutputRun(request.out, request.overwrite,
                    {**imzml_files(request.ion), "optical": request.optical, "landmarks": request.settings.landmarks})
    landmarks = _check_before_reading(request.optical, request.settings)
    msi = _tissue_for(Path(request.ion), request.settings.landmarks is None, request.pixel_size_um)
    shape, px = msi.shape, msi.pixel_size_um
    optical = read_moving_optical(request.optical, request.settings, msi, landmarks)
    registered = register_optical(optical, msi, request.settings, request.quiet, landmarks)
    with run.staged() as stage:
        outputs = write_registration(stage, registered, px, request.optical, request.ion)
        record = {**run.header(), "optical": str(request.optical), "ion": str(request.ion),
                  "outputs": outputs + ["run.json"], "register_settings": asdict(request.settings),
                  "registration": registered.info,
                  "warnings": registered.warnings, "ion_shape": list(shape), "ion_pixel_size_um": px,
                  "registered_shape": list(registered.guide.shape[:2]),
                  "registered_pixel_size_um": px / request.settings.scale if px else None}
        return run.finish(stage, record)


@dataclass(frozen=True)
class ImzmlFuseRequest:
    """``msifusion fuse --imzml``: the whole workflow for a list of m/z."""

    imzml: Path
    mzs: tuple[float, ...]
    tol: str
    optical: Path
    out: Path
    register: RegisterSettings
    settings: FuseSettings = FuseSettings()
    normalize: str | None = None
    overwrite: bool = False
    on_warning: Callable[[str], None] | None = None  # told each registration warning before the fusion starts
    pixel_size_um: float | None = None  # the imzML's, in place of what the file states (--pixel-size)

    def __post_init__(self) -> None:
        check_ion_options(self, "imzml", "optical", "out")
        self.settings.options.measurement.check(self.register.scale)  # before minutes of registration


class _FusedPanel:
    """A panel's fused images until its stack is written: held in memory where the panel is fused in one part, else
    (``spill``) written to a scratch file in the output folder as each part finishes, with plain writes (a full disk
    is then an OSError, not the crash a memory-mapped write gives), and read back memory-mapped, page by page."""

    def __init__(self, folder: Path, count: int, shape: tuple[int, int], spill: bool):
        self.path = folder / ".fused-panel.raw" if spill else None
        self.count, self.shape = count, tuple(shape)
        self.images: list[np.ndarray | None] = [None] * count
        self._file = open(self.path, "wb") if spill else None

    def put(self, i: int, image: np.ndarray) -> None:
        if self._file is None:
            self.images[i] = image
            return
        self._file.seek(i * math.prod(self.shape) * 4)
        np.ascontiguousarray(image, dtype=np.float32).tofile(self._file)

    def pages(self) -> Sequence[np.ndarray]:
        """The K images, in order (a read-only memory map of the scratch file when spilled)."""
        if self._file is None:
            return self.images
        self._file.close()
        return np.memmap(self.path, np.float32, "r", shape=(self.count, *self.shape))

    def remove(self) -> None:
        """Remove the scratch file (once nothing reads its pages any more)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _output_space_warning(out: Path, K: int, fused_pixels: int, scratch: int) -> str | None:
    """A warning when the output folder's drive may be too small for the outputs: each ion's fused TIFF and, for a
    panel, the stack of them, uncompressed (zlib saved a third on the prostate example), plus the registered optical
    and a panel's scratch file. Not a refusal: compression may make them fit."""
    need = fused_pixels * 4 * K * (2 if K > 1 else 1) + fused_pixels * 3 + scratch
    free = free_bytes(out)
    if free is None or free >= need:
        return None
    return (f"the outputs may need up to {amount(need)} (uncompressed; zlib usually saves a third) and the output "
            f"folder's drive has {amount(free)} free: a full disk would stop the run as it writes its outputs, "
            "after the fusion, with nothing written")


def _check_scratch_space(out: Path, need: int) -> None:
    """Refuse, before registration, a panel in parts whose scratch file (``need`` bytes) the output folder's drive
    cannot hold: found full after the fusion, minutes would be lost."""
    free = free_bytes(out)
    if free is not None and free < need:
        raise InputError(out, f"this panel is fused in parts, its fused images kept in a scratch file of about "
                              f"{amount(need)} beside the outputs, but the drive has {amount(free)} free; "
                              "free some space, or fuse fewer m/z at a time")


def _panel_warnings(request: ImzmlFuseRequest, stack: IonStack, parts: int, per_part: int, scratch: int) -> list[str]:
    """What the user should know about a panel before its fusion: that it is fused in ``parts`` (its images kept in
    a ``scratch`` file of that many bytes), and that the output drive may be too small."""
    K, scale = len(stack.mzs), request.register.scale
    h, w = stack.images.shape[1:]
    warnings = []
    if scratch:
        shared = ("; a shared basis is sought within each part only" if METHODS[request.settings.method].run_many
                  and not request.settings.saves_checkpoints else "")
        warnings.append(f"{K} ions fused ×{scale} ({h * scale}×{w * scale} each) do not fit in this machine's memory "
                        f"together: fused in {parts} parts of at most {per_part} ion{'s' if per_part > 1 else ''}, "
                        f"each image kept in a scratch file in the output folder (about {amount(scratch)} of "
                        f"disk) until the stack is written{shared}")
    space = _output_space_warning(request.out, K, h * scale * w * scale, scratch)
    return warnings + ([space] if space else [])


def _write_panel(stage: Path, stack: IonStack, fused: _FusedPanel, scale: int, method: str, quiet: bool) -> None:
    """A panel's own outputs beside its ions' folders: the fused and measured stacks (OME-TIFF) and their overviews;
    then the scratch file, if any, is removed."""
    px = stack.pixel_size_um / scale if stack.pixel_size_um else None
    pages = fused.pages()
    with elapsed_bar(f"writing the panel's stacks and overviews ({len(stack.mzs)} ions)", quiet):
        write_tiff(stage / "fused.ome.tiff", pages, px, stack.labels)
        write_ion_stack(stack, stage / "ions.ome.tiff")
        save_ion_grid(stage / "ions.png", stack.images, stack.labels, stack.pixel_size_um,
                      grid_title("measured", stack.pixel_size_um, stack.units))
        save_ion_grid(stage / "fused.png", pages, stack.labels, px,
                      grid_title(f"fused ×{scale} ({method})", px, stack.units))
    del pages  # the memory map, before its file goes
    fused.remove()


def fuse_imzml(request: ImzmlFuseRequest) -> dict:
    """Ion images in one pass, registration (landmarks or automatic), one fusion per ion.

    One ion: the fusion outputs in ``out``; several: ``out/mz_<m/z>/`` per ion plus a fused
    OME-TIFF stack ``out/fused.ome.tiff`` and overviews of the measured and fused ions (``ions.png``,
    ``fused.png``). Always ``out/optical_registered.tiff``.
    """
    roles = {**imzml_files(request.imzml), "optical": request.optical, "landmarks": request.register.landmarks}
    run = OutputRun(request.out, request.overwrite, roles)
    landmarks = _check_before_reading(request.optical, request.register)
    quiet = request.settings.options.runtime.quiet
    with ImzML(request.imzml, request.pixel_size_um) as f:
        f.check_mzs(request.mzs, request.tol)  # before the passes over the spectra that follow
        msi = MsiTissue.of(f, automatic=request.register.landmarks is None)  # it refuses non-square pixels
        stack = checked_stack(f, request.mzs, request.tol, request.normalize, quiet)
        for image, label in zip(stack.images, stack.labels):  # what fusing would refuse, refused before registration
            validate_ion(image, f.path, f"the ion image of {label}")
        pixel_note, file_summary = f.pixel_size_note, f.summary()
    K, scale = len(stack.mzs), request.register.scale
    method = request.settings.method  # its memory checked before minutes of registration
    per_part = panel_part_size(stack.images.shape[1:], scale, K,
                               bytes_per_fused_pixel(method, request.settings.options.runtime.device), method)
    parts = -(-K // per_part)
    h, w = stack.images.shape[1:]
    scratch = K * h * scale * w * scale * 4 if parts > 1 else 0  # bytes of the parts' scratch file
    if scratch:
        _check_scratch_space(request.out, scratch)
    optical = read_moving_optical(request.optical, request.register, msi, landmarks)
    registered = register_optical(optical, msi, request.register, quiet, landmarks)
    to_fuse, gaps = fill_gaps(stack.images, stack.acquired)
    registered.warnings += [*stack.window_warnings(), *stack.negative_warnings(),
                            *([gaps_warning(request.imzml.name, gaps)] if gaps.any() else []),
                            *_panel_warnings(request, stack, parts, per_part, scratch),
                            *([uncalibrated_warning(no_pixel_size_reason(request.imzml, pixel_note),
                                                    "give --pixel-size UM")] if stack.pixel_size_um is None else [])]
    if request.on_warning:
        for warning in registered.warnings:
            request.on_warning(warning)
    load_s = run.seconds()
    with run.staged() as stage:
        registration_outputs = write_registration(stage, registered, stack.pixel_size_um, request.optical,
                                                  request.imzml)
        acquired = [path.name for path in write_acquired(stack, stage)]
        common = {"imzml": str(request.imzml), "file": file_summary, "optical": str(request.optical),
                  "input_files": run.input_files, "register_settings": asdict(request.register),
                  "tolerance": request.tol, "normalize": request.normalize, "normalize_scale": stack.normalize_scale,
                  "units": stack.units, "registration": registered.info, "warnings": registered.warnings}
        records = []
        pairs = [RegisteredPair(registered.guide, image, scale, stack.pixel_size_um, label, gaps_filled=int(gaps.sum()))
                 for image, label in zip(to_fuse, stack.labels)]
        folders = [stage if K == 1 else stage / f"mz_{name}" for name in stack.names]
        for folder in folders:
            folder.mkdir(exist_ok=True)
        fused = _FusedPanel(stage, K, registered.guide.shape[:2], spill=parts > 1) if K > 1 else None
        fuse_s = 0.0
        for p in range(parts):
            part = range(K * p // parts, K * (p + 1) // parts)  # sizes differ by one at most
            if request.settings.saves_checkpoints:  # a fit per ion anyway; each writes into its own folder
                results = [fuse_pair(pairs[i], request.settings, folders[i] / "checkpoints") for i in part]
            else:  # shared work
                results = fuse_many(registered.guide, to_fuse[part.start:part.stop], request.settings.method,
                                    request.settings.options)
            with progress_bar(len(part), "writing each ion's outputs", "ion", quiet) as writing:
                for i, result in zip(part, results):
                    write_tiff(folders[i] / "ion.tiff", stack.images[i], stack.pixel_size_um, [stack.labels[i]])
                    per_ion = dict(common, mz=stack.mzs[i], window=list(stack.windows[i]),
                                   window_peaks=None if stack.window_peaks[i] is None else list(stack.window_peaks[i]))
                    if parts > 1:
                        per_ion["panel_part"] = f"{p + 1} of {parts}"
                    records.append(write_fusion_outputs(folders[i], pairs[i], result, request.settings, per_ion,
                                                        compare=K == 1))
                    if K > 1:  # one ion's record is the run's, written with the run's timings at the end
                        write_run_json(folders[i], records[-1])
                    fuse_s += result.seconds
                    if fused is not None:
                        fused.put(i, result.image)
                    writing.update()
            results = result = None  # a part's images are views of one array: all must go for it to be freed
        if K > 1:
            _write_panel(stage, stack, fused, scale, request.settings.method, quiet)
            summary = panel_record(records, stack.names, registered.warnings)
            summary.update(mzs=list(stack.mzs), outputs=[*registration_outputs, "fused.ome.tiff", "ions.ome.tiff",
                                                         "ions.png", "fused.png", *acquired,
                                                         *(f"mz_{n}/" for n in stack.names), "run.json"],
                           panel_parts=parts)
            return run.finish(stage, summary, load_and_register=load_s, fuse_panel=fuse_s)
        return run.finish(stage, records[0], load_and_register=load_s)
