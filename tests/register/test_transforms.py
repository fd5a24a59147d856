"""Registration transforms: BigWarp's thin-plate spline, affine fits, grids, landmark checks."""

from __future__ import annotations

import re

import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.io.landmarks import Landmarks
from msifusion.register import (
    AffineMap,
    DisplacementMap,
    Grid,
    ThinPlateSpline,
    check_landmarks,
    landmarks_from_transform,
    transform_from_landmarks,
)
from msifusion.register.transforms import _spline_leave_one_out, landmark_errors, spline_fold


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


def _grid_landmarks(matrix: np.ndarray) -> Landmarks:
    """Nine landmarks on a 40×60 ion grid (1 unit per ion pixel), mapped by the affine ``matrix``."""
    fixed = np.array([[x, y] for y in (5.0, 20.0, 35.0) for x in (5.0, 30.0, 55.0)])
    fixed += np.random.default_rng(0).uniform(-2, 2, fixed.shape)
    return Landmarks(moving=AffineMap(matrix)(fixed), fixed=fixed, names=tuple(f"Pt-{i}" for i in range(9)))


ION_GRID = Grid((40, 60), 1.0)
TURNED = np.array([[1.2, 0.3, 7.0], [-0.2, 0.9, -4.0]])


@pytest.mark.parametrize("matrix", [TURNED, TURNED * [[-1], [1]]])  # a slide turned, or turned and mirrored
def test_a_spline_of_consistent_landmarks_does_not_fold(matrix) -> None:
    lm = _grid_landmarks(matrix)
    lm.moving[4] += [1.5, -1.0]  # a tissue's own deformation, a pixel or two
    assert spline_fold(ThinPlateSpline(lm), ION_GRID) is None


def test_a_spline_through_swapped_partners_folds_and_names_them() -> None:
    lm = _grid_landmarks(TURNED)
    lm.moving[[3, 4]] = lm.moving[[4, 3]]  # two partners clicked in the wrong order
    fold = spline_fold(ThinPlateSpline(lm), ION_GRID)
    assert fold is not None and fold.blamed and fold.among_landmarks
    named = re.findall(r"'(Pt-\d)'", fold.suspects)
    assert set(named) <= {"Pt-3", "Pt-4"} and fold.count == len(named) >= 1  # one of them, or both
    assert fold.covers_a_pixel


def test_a_fold_of_four_landmarks_blames_none_of_them() -> None:
    """Leaving out any one of four leaves three, which an affine map fits exactly: no landmark stands out."""
    lm = _grid_landmarks(TURNED)
    four = Landmarks(moving=lm.moving[[0, 2, 6, 8]][[0, 1, 3, 2]], fixed=lm.fixed[[0, 2, 6, 8]], names=tuple("abcd"))
    fold = spline_fold(ThinPlateSpline(four), ION_GRID)  # two corners' partners swapped: folded
    assert fold is not None and not fold.blamed and fold.count == 1
    assert 0 <= fold.at_column_row[0] < 60 and 0 <= fold.at_column_row[1] < 40


def test_a_landmark_clicked_twice_with_another_partner_folds_the_spline() -> None:
    lm = _grid_landmarks(TURNED)
    twice = Landmarks(moving=np.vstack([lm.moving, lm.moving[4] + [4.0, 0.0]]),  # 4 optical units off ...
                      fixed=np.vstack([lm.fixed, lm.fixed[4] + [0.02, 0.0]]),  # ... 0.02 ion pixels away
                      names=(*lm.names, "Pt-9"))
    fold = spline_fold(ThinPlateSpline(twice), ION_GRID)
    assert fold is not None and fold.blamed
    assert fold.suspects.startswith("'Pt-4' at (") and "'Pt-9' at (" in fold.suspects and "Pt-3" not in fold.suspects


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
    for fit in (ThinPlateSpline, AffineMap.from_landmarks):  # one side collinear is enough, either side
        for one_side in (spread, Landmarks(moving=spread.fixed, fixed=spread.moving, names=spread.names)):
            with pytest.raises(InputError, match="collinear"):
                fit(one_side)
    nearly = Landmarks(moving=line * 3, fixed=line + [[0.0, 0.0], [0.0, 0.0], [1e-4, 0.0]], names=("a", "b", "c"))
    for fit in (ThinPlateSpline, AffineMap.from_landmarks):  # a third point 1e-4 off the line: rounding decides
        with pytest.raises(InputError, match="collinear or nearly so"):
            fit(nearly)
    thin = Landmarks(moving=spread.moving, fixed=np.array([[0.0, 0.0], [100.0, 0.0], [50.0, 1.0]]),
                     names=("a", "b", "c"))
    ThinPlateSpline(thin)  # a thin strip of tissue, 1 % as wide as long, is no line


