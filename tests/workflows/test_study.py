"""The LCRN training study (Figure 4): where the edge-loss rule stops, and the outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.fit import EdgeLossStopper, FitConfig, fit_network
from msifusion.runtime import Runtime, seed_everything
from msifusion.phantom import PhantomConfig, make_phantom
from msifusion.measurement import upsample
from msifusion.metrics import psnr
from msifusion.workflows.study import (StudyConfig, StudyRequest, pick_strip, run_study, save_study_plot,
                                       summary_line)

TINY = PhantomConfig(fine_shape=(64, 96), seed=1)
FIT = FitConfig(max_epochs=24, lr=1e-3)  # stops (patience 5) well before the cap on this phantom


def test_pick_strip_log_spaced_with_marked_epochs():
    epochs = list(range(1, 301))
    strip = pick_strip(epochs, 5, [37, None])
    assert strip == sorted(set(strip)) and strip[0] == 1 and strip[-1] == 300 and 37 in strip
    assert set(strip) - {37} == {1, 4, 17, 72, 300}  # geomspace(1, 300, 5) rounded on a log scale
    assert pick_strip([5, 10, 15], 8, [10]) == [5, 10, 15]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    np.random.seed(123)
    record = run_study(StudyRequest(out, StudyConfig(phantom=TINY, scale=4, fit=FIT, strip=3,
                                                  runtime=Runtime(quiet=True))))
    record["caller_draw"] = np.random.rand()  # the caller's random state, left as it was
    with open(out / "study.csv") as fh:
        rows = list(csv.DictReader(fh))
    return out, record, rows


def test_study_runs_past_the_stop_and_marks_where_the_rule_stops(study):
    out, record, rows = study
    np.random.seed(123)
    assert record["caller_draw"] == np.random.rand()
    summary = record["summary"]
    assert record["epochs_run"] == FIT.max_epochs == len(rows)  # no early stop in the study
    stopper = EdgeLossStopper(FIT.patience)  # replay the recorded history
    expected = next(int(r["epoch"]) for r in rows if stopper.update(float(r["train_edge"])))
    assert summary["rule_stop_epoch"] == expected < FIT.max_epochs
    assert (out / "checkpoints" / f"epoch_{expected:04d}.tiff").exists()  # the image kept for the strip is the stop's
    assert [int(r["epoch"]) for r in rows if r["rule_stops_here"] == "1"] == [expected]

    # A real early-stopped fit (same seed) stops at that epoch and returns that checkpoint.
    phantom = make_phantom(TINY)
    ion = phantom.measure(4)
    target = upsample(ion / np.abs(ion).max(), 4, "bilinear")
    seed_everything(0)
    from msifusion.models.lcrn import LCRN

    fitted = fit_network(LCRN(), phantom.guide, target, FIT, Runtime(quiet=True))
    assert fitted.epochs == expected
    for mine, theirs in zip(rows, fitted.history):
        assert float(mine["train_edge"]) == pytest.approx(theirs["edge"], rel=1e-6)
    from msifusion.io.images import read_ion

    saved = read_ion(out / "checkpoints" / f"epoch_{expected:04d}.tiff").pixels
    np.testing.assert_allclose(saved, fitted.image * np.abs(ion).max(), rtol=1e-5, atol=1e-6)


def test_study_scores_and_outputs(study):
    out, record, rows = study
    summary = record["summary"]
    truth_psnr = {int(r["epoch"]): float(r["psnr_truth"]) for r in rows}
    assert summary["best_true_psnr_epoch"] == max(truth_psnr, key=truth_psnr.get)
    assert summary["at_rule_stop"]["psnr_truth"] == pytest.approx(truth_psnr[summary["rule_stop_epoch"]], rel=1e-6)
    phantom = make_phantom(TINY)
    bilinear = psnr(upsample(phantom.measure(4), 4, "bilinear"), phantom.truth)  # the study's own phantom and scale
    assert summary["bilinear_vs_truth"]["psnr"] == pytest.approx(bilinear, abs=1e-4)
    for name in ("study.csv", "study.png", "checkpoints.png", "run.json"):
        assert (out / name).stat().st_size > 0
    tiffs = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert tiffs == [f"epoch_{e:04d}.tiff" for e in record["strip_epochs"]]
    assert {summary["rule_stop_epoch"], summary["best_true_psnr_epoch"], 1, FIT.max_epochs} <= set(record["strip_epochs"])
    assert json.loads((out / "run.json").read_text())["fit_settings"]["patience"] == FIT.patience


def test_study_from_files_checks_the_truth_grid(tmp_path):
    from msifusion.io.images import write_rgb_tiff, write_tiff

    phantom = make_phantom(TINY)
    write_rgb_tiff(tmp_path / "opt.tiff", phantom.guide, 1.0)  # 1 µm optical pixels: 4 µm ion pixels at ×4
    write_tiff(tmp_path / "ion.tiff", phantom.measure(4))
    write_tiff(tmp_path / "truth.tiff", phantom.truth)
    write_tiff(tmp_path / "small.tiff", phantom.truth[:32])
    base = dict(optical=tmp_path / "opt.tiff", ion=tmp_path / "ion.tiff", strip=2, runtime=Runtime(quiet=True),
                fit=FitConfig(max_epochs=3, checkpoint_every=2))
    with pytest.raises(InputError, match="small.tiff"):
        run_study(StudyRequest(tmp_path / "bad", StudyConfig(truth=tmp_path / "small.tiff", **base)))
    assert not (tmp_path / "bad").exists()
    record = run_study(StudyRequest(tmp_path / "ok", StudyConfig(truth=tmp_path / "truth.tiff", ion_pixel_size_um=7.0,
                                                                 **base)))
    assert record["scale"] == 4 and record["epochs_run"] == 3
    assert record["fine_pixel_size_um"] == 7.0 / 4  # as given, with what the pairing found, as fuse records it
    assert record["notes"] == ["ion pixel size as given (--pixel-size)"]
    assert record["warnings"] == ["--pixel-size (7 µm per ion pixel) disagrees with the optical's calibration (1 µm "
                                  "per optical pixel, i.e. 4 µm per ion pixel) by 1.8×; the outputs use 7 µm per ion "
                                  "pixel"]
    assert record["fit_settings"]["checkpoint_every"] == record["checkpoint_every"] == 2  # what the fit ran with
    with open(tmp_path / "ok" / "study.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["psnr_truth"] != "" for r in rows] == [False, True, False]  # checkpoints every 2 epochs
    with pytest.raises(InputError, match="holds the input"):  # --overwrite never deletes the inputs
        run_study(StudyRequest(tmp_path, StudyConfig(truth=tmp_path / "truth.tiff", **base), overwrite=True))
    assert (tmp_path / "opt.tiff").exists()


def test_a_truth_read_in_spite_of_a_fault_is_reported(tmp_path):
    import tifffile

    from msifusion.io.images import write_rgb_tiff, write_tiff
    from msifusion.workflows.study import load_inputs

    phantom = make_phantom(TINY)
    write_rgb_tiff(tmp_path / "opt.tiff", phantom.guide, 1.0)
    write_tiff(tmp_path / "ion.tiff", phantom.measure(4))
    tifffile.imwrite(tmp_path / "whole.ome.tif", phantom.truth, metadata={"axes": "YX"})  # description after pixels
    data = (tmp_path / "whole.ome.tif").read_bytes()
    (tmp_path / "cut.ome.tif").write_bytes(data[:data.index(b"<?xml") + 10])
    inputs = load_inputs(StudyConfig(optical=tmp_path / "opt.tiff", ion=tmp_path / "ion.tiff",
                                     truth=tmp_path / "cut.ome.tif"))
    np.testing.assert_array_equal(inputs.truth, phantom.truth)
    assert [w.split(":")[0] for w in inputs.pair.warnings] == ["cut.ome.tif looks damaged or cut short"]


def test_study_config_needs_both_files():
    with pytest.raises(InputError, match="both"):
        StudyConfig(optical="a.png")
    with pytest.raises(InputError, match="truth"):
        StudyConfig(truth="t.tiff")
    with pytest.raises(TypeError, match="^StudyRequest.config must be a StudyConfig, not str$"):
        StudyRequest(StudyConfig(), "out")  # the order run_study once took


def test_the_study_scores_every_fit_checkpoint_every_epochs_and_every_epoch_by_default():
    assert StudyConfig().checkpoint_every == 1 and StudyConfig(fit=FitConfig(max_epochs=9)).checkpoint_every == 1
    assert StudyConfig(fit=FitConfig(max_epochs=9, checkpoint_every=3)).checkpoint_every == 3
    with pytest.raises(InputError, match=r"^--checkpoint-every: must be between 1 and the epoch cap \(9\)$"):
        StudyConfig(fit=FitConfig(max_epochs=9, checkpoint_every=10))


def test_summary_line_reads_well_whether_or_not_the_rule_stops(study):
    _, record, _ = study
    s = record["summary"]
    stop = s["rule_stop_epoch"]
    at_best, at_stop = s["at_best"]["psnr_truth"], s["at_rule_stop"]["psnr_truth"]
    bilinear = s["bilinear_vs_truth"]["psnr"]
    assert summary_line(record) == (f"edge-loss rule (patience 5) stops at epoch {stop}; best true PSNR {at_best:.2f} "
                                    f"dB at epoch {s['best_true_psnr_epoch']}, {at_stop:.2f} dB at the stop; "
                                    f"bilinear {bilinear:.2f} dB")
    never = {**record, "summary": {**s, "rule_stop_epoch": None, "rule_stop_checkpoint": None}}
    del never["summary"]["at_rule_stop"]
    assert summary_line(never) == (f"edge-loss rule (patience 5) never stops within 24 epochs; best true PSNR "
                                   f"{at_best:.2f} dB at epoch {s['best_true_psnr_epoch']}; bilinear {bilinear:.2f} dB")


def test_study_plot_panels_are_lettered_a_to_f(tmp_path, monkeypatch):
    from msifusion.report import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: figures.append(self))
    history = [{"epoch": e, "mse": 1.0 / e, "edge": 1.0 + (e % 2)} for e in (1, 2, 3)]
    checkpoints = {e: {"mse_target": 1.0 / e, "psnr_target": 20.0 + e, "ssim_target": 0.5, "edge": 1.0,
                       "consistency": 0.1} for e in (1, 2, 3)}
    save_study_plot(tmp_path / "study.png", history, checkpoints, 2, None, None, "test")
    monkeypatch.undo()
    titles = [ax.get_title() for ax in figures[0].axes]
    assert [t.split(")")[0] for t in titles] == ["a", "b", "c", "d", "e", "f"]
    assert titles[-1] == "f) edge perceptual loss per epoch"


def test_a_bad_truth_file_is_called_the_truth_image(tmp_path):
    from msifusion.io.images import write_rgb_tiff, write_tiff

    phantom = make_phantom(TINY)
    write_rgb_tiff(tmp_path / "opt.tiff", phantom.guide)
    write_tiff(tmp_path / "ion.tiff", phantom.measure(4))
    truth = phantom.truth.copy()
    truth[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", truth)
    np.save(tmp_path / "zero.npy", np.zeros_like(truth))
    (tmp_path / "truth.png").write_bytes(b"")
    base = dict(optical=tmp_path / "opt.tiff", ion=tmp_path / "ion.tiff", fit=FitConfig(max_epochs=2),
                runtime=Runtime(quiet=True))
    for name, problem in (("nan.npy", "truth image has 1 NaN/inf pixel(s)"), ("zero.npy", "truth image is all zero"),
                          ("truth.png", "unsupported truth image format .png"),
                          ("missing.tiff", "truth image file not found")):
        with pytest.raises(InputError) as caught:
            run_study(StudyRequest(tmp_path / "out", StudyConfig(truth=tmp_path / name, **base)))
        assert caught.value.source == str(tmp_path / name) and caught.value.problem.startswith(problem)
    assert not (tmp_path / "out").exists()
