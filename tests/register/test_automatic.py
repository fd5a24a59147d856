"""Automatic registration: pose search, SimpleITK polish, rival matches, optical features."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.register import (
    AffineMap,
    AutoRegisterOptions,
    Grid,
    Polish,
    PoseSearch,
    acquired_window,
    optical_feature,
    register_auto,
)
from msifusion.register.automatic import _disagreement

UPRIGHT = PoseSearch(max_rotation=20.0, allow_flip=False)  # the synthetic pairs are neither turned far nor mirrored


def _synthetic_pair(flip: bool = False, angle: float = 6.0, noise: float = 0.03, seed: int = 5,
                    asymmetry: float = 1.0, centre_x: float = 250.0, serial: tuple[int, float] | None = None,
                    cut: bool = False, acquired_rows: int = 51):
    """A stained section (moving, RGB) and the MSI tissue image it produces (fixed) under a known affine (turned by
    ``angle`` degrees; the MSI with Gaussian noise of deviation ``noise``). Below an ``asymmetry`` of 1 the section
    is that much its own texture and the rest that texture made mirror-symmetric about its body's centre column
    (``centre_x``): 0 makes the section mirror-symmetric. ``serial`` = (seed, share): a serial section of it, that
    share of its texture re-drawn from another seed. ``cut``: the section in two pieces, 30 optical pixels of glass
    between them; ``acquired_rows``: the MSI acquired rows 3 to that."""
    rng = np.random.default_rng(seed)
    h, w = 360, 480

    def texture(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return tuple(cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
                     for sigma in (14, 6))

    field, field2 = texture(rng)
    if serial is not None:
        redrawn, share = serial
        field, field2 = ((1 - share) * f + share * g for f, g in zip((field, field2),
                                                                      texture(np.random.default_rng(redrawn))))
    shift = int(round(2 * centre_x - (w - 1)))  # column x ↔ 2·centre_x − x
    field, field2 = (asymmetry * f + (1 - asymmetry) * (f + np.roll(f[:, ::-1], shift, axis=1)) / 2
                     for f in (field, field2))
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - 180) / 150.0) ** 2 + ((xx - centre_x) / 200.0) ** 2 < 1.0
    tissue = body & (field > -0.25 * field.std())
    kind = np.where(tissue & (field2 > 0), 2, np.where(tissue, 1, 0))
    if cut:
        kind[:, 235:265] = 0
    colours = np.array([[0.92, 0.92, 0.94], [0.90, 0.45, 0.60], [0.55, 0.35, 0.70]], np.float32)
    optical = colours[kind] + rng.normal(0, 0.02, (h, w, 3)).astype(np.float32)
    optical = np.clip(optical, 0, 1)
    if flip:
        optical = optical[:, ::-1].copy()
        kind = kind[:, ::-1]
    # Truth: fixed µm → moving px, rotation `angle`, scale 0.5 px/µm, shift.
    a = math.radians(angle)
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
    msi = vals.reshape(54, 4, 70, 4).mean(axis=(1, 3)) + rng.normal(0, noise, (54, 70))
    acquired = np.zeros((54, 70), bool)
    acquired[3:acquired_rows, 4:-4] = True  # the acquisition area: no spectra at the border
    msi = np.where(acquired, np.maximum(msi, 0.01), 0).astype(np.float32)
    return optical, msi, fixed, truth


def _max_error(transform, truth, fixed: Grid, msi: np.ndarray) -> float:
    r, c = np.nonzero(msi)
    pts = fixed.to_coords(np.column_stack([c, r]).astype(float))
    return float(np.max(np.hypot(*(transform(pts) - truth(pts)).T)))


def test_auto_registration_recovers_known_affine() -> None:
    optical, msi, fixed, truth = _synthetic_pair()
    reg = register_auto(optical, msi, fixed, None, AutoRegisterOptions(UPRIGHT))
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
    reg = register_auto(optical, frame, big, None, AutoRegisterOptions(UPRIGHT))
    assert reg.fixed == big and reg.details["search_block_factor"] == 1  # searched on the tissue, not the frame
    err = _max_error(reg.transform, truth, big, frame)
    assert err < 0.5, f"max error {err:.2f} optical pixels (1 MSI pixel = 5)"
    (rows, cols), window = acquired_window(frame != 0, big)
    assert rows.start <= 203 and rows.stop >= 251 and cols.start <= 304 and cols.stop >= 366 and window.shape[0] < 80
    assert reg.area == window
    # the B-spline is fitted on that area, but its field covers the whole frame: outside, the affine alone
    deformable = register_auto(optical, frame, big, None,
                               AutoRegisterOptions(UPRIGHT, Polish(deformable=True)))
    corners = big.to_coords(np.array([[0.0, 0.0], [419.0, 0.0], [0.0, 323.0], [419.0, 323.0]]))
    np.testing.assert_allclose(deformable.transform(corners), deformable.affine(corners), atol=1e-6)
    assert _max_error(deformable.transform, truth, big, frame) < 2.5  # half an MSI pixel (1.4 without the frame)


def test_auto_registration_gives_the_same_transform_every_time() -> None:
    import SimpleITK as sitk

    optical, msi, fixed, _ = _synthetic_pair()
    options = AutoRegisterOptions(UPRIGHT)
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
    reg = register_auto(grey, msi, fixed, None, AutoRegisterOptions(UPRIGHT))
    assert reg.details["optical_feature"] == "inverted_luminance"
    assert list(reg.details["feature_scores"]) == ["saturation", "inverted_luminance"]  # stops at a convincing one
    assert _max_error(reg.transform, truth, fixed, msi) < 0.5
    colour = register_auto(optical, msi, fixed, None, AutoRegisterOptions(UPRIGHT))
    assert list(colour.details["feature_scores"]) == ["saturation"]  # a convincing match: no other feature tried


def test_the_better_refined_match_is_used_not_the_coarse_search_s_first() -> None:
    """A tissue image turned 6° (between the coarse search's 10° steps) and a noisier one turned 20° (on a step): the
    coarse search ranks the second first, its refined pose scores 0.46 against the first's 0.57. The first was
    kept as the rival, and the used alignment was 14° off."""
    optical, msi, fixed, truth = _synthetic_pair()
    _, turned, _, _ = _synthetic_pair(angle=20.0, noise=0.05)
    for order in ((msi, turned), (turned, msi)):
        reg = register_auto(optical, np.stack(order), fixed, None, AutoRegisterOptions(UPRIGHT))
        assert order[reg.channel] is msi and reg.details["rival"]["score"] < reg.score
        assert _max_error(reg.transform, truth, fixed, msi) < 0.5
        runner_up = reg.details["runner_up"][0]  # the coarse search's leader, not the used pose's own first
        assert runner_up[4] == 1 - reg.channel and runner_up[2] == 20.0


def test_auto_registration_reports_a_rival_match_and_how_far_it_disagrees() -> None:
    optical, msi, fixed, truth = _synthetic_pair()
    acquired = msi != 0
    options = AutoRegisterOptions(UPRIGHT)
    shifted = np.where(acquired, np.roll(msi, 4, axis=1), 0)  # the same tissue, 4 MSI pixels to the right
    reg = register_auto(optical, np.stack([msi, shifted]), fixed, None, options)
    rival = reg.details["rival"]
    assert {reg.channel, rival["channel"]} == {0, 1} and rival["score"] >= 0.8 * reg.score
    assert 3.5 < rival["disagreement_px"] < 4.5
    assert _disagreement(reg.affine, reg.rival, fixed, acquired) == rival["disagreement_px"]  # the alignment itself
    # the shifted copy scores 0.94 of the best: no rival at 0.99
    stricter = replace(options, search=replace(UPRIGHT, rival_ratio=0.99))
    alone = register_auto(optical, np.stack([msi, shifted]), fixed, None, stricter)
    assert "rival" not in alone.details and alone.rival is None
    unpolished = register_auto(optical, np.stack([msi, shifted]), fixed, None, AutoRegisterOptions(UPRIGHT, Polish(False)))
    assert 3 < unpolished.details["rival"]["disagreement_px"] < 5  # the searched poses disagree as much
    twin = np.where(acquired, msi + np.random.default_rng(1).normal(0, 0.01, msi.shape), 0).astype(np.float32)
    agreeing = register_auto(optical, np.stack([msi, twin]), fixed, None, options)
    assert agreeing.details["rival"]["disagreement_px"] < 0.2
    assert _max_error(agreeing.transform, truth, fixed, msi) < 0.5
    single = register_auto(optical, msi, fixed, None, options)  # one image: nothing to compare
    assert "rival" not in single.details and single.rival is None


@pytest.mark.parametrize("seed, asymmetry", [(6, 0.1), (7, 0.1), (5, 0.0)])
def test_a_nearly_mirror_symmetric_section_reports_its_mirrored_match(seed: int, asymmetry: float) -> None:
    """A section a tenth of whose texture is not mirror-symmetric: the coarse search ranked its mirrored pose first,
    and it was used, 74 MSI pixels off at the corners, without a word (one tissue image: no rival). Both poses are
    refined now, the better one is used and the other reported as the rival, so the command warns that the alignment
    is ambiguous and draws both; a perfectly symmetric section cannot be told from its mirror image, but is warned."""
    optical, msi, fixed, truth = _synthetic_pair(seed=seed, asymmetry=asymmetry, centre_x=239.5)
    reg = register_auto(optical, msi, fixed, None, AutoRegisterOptions(PoseSearch(max_rotation=20.0)))
    rival = reg.details["rival"]
    assert rival["channel"] == reg.channel == 0 and rival["score"] >= 0.9 * reg.score  # warned from 0.8
    assert rival["disagreement_px"] > 50 and rival["mirrored"] is True  # across the section
    if asymmetry:
        assert reg.details["pose"]["flip"] is False and _max_error(reg.transform, truth, fixed, msi) < 1.0
    assert min(_max_error(t, truth, fixed, msi) for t in (reg.transform, reg.rival)) < 1.0  # one of the two is right


@pytest.mark.slow
def test_a_slide_of_serial_sections_is_registered_on_the_acquired_one() -> None:
    """The optical is a slide of four serial sections (half of each one's texture re-drawn) and the MSI acquired the
    bottom-right one. Searched as a whole, the other sections' tissue cut every pose's score to a quarter (its share
    of the optical's tissue inside the acquired area) and the scale started from their four areas: the registration
    landed 109–209 MSI pixels off, on another section. Each separate section is searched on its own now, also where
    the whole slide's best match (the full search's: mirrored, turned and shrunk into the acquired area) left none of
    its tissue outside but scored under 0.4 (a new user's audit). About 30 s: the full search, five times."""
    optical, msi, fixed, truth = _synthetic_pair(seed=6)
    others = [_synthetic_pair(seed=6, serial=(seed, 0.5))[0] for seed in (56, 66, 76)]
    slide = np.concatenate([np.concatenate(others[:2], axis=1), np.concatenate([others[2], optical], axis=1)], axis=0)
    h, w = optical.shape[:2]
    reg = register_auto(slide, msi, fixed, None, AutoRegisterOptions(PoseSearch(optical_feature="saturation")))
    moved = AffineMap(truth.matrix + np.array([[0.0, 0.0, w], [0.0, 0.0, h]]))
    assert _max_error(reg.transform, moved, fixed, msi) < 1.0  # optical pixels; 5 per MSI pixel
    assert reg.details["optical_sections"] == 4 and reg.score > 0.5 and "rival" not in reg.details


def test_a_serial_section_alike_is_reported_as_the_rival_on_another_section() -> None:
    """The optical holds the acquired section and beside it a near copy (the same texture, more noise): the two
    cannot be told apart. The search kept one translation per pose, so the copy was never a candidate: it was used
    in two of three such slides without a rival (warned only as unreliable, its score halved by the other's tissue).
    Each section searched on its own, the other is the rival now, on another section, and one of the two is right."""
    optical, msi, fixed, truth = _synthetic_pair(seed=6)
    copy = np.clip(optical + np.random.default_rng(1).normal(0, 0.03, optical.shape), 0, 1)
    reg = register_auto(np.concatenate([optical, copy], axis=1).astype(np.float32), msi, fixed, None,
                        AutoRegisterOptions(UPRIGHT))
    rival = reg.details["rival"]
    assert reg.details["optical_sections"] == 2 and rival["other_section"] is True
    assert rival["channel"] == reg.channel and rival["score"] >= 0.95 * reg.score > 0.5
    assert rival["disagreement_px"] > 90  # a section's width: 480 optical pixels, 5 per MSI pixel
    assert min(_max_error(t, truth, fixed, msi) for t in (reg.transform, reg.rival)) < 1.0


def test_a_section_in_pieces_acquired_in_part_is_not_taken_for_a_slide_of_sections() -> None:
    """A section cut in two, the MSI acquired across the top of both pieces: each piece searched on its own scores
    by its own tissue, and one piece slid within the acquired area outscored the right match of the whole optical
    (47 MSI pixels off). A section's pose is taken only where, under the whole optical, it explains the MSI nearly as
    well as the whole optical's best."""
    optical, msi, fixed, truth = _synthetic_pair(seed=5, cut=True, acquired_rows=30)
    reg = register_auto(optical, msi, fixed, None, AutoRegisterOptions(UPRIGHT))
    assert reg.details["optical_sections"] == 2
    assert _max_error(reg.transform, truth, fixed, msi) < 1.0


def test_separate_sections_are_whole_pieces_of_tissue_a_quarter_of_the_largest_or_more() -> None:
    """Serial sections on a slide: each piece of tissue as large as a quarter of the largest, holes and cracks under
    2 % of the image's side closed, specks ignored; one piece is no slide of sections."""
    from msifusion.register.automatic import separate_sections

    tissue = np.zeros((200, 400), bool)
    tissue[20:180, 20:180] = True
    tissue[60:80, 60:80] = False  # a hole: the same section
    tissue[20:180, 99:102] = False  # a crack 3 pixels wide (the closing disk's radius is 4): the same section
    tissue[5:10, 190:195] = True  # a speck
    assert separate_sections(tissue) == []
    tissue[50:150, 250:350] = True  # a second section, 0.39 of the first's area
    sections = separate_sections(tissue)
    assert len(sections) == 2 and sections[0][100, 100] and sections[0][70, 70] and sections[1][100, 300]
    assert not sections[0][100, 300] and not any(s[7, 192] for s in sections)
    tissue[150:190, 360:390] = True  # 1200 pixels: under a quarter of the largest, not a section
    assert len(separate_sections(tissue)) == 2
    assert len(separate_sections(tissue, max_sections=1)) == 0  # one piece searched alone is the whole search


def _on_a_finer_grid(msi: np.ndarray, truth: AffineMap, k: int) -> tuple[np.ndarray, Grid, AffineMap]:
    """The MSI tissue image on a grid ``k`` times finer (each pixel repeated), that grid, and the known map on it."""
    step = 10.0 / k  # _synthetic_pair's MSI pixels are 10 µm
    shift = -(k - 1) * step / 2  # the first fine pixel's centre, from the coarse one's
    on_fine = AffineMap(truth.matrix @ np.array([[1.0, 0.0, shift], [0.0, 1.0, shift], [0.0, 0.0, 1.0]]))
    return np.repeat(np.repeat(msi, k, axis=0), k, axis=1), Grid((msi.shape[0] * k, msi.shape[1] * k), step), on_fine


def test_an_interleaved_raster_is_registered_as_its_acquisition() -> None:
    """Every other column acquired: no search block was fully acquired, so every pose scored 0 (and the look for
    another basin measured distances over an empty mask, a ValueError from numpy), and the polish failed (the mask
    vanished at its coarser level). The skipped columns lie inside the acquisition now, filled from their
    neighbours."""
    optical, msi, fixed, truth = _synthetic_pair()
    fine, grid, on_fine = _on_a_finer_grid(msi, truth, 2)
    fine[:, 1::2] = 0
    reg = register_auto(optical, fine, grid, None, AutoRegisterOptions(UPRIGHT))
    assert reg.score > 0.5 and "polish_error" not in reg.details
    # optical pixels, 5 per (coarse) MSI pixel: it was 137 MSI pixels off; a skipped column's fill, the mean of its
    # neighbours, is not the pixel repeated into it here
    assert _max_error(reg.transform, on_fine, grid, fine) < 2.5


def test_spectra_dropped_at_random_do_not_cut_the_search_score() -> None:
    """A tenth of the spectra missing, on a grid the search reduces ×2: only fully acquired blocks counted, so the
    right match's score fell from 0.56 to 0.37, below the 0.4 of "looks unreliable" (and of the luminance features'
    fallback)."""
    optical, msi, fixed, truth = _synthetic_pair(seed=6)
    fine, grid, on_fine = _on_a_finer_grid(msi, truth, 2)
    whole = register_auto(optical, fine, grid, None, AutoRegisterOptions(UPRIGHT))
    dropped = np.where(np.random.default_rng(6).random(fine.shape) < 0.1, 0, fine).astype(np.float32)
    reg = register_auto(optical, dropped, grid, None, AutoRegisterOptions(UPRIGHT))
    assert reg.details["search_block_factor"] == 2 and reg.score > 0.95 * whole.score
    assert _max_error(reg.transform, on_fine, grid, dropped) < 2.0


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
    opaque = np.concatenate([rgb, np.ones((60, 80, 1), np.float32)], axis=-1)  # an alpha channel is no colour
    for kind in ("saturation", "luminance"):
        np.testing.assert_array_equal(optical_feature(opaque, kind), optical_feature(rgb, kind))


def test_the_options_groups_are_checked() -> None:
    with pytest.raises(TypeError, match="^AutoRegisterOptions.search must be a PoseSearch, not tuple$"):
        AutoRegisterOptions(search=(20.0, False))
    assert AutoRegisterOptions(polish=Polish(deformable=True)).search == PoseSearch()
