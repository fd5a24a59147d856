"""The benchmark: case builders (masked Middlebury measurement), outputs and their values."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from pyimzml.ImzMLWriter import ImzMLWriter

from msifusion.workflows.benchmark import (
    PROSTATE_FILES,
    QUICK_CASES,
    BenchmarkConfig,
    BenchmarkRequest,
    Case,
    CaseSelection,
    build_cases,
    masked_block_mean,
    middlebury_case,
    phantom_case,
    prostate_cases,
    run_benchmark,
)
from msifusion.errors import InputError
from msifusion.fit import FitConfig
from msifusion.runtime import Runtime
from msifusion.methods import DEFAULT_METHOD, METHODS, MethodOptions, fuse
from msifusion.measurement import block_mean
from msifusion.metrics import score

CHEAP = ("bilinear", "bicubic", "bilinear-bp")
QUIET = Runtime(quiet=True)
# A 64×96 window of Motorcycle with 18 % unknown disparity and, at ×8, two blocks without any.
MB_CROP = (192, 64, 64, 96)


@pytest.fixture(scope="module")
def small_cases() -> list[Case]:
    return [phantom_case("leaf", "apigenin", 3, 4, (64, 96)), middlebury_case(8, crop=MB_CROP)]


def test_masked_block_mean_known_answer():
    values = np.array([[1, 3, 9, 9],
                       [5, 7, 9, 9],
                       [2, 2, 0, 0],
                       [2, 2, 0, 0]], dtype=np.float64)
    valid = np.array([[1, 1, 0, 0],
                      [1, 0, 0, 0],
                      [1, 1, 1, 1],
                      [1, 1, 1, 1]], dtype=bool)
    measured, filled = masked_block_mean(values, valid, 2)
    # top-left: mean of 1, 3, 5; top-right has no valid pixel → mean of its 3 neighbour blocks
    expected_tl, bl, br = 3.0, 2.0, 0.0
    np.testing.assert_allclose(measured, [[expected_tl, (expected_tl + bl + br) / 3], [bl, br]], rtol=1e-6)
    assert filled == 1


def test_masked_block_mean_fills_a_block_with_no_valid_neighbour():
    valid = np.zeros((6, 6), bool)
    valid[:2, :2] = True  # only the top-left block is measured
    measured, filled = masked_block_mean(np.full((6, 6), 4.0), valid, 2)
    assert filled == 8
    np.testing.assert_allclose(measured, 4.0)


def test_middlebury_case_masked_measurement(small_cases):
    case = small_cases[1]
    assert case.truth.shape == (64, 96) and case.guide.shape == (64, 96, 3) and case.measured.shape == (8, 12)
    assert case.mask.dtype == bool
    np.testing.assert_array_equal(case.mask, np.isfinite(case.truth))
    assert 0.1 < 1 - case.mask.mean() < 0.3
    assert np.all(np.isfinite(case.measured))
    assert case.info["middlebury"]["filled_blocks"] == 2
    blocks_t = case.truth.reshape(8, 8, 12, 8).transpose(0, 2, 1, 3).reshape(8, 12, 64)
    blocks_m = case.mask.reshape(8, 8, 12, 8).transpose(0, 2, 1, 3).reshape(8, 12, 64)
    for i in range(8):
        for j in range(12):
            if blocks_m[i, j].any():  # measured = mean of the valid truth pixels of the block
                assert case.measured[i, j] == pytest.approx(blocks_t[i, j][blocks_m[i, j]].mean(), rel=1e-5)
    # the guide is the left image of the stereo pair, as floats in [0, 1]
    from skimage.data import stereo_motorcycle

    left = stereo_motorcycle()[0]
    np.testing.assert_allclose(case.guide, left[192:256, 64:160] / 255.0, atol=1e-6)


def test_middlebury_downscale_keeps_only_fully_known_pixels():
    case = middlebury_case(4, downscale=2, crop=(96, 32, 32, 48))
    from skimage.data import stereo_motorcycle

    d = stereo_motorcycle()[2][: 500 - 500 % 2, : 741 - 741 % 2]
    known = np.isfinite(d).reshape(250, 2, 370, 2).all(axis=(1, 3))[96:128, 32:80]
    np.testing.assert_array_equal(case.mask, known)
    assert case.truth.shape == (32, 48) and np.all(np.isfinite(case.measured))


def test_method_order_default_first_all_once():
    order = BenchmarkConfig().method_order()
    assert order[0] == DEFAULT_METHOD
    assert sorted(order) == sorted(METHODS)
    assert BenchmarkConfig(methods=("bicubic", "bilinear", "bicubic")).method_order() == ["bicubic", "bilinear"]


def test_config_rejects_unknown_method_and_quick_preset():
    with pytest.raises(InputError, match="nope"):
        BenchmarkConfig(methods=("nope",))
    quick = BenchmarkConfig.preset(True, methods=CHEAP)
    assert quick.quick and quick.epoch_cap == 30 and quick.methods == CHEAP and quick.cases == QUICK_CASES
    assert "prostate" not in QUICK_CASES.groups and BenchmarkConfig.preset(False) == BenchmarkConfig()
    seeds = BenchmarkConfig.preset(True, phantom_seeds=(4,), runtime=Runtime(3), epoch_cap=None)  # case, run, None
    assert seeds.cases == replace(QUICK_CASES, phantom_seeds=(4,)) and seeds.runtime.seed == 3 and seeds.epoch_cap == 30
    with pytest.raises(InputError, match="--groups: unknown group"):
        BenchmarkConfig.preset(groups=("nope",))
    assert BenchmarkConfig.preset(True, cases=CaseSelection()).cases == CaseSelection()  # a selection of one's own
    with pytest.raises(ValueError, match="either cases or its fields"):
        BenchmarkConfig.preset(cases=CaseSelection(), phantom_seeds=(3,))


NOT_ACQUIRED = {(12, 27), (13, 27), (19, 5)}  # pixels without a spectrum (the grid keeps its 20×28)


def _prostate_like(folder: Path) -> np.ndarray:
    """An imzML (20×28 pixels, 3 strong peaks and a weak one at m/z 1217.51) and an 'H&E' of the same section at ×6
    under a 10 px offset, with the example's file names; returns the ion images (m/z 500, 600, 700, 1217.51)."""
    H, W, k = 20, 28, 6
    yy, xx = np.mgrid[:H, :W]
    tissue = ((yy - 9.5) / 8) ** 2 + ((xx - 12) / 11) ** 2 < 1
    lobe = ((yy - 6) ** 2 + (xx - 17) ** 2) < 10
    images = np.stack([tissue * (50 + 40 * lobe), tissue * (30 + xx), tissue * 20.0 * ~lobe, tissue * 2.0 * lobe])
    axis = np.array([500.0, 600.0, 700.0, 1217.51])
    with ImzMLWriter(str(folder / PROSTATE_FILES[0]), mode="continuous", mz_dtype=np.float64,
                     intensity_dtype=np.float32) as w:
        for r in range(H):
            for c in range(W):
                if (r, c) in NOT_ACQUIRED:
                    continue
                w.addSpectrum(axis, images[:, r, c].astype(np.float32), (c + 1, r + 1))
    big = cv2.resize(np.stack([tissue, lobe], -1).astype(np.float32), (W * k, H * k), interpolation=cv2.INTER_NEAREST)
    he = np.ones((H * k + 20, W * k + 20, 3), np.float32)
    he[10:-10, 10:-10] -= big[..., :1] * [0.2, 0.5, 0.3] + big[..., 1:] * [0.3, 0.3, 0.1]
    cv2.imwrite(str(folder / PROSTATE_FILES[1]), (he[..., ::-1] * 255).round().astype(np.uint8))
    return images


