"""Fitting one network to one ion image: the paper's recipe, early stopping, progress.

One *epoch* is one pass over the whole image, i.e. one full-image gradient step (the paper
fits a single image, so there is nothing else to pass over).
"""

from __future__ import annotations

import math
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from msifusion.errors import InputError
from msifusion.losses import EDGE_KERNELS, edge_map, edge_perceptual_loss, luminance


@dataclass(frozen=True)
class FitConfig:
    """The paper's training recipe (its numbers are the defaults).

    ``patience`` counts *total* increases of the edge perceptual loss from one epoch to the
    next ("5 total counts of loss increase"); 0 disables early stopping. The paper does not
    give its loss weights; (1, 1) is our default, and (1, 0) is its MSE-only ablation.
    """

    max_epochs: int = 2000
    lr: float = 3e-4
    w_mse: float = 1.0
    w_edge: float = 1.0
    patience: int = 5
    edge_kernel: str = "laplacian"
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        """Each value checked as the CLI checks its option (named in the error), for Python callers too."""
        _whole(self.max_epochs, "--epochs", 1)
        _finite(self.lr, "--lr", positive=True)
        _finite(self.w_mse, "--w-mse")
        _finite(self.w_edge, "--w-edge")
        if self.w_mse + self.w_edge == 0:
            raise InputError("--w-mse/--w-edge", "the loss weights cannot both be 0")
        _whole(self.patience, "--patience", 0)
        if self.edge_kernel not in EDGE_KERNELS:
            raise InputError("--edge-kernel", f"must be one of {', '.join(EDGE_KERNELS)}, got {self.edge_kernel!r}")
        _whole(self.checkpoint_every, "--checkpoint-every", 0)


def _whole(value, option: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise InputError(option, f"must be a whole number ≥ {least}, got {value!r}")


def _finite(value, option: str, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise InputError(option, f"must be a finite number {'> 0' if positive else '≥ 0'}, got {value!r}")


@dataclass(frozen=True)
class Runtime:
    """Where and how reproducibly to run: seed, device ('auto', 'cpu', 'cuda', 'cuda:1'…), progress.

    ``bf16``: run fitted networks' forward passes under bfloat16 autocast on CUDA (losses and
    the optimiser stay float32; ignored on the CPU, where it is slower). The guided harmonic
    solver always runs in float32: its exact consistency needs it.
    """

    seed: int = 0
    device: str = "auto"
    quiet: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        _whole(self.seed, "--seed", 0)
        if self.seed >= 2**32:
            raise InputError("--seed", f"must be below 2**32, got {self.seed}")
        for name in ("quiet", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"Runtime.{name}", f"must be True or False, got {getattr(self, name)!r}")

    def bf16_on(self, device: torch.device) -> bool:
        """Whether bfloat16 autocast applies on ``device`` (asked for, and a CUDA device)."""
        return self.bf16 and device.type == "cuda"


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; anything else is checked for availability."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_device(name: str) -> None:
    """InputError (naming --device) when ``name`` is not a usable torch device here."""
    try:
        resolve_device(name)
    except (ValueError, RuntimeError) as exc:
        raise InputError("--device", str(exc)) from None


def seed_everything(seed: int) -> None:
    """Same seed → same result on the same CPU: seeds every RNG and asks for deterministic kernels (for the whole
    process: commands and tests; library calls use :func:`seeded`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """:func:`seed_everything` for the duration of a library call only: the caller's random states (Python's, NumPy's
    global one, torch's on every device) and torch's determinism settings are restored afterwards, so that fusing
    inside a user's own random loop does not reset it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    # CUDA's generators only where CUDA is already up: reading their state would start CUDA on every call (and
    # break forked workers); a CUDA run started inside is seeded lazily by manual_seed
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            seed_everything(seed)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.backends.cudnn.benchmark = benchmark


class EdgeLossStopper:
    """Stops after ``patience`` total epoch-to-epoch increases of the watched loss."""

    def __init__(self, patience: int):
        self.patience = patience
        self.rises: list[int] = []  # the epochs (counted from 1) whose loss rose above the epoch before's
        self._last: float | None = None
        self._epoch = 0

    @property
    def increases(self) -> int:
        return len(self.rises)

    def update(self, value: float) -> bool:
        """Record one epoch's loss; True when training should stop."""
        self._epoch += 1
        if self._last is not None and value > self._last:
            self.rises.append(self._epoch)
        self._last = value
        return self.patience > 0 and self.increases >= self.patience


@dataclass
class FitResult:
    """A fitted image (normalised units, as a method returns it; :func:`msifusion.methods.fuse` scales it to the ion's
    units in place where the method owns it) and how the fit went; ``details``: what else a method reports
    (run.json)."""

    image: np.ndarray
    history: list[dict] = field(default_factory=list, repr=False)  # one record per epoch: long
    epochs: int = 0
    stop_reason: str = "closed form"
    details: dict = field(default_factory=dict)


CheckpointFn = Callable[[int, np.ndarray], None]
# (output, target, epoch) → (total loss to minimise, the epoch's record entries: "mse" and "edge" at least, shown on the
# progress bar; "edge" feeds the early stop)
LossFn = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict]]


def to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W) or (H, W, C) numpy → (1, C, H, W) float32 tensor."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).unsqueeze(0).to(device)


