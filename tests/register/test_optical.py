"""Registration from files (:mod:`msifusion.register.optical`); the commands around it, on a small imzML, are in
tests/workflows/test_from_imzml.py."""

from pathlib import Path

import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.io.images import Image, write_rgb_tiff
from msifusion.register import AffineMap
from msifusion.register.optical import (RegisterSettings, _calibration_disagreement, _registered_already,
                                        tissue_outline)


def test_a_calibration_that_disagrees_with_the_registration_is_warned(tmp_path):
    he = write_rgb_tiff(tmp_path / "he.tif", np.zeros((40, 60, 3), np.float32), pixel_size_um=0.17)
    optical = Image(np.zeros((40, 60, 3), np.float32), 0.17, he)
    shrunk = AffineMap(np.array([[0.07, 0.0, 5.0], [0.0, 0.07, 3.0]]))  # 1 MSI µm = 0.07 stated optical µm
    warning = _calibration_disagreement(shrunk, optical, RegisterSettings(scale=8), 1.0, 25.0).warning
    assert "the calibration of he.tif (0.17 µm per pixel) disagrees with the registration by 14.3×" in warning
    assert "--optical-pixel-size 2.43" in warning
    about_right = AffineMap(np.array([[1.1, 0.0, 0.0], [0.0, 1.1, 0.0]]))  # 10 % shrinkage: tissue does that
    assert _calibration_disagreement(about_right, optical, RegisterSettings(scale=8), 1.0, 25.0) is None
    assert _calibration_disagreement(shrunk, Image(optical.pixels), RegisterSettings(scale=8), 1.0, 25.0) is None
    # landmarks written by a run on the file's calibration, fed back with the pixel size that run's warning suggested
    # (or edited since, so not converted): a registration known to be wrong is refused, not written with a warning
    fed_back = RegisterSettings(scale=8, landmarks=Path("landmarks_rival.csv"), optical_pixel_size=2.43)
    at_option = Image(optical.pixels, 2.43, he)  # as read under the option
    with pytest.raises(InputError, match=r"^--optical-pixel-size: the landmarks in landmarks_rival.csv fit the "
                                         r"calibration of he.tif \(0.17 µm per pixel\), not --optical-pixel-size "
                                         r"2.43: they are in the file's units.* so the registration would be off by "
                                         r"14.3×; rerun without --optical-pixel-size"):
        _calibration_disagreement(shrunk, at_option, fed_back, 1.0, 25.0)
    placed_at_the_option = RegisterSettings(scale=8, landmarks=Path("lm.csv"), optical_pixel_size=0.17 / 0.07 / 4)
    at_option = Image(optical.pixels, placed_at_the_option.optical_pixel_size, he)
    assert "fit the calibration" not in _calibration_disagreement(shrunk, at_option, placed_at_the_option, 1.0,
                                                                  25.0).warning
    # ion-side landmarks in pixels of the ion image enlarged ×10 in Fiji (25 µm pixels) read as µm: 1 unit = 2.5 µm, so
    # 2.5 µm of the optical per unit; the warning names the options, and with them there is nothing to warn
    on_enlarged = AffineMap(np.array([[2.5, 0.0, 5.0], [0.0, 2.5, 3.0]]))
    optical_um = Image(optical.pixels, 1.0, Path("he.tif"))
    plain = RegisterSettings(scale=8, landmarks=Path("lm.csv"))
    assert _calibration_disagreement(on_enlarged, optical_um, plain, 1.0, 25.0).warning.endswith(
        "placed in pixels on the ion image enlarged ×10 in Fiji, they need --fixed-scale 10 --fixed-pixel-size 1")
    given = RegisterSettings(scale=8, landmarks=Path("lm.csv"), fixed_scale=10, fixed_pixel_size=1.0)
    assert _calibration_disagreement(on_enlarged, optical_um, given, 25.0 / (1.0 * 10), 25.0) is None
    on_ion = AffineMap(np.array([[25.0, 0.0, 5.0], [0.0, 25.0, 3.0]]))  # in pixels of the ion image itself
    assert _calibration_disagreement(on_ion, optical_um, plain, 1.0, 25.0).warning.endswith(
        "placed in pixels on the ion image, they need --fixed-pixel-size 1")
    assert "--fixed-" not in _calibration_disagreement(shrunk, optical, plain, 1.0, 25.0).warning  # 1/0.07: no such K


def test_a_pyramid_levels_calibration_is_told_at_full_resolution(tmp_path):
    """An optical read at a pyramid level (4 full-resolution pixels per pixel): the pixel size the warning states and
    suggests is the full resolution's, which ``--optical-pixel-size`` and Fiji's landmarks mean."""
    he = write_rgb_tiff(tmp_path / "he.tif", np.zeros((40, 60, 3), np.float32), pixel_size_um=0.17)
    level = Image(np.zeros((10, 15, 3), np.float32), 0.68, he, downsample=4)
    shrunk = AffineMap(np.array([[0.07, 0.0, 5.0], [0.0, 0.07, 3.0]]))
    found = _calibration_disagreement(shrunk, level, RegisterSettings(scale=8), 1.0, 25.0)
    assert "the calibration of he.tif (0.17 µm per pixel) disagrees" in found.warning
    assert "--optical-pixel-size 2.43" in found.warning and found.matched_um == pytest.approx(0.17 / 0.07)
    fed_back = RegisterSettings(scale=8, landmarks=Path("landmarks.csv"), optical_pixel_size=2.43)
    at_option = Image(level.pixels, 2.43 * 4, he, downsample=4)  # as read under the option
    with pytest.raises(InputError, match=r"fit the calibration of he.tif \(0.17 µm per pixel\), not "
                                         r"--optical-pixel-size 2.43"):
        _calibration_disagreement(shrunk, at_option, fed_back, 1.0, 25.0)