def test_a_displacement_map_turns_its_affine_part_past_the_outer_pixel_centres() -> None:
    """A deformable result sampled at the ion pixels' centres, refined ×10: the sub-pixels of the outer half pixel
    follow its affine part (here a half turn); a held total displacement put the refined corner 1.27 ion px off."""
    ion = Grid((20, 30), 25.0)
    half_turn = AffineMap(np.array([[-1.0, 0.0, 2000.0], [0.0, -1.0, 1500.0]]))
    cols, rows = np.meshgrid(np.arange(30.0), np.arange(20.0))
    centres = ion.to_coords(np.column_stack([cols.ravel(), rows.ravel()]))
    bend = np.stack([np.sin(rows / 3.0), np.cos(cols / 4.0)], axis=-1)  # a remainder the affine does not hold
    total = (half_turn(centres) - centres).reshape(20, 30, 2) + bend
    mapped = DisplacementMap.of_displacements(ion, total, half_turn)
    np.testing.assert_allclose(mapped(centres), half_turn(centres) + bend.reshape(-1, 2), atol=1e-9)
    corner = ion.refined(10).to_coords(np.array([[0.0, 0.0], [299.0, 199.0]]))
    held = bend[[0, -1], [0, -1]]  # beyond the outer centres the remainder is held
    np.testing.assert_allclose(mapped(corner), half_turn(corner) + held, atol=1e-9)


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


def test_a_pyramid_level_is_its_full_resolution_resized():
    """A ×4 level of a 1.25 µm scan (1001 columns, rounded up to 251): its first pixel averages the scan's first four,
    so its centre is 1.875 µm on, and resizing back gives the scan's own frame."""
    scan = Grid((803, 1001), 1.25)
    level = scan.resized(5.0, (201, 251))
    assert level.origin == (1.875, 1.875)
    assert level.resized(1.25, (803, 1001)) == scan


def test_check_landmarks_catches_pixel_vs_micrometre() -> None:
    rng = np.random.default_rng(4)
    fixed = Grid((100, 120), 25.0)  # µm, 3000 × 2500 µm
    moving = Grid((2000, 2400), 1.0)
    ok_fixed = rng.uniform(0, 2500, (5, 2))
    lm_ok = Landmarks(moving=ok_fixed * 0.8, fixed=ok_fixed, names=tuple("abcde"))
    assert check_landmarks(lm_ok, fixed, moving) == []
    lm_px = Landmarks(moving=ok_fixed * 0.8, fixed=ok_fixed * 25.0, names=tuple("abcde"))  # placed in µm×25
    with pytest.raises(InputError, match="pixels while the image is calibrated"):
        check_landmarks(lm_px, fixed, moving)