def test_prostate_cases_are_the_strongest_ions_and_the_ion_of_interest(tmp_path):
    images = _prostate_like(tmp_path)
    cases, info = prostate_cases((2, 4), tmp_path)  # registered automatically, as the benchmark does (2 s)
    assert info["mzs"] == [500.0, 600.0, 700.0, 1217.51]
    assert [c.name for c in cases] == [f"prostate-mz{mz:.4f}-x{f}" for mz in info["mzs"] for f in (2, 4)]
    for case, image in zip(cases, np.repeat(images, 2, axis=0)):
        np.testing.assert_array_equal(case.truth, image[:20, :28])  # 20×28: already a multiple of lcm(2, 4)
        np.testing.assert_allclose(case.measured, block_mean(case.truth, case.factor), rtol=1e-6)
        assert not case.mask[12:14, 27].any() and not case.mask[19, 5] and case.mask.sum() == 20 * 28 - 3
        assert case.guide.shape == (20, 28, 3) and case.pixel_size_um == 25.0
    guide_dark = 1 - cases[0].guide.mean(-1)
    assert np.corrcoef(guide_dark.ravel(), images.any(0).ravel())[0, 1] > 0.8  # the H&E registered onto the ions


def test_prostate_group_is_skipped_when_its_data_cannot_be_fetched(tmp_path, monkeypatch, capsys):
    import msifusion.examples as examples

    def offline():
        raise InputError("msight==1.0.24", "cannot download it: no package index reachable")

    monkeypatch.setattr(examples, "fetch_prostate", offline)
    config = BenchmarkConfig(cases=CaseSelection(groups=("prostate",)), methods=CHEAP, runtime=QUIET)
    cases, skipped, _ = build_cases(config)
    assert cases == [] and skipped == ["prostate cases skipped: could not fetch the MSIght prostate example: "
                                       "msight==1.0.24: cannot download it: no package index reachable"]
    with pytest.raises(InputError, match="no case to run"):
        run_benchmark(BenchmarkRequest(tmp_path / "out", config))
    assert f"msifusion: warning: {skipped[0]}" in capsys.readouterr().err  # said under --quiet too
    assert not (tmp_path / "out").exists()


