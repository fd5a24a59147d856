"""``msifusion ions``: ion images from an imzML file, in one pass over its spectra (:func:`extract_ions`).

Kept apart from the commands that register and fuse (:mod:`msifusion.workflows.from_imzml`, which uses its checks and
readers), so that exporting ions loads neither the fusion methods nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from msifusion.errors import InputError, fields_as_paths
from msifusion.runtime import elapsed_bar
from msifusion.io.imzml import (ImzML, IonStack, as_mz_list, check_normalize, find_ibd, parse_tolerance,
                                write_acquired, write_ion_tiffs)
from msifusion.io.units import check_pixel_size, uncalibrated_warning
from msifusion.provenance import OutputRun
from msifusion.report import save_ion_grid


def check_ion_options(request: object, *paths: str) -> None:
    """What can be checked before the imzML is opened (an :class:`IonsRequest` or ``fuse --imzml``'s request): an m/z
    given, the tolerance, the normalisation, a pixel size given. The request's ``paths`` and its m/z are taken as
    :class:`Path` and floats, as Python callers may give them (str, one number)."""
    fields_as_paths(request, *paths)
    object.__setattr__(request, "mzs", tuple(as_mz_list(request.mzs)))
    mzs, tol, normalize = request.mzs, request.tol, request.normalize
    if not mzs:
        raise InputError("--mz", "give at least one m/z")
    parse_tolerance(tol)
    check_normalize(normalize)
    check_pixel_size("--pixel-size", request.pixel_size_um)


@dataclass(frozen=True)
class IonsRequest:
    """``msifusion ions``: the m/z (each within ``tol``) to export from an imzML file into the folder ``out``."""

    imzml: Path
    mzs: tuple[float, ...]
    tol: str
    out: Path
    normalize: str | None = None
    overwrite: bool = False
    quiet: bool = False  # no progress line
    pixel_size_um: float | None = None  # in place of the file's (--pixel-size)

    def __post_init__(self) -> None:
        check_ion_options(self, "imzml", "out")


def checked_stack(f: ImzML, mzs: tuple[float, ...], tol: str, normalize: str | None, quiet: bool) -> IonStack:
    with elapsed_bar(f"reading {len(mzs)} ion image(s) from {f.path.name}", quiet):  # one pass over the .ibd
        stack = f.ion_images(list(mzs), tol, normalize)
    empty = stack.empty_ions()
    if empty:
        raise InputError(f.path, f"no signal anywhere within the window of m/z {', '.join(f'{m:.4f}' for m in empty)} "
                         f"(±{stack.tolerance}); check the m/z or widen --tol (`msifusion peaks "
                         f"{f.path.name}` lists its strongest peaks)")
    return stack


def no_pixel_size_reason(imzml: Path, note: str | None) -> str:
    """Why an imzML file's ion images carry no pixel size: none stated, or the stated one is not used (``note``)."""
    return f"{imzml.name}: {note}" if note else f"{imzml.name} gives none in its scan settings"


def grid_title(what: str, pixel_size_um: float | None, units: str) -> str:
    """An overview's heading: which images (measured or fused), their pixel size and their intensity units."""
    pixels = f", {pixel_size_um:.4g} µm pixels" if pixel_size_um else ", pixel size not known"
    return f"{what} ion images{pixels}\nintensity: {units}"


def extract_ions(request: IonsRequest) -> dict:
    """``msifusion ions``: one TIFF per ion, an OME-TIFF stack and an overview picture."""
    run = OutputRun(request.out, request.overwrite, imzml_files(request.imzml))
    with ImzML(request.imzml, request.pixel_size_um) as f:
        stack = checked_stack(f, request.mzs, request.tol, request.normalize, request.quiet)
        summary = f.summary()
        pixel_note, warnings = f.pixel_size_note, f.warnings
    warnings += stack.window_warnings() + stack.negative_warnings()
    if stack.pixel_size_um is None:
        warnings.append(uncalibrated_warning(no_pixel_size_reason(request.imzml, pixel_note),
                                             "give --pixel-size UM",
                                             ("ion TIFFs", "ions.png")))
    with run.staged() as stage:
        paths = write_ion_tiffs(stack, stage) + write_acquired(stack, stage)
        paths.append(save_ion_grid(stage / "ions.png", stack.images, stack.labels, stack.pixel_size_um,
                                   grid_title("measured", stack.pixel_size_um, stack.units)))
        record = {**run.header(), "imzml": str(request.imzml), "mzs": list(stack.mzs),
                  "tolerance": request.tol, "windows": [list(w) for w in stack.windows],
                  "window_peaks": [p if p is None else list(p) for p in stack.window_peaks],
                  "normalize": request.normalize, "normalize_scale": stack.normalize_scale, "units": stack.units,
                  "pixel_size_um": stack.pixel_size_um, "shape": list(stack.images.shape[1:]), "file": summary,
                  "outputs": [p.name for p in paths] + ["run.json"],
                  "warnings": warnings}
        return run.finish(stage, record)


def imzml_files(path: Path, role: str = "ion") -> dict[str, Path]:
    """An MSI input's files by role: an .imzML with the .ibd beside it (as the reader finds it, its suffix in any case;
    as given, not as a link resolves), else the ion image file as ``role``."""
    path = Path(path)
    if path.suffix.lower() != ".imzml":
        return {role: path}
    try:
        ibd = find_ibd(path)
    except InputError:  # the reader says so, naming the file, once the output folder is checked
        ibd = path.with_suffix(".ibd")
    return {"imzml": path, "ibd": ibd}
