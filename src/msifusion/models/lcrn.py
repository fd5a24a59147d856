"""The LCRN network (Zou et al.): an initial block and two residual blocks, 3 → 64 → 32 → 1.

Choices the paper leaves open, made here:
- activation: ReLU after every convolution except the last of the network (a linear output,
  so the fit can reach any intensity, zero included);
- padding: 1 pixel of zeros on every 3×3 convolution (PyTorch's default), so size is kept;
- initial block: one 3×3 convolution 3 → 64 + ReLU;
- residual block: 3×3 conv (in → out) + ReLU, 3×3 conv (out → out), plus a 1×1 conv skip from
  the block input, summed; ReLU after the sum in the first block only;
- the last block's internal width is its output width (1): conv 32 → 1, conv 1 → 1, skip 32 → 1.
  This is the literal reading of "32 (block input) … 1 (block output)".
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions plus a 1×1 convolution skip from block input to output."""

    def __init__(self, in_channels: int, out_channels: int, final_relu: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x))) + self.skip(x)
        return torch.relu(y) if self.final_relu else y


class LCRN(nn.Module):
    """Loss-controlled residual network: (N, 3, H, W) optical → (N, 1, H, W) ion."""

    def __init__(self, in_channels: int = 3, width: int = 64, mid: int = 32, out_channels: int = 1):
        super().__init__()
        self.initial = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.block1 = ResidualBlock(width, mid)
        self.block2 = ResidualBlock(mid, out_channels, final_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(self.initial(x)))