def test_a_prostate_folder_given_without_its_files_is_an_error(tmp_path):
    """A mistyped --prostate-dir, or a half-copied one, must not give a 'successful' benchmark without the group."""
    (tmp_path / "prostate_example.imzML").write_text("<mzML/>")
    only_prostate = CaseSelection(groups=("prostate",), prostate_dir=tmp_path)
    config = BenchmarkConfig(cases=only_prostate, methods=CHEAP, runtime=QUIET)
    with pytest.raises(InputError, match=f"^{tmp_path}: lacks prostate_he_example.tif, prostate_example.ibd "
                                         r"\(the MSIght prostate example's files\)$"):
        run_benchmark(BenchmarkRequest(tmp_path / "out", config))
    assert not (tmp_path / "out").exists()


def test_run_benchmark_outputs_match_direct_scores(tmp_path, small_cases):
    out = tmp_path / "bench"
    config = BenchmarkConfig(methods=CHEAP, runtime=QUIET)
    rows = run_benchmark(BenchmarkRequest(out, config, cases=small_cases))
    assert [(r["case"], r["method"]) for r in rows] == [(c.name, m) for c in small_cases for m in CHEAP]

    for case in small_cases:  # values are exactly what direct calls give
        for method in CHEAP:
            fused = fuse(case.guide, case.measured, method, MethodOptions(runtime=Runtime(quiet=True))).image
            direct = score(fused, case.truth, case.measured, case.factor, case.guide, case.mask)
            row = next(r for r in rows if r["case"] == case.name and r["method"] == method)
            for key in ("psnr", "ssim", "mse", "edge", "consistency"):
                assert row[key] == pytest.approx(getattr(direct, key), rel=1e-9, abs=1e-12)
    assert all(r["consistency"] < 1e-6 for r in rows if r["method"] == "bilinear-bp")  # exactly consistent

    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows)
    for written, row in zip(table, rows):
        assert written["case"] == row["case"] and written["method"] == row["method"]
        assert float(written["psnr"]) == pytest.approx(row["psnr"], rel=1e-5)

    md = (out / "results.md").read_text()
    for case in small_cases:
        assert f"### {case.name}" in md
        assert (out / "panels" / f"{case.name}.png").stat().st_size > 10_000
    for case in small_cases:  # each case's table marks its best PSNR in bold, and only that
        mine = {r["method"]: r for r in rows if r["case"] == case.name}
        best = max(mine, key=lambda m: mine[m]["psnr"])
        for method, r in mine.items():
            shown = f"**{r['psnr']:.2f}**" if method == best else f"{r['psnr']:.2f}"
            assert f"| {method} | {shown} | {r['ssim']:.3f} |" in md

    record = json.loads((out / "run.json").read_text())
    assert record["methods"] == list(CHEAP) and record["device"] in ("cpu", "cuda")  # the device used, not "auto"
    assert [c["name"] for c in record["cases"]] == [c.name for c in small_cases]
    assert record["machine"]["cpu_count"] >= 1 and "numpy" in record["versions"]
    assert record["cases"][1]["valid_fraction"] == pytest.approx(small_cases[1].mask.mean())
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]  # no staging folder left behind


def test_a_failing_method_is_recorded_and_the_others_still_run(tmp_path, small_cases, monkeypatch, capsys):
    """One method that raises must not end a run of hours: its row is NaN with the error, its table line says it
    failed, the progress line says FAILED, and the group means leave it out."""
    from dataclasses import replace

    from msifusion.methods import METHODS

    def broken(problem, options):
        raise RuntimeError("out of cheese")

    monkeypatch.setitem(METHODS, "broken", replace(METHODS["bilinear"], name="broken", run=broken))
    config = BenchmarkConfig(methods=("broken", "bilinear"), panels=False, runtime=Runtime())
    rows = run_benchmark(BenchmarkRequest(tmp_path / "b", config, cases=small_cases[:1]))
    failed, bilinear = rows
    assert failed["error"] == "RuntimeError: out of cheese" and math.isnan(failed["psnr"])
    assert math.isfinite(bilinear["psnr"]) and bilinear["error"] == ""
    md = (tmp_path / "b" / "results.md").read_text()
    assert "| broken | failed: RuntimeError: out of cheese | | | | | |" in md
    assert f"| bilinear | **{bilinear['psnr']:.2f}** |" in md  # the best of those that ran
    assert "| broken | – | – | – | 0.0 |" in md  # the summary: no mean of nothing
    assert f"| bilinear | {bilinear['psnr']:.2f} | {bilinear['ssim']:.3f} | {bilinear['consistency']:.1e} |" in md
    assert "broken: FAILED RuntimeError: out of cheese" in capsys.readouterr().err