def test_landmarks_just_outside_their_image_are_warned_and_swapped_axes_are_named() -> None:
    fixed = Grid((40, 100), 25.0)  # x −12.5…2487.5 µm, y −12.5…987.5 µm
    moving = Grid((800, 2000), 1.25)  # the same section at 1.25 µm, x −0.625…2499.4
    inside = np.array([[100.0, 100.0], [2300.0, 150.0], [1200.0, 900.0], [300.0, 800.0]])
    names = ("Pt-0", "Pt-1", "Pt-2", "Pt-3")
    assert check_landmarks(Landmarks(moving=inside, fixed=inside, names=names), fixed, moving) == []
    on_border = inside.copy()
    on_border[1, 0] = 2487.5 + 20.0  # one MSI pixel (25 µm) is tolerated beyond the edge: a click on the border
    assert check_landmarks(Landmarks(moving=inside, fixed=on_border, names=names), fixed, moving) == []
    beyond = inside.copy()
    beyond[2, 1] = 987.5 + 250.0  # 10 MSI pixels below the ion grid
    (warning,) = check_landmarks(Landmarks(moving=inside, fixed=beyond, names=names, source="lm.csv"), fixed, moving)
    assert warning.startswith("lm.csv: 1 of 4 fixed (ion) landmarks ('Pt-2' at (1200, 1237.5)) lies outside that image, "
                              "up to 10 pixels beyond its edge")
    assert "swapped" not in warning
    square = Grid((100, 100), 25.0)  # a square optical: swapped points still fit it, so only the ion grid tells
    swapped = inside[:, ::-1].copy()  # x and y swapped in both sets: the ion grid's y is at most 987.5
    with pytest.raises(InputError, match="far outside that image .*; are x and y swapped.* swap the x and y columns of "
                                         "both sets$"):  # the swap alone: no units hint after it
        check_landmarks(Landmarks(moving=swapped, fixed=swapped, names=names), fixed, square)
    enlarged = inside * 4  # placed in µm on the ion image enlarged ×4 (as if its pixels were 25 µm still)
    with pytest.raises(InputError, match="Or were they placed on the ion image enlarged in Fiji.* --fixed-scale$"):
        check_landmarks(Landmarks(moving=inside, fixed=enlarged, names=names), fixed, moving)
    slightly = inside * [0.4, 1.0] + [0.0, 150.0]  # one point at y 1050 µm, 2.5 MSI pixels below the ion grid
    (warning,) = check_landmarks(Landmarks(moving=slightly, fixed=slightly, names=names), fixed, square)
    assert "1 of 4 fixed (ion) landmarks ('Pt-2' at (480, 1050)) lies outside that image, up to 2.5 pixels" in warning
    assert "are x and y swapped? With them swapped every landmark lies inside its image" in warning


def test_landmarks_whose_moving_and_fixed_sets_are_exchanged_are_named_so() -> None:
    """Placed in BigWarp with the ion image as the moving one: its points, in the moving columns, fit the ion grid."""
    ion, optical = Grid((40, 60), 1.0), Grid((800, 1200), 1.0)
    on_ion = np.array([[5.0, 5.0], [50.0, 8.0], [30.0, 35.0], [10.0, 30.0]])
    exchanged = Landmarks(moving=on_ion, fixed=on_ion * 20 + 3, names=("Pt-0", "Pt-1", "Pt-2", "Pt-3"))
    with pytest.raises(InputError, match="far outside that image .*; are the moving and fixed columns exchanged\\? "
                                         "With them exchanged every landmark lies inside its image: in BigWarp the "
                                         "optical is the moving image and the ion image the fixed one$"):
        check_landmarks(exchanged, ion, optical)
    right = Landmarks(moving=exchanged.fixed, fixed=exchanged.moving, names=exchanged.names)
    assert check_landmarks(right, ion, optical) == []
    # both in µm over the same section: each image holds the other's points, so a landmark just off the ion grid is
    # no sign of an exchange
    ion_um, optical_um = Grid((150, 150), 20.0), Grid((4000, 4000), 1.0)
    fixed = np.array([[500.0, 500.0], [2500.0, 600.0], [1500.0, 2500.0], [3020.0, 1500.0]])  # 'Pt-3' 1.5 px beyond
    (warning,) = check_landmarks(Landmarks(moving=fixed * 0.97, fixed=fixed, names=exchanged.names), ion_um,
                                 optical_um)
    assert "'Pt-3'" in warning and warning.endswith("check them in BigWarp")


def test_landmarks_from_transform_round_trip() -> None:
    true = AffineMap(np.array([[2.0, 0.1, 5.0], [0.0, 1.9, -3.0]]))
    lm = landmarks_from_transform(true, Grid((50, 80), 10.0), n=(3, 4))
    assert len(lm) == 12 and lm.names[0] == "Pt-0"
    np.testing.assert_allclose(lm.moving, true(lm.fixed))
    np.testing.assert_allclose(AffineMap.from_landmarks(lm).matrix, true.matrix, atol=1e-9)


