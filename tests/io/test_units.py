"""Pixel sizes in µm: the units a file may state, the sizes that are plausible, and an optical too coarse to guide."""

import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.io.units import (_unit_to_um, check_pixel_size, coarse_optical_warning, replaced_pixel_size_warning,
                                unusable_pixel_size)


@pytest.mark.parametrize("unit, um", [
    ("µm", 1.0), ("\u03bcm", 1.0), ("um", 1.0), ("micron", 1.0), ("Microns", 1.0), ("Micrometre", 1.0),
    ("nm", 1e-3), (" nm ", 1e-3), ("pm", 1e-6), ("Å", 1e-4), ("\u212b", 1e-4), ("Ångström", 1e-4),
    ("mm", 1e3), ("cm", 1e4), ("m", 1e6), ("in", 25400.0), ("inches", 25400.0),
    ("Mm", None),  # megametres, not a slip of mm's case
    ("A", None),  # ImageJ turns a typed A into Å; a bare A could be anything
    ("px", None), ("pixel", None), ("", None)])
def test_length_units_are_read_in_micrometres(unit, um):
    assert _unit_to_um(unit) == um


def test_a_stated_pixel_size_is_used_only_when_square_and_plausible():
    assert unusable_pixel_size(0.5, 0.504) is None  # scanners round their MPP: within 1 % is square
    assert unusable_pixel_size(25.0, None) is None
    assert unusable_pixel_size(1.0, 1.2) == ("its pixels are not square (1 × 1.2 µm) and msifusion models square "
                                             "pixels")
    assert unusable_pixel_size(1e-4, None) == ("its pixel size 0.0001 µm is implausible (not between 0.001 and "
                                               "100000 µm)")
    assert unusable_pixel_size(2e5, 2e5) is not None  # 20 cm pixels: metres typed as µm


@pytest.mark.parametrize("size, problem", [
    (0.0, "pixel size must be a positive number, got 0"), (float("nan"), "pixel size must be a positive number"),
    (10e-6, "pixel size 1e-05 µm is outside 0.001–100000 µm; give it in micrometres (10 µm is 10, not 10e-6)")])
def test_a_pixel_size_option_outside_the_plausible_range_is_refused_naming_the_option(size, problem):
    with pytest.raises(InputError) as caught:
        check_pixel_size("--pixel-size", size)
    assert caught.value.source == "--pixel-size" and caught.value.problem.startswith(problem)
    check_pixel_size("--pixel-size", None)  # unknown: nothing to check
    check_pixel_size("--pixel-size", 0.25)


def test_an_optical_coarser_than_the_fused_grid_is_warned_with_the_scale_that_would_do():
    # ion pixels of 20 µm at ×10: a fused pixel of 2 µm; the optical may be up to 1.5 of them (3 µm) and still guide
    assert coarse_optical_warning(1.0 / 20, 10, 20.0) is None
    assert coarse_optical_warning(2.9 / 20, 10, 20.0) is None
    assert coarse_optical_warning(3.1 / 20, 10, 20.0) == (
        "the optical's pixels cover 3.1 µm of the section, coarser than the fused grid's 2 µm at ×10: the fused image "
        "has no optical detail at its resolution; ×6 would do as well")
    # uncalibrated: the same rule in MSI pixels, and never below ×2
    assert coarse_optical_warning(0.9, 4, None).endswith("×2 would do as well")


@pytest.mark.parametrize("stated", [25, 25.0, np.float32(25), np.float64(25), (25.0, 25.0), None])
def test_the_replaced_pixel_size_warning_takes_one_number_or_both_axes(stated):
    """A TIFF's calibration is one number (numpy's, from Python callers), an imzML's one per axis."""
    warning = replaced_pixel_size_warning(20.0, stated, "ion.tiff")
    assert warning == (None if stated is None else "--pixel-size 20 µm is used in place of the 25 µm ion.tiff states")
    assert replaced_pixel_size_warning(20.0, (25.0, 30.0), "a.imzML") == ("--pixel-size 20 µm is used in place of the "
                                                                          "25 × 30 µm a.imzML states")
    assert replaced_pixel_size_warning(25.2, stated, "ion.tiff") is None  # within 1 %
