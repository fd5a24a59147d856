"""Registration: tiled resampling of the optical onto a fixed grid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.io.landmarks import Landmarks
from msifusion.register import (
    AffineMap,
    Grid,
    ResampleOptions,
    ThinPlateSpline,
    moving_index_map,
    resample_optical,
)


def _test_optical(h: int = 120, w: int = 160) -> np.ndarray:
    rng = np.random.default_rng(2)
    rgb = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    return (rgb - rgb.min()) / (rgb.max() - rgb.min())


def test_resample_affine_matches_direct_remap_and_tiles_do_not_matter() -> None:
    optical = _test_optical()
    fixed = Grid((40, 50), 2.0, (1.0, 1.0))  # calibrated fixed grid
    moving = Grid(optical.shape[:2], 0.5, (3.0, 2.0))
    transform = AffineMap(np.array([[0.9, 0.1, 10.0], [-0.1, 0.95, 8.0]]))
    out = resample_optical(optical, transform, fixed, moving, ResampleOptions(step=8, antialias=False))
    rows, cols = np.mgrid[:40, :50]
    idx = moving.to_index(transform(fixed.to_coords(np.column_stack([cols.ravel(), rows.ravel()]))))
    direct = cv2.remap(optical, idx[:, 0].reshape(40, 50).astype(np.float32), idx[:, 1].reshape(40, 50).astype(np.float32),
                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    np.testing.assert_allclose(out, direct, atol=1e-4)
    tiled = resample_optical(optical, transform, fixed, moving, ResampleOptions(step=8, tile_rows=7, antialias=False))
    np.testing.assert_array_equal(tiled, out)
    as_uint8 = resample_optical((optical * 255).round().astype(np.uint8), transform, fixed, moving,
                                ResampleOptions(antialias=False))
    np.testing.assert_allclose(as_uint8, out, atol=1 / 255 + 1e-3)


def test_an_optical_finer_than_the_output_is_averaged_not_aliased() -> None:
    """A stain texture of 5.3 µm period at 1 µm, onto 10 µm pixels: its 10 µm means lie within 0.48–0.52; sampled
    at two points in ten it swung from 0.09 to 0.91. Averaged over 10 × 10 blocks first: the means themselves where
    the grids' blocks coincide, within a few hundredths where they are shifted (bilinear between block means); an image
    without such texture (a smooth ramp) is its means either way."""
    rows, cols = np.mgrid[:400, :500].astype(np.float32)
    texture = 0.5 + 0.5 * np.sin(2 * np.pi * (cols + 0.3 * rows) / 5.3)
    moving = Grid((400, 500), 1.0)
    identity = AffineMap(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    for fixed, (r0, c0) in ((Grid((39, 49), 10.0, (4.5, 4.5)), (0, 0)), (Grid((39, 49), 10.0, (7.5, 11.5)), (7, 3))):
        truth = texture[r0: r0 + 390, c0: c0 + 490].reshape(39, 10, 49, 10).mean(axis=(1, 3))
        averaged = resample_optical(texture, identity, fixed, moving)
        sampled = resample_optical(texture, identity, fixed, moving, ResampleOptions(antialias=False))
        assert np.abs(sampled - truth).max() > 0.3
        assert np.abs(averaged - truth).max() < (1e-5 if r0 == 0 else 0.03)
    fixed = Grid((40, 50), 10.0, (4.5, 4.5))
    ramp = (cols / 500).astype(np.float32)
    np.testing.assert_allclose(resample_optical(ramp, identity, fixed, moving)[:, :-1],
                               ramp.reshape(40, 10, 50, 10).mean(axis=(1, 3))[:, :-1], atol=1e-5)


def test_an_optical_of_another_integer_type_is_refused_not_taken_as_brightness() -> None:
    with pytest.raises(ValueError, match="optical of type uint16: give uint8 or floats in"):
        resample_optical(np.full((8, 8), 40000, np.uint16), AffineMap(np.array([[1.0, 0, 0], [0, 1.0, 0]])),
                         Grid((8, 8)))


def test_an_optical_wider_than_opencvs_remap_takes_is_resampled() -> None:
    """cv2.remap refuses images of 32767 px or more a side: each call gets only the part its output columns reach."""
    optical = np.zeros((3, 33000), np.uint8)
    optical[:, 32990:] = 255
    out = resample_optical(optical, AffineMap(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])), Grid((3, 33000)))
    assert out.shape == (3, 33000) and out[:, 32990:].min() == 1.0 and out[:, :32989].max() == 0.0


def test_adaptive_lattice_keeps_a_strong_tps_warp_within_tolerance() -> None:
    rng = np.random.default_rng(3)
    fixed_pts = rng.uniform(0, 1000, (12, 2))
    moving_pts = fixed_pts * 1.5 + rng.normal(0, 15, (12, 2))  # a strongly non-affine warp
    tps = ThinPlateSpline(Landmarks(moving=moving_pts, fixed=fixed_pts, names=tuple(str(i) for i in range(12))))
    fixed = Grid((250, 250), 4.0)
    moving = Grid((1500, 1500), 1.0)
    r, c = np.mgrid[:250, :250]
    exact = moving.to_index(tps(fixed.to_coords(np.column_stack([c.ravel(), r.ravel()]))))
    # Plain bilinear interpolation of an 8-pixel lattice is off by pixels near the landmarks ...
    rows, cols, lattice = moving_index_map(tps, fixed, moving, step=8)
    from msifusion.register.resample import PixelMap, _interp_at

    mx, my = _interp_at(rows, cols, lattice, np.arange(250.0), np.arange(250.0))
    assert np.hypot(mx.ravel() - exact[:, 0], my.ravel() - exact[:, 1]).max() > 1.0
    # ... the adaptive map is not, and still evaluates most cells only at their corners.
    pmap = PixelMap(tps, fixed, moving, ResampleOptions(step=8, tolerance=0.05, tile_rows=64))
    maps = [pmap.rows_map(r0, min(250, r0 + 64)) for r0 in range(0, 250, 64)]
    ax = np.concatenate([m[0] for m in maps]).ravel()
    ay = np.concatenate([m[1] for m in maps]).ravel()
    err = np.hypot(ax - exact[:, 0], ay - exact[:, 1])
    assert err.max() < 0.1 and pmap.exact_fraction < 0.5


def test_adaptive_lattice_on_a_gentle_warp_stays_coarse() -> None:
    rng = np.random.default_rng(6)
    fixed_pts = rng.uniform(0, 1000, (10, 2))
    moving_pts = fixed_pts * 1.5 + rng.normal(0, 3, (10, 2))
    tps = ThinPlateSpline(Landmarks(moving=moving_pts, fixed=fixed_pts, names=tuple(str(i) for i in range(10))))
    fixed, moving = Grid((250, 250), 4.0), Grid((1500, 1500), 1.0)
    from msifusion.register import PixelMap

    pmap = PixelMap(tps, fixed, moving, ResampleOptions(step=8))
    mx, my = pmap.rows_map(0, 250)
    r, c = np.mgrid[:250, :250]
    exact = moving.to_index(tps(fixed.to_coords(np.column_stack([c.ravel(), r.ravel()]))))
    assert np.hypot(mx.ravel() - exact[:, 0], my.ravel() - exact[:, 1]).max() < 0.1  # the default tolerance
    assert pmap.step == 8 and pmap.exact_fraction < 0.3


def test_resample_refuses_a_map_that_misses_the_image() -> None:
    optical = _test_optical()
    with pytest.raises(InputError) as info:
        resample_optical(optical, AffineMap(np.array([[1.0, 0, 1e5], [0, 1.0, 1e5]])), Grid((10, 10)))
    # No file and no guess about landmarks here: the caller knows both (register.optical.register_optical).
    assert info.value.source is None
    assert info.value.problem == "the transform maps the whole output grid outside the optical image"