def test_a_group_mean_over_fewer_cases_says_so(tmp_path, monkeypatch):
    """A method that failed on one case of a group is averaged over the rest, and its summary cell says over how
    many: a mean over fewer cases must not pass for one over all of them."""
    from msifusion.methods import METHODS

    cases = [phantom_case("leaf", "apigenin", seed, 4, (64, 64)) for seed in (3, 4)]

    calls = []

    def fails_on_the_second(problem, options):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of cheese")
        return METHODS["bilinear"].run(problem, options)

    monkeypatch.setitem(METHODS, "flaky", replace(METHODS["bilinear"], name="flaky", run=fails_on_the_second))
    config = BenchmarkConfig(methods=("flaky",), panels=False, runtime=QUIET)
    first, second = run_benchmark(BenchmarkRequest(tmp_path / "b", config, cases=cases))
    assert math.isfinite(first["psnr"]) and math.isnan(second["psnr"])
    md = (tmp_path / "b" / "results.md").read_text()
    assert (f"| flaky | {first['psnr']:.2f} (1 of 2 cases) | {first['ssim']:.3f} (1 of 2 cases) "
            f"| {first['consistency']:.1e} (1 of 2 cases) |") in md


def test_a_perfect_case_keeps_the_group_mean_infinite():
    from msifusion.workflows.benchmark import _mean_cell

    assert _mean_cell([20.0, math.inf], str) == "inf"
    assert _mean_cell([20.0, 30.0, math.nan], str) == "25.0 (2 of 3 cases)"
    assert _mean_cell([math.nan], str) == "–"


def test_epoch_cap_applies_to_trained_methods(tmp_path, small_cases):
    config = BenchmarkConfig(methods=("lcrn", "bilinear"), epoch_cap=2, panels=False, runtime=QUIET)
    rows = run_benchmark(BenchmarkRequest(tmp_path / "b", config, cases=small_cases[:1]))
    lcrn, bilinear = rows
    assert lcrn["epochs"] == 2 and lcrn["epoch_cap"] == 2 and math.isfinite(lcrn["psnr"])
    assert bilinear["epochs"] == 0 and bilinear["epoch_cap"] == ""
    assert "2 (cap)" in (tmp_path / "b" / "results.md").read_text()
    assert "Trained methods capped at 2 epochs" in (tmp_path / "b" / "results.md").read_text()
    assert not (tmp_path / "b" / "panels").exists()  # --no-panels: no empty folder either
    only_bilinear = BenchmarkConfig(methods=("bilinear",), epoch_cap=2, panels=False, runtime=QUIET)
    run_benchmark(BenchmarkRequest(tmp_path / "c", only_bilinear, cases=small_cases[:1]))
    assert "capped" not in (tmp_path / "c" / "results.md").read_text()  # no trained method ran: no cap to mention
    fused = fuse(small_cases[0].guide, small_cases[0].measured, "lcrn",
                 MethodOptions(FitConfig(max_epochs=2), Runtime(quiet=True))).image
    c = small_cases[0]
    assert lcrn["psnr"] == pytest.approx(score(fused, c.truth, c.measured, c.factor, c.guide).psnr, rel=1e-6)


def test_a_request_names_a_misplaced_config(tmp_path, small_cases):
    with pytest.raises(TypeError, match="^BenchmarkRequest.config must be a BenchmarkConfig, not PosixPath$"):
        BenchmarkRequest(BenchmarkConfig(), tmp_path / "b")  # the order run_benchmark once took
    request = BenchmarkRequest(tmp_path / "b", cases=small_cases)  # a list of your own cases, kept as a tuple
    assert request.config == BenchmarkConfig() and request.cases == tuple(small_cases)


def test_existing_output_needs_overwrite(tmp_path, small_cases):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="no earlier msifusion output"):
        config = BenchmarkConfig(methods=("bilinear",), runtime=QUIET)
        run_benchmark(BenchmarkRequest(out, config, cases=small_cases[:1]))
    assert (out / "keep.txt").exists()
