"""Fitting one network to one ion image: the paper's recipe, early stopping, progress.

One *epoch* is one pass over the whole image, i.e. one full-image gradient step (the paper
fits a single image, so there is nothing else to pass over).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from msifusion.errors import InputError
from msifusion.losses import EDGE_KERNELS, edge_map, edge_perceptual_loss, luminance_t
from msifusion.runtime import Runtime, check_finite, check_whole, progress_bar, resolve_device


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
        check_whole(self.max_epochs, "--epochs", 1)
        check_finite(self.lr, "--lr", positive=True)
        check_finite(self.w_mse, "--w-mse")
        check_finite(self.w_edge, "--w-edge")
        if self.w_mse + self.w_edge == 0:
            raise InputError("--w-mse/--w-edge", "the loss weights cannot both be 0")
        check_whole(self.patience, "--patience", 0)
        if self.edge_kernel not in EDGE_KERNELS:
            raise InputError("--edge-kernel", f"must be one of {', '.join(EDGE_KERNELS)}, got {self.edge_kernel!r}")
        check_whole(self.checkpoint_every, "--checkpoint-every", 0)


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
    Returns the output after the last epoch run (the paper does not say which it keeps; the last is what its
    early-stopping rule reads as "stop here"): the model after that epoch's step, one step past the epoch's recorded
    losses, which are those before its step. ``on_checkpoint`` gets (epoch, output) in the target's units (the
    methods pass their ion divided by its peak; the command line's checkpoints multiply it back).
    """
    device = resolve_device(runtime.device)
    model = model.to(device)
    x = to_tensor(guide, device)
    y = to_tensor(target, device)
    with torch.no_grad():
        optical_edges = edge_map(luminance_t(x), config.edge_kernel)

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
