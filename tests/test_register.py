"""Registration: BigWarp's thin-plate spline, affine fits, tiled resampling, automatic registration."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.io.landmarks import Landmarks
from msifusion.register import (
    AffineMap,
    AutoRegisterOptions,
    Grid,
    ResampleOptions,
    ThinPlateSpline,
    _disagreement,
    acquired_window,
    check_landmarks,
    landmarks_from_transform,
    moving_index_map,
    optical_feature,
    register_auto,
    resample_optical,
    transform_from_landmarks,
)


def _landmarks(rng: np.random.Generator, n: int = 8) -> Landmarks:
    fixed = rng.uniform(0, 100, (n, 2))
    moving = fixed * 2.0 + np.array([5.0, -3.0]) + rng.normal(0, 2.0, (n, 2))
    return Landmarks(moving=moving, fixed=fixed, names=tuple(f"Pt-{i}" for i in range(n)))


def _tps_by_hand(fixed: np.ndarray, moving: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Thin-plate spline solved directly: [[K, P], [Pᵀ, 0]] [w; a] = [moving; 0], K = r² log r."""

    def kernel(r: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r > 0, r * r * np.log(r), 0.0)

    n = len(fixed)
    k = kernel(np.linalg.norm(fixed[:, None] - fixed[None], axis=2))
    p = np.column_stack([np.ones(n), fixed])
    system = np.block([[k, p], [p.T, np.zeros((3, 3))]])
    coef = np.linalg.solve(system, np.vstack([moving, np.zeros((3, 2))]))
    w, a = coef[:n], coef[n:]
    kq = kernel(np.linalg.norm(points[:, None] - fixed[None], axis=2))
    return kq @ w + np.column_stack([np.ones(len(points)), points]) @ a


def test_tps_exact_at_landmarks_and_equal_to_direct_solution() -> None:
    rng = np.random.default_rng(0)
    lm = _landmarks(rng)
    tps = ThinPlateSpline(lm)
    np.testing.assert_allclose(tps(lm.fixed), lm.moving, atol=1e-8)
    pts = rng.uniform(-20, 120, (200, 2))
    np.testing.assert_allclose(tps(pts), _tps_by_hand(lm.fixed, lm.moving, pts), rtol=1e-8, atol=1e-7)


def test_tps_of_affine_landmarks_is_that_affine() -> None:
    rng = np.random.default_rng(1)
    fixed = rng.uniform(0, 50, (6, 2))
    true = np.array([[1.2, 0.3, 7.0], [-0.2, 0.9, -4.0]])
    lm = Landmarks(moving=AffineMap(true)(fixed), fixed=fixed, names=tuple("abcdef"))
    pts = rng.uniform(0, 50, (50, 2))
    np.testing.assert_allclose(ThinPlateSpline(lm)(pts), AffineMap(true)(pts), atol=1e-8)
    fit = transform_from_landmarks(lm, "affine")
    np.testing.assert_allclose(fit.matrix, true, atol=1e-10)
    np.testing.assert_allclose(fit.inverse()(fit(pts)), pts, atol=1e-9)


def test_degenerate_landmarks_are_input_errors() -> None:
    line = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    lm = Landmarks(moving=line * 3, fixed=line, names=("a", "b", "c"))
    with pytest.raises(InputError):
        AffineMap.from_landmarks(lm)
    with pytest.raises(InputError):
        transform_from_landmarks(lm, "bogus")
    with pytest.raises(InputError, match="collinear"):  # the spline's affine part has no unique solution either
        ThinPlateSpline(lm)
    spread = Landmarks(moving=np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]), fixed=line, names=("a", "b", "c"))
    with pytest.raises(InputError, match="collinear"):  # one side collinear is enough
        ThinPlateSpline(spread)


def test_grid_refined_is_block_consistent() -> None:
    ion = Grid((3, 4), 25.0, (100.0, 50.0))
    fine = ion.refined(5)
    assert fine.shape == (15, 20) and fine.pixel_size == 5.0
    # The 5×5 sub-pixel centres of ion pixel (1, 2) average to that pixel's centre.
    cols, rows = np.meshgrid(np.arange(10, 15), np.arange(5, 10))
    centre = fine.to_coords(np.column_stack([cols.ravel(), rows.ravel()])).mean(axis=0)
    np.testing.assert_allclose(centre, ion.to_coords(np.array([2.0, 1.0])))
    assert fine.extent == pytest.approx(ion.extent)
    assert fine.coarsened(5).origin == pytest.approx(ion.origin)