def test_landmarks_from_transform_keep_to_the_moving_image() -> None:
    fixed = Grid((50, 80), 10.0)  # x −5…795
    shifted = AffineMap(np.array([[1.0, 0.0, 100.0], [0.0, 1.0, 0.0]]))  # the right tenth maps off the moving image
    loose = landmarks_from_transform(shifted, fixed)
    assert loose.moving[:, 0].max() == pytest.approx(815.0)  # 10 % in from the edge, moved 100 to the right
    lm = landmarks_from_transform(shifted, fixed, moving=fixed)
    assert lm.moving[:, 0].max() == pytest.approx(775.0)  # drawn in to 15 %: every point is on the moving image
    np.testing.assert_allclose(lm.moving, shifted(lm.fixed))
    assert check_landmarks(lm, fixed, fixed) == [] and len(check_landmarks(loose, fixed, fixed)) == 1


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
    [warning] = check_landmarks(Landmarks(near, lm.fixed, lm.names), fixed, moving)  # accepted, and told
    assert warning.startswith("the landmarks: 5 of 16 moving (optical) landmarks ('Pt-3' at (480, -100), ")
    assert "up to 882 pixels beyond its edge" in warning
    # tissue in a corner of a 6× larger MSI frame: the landmarks span 1/6 of it, and that alone warns of nothing (the
    # pair's own four points a hair beyond the optical's edge are told as on the pair's frame)
    big = Grid((163 * 6, 274 * 6), 25.0)
    assert check_landmarks(lm, big, moving) == check_landmarks(lm, fixed, moving)
    assert "4 of 16 moving (optical) landmarks" in check_landmarks(lm, fixed, moving)[0]
    # a whole-slide scan: the section is a small patch in its middle (the landmarks span 3 % of the slide)
    slide = Grid((60_000, 80_000), 0.17)
    assert check_landmarks(Landmarks(lm.moving + np.array([6000.0, 4000.0]), lm.fixed, lm.names), fixed, slide) == []
    assert check_landmarks(Landmarks(lm.moving + np.array([300.0, 200.0]), lm.fixed, lm.names), fixed,
                           slide) == []  # core A1


def test_leave_one_out_errors_are_the_splines_through_the_others() -> None:
    """Rippa's rule against fitting the spline without each landmark in turn, on landmarks in µm far from the origin
    (the fixed points are rescaled before the inversion)."""
    lm = _landmarks(np.random.default_rng(3), n=9)
    far = Landmarks(moving=lm.moving * 50, fixed=lm.fixed * 50 + 3e4, names=lm.names)
    by_refitting = np.array([far.moving[i] - ThinPlateSpline(Landmarks(
        moving=np.delete(far.moving, i, 0), fixed=np.delete(far.fixed, i, 0), names=far.names[:-1]))(far.fixed[i])[0]
        for i in range(9)])
    np.testing.assert_allclose(_spline_leave_one_out(far), by_refitting, rtol=1e-8, atol=1e-9 * 50)


@pytest.mark.parametrize("kind", ["tps", "affine"])
def test_a_misplaced_landmark_has_the_largest_error_in_ion_pixels(kind) -> None:
    lm = _grid_landmarks(TURNED)  # fixed in units of 0.5 per ion pixel below
    exact = landmark_errors(lm, kind, ion_pixel=0.5)
    assert exact.measure == ("leave-one-out" if kind == "tps" else "affine fit residual")
    np.testing.assert_allclose(exact.ion_px, 0, atol=1e-9)  # an affine set: the spline through any 8 is that affine
    moved = Landmarks(moving=lm.moving + np.where(np.arange(9)[:, None] == 4, TURNED[:, :2] @ [0.3, 0.4], 0),
                      fixed=lm.fixed, names=lm.names)  # Pt-4 placed 0.5 fixed units = 1 ion pixel off
    errors = landmark_errors(moved, kind, ion_pixel=0.5)
    assert errors.names[errors.worst] == "Pt-4"
    if kind == "tps":  # the other eight still lie on the affine map (carried back by the fit through all nine)
        assert errors.ion_px[4] == pytest.approx(1.0, abs=1e-3)
    else:  # least squares shares the miss with the others
        assert 0.7 < errors.ion_px[4] < 1.0 and np.all(np.delete(errors.ion_px, 4) < 0.2)
    record = errors.record(um_per_ion_px=20.0)
    assert record["largest"] == {"landmark": "Pt-4", "ion_px": round(errors.ion_px[4], 3),
                                 "um": round(errors.ion_px[4] * 20, 3)}
    assert [row["landmark"] for row in record["per_landmark"]] == list(lm.names)
    assert "um" not in errors.record(None)["median"]


