"""The self-supervised choice of how far to trust the optical: per ion, the ladder setting, the texture
strength β and the ion's spread or thin plate, by predicting the measurement from its 2×2 block average
(:func:`choose_settings`), and the paired per-block walk that decides each step (:func:`_walk`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from msifusion.harmonic.config import WINDOW_PIXELS, HarmonicConfig, window_shrink
from msifusion.harmonic.panel import _Basis
from msifusion.harmonic.setting import _finish, _Guide, _plate_image, _Problem, _solve_setting
from msifusion.measurement import block_mean_t, gaussian_block_mean_t


# ----------------------------------------------------------------------------- choosing the setting


@dataclass(frozen=True)
class _Plan:
    """Where and what the coarse test tries: its window's first block (``row``, ``col``) and size in blocks (an even
    number each way), the 2×2 grouping's ``phases`` (shifts of the window by one block) and the texture strengths
    ``betas``."""

    row: int
    col: int
    rows: int
    cols: int
    phases: tuple[tuple[int, int], ...]
    betas: tuple[float, ...]

    @property
    def blocks(self) -> int:
        """The blocks tested per ion, over every phase."""
        return len(self.phases) * self.rows * self.cols


def _window(H: int, W: int, f: int, pixels: int) -> tuple[int, int, int, int]:
    """A central window of whole blocks, an even number each way, at most ``pixels`` fine pixels, leaving
    one spare block row and column (for the shifted 2×2 phases) where the image has them.

    Returns (first block row, first block col, block rows, block cols).
    """
    h, w = H // f, W // f
    shrink = window_shrink(H, W, pixels)
    hh = min(max(2, int(h * shrink)), h - 1 if h > 2 else h)
    ww = min(max(2, int(w * shrink)), w - 1 if w > 2 else w)
    hh -= hh % 2
    ww -= ww % 2
    return (h - hh) // 2, (w - ww) // 2, hh, ww


def _plan(gd: _Guide) -> _Plan | str:
    """The coarse test on the guide ``gd``, or why none is run (every ion keeps the first setting): one setting to
    choose from and no spread or plate to try, or fewer than 16 coarse pixels. Up to four phases, while the pixels
    tested stay within ``config.test.pixels``; texture strengths beyond none only where the optical's texture stands
    above the camera's noise."""
    f, config = gd.f, gd.config
    if len(config.ladder.rungs) == 1 and len(config.texture.strengths) == 1 and not _smoothings(config):
        return "one setting"
    H, W = gd.image.shape[:2]
    r0, c0, hh, ww = _window(H, W, f, min(config.test.pixels, WINDOW_PIXELS))
    if hh < 2 or ww < 2 or (hh // 2) * (ww // 2) < 16:
        return "image too small to test; first setting"
    h, w = H // f, W // f
    phases = [(a, b) for a, b in [(0, 0), (1, 1), (0, 1), (1, 0)] if r0 + a + hh <= h and c0 + b + ww <= w]
    phases = phases[:max(1, min(len(phases), config.test.pixels // (hh * ww * f * f)))]
    textured = gd.texture_snr_db is not None and gd.texture_snr_db >= config.texture.snr_db
    return _Plan(r0, c0, hh, ww, tuple(phases), config.texture.strengths if textured else config.texture.strengths[:1])


def choose_settings(gd: _Guide, ions: torch.Tensor, taus: torch.Tensor, nonneg: torch.Tensor,
                    basis: _Basis | None = None) -> tuple[list[tuple[int, int, int]], list[dict]]:
    """Per ion, the ladder setting, the texture strength and the spread to use, by self-supervised coarse-level
    prediction.

    The measurement (a central window, an even number of blocks) is block-averaged 2×2;
    each setting fuses that coarser image at scale 2f with the same optical, and the
    result's block means at scale f are compared with the real measurement. Up to four
    phases of the 2×2 grouping (shifted by one block) are used while the pixels tested stay
    within ``config.test.pixels``, for a steadier test on small images (:func:`_plan`). Walking up the ladder, a
    setting is taken if its per-block squared errors beat the current choice's by more than
    ``config.ladder.significance`` standard errors (of the differences winsorised at ``config.test.winsor_percent``),
    on significantly more blocks than they lose (``config.ladder.sign_significance``; :func:`_walk`); where a sharper
    setting then predicts significantly worse than the choice, one setting smoother is taken
    (``config.ladder.turn_back``, :func:`_turn_back`; the note ``turned_back`` says so). Too small an image (fewer
    than 16 coarse pixels) keeps the first setting. With a shared ``basis``
    (``ions`` ≈ coefficients @ basis images), only the basis images are solved and each ion's
    coarse prediction is their mixture, made consistent with its own coarse measurement: the
    same test per ion at the basis's cost.
    Then, at the chosen setting, the same walk (without the sign test) over ``config.texture.strengths``
    picks the strength β of the optical-texture step: only where a block spans 5 σ of it and the
    non-negativity step applies, to ions whose whole measurement is non-negative, ``nonneg`` (K,),
    and whose walk left the ladder's first setting (an ion that does not follow the optical's
    edges does not get its finer texture either; a one-setting ladder counts as trusted).
    Last, at the chosen setting and β, the spread (:class:`~msifusion.harmonic.config.SpreadSettings`,
    :func:`_smoothing_errors`, :func:`_choose_spread`), and where none is taken the thin plate
    (:class:`~msifusion.harmonic.config.PlateSettings`, :func:`_choose_plate`).
    ``gd``: the guide and what all its ions share; ``taus``: the ions' refinement scales.
    Returns (setting index, texture index, spread index, plate index; for the last two 0 is none and i the i-th
    width or length) per ion, and notes for ``run.json``.
    """
    config = gd.config
    K = ions.shape[0]
    plan = _plan(gd)
    if isinstance(plan, str):
        first = list(config.ladder.rungs[0])
        return [(0, 0, 0, 0)] * K, [{"ladder": [list(s) for s in config.ladder.rungs], "chosen": first,
                                     "texture": config.texture.strengths[0], "spread_px": 0.0, "spread_coarse_mse": [],
                                     "plate_px": 0.0, "plate_coarse_mse": [], "selection": plan} for _ in range(K)]
    batch = config.panel.batch_on(gd.device)
    # through a basis the ions are tested in groups (of whole batches, at least one) whose per-block errors stay under
    # COARSE_ERRORS_BYTES (at ×4 an ion's outweigh its fused image); the ladder's solutions are then the basis
    # images' and serve every group, so with more than one group they are kept (phases × settings × the basis's
    # images × the window: at most 6 × 32 × 1.2 M floats), as are the phases' setups. Without a basis every ion is
    # solved, in one group (the caller's batch), one phase at a time as it needs, and the ladder's solutions are kept
    # for the spread's and the plate's test (settings × phases × the batch × the window: 6 × 4 × 0.6 M floats per ion;
    # a solve per phase and ion saved, a tenth of a panel's time). Through a basis that test solves each ion's chosen
    # setting again on the phases' setups (in every group the same: ``resolved``), so those are kept whenever it runs.
    per_ion = (len(config.ladder.rungs) * len(plan.betas) + 1 + _smoothings(config)) * plan.blocks * 4
    group = max(K, 1) if basis is None else max(1, COARSE_ERRORS_BYTES // per_ion // batch) * batch
    if basis is None:
        kept = _Kept() if _smoothings(config) else None
    else:
        kept = _Kept() if group < K else _Kept(solutions=False) if _smoothings(config) else None
    chosen, notes = [], []
    for start in range(0, K, group):
        stop = min(K, start + group)
        errors = _coarse_errors(gd, ions, taus, nonneg, basis, plan, slice(start, stop), kept)
        picked = []
        for k in range(stop - start):
            testable = len(plan.betas) > 1 and bool(nonneg[start + k])  # _finish applies β to non-negative ions only
            choice, note = _choose_one([e[:, k] for e in errors], config, gd.texture_snr_db, testable,
                                       len(plan.phases))
            picked.append(choice)
            notes.append(note)
        del errors  # before the spread's and the next group's
        smooth, signal = (_smoothing_errors(gd, nonneg, basis, plan, slice(start, stop), kept, picked)
                          if _smoothings(config) else (None, None))
        widths = len(config.spread.widths)
        for k, (i, j) in enumerate(picked):
            spread = None if smooth is None else smooth[:widths + 1, k]
            plate = None if smooth is None else torch.cat([smooth[:1, k], smooth[widths + 1:, k]])
            width = 0 if spread is None else _choose_spread(spread, float(signal[k]), config)
            length = 0 if width or plate is None else _choose_plate(plate, float(signal[k]), config)
            chosen.append((i, j, width, length))
            notes[start + k].update({"spread_px": float(config.spread.widths[width - 1] * gd.f) if width else 0.0,
                                     "spread_coarse_mse": [] if spread is None or len(spread) == 1 else
                                     list(map(float, spread.mean(1))),
                                     "plate_px": float(config.plate.lengths[length - 1] * gd.f) if length else 0.0,
                                     "plate_coarse_mse": [] if plate is None or len(plate) == 1 else
                                     list(map(float, plate.mean(1)))})
        del smooth
    return chosen, notes


COARSE_ERRORS_BYTES = 256 * 2**20  # the coarse test's per-block errors held at once, through a shared basis


@dataclass
class _Kept:
    """What the coarse test keeps between groups of ions through a basis, and for the spread's and the plate's test:
    each phase's setup (:func:`_phase_setup`), and with ``solutions`` each (phase, setting)'s solution (of the basis
    images, or without a basis of the batch's ions), in the ladder's walk (``solved``, each warm-started from the
    setting before) and, through a basis, solved again alone for that test (``resolved``: the same for every group of
    ions, however they are grouped)."""

    solutions: bool = True
    setups: dict[int, tuple] = field(default_factory=dict)
    solved: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    resolved: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


def _coarse_errors(gd: _Guide, ions: torch.Tensor, taus: torch.Tensor, nonneg: torch.Tensor, basis: _Basis | None,
                   plan: _Plan, group: slice, kept: _Kept | None) -> torch.Tensor:
    """The coarse test's per-block squared errors of the ions in ``group``: (setting, β, ion, block of every phase).

    Written in place: one allocation, not one per ion, setting, β and phase to concatenate (367 ions left 3 GB of
    freed heap the process kept). Without a basis the group is one batch; through one, the basis images' solutions
    serve each batch of ions, and ``kept`` (if any) holds them for the next group."""
    config, device = gd.config, gd.device
    batch = config.panel.batch_on(device)
    cells = plan.rows * plan.cols
    errors = torch.empty((len(config.ladder.rungs), len(plan.betas), group.stop - group.start, plan.blocks),
                         device=device)
    parts = ([group] if basis is None else
             [slice(k, min(k + batch, group.stop)) for k in range(group.start, group.stop, batch)])
    for p, (a, b) in enumerate(plan.phases):
        setup = kept.setups.get(p) if kept is not None else None
        if setup is None:
            setup = _phase_setup(gd, ions, taus, basis, plan.row + a, plan.col + b, plan.rows, plan.cols,
                                 any(plan.betas))
            if kept is not None:
                kept.setups[p] = setup
        y, y2, pb, measure_f, detail = setup
        blocks = slice(p * cells, (p + 1) * cells)
        first = None
        for i, (q, passes) in enumerate(config.ladder.rungs):
            x = kept.solved.get((p, i)) if kept is not None else None
            if x is None:
                x, first = _solve_setting(pb, q, passes, first, config.test.tolerance)
                if kept is not None and kept.solutions:
                    kept.solved[p, i] = x
            for part in parts:
                here = slice(part.start - group.start, part.stop - group.start)
                xp = x if basis is None else pb.op.project(basis.mix(x, part), y2[part])
                for j, beta in enumerate(plan.betas):
                    xt = _finish(xp, y2[part], pb.op, config.positive, nonneg[part],
                                 torch.tensor(beta, device=device), detail)
                    errors[i, j, here, blocks] = (measure_f.A(xt) - y[part]).pow(2).flatten(1)
    return errors


def _smoothings(config: HarmonicConfig) -> int:
    """How many smoothings the last test tries: the spread's widths and the plate's lengths."""
    return len(config.spread.widths) + len(config.plate.lengths)


def _smoothing_errors(gd: _Guide, nonneg: torch.Tensor, basis: _Basis | None, plan: _Plan, group: slice,
                      kept: _Kept, picked: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The coarse test's per-block squared errors of the ions in ``group`` at their ``picked`` (setting, β): as they
    are, blurred by each of ``config.spread.widths`` (σ = width · f fine pixels, the width the output would get at
    scale f), and replaced by the thin plate of each of ``config.plate.lengths`` (ℓ = length · f fine pixels, made
    exact as the output is): (1 + widths + lengths, ion, block of every phase); and each ion's mean squared
    measurement over the windows. On the phases' setups that :func:`_coarse_errors` put in ``kept``.

    Without a basis the ladder's own solutions serve (``kept.solved``); through one, each chosen setting is solved
    again, once per phase for all the ions that chose it (in groups, once for every group: ``kept.resolved``): keeping
    every setting's solution of a basis of 32 images would hold 6 × 32 × 1.2 M floats. The
    blurred coarse image is not made exact again at 2f, so a width must predict the measurement through the mass it
    moves between coarse blocks too (measured: made exact again, the test also took the widest blur on two prostate
    ions the optical does not help, for −0.02 and +0.00 dB). A blur then the box average is one strided
    convolution (:func:`msifusion.measurement.gaussian_block_mean_t`); a spot's width and the blur's add in
    quadrature (Gaussians compose)."""
    config, device, f = gd.config, gd.device, gd.f
    sigmas = [math.hypot(gd.measurement.spot_sigma_px, width * f) for width in config.spread.widths]
    cells = plan.rows * plan.cols
    errors = torch.empty((1 + _smoothings(config), group.stop - group.start, plan.blocks), device=device)
    signal = torch.zeros(group.stop - group.start, device=device)
    for p in range(len(plan.phases)):
        y, y2, pb, measure_f, detail = kept.setups[p]
        blocks = slice(p * cells, (p + 1) * cells)
        solved: dict[int, torch.Tensor] = {}
        for k, (i, j) in enumerate(picked):
            if i not in solved:
                solved[i] = kept.resolved.get((p, i)) if basis is not None else kept.solved.get((p, i))
                if solved[i] is None:
                    solved[i], _ = _solve_setting(pb, *config.ladder.rungs[i], None, config.test.tolerance)
                    if kept.solutions:
                        kept.resolved[p, i] = solved[i]
            one = slice(group.start + k, group.start + k + 1)
            x = solved[i][one] if basis is None else pb.op.project(basis.mix(solved[i], one), y2[one])
            beta = torch.tensor(plan.betas[j], device=device)
            xt = _finish(x, y2[one], pb.op, config.positive, nonneg[one], beta, detail)
            errors[0, k, blocks] = (measure_f.A(xt) - y[one]).pow(2).flatten()
            for w, sigma in enumerate(sigmas, 1):
                errors[w, k, blocks] = (gaussian_block_mean_t(xt, f, sigma) - y[one]).pow(2).flatten()
            for w, length in enumerate(config.plate.lengths, 1 + len(sigmas)):
                xp = _plate_image(y2[one], pb.op, length * f, config.positive, nonneg[one], beta, detail)
                errors[w, k, blocks] = (measure_f.A(xp) - y[one]).pow(2).flatten()
            signal[k] += y[one].pow(2).mean() / len(plan.phases)
    return errors, signal


def _solver_noise_only(errors: torch.Tensor, signal: float, config: HarmonicConfig) -> bool:
    """Whether an ion's setting predicts it within what the coarse solves resolve: a mean per-block error below
    ``config.test.tolerance``² of ``signal``, its mean squared measurement (a constant ion, whose errors are the
    solver's): nothing is left for a spread or a plate to explain."""
    return float(errors.mean()) <= config.test.tolerance ** 2 * signal


def _choose_spread(errors: torch.Tensor, signal: float, config: HarmonicConfig) -> int:
    """One ion's spread from its per-block errors at its setting and β, unblurred then at each width ((1 + widths,
    blocks)): 0 (none) unless some width beats none by the ladder's walk (:func:`_walk`, at ``config.spread``'s
    significances); then, from the width whose errors have the least mean, the widest after it whose errors are not
    worse by more than one standard error of the paired differences, not winsorised, as the ordered walk reads a
    turn-up (the one-standard-error rule: the most regularised choice the data cannot tell from the best; measured,
    the test's least error lies below the truth's width: 2 fine pixels for cells blurred by 3, 3 for 4). Returns the
    width's index, 1-based (0: none). An ion its setting already predicts within what the coarse solves resolve (a
    mean error below ``config.test.tolerance``² of ``signal``, its mean squared measurement: a constant ion, whose
    errors are the solver's) keeps none (:func:`_solver_noise_only`)."""
    if _solver_noise_only(errors[0], signal, config):
        return 0
    rules = config.spread.significance, config.spread.sign_significance, config.test.winsor_percent
    if _walk(list(errors), *rules) == 0:
        return 0
    best = chosen = int(errors.mean(1).argmin())
    for wider in range(best + 1, len(errors)):
        mean, se, _, _ = _paired(errors[best], errors[wider], 0.0)
        if mean < -se:
            break
        chosen = wider
    return chosen


def _choose_plate(errors: torch.Tensor, signal: float, config: HarmonicConfig) -> int:
    """One ion's thin plate from its per-block errors at its setting and β, as they are then with each length's plate
    ((1 + lengths, blocks)): the ordered walk (:func:`_walk`) at ``config.plate.significance``, no sign test. Returns
    the length's index, 1-based (0: none); an ion predicted within the coarse solves' tolerance keeps none, as for the
    spread (:func:`_solver_noise_only`)."""
    if _solver_noise_only(errors[0], signal, config):
        return 0
    return _walk(list(errors), config.plate.significance, winsor=config.test.winsor_percent, ordered=True)


def _phase_setup(gd: _Guide, ions: torch.Tensor, taus: torch.Tensor, basis: _Basis | None, row: int, col: int,
                 hh: int, ww: int, textured: bool) -> tuple:
    """One phase of the coarse test, its window's top-left block at (``row``, ``col``): the ions' measurement there
    (y) and its 2×2 block average (y2), the problem each setting solves (of the ions, or of the basis images), the
    measurement at scale f, and the optical's detail where a texture is tested."""
    f, device = gd.f, gd.device
    g = torch.as_tensor(np.ascontiguousarray(gd.image[row * f: (row + hh) * f, col * f: (col + ww) * f]),
                        dtype=torch.float32, device=device)
    y = ions[:, row: row + hh, col: col + ww]
    y2 = block_mean_t(y, 2)
    if basis is None:
        pb = _Problem(g, y2, 2 * f, taus, gd)
    else:
        pb = _Problem(g, block_mean_t(basis.images[:, row: row + hh, col: col + ww], 2), 2 * f, basis.taus, gd)
    return y, y2, pb, gd.measurement.operator(tuple(g.shape[:2]), f, device), gd.detail(g) if textured else None


def _choose_one(errors: list[torch.Tensor], config: HarmonicConfig, texture_snr_db: float | None,
                texture_tested: bool, phases: int) -> tuple[tuple[int, int], dict]:
    """One ion's setting and texture strength from its per-block errors (per setting, a (β, blocks) tensor), and its
    note for ``run.json``."""
    ladder = [list(s) for s in config.ladder.rungs]
    ladder_errors = [e[0] for e in errors]
    rules = config.ladder.significance, config.ladder.sign_significance, config.test.winsor_percent
    walked = _walk(ladder_errors, *rules)
    best = _turn_back(ladder_errors, walked, rules[0], rules[2]) if config.ladder.turn_back else walked
    # no sign test for β: the texture moves only blocks whose wall share differs from their neighbours', so
    # its gain sits in a minority of blocks (measured: with the sign test, dev phantoms lose 0.13 dB)
    tested = (best > 0 or len(config.ladder.rungs) == 1) and texture_tested
    texture_errors = list(errors[best])
    texture = _walk(texture_errors, config.texture.significance, winsor=config.test.winsor_percent,
                    ordered=True) if tested else 0
    prior = tested and texture == 0 and config.texture.flat_prior and _flat(
        texture_errors, config.texture.significance, config.test.winsor_percent)
    texture = 1 if prior else texture
    return (best, texture), {
        "ladder": ladder, "coarse_mse": [float(e[0].mean()) for e in errors], "phases": phases,
        "chosen": ladder[best], "turned_back": best != walked,
        "kept_smoothest": best == 0 and len(ladder) > 1,  # the walk ran and took no step
        "texture": config.texture.strengths[texture],
        "texture_tested": tested, "texture_flat_prior": bool(prior),
        "optical_texture_snr_db": texture_snr_db,
        "texture_coarse_mse": [float(e.mean()) for e in errors[best]]}


def _flat(errors: list[torch.Tensor], significance: float, winsor: float) -> bool:
    """Whether the coarse test could not tell three or more strengths apart: none of them is significantly better or
    worse than none (:attr:`TextureSettings.flat_prior`). A walk that stepped up and was turned back by a worse
    strongest is not flat: that guard stands. Not where the strengths give the same errors: there the texture does
    not act (a signed ion)."""
    if len(errors) < 3 or all(torch.equal(errors[0], e) for e in errors[1:]):
        return False
    for e in errors[1:]:
        mean, se, _, _ = _paired(errors[0], e, winsor)
        if abs(mean) > significance * se:
            return False
    return True


def _paired(a: torch.Tensor, b: torch.Tensor, winsor: float) -> tuple[float, float, int, int]:
    """The paired per-block differences a − b: their mean and standard error after winsorising at ``winsor`` and
    100 − ``winsor`` percent, and the raw counts of blocks where a is larger (wins for b) and smaller."""
    d = a - b
    wins, losses = int((d > 0).sum()), int((d < 0).sum())  # the sign test counts the raw differences
    if winsor > 0 and d.numel() > 1:
        q = torch.tensor([winsor / 100, 1 - winsor / 100], dtype=torch.float64, device=d.device)
        lo, hi = torch.quantile(d.double(), q).tolist()
        d = d.clamp(lo, hi)
    se = float(d.std()) / math.sqrt(d.numel()) if d.numel() > 1 else 0.0
    return float(d.mean()), se, wins, losses


def _walk(errors: list[torch.Tensor], significance: float, sign: float | None = None, winsor: float = 0.0,
          ordered: bool = False) -> int:
    """Walking up a ladder of per-block squared errors, the last step that beat the current choice by more
    than ``significance`` standard errors of the paired differences (and, with ``sign``, on more blocks than
    it lost by more than ``sign`` binomial standard deviations, √(wins + losses), unchanged blocks counting
    on neither side: a sign test beside the mean, so that a few large gains cannot carry the step; 0 = any
    majority). ``winsor``: for the mean test the differences are clipped to their ``winsor`` and 100 − ``winsor``
    percentiles (a winsorised mean test: outlying blocks count, but only as much as the last kept one).
    ``ordered``: the ladder is one strength's increasing values (β), so a step that is significantly *worse*
    than the current choice ends the walk, and where the strongest value is significantly worse than the
    first (none) or than the choice, no step is taken: a texture the ion has gets better or levels off as its
    strength grows towards the ion's, while a gain at a weak strength that turns into a loss at a strong one is
    a partial fit of something else (measured: cells whose walls hold 2.5× their cells' amount took β = 2 past
    a worse 0.5 and 1, and lost 3.7 dB; cells whose walls hold as much as their cells took β = 0.5 and lost 0.9
    to 3.1 dB, or β = 1 and lost 2.5 dB). Against the choice the differences are not winsorised: a curve whose
    mean still falls has not turned up, however its clipped blocks read (measured: winsorised, that test fired
    on a phantom whose coarse errors at β = 1 and 2 were 0.992 and 0.991 of none's, and cost it 0.9 dB)."""
    best = 0
    for i in range(1, len(errors)):
        mean, se, wins, losses = _paired(errors[best], errors[i], winsor)
        if mean > significance * se and (sign is None or wins - losses > sign * math.sqrt(wins + losses)):
            best = i
        elif ordered and mean < -significance * se:
            break
    if ordered and best > 0:
        mean, se, _, _ = _paired(errors[0], errors[-1], winsor)
        turned_up = mean < -significance * se
        if not turned_up and best < len(errors) - 1:
            mean, se, _, _ = _paired(errors[best], errors[-1], 0.0)
            turned_up = mean < -significance * se
        if turned_up:
            best = 0
    return best


def _turn_back(errors: list[torch.Tensor], best: int, significance: float, winsor: float = 0.0) -> int:
    """The walk's choice ``best`` on the ladder of per-block squared errors, one step back where a step past it is
    significantly worse than it (the curve turns up), by ``significance`` standard errors of the paired differences
    winsorised at ``winsor``; not below the second entry, and the entry before the choice whether or not the walk
    stood on it: see :attr:`LadderSettings.turn_back`."""
    if best > 1:
        for e in errors[best + 1:]:
            mean, se, _, _ = _paired(errors[best], e, winsor)
            if mean < -significance * se:
                return best - 1
    return best