def _test_optical(h: int = 120, w: int = 160) -> np.ndarray:
    rng = np.random.default_rng(2)
    rgb = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    return (rgb - rgb.min()) / (rgb.max() - rgb.min())


def test_resample_affine_matches_direct_remap_and_tiles_do_not_matter() -> None:
    optical = _test_optical()
    fixed = Grid((40, 50), 2.0, (1.0, 1.0))  # calibrated fixed grid
    moving = Grid(optical.shape[:2], 0.5, (3.0, 2.0))
    transform = AffineMap(np.array([[0.9, 0.1, 10.0], [-0.1, 0.95, 8.0]]))
    out = resample_optical(optical, transform, fixed, moving, ResampleOptions(step=8))
    rows, cols = np.mgrid[:40, :50]
    idx = moving.to_index(transform(fixed.to_coords(np.column_stack([cols.ravel(), rows.ravel()]))))
    direct = cv2.remap(optical, idx[:, 0].reshape(40, 50).astype(np.float32), idx[:, 1].reshape(40, 50).astype(np.float32),
                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    np.testing.assert_allclose(out, direct, atol=1e-4)
    tiled = resample_optical(optical, transform, fixed, moving, ResampleOptions(step=8, tile_rows=7))
    np.testing.assert_array_equal(tiled, out)
    as_uint8 = resample_optical((optical * 255).round().astype(np.uint8), transform, fixed, moving)
    np.testing.assert_allclose(as_uint8, out, atol=1 / 255 + 1e-3)


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
    from msifusion.register import PixelMap, _interp_lattice

    mx, my = _interp_lattice(rows, cols, lattice, 0, 250, 250)
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


def test_check_landmarks_catches_pixel_vs_micrometre() -> None:
    rng = np.random.default_rng(4)
    fixed = Grid((100, 120), 25.0)  # µm, 3000 × 2500 µm
    moving = Grid((2000, 2400), 1.0)
    ok_fixed = rng.uniform(0, 2500, (5, 2))
    lm_ok = Landmarks(moving=ok_fixed * 0.8, fixed=ok_fixed, names=tuple("abcde"))
    check_landmarks(lm_ok, fixed, moving)
    lm_px = Landmarks(moving=ok_fixed * 0.8, fixed=ok_fixed * 25.0, names=tuple("abcde"))  # placed in µm×25
    with pytest.raises(InputError, match="pixels while the image is calibrated"):
        check_landmarks(lm_px, fixed, moving)


def test_resample_refuses_a_map_that_misses_the_image() -> None:
    optical = _test_optical()
    with pytest.raises(InputError) as info:
        resample_optical(optical, AffineMap(np.array([[1.0, 0, 1e5], [0, 1.0, 1e5]])), Grid((10, 10)))
    # No file and no guess about landmarks here: the caller knows both (instrument.register_optical).
    assert info.value.source is None
    assert info.value.problem == "the transform maps the whole output grid outside the optical image"


def test_landmarks_from_transform_round_trip() -> None:
    true = AffineMap(np.array([[2.0, 0.1, 5.0], [0.0, 1.9, -3.0]]))
    lm = landmarks_from_transform(true, Grid((50, 80), 10.0), n=(3, 4))
    assert len(lm) == 12 and lm.names[0] == "Pt-0"
    np.testing.assert_allclose(lm.moving, true(lm.fixed))
    np.testing.assert_allclose(AffineMap.from_landmarks(lm).matrix, true.matrix, atol=1e-9)


# ----------------------------------------------------------------------------- automatic


def _synthetic_pair(flip: bool = False):
    """A stained section (moving, RGB) and the MSI tissue image it produces (fixed) under a known affine."""
    rng = np.random.default_rng(5)
    h, w = 360, 480
    field = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 14)
    field2 = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 6)
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - 180) / 150.0) ** 2 + ((xx - 250) / 200.0) ** 2 < 1.0
    tissue = body & (field > -0.25 * field.std())
    kind = np.where(tissue & (field2 > 0), 2, np.where(tissue, 1, 0))
    colours = np.array([[0.92, 0.92, 0.94], [0.90, 0.45, 0.60], [0.55, 0.35, 0.70]], np.float32)
    optical = colours[kind] + rng.normal(0, 0.02, (h, w, 3)).astype(np.float32)
    optical = np.clip(optical, 0, 1)
    if flip:
        optical = optical[:, ::-1].copy()
        kind = kind[:, ::-1]
    # Truth: fixed µm → moving px, rotation 6°, scale 0.5 px/µm, shift.
    a = math.radians(6.0)
    mat = 0.5 * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    if flip:
        mat = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ mat
    truth = AffineMap(np.column_stack([mat, [60.0, 25.0] if not flip else [w - 1 - 60.0, 25.0]]))
    fixed = Grid((54, 70), 10.0)  # 10 µm pixels
    # MSI: each pixel the mean of a chemistry value over its footprint (4×4 samples), nonlinear in the stain.
    chem = np.array([0.1, 1.0, 0.35], np.float32)[kind]
    fine = fixed.refined(4)
    r, c = np.mgrid[:fine.shape[0], :fine.shape[1]]
    idx = truth(fine.to_coords(np.column_stack([c.ravel(), r.ravel()])))
    vals = cv2.remap(chem, idx[:, 0].reshape(fine.shape).astype(np.float32), idx[:, 1].reshape(fine.shape).astype(np.float32),
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    msi = vals.reshape(54, 4, 70, 4).mean(axis=(1, 3)) + rng.normal(0, 0.03, (54, 70))
    acquired = np.zeros((54, 70), bool)
    acquired[3:-3, 4:-4] = True  # the acquisition area: no spectra at the border
    msi = np.where(acquired, np.maximum(msi, 0.01), 0).astype(np.float32)
    return optical, msi, fixed, truth


def _max_error(transform, truth, fixed: Grid, msi: np.ndarray) -> float:
    r, c = np.nonzero(msi)
    pts = fixed.to_coords(np.column_stack([c, r]).astype(float))
    return float(np.max(np.hypot(*(transform(pts) - truth(pts)).T)))


def test_auto_registration_recovers_known_affine() -> None:
    optical, msi, fixed, truth = _synthetic_pair()
    reg = register_auto(optical, msi, fixed, None, AutoRegisterOptions(max_rotation=20.0, allow_flip=False))
    err = _max_error(reg.transform, truth, fixed, msi)
    assert err < 0.5, f"max error {err:.2f} optical pixels (1 MSI pixel = 5)"
    assert reg.correlation > 0.8 and reg.nmi > 1.1
    assert reg.details["pose"]["flip"] is False


def test_auto_registration_of_tissue_in_a_corner_of_a_large_empty_frame() -> None:
    # an imzML whose coordinates start far from 1: the same acquisition inside a frame 6× larger each way
    optical, msi, fixed, truth = _synthetic_pair()
    frame = np.zeros((6 * 54, 6 * 70), np.float32)
    frame[200:254, 300:370] = msi
    big = Grid(frame.shape, 10.0, (-3000.0, -2000.0))  # pixel (200, 300) sits where pixel (0, 0) was
    reg = register_auto(optical, frame, big, None, AutoRegisterOptions(max_rotation=20.0, allow_flip=False))
    assert reg.fixed == big and reg.details["search_block_factor"] == 1  # searched on the tissue, not the frame
    err = _max_error(reg.transform, truth, big, frame)
    assert err < 0.5, f"max error {err:.2f} optical pixels (1 MSI pixel = 5)"
    (rows, cols), window = acquired_window(frame != 0, big)
    assert rows.start <= 203 and rows.stop >= 251 and cols.start <= 304 and cols.stop >= 366 and window.shape[0] < 80
    assert reg.area == window
    # the B-spline is fitted on that area, but its field covers the whole frame: outside, the affine alone
    deformable = register_auto(optical, frame, big, None,
                               AutoRegisterOptions(max_rotation=20.0, allow_flip=False, deformable=True))
    corners = big.to_coords(np.array([[0.0, 0.0], [419.0, 0.0], [0.0, 323.0], [419.0, 323.0]]))
    np.testing.assert_allclose(deformable.transform(corners), deformable.affine(corners), atol=1e-6)
    assert _max_error(deformable.transform, truth, big, frame) < 2.5  # half an MSI pixel (1.4 without the frame)


def test_auto_registration_gives_the_same_transform_every_time() -> None:
    import SimpleITK as sitk

    optical, msi, fixed, _ = _synthetic_pair()
    options = AutoRegisterOptions(max_rotation=20.0, allow_flip=False)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(16)  # as on a workstation: 2 threads rarely show it
    try:
        first, *again = (register_auto(optical, msi, fixed, None, options).affine.matrix for _ in range(4))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    for matrix in again:  # ITK's threads summed the metric in varying order: up to 2e-5 apart
        np.testing.assert_array_equal(matrix, first)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads


def test_auto_registration_of_a_grey_optical_falls_back_to_luminance() -> None:
    optical, msi, fixed, truth = _synthetic_pair()
    grey = np.repeat(optical.mean(-1, keepdims=True), 3, -1)  # no saturation anywhere
    reg = register_auto(grey, msi, fixed, None, AutoRegisterOptions(max_rotation=20.0, allow_flip=False))
    assert reg.details["optical_feature"] == "inverted_luminance"
    assert list(reg.details["feature_scores"]) == ["saturation", "inverted_luminance"]  # stops at a convincing one
    assert _max_error(reg.transform, truth, fixed, msi) < 0.5
    colour = register_auto(optical, msi, fixed, None, AutoRegisterOptions(max_rotation=20.0, allow_flip=False))
    assert list(colour.details["feature_scores"]) == ["saturation"]  # a convincing match: no other feature tried


def test_auto_registration_reports_a_rival_match_and_how_far_it_disagrees() -> None:
    optical, msi, fixed, truth = _synthetic_pair()
    acquired = msi != 0
    options = AutoRegisterOptions(max_rotation=20.0, allow_flip=False)
    shifted = np.where(acquired, np.roll(msi, 4, axis=1), 0)  # the same tissue, 4 MSI pixels to the right
    reg = register_auto(optical, np.stack([msi, shifted]), fixed, None, options)
    rival = reg.details["rival"]
    assert {reg.channel, rival["channel"]} == {0, 1} and rival["score"] >= 0.8 * reg.score
    assert 3.5 < rival["disagreement_px"] < 4.5
    assert _disagreement(reg.affine, reg.rival, fixed, acquired) == rival["disagreement_px"]  # the alignment itself
    stricter = replace(options, rival_ratio=0.99)  # the shifted copy scores 0.94 of the best: no rival then
    alone = register_auto(optical, np.stack([msi, shifted]), fixed, None, stricter)
    assert "rival" not in alone.details and alone.rival is None
    unpolished = register_auto(optical, np.stack([msi, shifted]), fixed, None, replace(options, polish=False))
    assert 3 < unpolished.details["rival"]["disagreement_px"] < 5  # the searched poses disagree as much
    twin = np.where(acquired, msi + np.random.default_rng(1).normal(0, 0.01, msi.shape), 0).astype(np.float32)
    agreeing = register_auto(optical, np.stack([msi, twin]), fixed, None, options)
    assert agreeing.details["rival"]["disagreement_px"] < 0.2
    assert _max_error(agreeing.transform, truth, fixed, msi) < 0.5
    single = register_auto(optical, msi, fixed, None, options)  # one image: nothing to compare
    assert "rival" not in single.details and single.rival is None


@pytest.mark.slow
def test_auto_registration_full_search_finds_a_mirrored_optical() -> None:
    optical, msi, fixed, truth = _synthetic_pair(flip=True)
    reg = register_auto(optical, msi, fixed)
    assert reg.details["pose"]["flip"] is True
    assert _max_error(reg.transform, truth, fixed, msi) < 0.5


def test_auto_registration_refuses_an_empty_msi_image() -> None:
    optical, msi, fixed, _ = _synthetic_pair()
    with pytest.raises(InputError) as info:
        register_auto(optical, np.zeros_like(msi), fixed)
    assert info.value.source is None  # the caller names the MSI file
    assert info.value.problem == ("the MSI tissue image is empty: 0 pixels with signal, 16 needed to register "
                                  "automatically; give --landmarks")


def test_luminance_features_do_not_depend_on_the_cameras_bit_depth():
    # a 12-bit camera image in a 16-bit file fills 1/16 of the range: the features are stretched to their own spread
    rng = np.random.default_rng(0)
    rgb = np.clip(rng.normal(0.5, 0.2, (60, 80, 3)), 0, 1).astype(np.float32)
    for kind in ("luminance", "inverted_luminance"):
        full, dim = optical_feature(rgb, kind), optical_feature(rgb / 16, kind)
        np.testing.assert_allclose(dim, full, atol=1e-5)
        assert full.min() == 0.0 and full.max() == 1.0
    lum = optical_feature(rgb, "luminance")
    np.testing.assert_allclose(optical_feature(rgb, "inverted_luminance"), 1 - lum, atol=1e-6)


def _micrometre_pair() -> tuple[Landmarks, Grid, Grid]:
    """Landmarks over a 25 µm ion grid (6850 × 4075 µm) and a 0.17 µm optical (435 × 326 µm), as the prostate's."""
    fixed = Grid((163, 274), 25.0)
    moving = Grid((1920, 2560), 0.17)
    gx, gy = np.meshgrid(np.linspace(700, 6150, 4), np.linspace(400, 3650, 4))
    fixed_pts = np.column_stack([gx.ravel(), gy.ravel()])
    moving_pts = fixed_pts * 0.07 + np.array([5.0, 3.0])
    return Landmarks(moving=moving_pts, fixed=fixed_pts, names=tuple(f"Pt-{i}" for i in range(16))), fixed, moving


def test_check_landmarks_refuses_a_single_far_landmark() -> None:
    lm, fixed, moving = _micrometre_pair()
    check_landmarks(lm, fixed, moving)
    typo = lm.moving.copy()
    typo[3, 0] = 17918.0  # a digit too many: 435 µm wide
    with pytest.raises(InputError) as err:
        check_landmarks(Landmarks(typo, lm.fixed, lm.names), fixed, moving)
    assert err.value.problem == (
        "moving (optical) landmark 'Pt-3' at (17918, 31) lies far outside that image (more than half its size beyond "
        "its edge; image spans x -0.085–435.1, y -0.085–326.3 in units of 0.17 per pixel); is a coordinate mistyped, "
        "or are the landmarks in pixels while the image is calibrated in µm, or the other way round?")
    far = lm.fixed.copy()
    far[[0, 5], 1] = -2100.0  # two of 16 fixed points above the ion image by more than half its height
    with pytest.raises(InputError, match=r"^2 of 16 fixed \(ion\) landmarks \('Pt-0' at \(700, -2100\), 'Pt-5' at "
                                         r"\(2516.67, -2100\)\) lie far outside that image .* pixels while the image is "
                                         "calibrated in µm"):
        check_landmarks(Landmarks(lm.moving, far, lm.names), fixed, moving)


def test_check_landmarks_refuses_fixed_points_in_pixels_on_a_micrometre_grid() -> None:
    lm, fixed, moving = _micrometre_pair()
    in_pixels = Landmarks(lm.moving, lm.fixed / 25.0, lm.names)  # all inside the ion image, in its top-left corner
    with pytest.raises(InputError) as err:
        check_landmarks(in_pixels, fixed, moving)
    assert err.value.problem == (
        "the fixed (ion) landmarks span only 3.2% of that image (x 28–246, y 16–146; image spans x -12.5–6838, "
        "y -12.5–4062 in units of 25 per pixel) but the moving (optical) ones 82% of theirs: the two sets disagree in "
        "scale 26×; are the landmarks in pixels while the image is calibrated in µm, or the other way round?")
    # the optical side in its pixels, on an optical calibrated at 25 µm per pixel: squeezed by that factor
    coarse = Grid((1920, 2560), 25.0)
    with pytest.raises(InputError, match=r"^the moving \(optical\) landmarks span only 3.3% .* the two sets disagree in "
                                         r"scale 24×"):
        check_landmarks(Landmarks(lm.moving / 0.17, lm.fixed, lm.names), fixed, coarse)


def test_check_landmarks_accepts_points_slightly_outside_and_sets_on_a_small_part_of_an_image() -> None:
    lm, fixed, moving = _micrometre_pair()
    near = lm.moving.copy()
    near[3] = [480.0, -100.0]  # 10 % and 30 % of the optical beyond its edges: a landmark on tissue just out of frame
    near[12, 0] = -150.0
    check_landmarks(Landmarks(near, lm.fixed, lm.names), fixed, moving)
    # tissue in a corner of a 6× larger MSI frame: the landmarks span 1/6 of it
    big = Grid((163 * 6, 274 * 6), 25.0)
    check_landmarks(lm, big, moving)
    # a whole-slide scan: the section is a small patch in its middle (the landmarks span 3 % of the slide)
    slide = Grid((60_000, 80_000), 0.17)
    check_landmarks(Landmarks(lm.moving + np.array([6000.0, 4000.0]), lm.fixed, lm.names), fixed, slide)
    check_landmarks(Landmarks(lm.moving + np.array([300.0, 200.0]), lm.fixed, lm.names), fixed, slide)  # core A1