def test_the_tissue_outline_of_a_stained_disc_on_glass_is_the_disc():
    y, x = np.mgrid[:100, :160]
    disc = np.hypot(y - 50, x - 70) < 30
    rgb = np.where(disc[..., None], np.array([0.85, 0.4, 0.6]), np.array([0.92, 0.93, 0.92]))  # pink on glass
    rgb = rgb + np.random.default_rng(0).normal(0, 0.02, rgb.shape)  # a stain's texture and the camera's noise
    rgb = np.clip(rgb, 0, 1).astype(np.float32)
    rgb[:, 130:] = 0  # where the registered optical does not reach: black fill, not tissue, for any feature
    for kind in ("saturation", "inverted_luminance"):
        field, level = tissue_outline(rgb, kind, 3.0)
        inside = field > level
        assert (inside & disc).sum() / (inside | disc).sum() > 0.95, kind


def test_a_czi_scene_is_numbered_from_1():
    """As ZEN and Fiji's Bio-Formats series list number them; the library's settings refuse 0 as the CLI does."""
    from msifusion.errors import InputError

    assert RegisterSettings(scale=8, optical_scene=2).optical_scene == 2
    with pytest.raises(InputError, match=r"^--optical-scene: scenes are numbered from 1, as ZEN shows them, not 0$"):
        RegisterSettings(scale=8, optical_scene=0)


def test_an_optical_registered_already_is_judged_and_named_by_its_full_size_where_a_level_was_read():
    """An optical_registered.tiff of 96×128 (ion grid 12×16 × 8) whose ×2 pyramid level was read (48×64): the ion grid
    × 8 in the file, found at 4 read pixels per ion pixel; not "× 4" of a 48×64 file that does not exist."""
    level = Image(np.zeros((48, 64, 3), np.float32), 2.0, Path("optical_registered.tiff"), downsample=2.0,
                  full_shape=(96, 128))
    found = AffineMap(np.array([[4.0, 0.0, 1.5], [0.0, 4.0, 1.5]]))  # ion pixels onto read pixels, unturned
    imzml = Path("run.imzML")
    warning = _registered_already(level, (12, 16), found, 1.0, imzml)
    assert warning.startswith("optical_registered.tiff is 96×128 (read at its 48×64 level), exactly the ion grid × 8: "
                              "it looks registered already")
    assert warning.endswith("export the ions with `msifusion ions` and run `msifusion fuse --ion ION --optical "
                            "optical_registered.tiff`")
    assert _registered_already(level, (12, 16), found, 1.0, Path("mz_1217.tiff")).endswith(
        "to fuse it as it is, run `msifusion fuse --ion mz_1217.tiff --optical optical_registered.tiff`")  # an ion
    turned = AffineMap(np.array([[0.0, -4.0, 63.5], [4.0, 0.0, 1.5]]))
    assert _registered_already(level, (12, 16), turned, 1.0, imzml) is None
    assert _registered_already(Image(level.pixels, 2.0, level.path), (12, 16), found, 1.0, imzml).startswith(
        "optical_registered.tiff is 48×64, exactly the ion grid × 4")  # read whole: the file is that size


def test_a_fluorescence_composite_is_searched_on_its_luminance_first():
    """A composite of a microscope's channels (tissue glows in each, at unequal brightness) is no stain: its
    colourfulness can score high at a wrong scale, so the search starts from its luminance."""
    from msifusion.io.channels import composite
    from msifusion.register.optical import MsiTissue, register_optical
    from test_automatic import _synthetic_pair  # this folder is on the path of its tests (pytest's prepend mode)

    bright, msi, fixed, truth = _synthetic_pair(seed=7)
    kind = np.argmin(((bright[..., None, :] - np.array([[0.92, 0.92, 0.94], [0.90, 0.45, 0.60], [0.55, 0.35, 0.70]]))
                      ** 2).sum(-1), -1)  # glass and the two stains, back from the colours
    rng = np.random.default_rng(0)
    glow = [np.clip(gain * np.array(levels)[kind] * 4095 + rng.normal(0, 8, kind.shape), 0, 4095).astype(np.uint16)
            for gain, levels in ((1.0, (0.03, 0.5, 0.9)), (0.06, (0.05, 0.8, 0.3)))]
    optical = Image(composite(glow), 2.0, Path("af.ome.tif"), channels=2)
    registered = register_optical(optical, MsiTissue(msi[None], 10.0, Path("msi.imzML")), RegisterSettings(scale=2),
                                  quiet=True)
    assert registered.info["options"]["search"]["optical_feature"] == "auto-fluorescence"
    assert list(registered.info["feature_scores"]) == ["luminance"]  # convincing at once
    lm = registered.landmarks  # fixed in µm of the ion grid, moving in µm of the optical (2 µm pixels)
    assert np.max(np.hypot(*(lm.moving / 2.0 - truth(lm.fixed)).T)) < 0.5  # optical pixels: a tenth of an MSI pixel
