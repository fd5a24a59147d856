"""The paper's Figure 2d comparison: a small U-Net fused with multi-stage training (DeepFERE-like).

The paper: "Unet and multi-stage training processes involving MSE loss, correlation loss,
and reconstruction loss", adopted from DeepFERE (Guo et al.), sizes not given. Chosen here:

- network: a 3-level U-Net, widths 16-32-64, each level two 3×3 conv + ReLU, 2×2 max-pool
  down, bilinear ×2 up + skip concatenation, 1×1 conv to one linear output channel; the
  input is replicate-padded to a multiple of 4 and the output cropped back.
- training, one full-image step per epoch, Adam at ``lr`` (the paper's 3e-4), no early stop:
  stage 1 MSE(output, interpolated ion); stage 2 adds the correlation loss
  1 − Pearson(output, interpolated ion); stage 3 adds the reconstruction loss
  MSE(block mean of the output, measured ion), each added term with weight 1.
- epochs: ``min(max_epochs, 400)`` in all, split 2:1:1 over the stages (200/100/100 by
  default): modest, because the comparison is about what the losses do, and each CPU epoch
  of a full image costs seconds.

The history records, per epoch, the stage, every loss term, the total, and the paper's edge
perceptual loss against the optical (recorded, never propagated).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msifusion.fit import CheckpointFn, FitConfig, FitResult, fit_network, to_tensor
from msifusion.runtime import Runtime, resolve_device
from msifusion.losses import edge_map, edge_perceptual_loss, luminance_t


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    """(N, 3, H, W) → (N, 1, H, W), any H, W (padded internally to a multiple of 4)."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        a, b, c = widths
        self.enc1, self.enc2, self.mid = _double_conv(in_channels, a), _double_conv(a, b), _double_conv(b, c)
        self.dec2, self.dec1 = _double_conv(c + b, b), _double_conv(b + a, a)
        self.out = nn.Conv2d(a, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 4, 0, -h % 4), mode="replicate")
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1))
        return self.out(d1)[..., :h, :w]


@dataclass(frozen=True)
class UNetRecipe:
    """Multi-stage training: total epochs (capped by the caller's max_epochs), stage split, lr, weights."""

    total_epochs: int = 400
    split: tuple[int, int, int] = (2, 1, 1)
    lr: float = 3e-4
    w_corr: float = 1.0
    w_rec: float = 1.0
    checkpoint_every: int = 0

    def stage_epochs(self, max_epochs: int) -> tuple[int, int, int]:
        """Epochs per stage, at least one each, summing to ``min(total_epochs, max_epochs)`` (≥ 3)."""
        total = max(3, min(self.total_epochs, max_epochs))
        s1 = max(1, total * self.split[0] // sum(self.split))
        s2 = max(1, total * self.split[1] // sum(self.split))
        return s1, s2, max(1, total - s1 - s2)


def correlation_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − Pearson correlation of the two images' pixels."""
    a, b = out.flatten() - out.mean(), target.flatten() - target.mean()
    return 1 - (a @ b) / (a.norm() * b.norm() + 1e-12)


def fit_unet(
    guide: np.ndarray,
    target: np.ndarray,
    measured: np.ndarray,
    scale: int,
    recipe: UNetRecipe,
    max_epochs: int,
    runtime: Runtime,
    on_checkpoint: CheckpointFn | None = None,
) -> FitResult:
    """Fit a :class:`UNet` to one ion image with the three-stage recipe (:func:`fit_network`'s loop with the
    staged loss, no early stop); returns the last output."""
    device = resolve_device(runtime.device)
    low = to_tensor(measured, device)
    with torch.no_grad():
        optical_edges = edge_map(luminance_t(to_tensor(guide, device)))
    stages = recipe.stage_epochs(max_epochs)

    def staged(out: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict]:
        stage = 1 + (epoch > stages[0]) + (epoch > stages[0] + stages[1])
        mse = F.mse_loss(out, y)
        total, record = mse, {"stage": stage, "mse": mse.item()}
        if stage >= 2:
            corr = correlation_loss(out, y)
            total = total + recipe.w_corr * corr
            record["corr"] = corr.item()
        if stage >= 3:
            rec = F.mse_loss(F.avg_pool2d(out, scale), low)
            total = total + recipe.w_rec * rec
            record["rec"] = rec.item()
        record["edge"] = edge_perceptual_loss(out.detach(), optical_edges).item()  # recorded, never propagated
        return total, record

    config = FitConfig(max_epochs=sum(stages), lr=recipe.lr, patience=0, checkpoint_every=recipe.checkpoint_every)
    result = fit_network(UNet(), guide, target, config, runtime, on_checkpoint, desc="unet", loss=staged)
    return replace(result, stop_reason=f"completed {len(stages)} stages {stages}")
