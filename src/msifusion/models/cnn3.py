"""The paper's Figure 2e comparison: a three-layer CNN fitted with MSE only.

The paper says "a three-layer CNN with MSE loss … adopted from previous reports" and gives
no layer sizes; we take SRCNN (Dong et al. 2014, the classic three-layer super-resolution
CNN) in its base 9-1-5 form: 9×9 conv 3 → 64, ReLU, 1×1 conv 64 → 32, ReLU, 5×5 conv 32 → 1,
linear output; zero padding keeps the size. It is fitted like LCRN (same optimiser, lr,
epochs and edge-loss early stopping) but with loss weights (1, 0): the edge perceptual loss
is computed and recorded, not propagated.
"""

from __future__ import annotations

import torch
from torch import nn


class CNN3(nn.Module):
    """SRCNN-like (N, 3, H, W) optical → (N, 1, H, W) ion."""

    def __init__(self, in_channels: int = 3, width: int = 64, mid: int = 32, out_channels: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, width, 9, padding=4), nn.ReLU(),
            nn.Conv2d(width, mid, 1), nn.ReLU(),
            nn.Conv2d(mid, out_channels, 5, padding=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