def test_landmark_errors_need_four_and_skip_a_landmark_whose_others_lie_on_a_line() -> None:
    fixed = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [10.0, 8.0]])
    three = Landmarks(moving=fixed[:3] * [1, 1] + [[0, 0], [0, 0], [0, 3.0]], fixed=fixed[[0, 1, 3]],
                      names=("a", "b", "c"))
    assert landmark_errors(three, "tps", 1.0) is None  # any transform fits three exactly
    four = Landmarks(moving=fixed * 2 + [[0, 0], [0, 0.5], [0, 0], [0, 0]], fixed=fixed, names=("a", "b", "c", "d"))
    errors = landmark_errors(four, "tps", 1.0)
    assert np.isnan(errors.ion_px[3]) and np.isfinite(errors.ion_px[:3]).all()  # without 'd', a b c are on a line
    assert "d" not in [row["landmark"] for row in errors.record(None)["per_landmark"]]
    # four a spline accepts (spread across their line just over 0.1 % of its length), any three of them nearly on it
    thin = np.array([[18.4502402, -0.0278924192], [48.0666235, -0.0560238616], [57.5520499, -0.0395235299],
                     [68.1566457, -0.00278597702]]) + [0, 20]
    thin_set = Landmarks(moving=thin * 4 + [3, 5], fixed=thin, names=("a", "b", "c", "d"))
    ThinPlateSpline(thin_set)
    assert landmark_errors(thin_set, "tps", 1.0) is None  # nothing measurable: no record, no traceback


def test_landmarks_placed_in_cm_or_inches_are_named_so() -> None:
    """Fiji's own TIFF opener shows a TIFF's resolution unit: msifusion's ion TIFFs in cm, a scanner's in inches.
    Landmarks placed there crowd each image's corner (a 2.5 mm grid in cm spans 0–0.25): refused, naming the unit
    that puts each set across its image; the same set in µm passes."""
    fixed = Grid((40, 100), 25.0)  # the ion grid, 25 µm
    moving = Grid((800, 2000), 1.25)  # the same section at 1.25 µm
    inside = np.array([[100.0, 100.0], [2300.0, 150.0], [1200.0, 900.0], [300.0, 800.0]])
    names = ("Pt-0", "Pt-1", "Pt-2", "Pt-3")
    assert check_landmarks(Landmarks(moving=inside, fixed=inside, names=names), fixed, moving) == []
    in_fiji = Landmarks(moving=inside / 25_400, fixed=inside / 1e4, names=names, source="lm.csv")
    with pytest.raises(InputError, match=r"fixed \(ion\) landmarks \(x 0\.01–0\.23, [^;]*; [^;]*read in cm lie "
                                         r"across it; the moving \(optical\) landmarks [^;]*; [^;]*read in cm or "
                                         r"inches lie across it: .*\(File ▸ Import ▸ Bio-Formats\)"):
        check_landmarks(in_fiji, fixed, moving)
    only_ion = Landmarks(moving=inside, fixed=inside / 1e4, names=names)  # the optical opened with Bio-Formats
    with pytest.raises(InputError, match=r"^the fixed \(ion\) landmarks .*read in cm lie across it: were they") as exc:
        check_landmarks(only_ion, fixed, moving)
    assert "moving" not in str(exc.value)
