"""Losses: MSE and the paper's edge perceptual loss.

Edge perceptual loss = MSE(K ⊛ output, K ⊛ optical), K a fixed 3×3 edge kernel. The paper
does not print K; we default to the 4-neighbour Laplacian (its natural reading) and offer
Sobel (gradient magnitude of the x and y responses). The 3-channel optical is reduced to
luminance (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) before filtering. Convolution uses
replicate padding so the image border does not read as an edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msifusion.io.images import LUMA

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
EDGE_KERNELS = ("laplacian", "sobel")


def luminance_t(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) → (N, 1, H, W) BT.601 luma."""
    weights = torch.tensor(LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)


def edge_map(image: torch.Tensor, kernel: str = "laplacian") -> torch.Tensor:
    """Edge response of an (N, 1, H, W) image; same size out."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    if kernel == "laplacian":
        return F.conv2d(padded, LAPLACIAN.to(image).view(1, 1, 3, 3))
    if kernel == "sobel":
        k = torch.stack([SOBEL_X, SOBEL_X.T]).to(image).unsqueeze(1)
        g = F.conv2d(padded, k)
        return torch.sqrt(g.pow(2).sum(dim=1, keepdim=True) + 1e-12)
    raise ValueError(f"unknown edge kernel {kernel!r}; choose from {EDGE_KERNELS}")


def edge_perceptual_loss(output: torch.Tensor, optical_edges: torch.Tensor, kernel: str = "laplacian") -> torch.Tensor:
    """MSE between the output's edge map and the (precomputed) optical luminance edge map."""
    return F.mse_loss(edge_map(output, kernel), optical_edges)
