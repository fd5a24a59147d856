"""Pixel sizes in µm: the length units a file may state a calibration in (OME, ImageJ, TIFF resolution tags, a
table's coordinate columns), the range of pixel sizes that are plausibly in µm, and when an optical is too coarse
for the fused grid."""

from __future__ import annotations

import math

from msifusion.errors import InputError

PLAUSIBLE_PIXEL_UM = (1e-3, 1e5)  # 1 nm to 10 cm: a pixel size outside is not in µm (e.g. metres typed as µm)
COARSE_OPTICAL = 1.5  # an optical pixel this many fused pixels wide: the fused grid is finer than the optical
SQUARE_REL_TOL = 1e-2  # X and Y pixel sizes closer than this (relative) are one size (scanners round their MPP)


# OME's length units that occur in microscopy, ImageJ's spellings of them, and the inch. Not "A": ImageJ turns a
# typed "A" into "Å" before saving, and elsewhere it could be anything.
_UNITS_UM = {"pm": 1e-6, "Å": 1e-4, "angstrom": 1e-4, "angstroms": 1e-4, "nm": 1e-3,
             "µm": 1.0, "um": 1.0, "\\u00B5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
             "micrometers": 1.0, "micrometre": 1.0, "micrometres": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6,
             "in": 25400.0, "inch": 25400.0, "inches": 25400.0}


def _unit_to_um(unit: str) -> float | None:
    """µm per ``unit`` (pm, Å, nm, µm and its spellings, mm, cm, m, inch); None for anything else."""
    unit = unit.strip().replace("μ", "µ").replace("\u212b", "Å")  # Greek mu, Angstrom sign
    if len(unit) > 2 and unit.isalpha():  # a spelled-out name ("Microns", "Ångström"); "Mm" is not "mm"
        unit = unit.lower().replace("ångström", "angstrom")
    return _UNITS_UM.get(unit)


def is_square(width: float, height: float) -> bool:
    """Whether a pixel's stated width and height are one size (within :data:`SQUARE_REL_TOL`)."""
    return math.isclose(width, height, rel_tol=SQUARE_REL_TOL)


def unusable_pixel_size(width: float, height: float | None) -> str | None:
    """Why a pixel size (µm) that a file states is not used, None when it is: a width and height that differ by more
    than :data:`SQUARE_REL_TOL` (every step downstream models square pixels), or a size outside
    :data:`PLAUSIBLE_PIXEL_UM` (such metadata is wrong). The same rule for TIFFs and imzML files."""
    if height is not None and not is_square(width, height):
        return f"its pixels are not square ({width:.4g} × {height:.4g} µm) and msifusion models square pixels"
    lo, hi = PLAUSIBLE_PIXEL_UM
    if not lo <= width <= hi:
        return f"its pixel size {width:.3g} µm is implausible (not between {lo:g} and {hi:g} µm)"
    return None


def check_pixel_size(option: str, size: float | None) -> None:
    """A pixel size option in µm: None (unknown) or a positive number within :data:`PLAUSIBLE_PIXEL_UM`."""
    if size is None:
        return
    if not (math.isfinite(size) and size > 0):
        raise InputError(option, f"pixel size must be a positive number, got {size:g}")
    lo, hi = PLAUSIBLE_PIXEL_UM
    if not lo <= size <= hi:
        raise InputError(option, f"pixel size {size:g} µm is outside {lo:g}–{hi:g} µm; give it in micrometres "
                                 "(10 µm is 10, not 10e-6)")


def replaced_pixel_size_warning(given: float | None, stated: float | tuple[float, float] | None,
                                name: str) -> str | None:
    """The warning for ``--pixel-size`` (``given``) used in place of the (x, y) pixel size file ``name`` states (one
    number: square pixels); None where none is given or stated, or where it agrees within 1 % on both axes."""
    stated = (float(stated),) * 2 if stated is not None and not isinstance(stated, (tuple, list)) else stated
    if given is None or stated is None or all(math.isclose(given, v, rel_tol=0.01) for v in stated):
        return None
    x, y = stated
    return (f"--pixel-size {given:g} µm is used in place of the {x:g}{'' if x == y else f' × {y:g}'} µm {name} "
            "states")


def uncalibrated_warning(why: str, remedy: str, outputs: tuple[str, str] = ("fused TIFFs", "fused.png")) -> str:
    """The warning for outputs without a pixel size: they are written, but carry no physical scale. ``outputs``: the
    TIFFs and the picture that lack it."""
    return f"no pixel size ({why}): the {outputs[0]} carry none and {outputs[1]} has no scale bar; {remedy}"


def coarse_optical_warning(optical_per_ion: float, scale: int, ion_pixel_um: float | None) -> str | None:
    """A warning when the optical's pixels (``optical_per_ion`` of an MSI pixel across) are coarser than the fused
    grid's (1 / ``scale``): the fused image then has no optical detail at its own resolution. Told in µm where the
    MSI pixel's size is known, else in MSI pixels."""
    if optical_per_ion <= COARSE_OPTICAL / scale:
        return None
    enough = max(2, round(1 / optical_per_ion))
    unit, size = ("µm", ion_pixel_um) if ion_pixel_um else ("MSI pixels", 1.0)
    return (f"the optical's pixels cover {optical_per_ion * size:.3g} {unit} of the section, coarser than the fused "
            f"grid's {size / scale:.3g} {unit} at ×{scale}: the fused image has no optical detail at its resolution; "
            f"×{enough} would do as well")