def fit_network(
    model: torch.nn.Module,
    guide: np.ndarray,
    target: np.ndarray,
    config: FitConfig,
    runtime: Runtime,
    on_checkpoint: CheckpointFn | None = None,
    desc: str = "fitting",
    on_epoch: Callable[[dict], None] | None = None,
    loss: LossFn | None = None,
) -> FitResult:
    """Fit ``model(guide) ≈ target`` with MSE + edge perceptual loss and edge-loss early stopping.

    ``guide`` is the (H, W, 3) optical in [0, 1], ``target`` the (H, W) interpolated ion image.
    ``on_epoch`` sees each epoch's record (epoch, mse, edge, total, seconds) before that epoch's checkpoint.
    ``loss``: another objective (the U-Net's staged losses) in place of ``w_mse``·MSE + ``w_edge``·edge.
    Returns the output after the last epoch run, as the paper does.
    """
    device = resolve_device(runtime.device)
    model = model.to(device)
    x = to_tensor(guide, device)
    y = to_tensor(target, device)
    with torch.no_grad():
        optical_edges = edge_map(luminance(x), config.edge_kernel)

    def paper_loss(out: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict]:
        mse = F.mse_loss(out, y)
        edge = edge_perceptual_loss(out, optical_edges, config.edge_kernel)
        return config.w_mse * mse + config.w_edge * edge, {"mse": mse.item(), "edge": edge.item()}

    loss = loss or paper_loss
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    stopper = EdgeLossStopper(config.patience)
    history: list[dict] = []
    stop_reason = f"reached the cap of {config.max_epochs} epochs"
    start = time.perf_counter()
    progress = progress_bar(config.max_epochs, desc, "epoch", runtime.quiet)
    epoch = 0
    try:
        for epoch in range(1, config.max_epochs + 1):
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, runtime):
                out = model(x).float()
            total, terms = loss(out, y, epoch)
            total.backward()
            optimizer.step()
            record = {"epoch": epoch, **terms, "total": total.item(), "seconds": time.perf_counter() - start}
            if not math.isfinite(record["total"]) and epoch == 1:  # before any step: the learning rate is not it
                raise InputError("--w-mse/--w-edge", f"the loss is not finite before training (loss {record['total']}, "
                                                     f"weights {config.w_mse:g} and {config.w_edge:g}); use smaller "
                                                     "loss weights")
            if not math.isfinite(record["total"]):
                raise InputError("--lr", f"the fit diverged at epoch {epoch} (loss {record['total']}); "
                                         f"lower the learning rate ({config.lr:g})")
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            progress.update(1)
            progress.set_postfix(mse=f"{record['mse']:.3g}", edge=f"{record['edge']:.3g}")
            if on_checkpoint and config.checkpoint_every and epoch % config.checkpoint_every == 0:
                on_checkpoint(epoch, _predict(model, x))
            if stopper.update(record["edge"]):
                stop_reason = (f"early stop: the edge loss rose {stopper.increases} times in all, at epochs "
                               f"{', '.join(map(str, stopper.rises))}")
                break
    finally:
        progress.close()
    return FitResult(_predict(model, x), history, epoch, stop_reason)


def _autocast(device: torch.device, runtime: Runtime) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=runtime.bf16_on(device))


def _predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x)[0, 0].detach().float().cpu().numpy()


def progress_bar(total: float, desc: str, unit: str, quiet: bool, bar_format: str | None = None):
    """A progress bar on a terminal or in a notebook; none with ``quiet``, nor in a log file, where its
    carriage returns would garble the lines (tqdm's ``disable=None``; a notebook's stream is no terminal)."""
    from tqdm.auto import tqdm

    notebook = tqdm.__module__.startswith("tqdm.notebook") or tqdm.__name__ == "tqdm_notebook"
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, bar_format=bar_format,
                disable=True if quiet else (False if notebook else None))


@contextmanager
def elapsed_bar(desc: str, quiet: bool) -> Iterator[None]:
    """For one long step that cannot report its progress: ``desc`` and the seconds elapsed, refreshed every second
    by a timer thread (a bar that never moves looks like a hang), where :func:`progress_bar` would show."""
    bar = progress_bar(1, desc, "step", quiet, bar_format="{desc} … {elapsed}")
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            bar.refresh()

    timer = threading.Thread(target=tick, daemon=True)
    timer.start()
    try:
        yield
    finally:
        stop.set()
        timer.join()
        bar.close()
