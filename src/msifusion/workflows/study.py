"""``msifusion study``: the paper's Figure 4 as a command: does the edge-loss rule stop well?

LCRN is fitted with the paper's recipe but *without* early stopping, up to an epoch cap
(300 by default), and its output is taken every ``checkpoint_every`` epochs. Per checkpoint:
the MSE to the interpolated ion (what the network is fitted to), PSNR and SSIM against the
interpolated ion and, when a truth is known, against the truth, the edge perceptual loss
against the optical, and the consistency error. The paper's stopping rule (stop after
``patience`` total epoch-to-epoch increases of the edge loss) is replayed on the training
history with :class:`msifusion.fit.EdgeLossStopper`, so the study marks exactly the epoch at
which :func:`msifusion.fit.fit_network` would have stopped, and, with a truth, the epoch of
the best true PSNR: the gap between the two is the answer.

Epoch bookkeeping: ``fit_network`` records epoch *e*'s losses on the output *before* that
epoch's step, and a checkpoint of epoch *e* (and the image ``fit_network`` returns when it
stops at *e*) is the output *after* it. The study marks the stop at epoch *e*, whose
checkpoint is the image the rule would have returned.

Inputs: the synthetic phantom (default; truth known), or ``optical`` + ``ion`` files
(registered, as for ``msifusion fuse``) with an optional ``truth`` image on the optical's
grid. Outputs: ``study.csv`` (one row per epoch), ``study.png`` (the curves on a log epoch
axis, panels a–f, after Figure 4 a–d, g), ``checkpoints.png`` (a strip of checkpoint images, Figure 4e),
``checkpoints/epoch_NNNN.tiff`` for the epochs in the strip, and ``run.json``.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from msifusion.errors import InputError, check_setting_types
from msifusion.fit import EdgeLossStopper, FitConfig
from msifusion.runtime import Runtime, check_device
from msifusion.methods import check_scale
from msifusion.phantom import PhantomConfig
from msifusion.provenance import OutputRun
from msifusion.workflows.fusion import RegisteredPair, pair_images


@dataclass(frozen=True)
class StudyConfig:
    """What to study. ``fit`` is the recipe; its ``patience`` is the stopping rule that is
    *marked* (the run itself never stops early), its ``max_epochs`` the cap, and its ``checkpoint_every`` how often
    the output is scored (every epoch where it is 0, FitConfig's default: a study always scores).

    Inputs: ``optical`` and ``ion`` (and optionally ``truth``) files, or neither for the
    phantom. ``scale``: the magnification (phantom default 10; files: inferred from the
    shapes unless given).
    """

    optical: Path | None = None
    ion: Path | None = None
    truth: Path | None = None
    scale: int | None = None
    ion_pixel_size_um: float | None = None
    phantom: PhantomConfig = PhantomConfig(seed=1)
    fit: FitConfig = FitConfig(max_epochs=300)
    strip: int = 8
    runtime: Runtime = Runtime()

    def __post_init__(self) -> None:
        if (self.optical is None) != (self.ion is None):
            raise InputError("study", "give both --optical and --ion, or neither (the synthetic phantom)")
        if self.truth is not None and self.optical is None:
            raise InputError("--truth", "a truth image needs --optical and --ion")
        if self.checkpoint_every > self.fit.max_epochs:
            raise InputError("--checkpoint-every", f"must be between 1 and the epoch cap ({self.fit.max_epochs})")
        check_scale(self.scale)
        if self.strip < 2:
            raise InputError("--strip", "show at least 2 checkpoints")
        check_device(self.runtime.device)

    @property
    def checkpoint_every(self) -> int:
        """Score the output every this many epochs."""
        return self.fit.checkpoint_every or 1


@dataclass(frozen=True)
class StudyInputs:
    """A registered pair in the ion's units (its notes: what the pairing did; its warnings: what it found), with the
    truth on the guide's grid when known."""

    pair: RegisteredPair
    truth: np.ndarray | None


def load_inputs(config: StudyConfig) -> StudyInputs:
    """The phantom, or the user's files checked against each other."""
    if config.optical is None:
        from msifusion.phantom import make_phantom

        scale = config.scale or 10
        h, w = config.phantom.fine_shape
        phantom_config = replace(config.phantom, fine_shape=(h - h % scale, w - w % scale))
        phantom = make_phantom(phantom_config)
        name = f"synthetic {phantom_config.kind} ({phantom_config.ion}, seed {phantom_config.seed})"
        pair = RegisteredPair(phantom.guide, phantom.measure(scale), scale, phantom_config.fine_pixel_um * scale, name)
        return StudyInputs(pair, phantom.truth)
    from msifusion.io.images import read_ion, read_optical

    pair = pair_images(read_optical(config.optical), read_ion(config.ion), config.scale, config.ion_pixel_size_um)
    truth = None
    if config.truth is not None:
        truth_image = read_ion(config.truth, "truth image")
        truth = truth_image.pixels
        pair.warnings.extend(truth_image.warnings)
        if truth.shape != pair.guide.shape[:2]:
            raise InputError(config.truth, f"truth {truth.shape[0]}×{truth.shape[1]} does not match the optical grid "
                                           f"{pair.guide.shape[0]}×{pair.guide.shape[1]} (ion × {pair.scale})")
    return StudyInputs(pair, truth)


def pick_strip(epochs: list[int], n: int, marked: list[int | None]) -> list[int]:
    """About ``n`` checkpoint epochs spread evenly on a log axis, plus the ``marked`` ones."""
    if not epochs:
        return []
    wanted = np.geomspace(epochs[0], epochs[-1], n) if epochs[-1] > epochs[0] else [epochs[0]]
    arr = np.asarray(epochs)
    picked = {int(arr[np.argmin(np.abs(np.log(arr) - math.log(w)))]) for w in wanted}
    picked |= {e for e in marked if e is not None and e in set(epochs)}
    return sorted(picked)


CSV_FIELDS = ("epoch", "train_mse", "train_edge", "train_total", "seconds", "mse_target", "psnr_target",
              "ssim_target", "edge", "consistency", "mse_truth", "psnr_truth", "ssim_truth", "rule_stops_here")


@dataclass(frozen=True)
class StudyRequest:
    """``msifusion study``: what to study, into which folder."""

    out: Path
    config: StudyConfig = StudyConfig()
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_setting_types(self)  # e.g. (config, out) in the order run_study once took them


def run_study(request: StudyRequest) -> dict:
    """Fit LCRN past its early stop, score every checkpoint, write the study into ``request.out``; returns run.json's
    dict."""
    from msifusion import metrics
    from msifusion.fit import fit_network
    from msifusion.runtime import resolve_device, seeded
    from msifusion.io.images import write_tiff
    from msifusion.models.lcrn import LCRN
    from msifusion.measurement import upsample

    config = request.config
    run = OutputRun(request.out, request.overwrite,
                    {"optical": config.optical, "ion": config.ion, "truth": config.truth})
    inputs = load_inputs(config)
    pair = inputs.pair
    ion = np.asarray(pair.ion, dtype=np.float32)
    intensity = float(np.max(np.abs(ion)))
    if intensity == 0:
        raise InputError(config.ion, "ion image is all zero; nothing to fuse")
    target = upsample(ion / intensity, pair.scale, "bilinear")  # what LCRN is fitted to (normalised)
    target_ion = target * np.float32(intensity)
    guide, truth, scale = pair.guide, inputs.truth, pair.scale
    kernel = config.fit.edge_kernel
    checkpoints: dict[int, dict] = {}

    every, cap = config.checkpoint_every, config.fit.max_epochs
    planned = set(pick_strip(list(range(every, cap + 1, every)), config.strip, []))
    stopper = EdgeLossStopper(config.fit.patience)  # the rule, followed during the fit
    kept: dict[int, np.ndarray] = {}  # only the strip's images, the best so far and the rule's stop
    marks = {"best": None, "stop": None, "rule": None}

    def on_epoch(record: dict) -> None:
        if stopper.update(record["edge"]) and marks["rule"] is None:
            marks["rule"] = record["epoch"]

    def on_checkpoint(epoch: int, image: np.ndarray) -> None:
        fused = image * np.float32(intensity)
        rec = {"mse_target": float(np.mean((image.astype(np.float64) - target) ** 2)),
               "psnr_target": metrics.psnr(fused, target_ion), "ssim_target": metrics.ssim(fused, target_ion),
               "edge": metrics.edge_loss(image, guide, 1.0, kernel),
               "consistency": metrics.consistency_error(fused, ion, scale)}
        if truth is not None:
            rec.update(mse_truth=metrics.mse(fused, truth), psnr_truth=metrics.psnr(fused, truth),
                       ssim_truth=metrics.ssim(fused, truth))
        checkpoints[epoch] = rec
        keep = epoch in planned
        if marks["rule"] is not None and marks["stop"] is None:  # first checkpoint at or after the stop
            marks["stop"], keep = epoch, True
        old = marks["best"]
        if truth is not None and (old is None or rec["psnr_truth"] > checkpoints[old]["psnr_truth"]):
            if old is not None and old not in planned and old != marks["stop"]:
                del kept[old]
            marks["best"], keep = epoch, True
        if keep:
            kept[epoch] = fused.astype(np.float32)

    fit = replace(config.fit, patience=0, checkpoint_every=every)  # the study's run: never stops, always scores
    t_fit = time.perf_counter()
    with seeded(config.runtime.seed):  # the caller's random states are left as they were
        result = fit_network(LCRN(), guide, target, fit, config.runtime, on_checkpoint, desc="study",
                             on_epoch=on_epoch)
    fit_s = time.perf_counter() - t_fit

    history = result.history
    stop = marks["rule"]
    epochs = sorted(checkpoints)
    stop_ckpt = next((e for e in epochs if stop is not None and e >= stop), None)
    best = marks["best"]
    strip = [e for e in pick_strip(epochs, config.strip, [stop_ckpt, best]) if e in kept]
    images = {e: kept[e] for e in strip}

    baseline = {"psnr": metrics.psnr(target_ion, truth), "ssim": metrics.ssim(target_ion, truth)} if truth is not None else None
    summary = _summary(checkpoints, history, stop, stop_ckpt, best, baseline, config)
    with run.staged() as stage:
        write_study_csv(stage / "study.csv", history, checkpoints, stop)
        save_study_plot(stage / "study.png", history, checkpoints, stop, best, baseline, pair.ion_name)
        (stage / "checkpoints").mkdir()
        for e, img in images.items():
            write_tiff(stage / "checkpoints" / f"epoch_{e:04d}.tiff", img, pair.fused_pixel_size_um,
                       [f"{pair.ion_name}, epoch {e}"])
        save_checkpoint_strip(stage / "checkpoints.png", inputs, target_ion, images, checkpoints, stop_ckpt, best)
        record = {
            **run.header("msifusion study"), "inputs": pair.ion_name,
            "phantom": asdict(config.phantom) if config.optical is None else None,
            "scale": scale, "ion_shape": list(ion.shape), "fused_shape": list(target.shape),
            "fine_pixel_size_um": pair.fused_pixel_size_um, "notes": pair.notes, "warnings": pair.warnings,
            "intensity_scale": intensity,
            "fit_settings": asdict(replace(config.fit, checkpoint_every=every)), "run_without_early_stop": True,
            "checkpoint_every": every, "seed": config.runtime.seed,
            "device": str(resolve_device(config.runtime.device)), "epochs_run": result.epochs,
            "summary": summary, "strip_epochs": strip,
        }
        return run.finish(stage, record, fit_with_checkpoints=fit_s)


def _summary(checkpoints: dict[int, dict], history: list[dict], stop: int | None, stop_ckpt: int | None,
             best: int | None, baseline: dict | None, config: StudyConfig) -> dict:
    last = max(checkpoints) if checkpoints else None
    out = {"rule": f"stop after {config.fit.patience} total increases of the edge perceptual loss",
           "rule_stop_epoch": stop, "rule_stop_checkpoint": stop_ckpt, "best_true_psnr_epoch": best,
           "last_epoch": last, "epochs_run": len(history)}
    for label, epoch in (("at_rule_stop", stop_ckpt), ("at_best", best), ("at_last", last)):
        if epoch is not None:
            out[label] = {k: v for k, v in checkpoints[epoch].items()}
    if baseline is not None:
        out["bilinear_vs_truth"] = baseline
    return out


def summary_line(record: dict) -> str:
    """The one-line result ``msifusion study`` prints: where the rule stops (or that it never does), and with a
    truth the best true PSNR against the stop's and bilinear's."""
    s = record["summary"]
    patience = record["fit_settings"]["patience"]
    stop = s["rule_stop_epoch"]
    when = f"stops at epoch {stop}" if stop is not None else f"never stops within {record['epochs_run']} epochs"
    line = f"edge-loss rule (patience {patience}) {when}"
    if s.get("best_true_psnr_epoch"):
        at = s.get("at_rule_stop", {}).get("psnr_truth")
        line += (f"; best true PSNR {s['at_best']['psnr_truth']:.2f} dB at epoch {s['best_true_psnr_epoch']}"
                 + (f", {at:.2f} dB at the stop" if at is not None else "")
                 + f"; bilinear {s['bilinear_vs_truth']['psnr']:.2f} dB")
    return line


def write_study_csv(path: Path, history: list[dict], checkpoints: dict[int, dict], stop: int | None) -> Path:
    """One row per epoch: training losses, and the checkpoint's scores where one was taken."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in history:
            e = r["epoch"]
            row = {"epoch": e, "train_mse": r["mse"], "train_edge": r["edge"], "train_total": r["total"],
                   "seconds": r["seconds"], "rule_stops_here": int(e == stop), **checkpoints.get(e, {})}
            writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def _mark(ax, stop: int | None, best: int | None) -> None:
    if stop is not None:
        ax.axvline(stop, color="tab:red", ls="--", lw=1, label=f"edge rule stops ({stop})")
    if best is not None:
        ax.axvline(best, color="tab:green", ls=":", lw=1.4, label=f"best true PSNR ({best})")


def save_study_plot(path: Path, history: list[dict], checkpoints: dict[int, dict], stop: int | None,
                    best: int | None, baseline: dict | None, name: str) -> Path:
    """Figure 4 a–d, g as panels a–f: metric curves per epoch on a log epoch axis, stop and best epochs marked."""
    from msifusion.report import new_figure, save_figure

    ep = np.array([r["epoch"] for r in history])
    ce = np.array(sorted(checkpoints))
    col = lambda key: np.array([checkpoints[e].get(key, np.nan) for e in ce], dtype=float)  # noqa: E731
    truth = "psnr_truth" in (checkpoints[ce[0]] if len(ce) else {})
    fig = new_figure((13, 7), 110)
    axes = fig.subplots(2, 3)
    a, b, c, d, e, f = axes.ravel()
    a.plot(ep, [r["mse"] for r in history], color="tab:blue", lw=1, label="training MSE (before step)")
    a.plot(ce, col("mse_target"), ".", ms=2.5, color="tab:blue", alpha=0.5, label="checkpoint MSE")
    a.set(yscale="log", title="a) MSE to the interpolated ion", ylabel="normalised units")
    b.plot(ce, col("psnr_target"), color="0.4", lw=1, label="vs interpolated ion")
    c.plot(ce, col("ssim_target"), color="0.4", lw=1, label="vs interpolated ion")
    if truth:
        b.plot(ce, col("psnr_truth"), color="tab:purple", lw=1.4, label="vs truth")
        c.plot(ce, col("ssim_truth"), color="tab:purple", lw=1.4, label="vs truth")
        if baseline is not None:
            b.axhline(baseline["psnr"], color="tab:purple", lw=0.8, ls="-.", label="bilinear vs truth")
            c.axhline(baseline["ssim"], color="tab:purple", lw=0.8, ls="-.", label="bilinear vs truth")
    b.set(title="b) PSNR per checkpoint", ylabel="dB")
    c.set(title="c) SSIM per checkpoint")
    d.plot(ce, col("edge"), color="tab:orange", lw=1)
    d.set(yscale="log", title="d) edge perceptual loss vs optical (checkpoints)")
    e.plot(ce, col("consistency"), color="tab:brown", lw=1)
    e.set(yscale="log", title="e) consistency error per checkpoint")
    edge = np.array([r["edge"] for r in history])
    f.plot(ep, edge, color="tab:orange", lw=1, label="edge loss (training)")
    ups = np.flatnonzero(np.diff(edge) > 0) + 1
    f.plot(ep[ups], edge[ups], "v", color="tab:red", ms=3, label="increase")
    f.set(yscale="log", title="f) edge perceptual loss per epoch")
    for ax in axes.ravel():
        _mark(ax, stop, best)
        ax.set_xscale("log")
        ax.set_xlabel("epoch")
        ax.grid(True, which="both", alpha=0.25)
    for ax in (a, b, c, f):
        ax.legend(fontsize=7)
    fig.suptitle(f"LCRN training study: {name}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def save_checkpoint_strip(path: Path, inputs: StudyInputs, target_ion: np.ndarray, images: dict[int, np.ndarray],
                          checkpoints: dict[int, dict], stop: int | None, best: int | None) -> Path:
    """Figure 4e: the optical, the interpolated ion, selected checkpoints, the truth; one colour scale."""
    from msifusion.report import save_panel

    panels = [("optical (guide)", inputs.pair.guide), ("interpolated ion (target)", target_ion)]
    for e, img in images.items():
        tags = [t for t, hit in (("rule stops", e == stop), ("best true PSNR", e == best)) if hit]
        rec = checkpoints[e]
        score = f"PSNR {rec['psnr_truth']:.1f} dB" if "psnr_truth" in rec else f"edge {rec['edge']:.3g}"
        panels.append((f"epoch {e}{' (' + ', '.join(tags) + ')' if tags else ''}  {score}", img))
    if inputs.truth is not None:
        panels.append(("truth", inputs.truth))
    reference = inputs.truth if inputs.truth is not None else target_ion
    return save_panel(path, panels, inputs.pair.fused_pixel_size_um, title=f"checkpoints: {inputs.pair.ion_name}",
                      reference=reference)
