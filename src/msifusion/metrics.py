"""Scores of a fused image against a high-resolution truth, the measurement and the optical.

The evaluation protocol: block-average a truth by the factor, fuse, compare.
:func:`score` returns every number the protocol reports in one frozen :class:`Scores`:

- ``mse``: mean squared error against the truth, in the truth's units.
- ``psnr``: ``10·log10(R² / MSE)`` with ``R = truth.max() − truth.min()`` (the data range
  of the *truth*, so every method is judged on the same scale); identical images → ``inf``.
- ``ssim``: scikit-image's ``structural_similarity`` map (its defaults: 7×7 uniform window,
  K1 = 0.01, K2 = 0.03) with ``data_range = R``, averaged over every valid pixel, the 3-pixel border included
  (scikit-image's own mean leaves it out: its filters are padded by reflection there). So a mask is scored like the
  image's edges; where the border is flat background (the phantoms) the mean reads 0.005–0.01 above scikit-image's,
  for every method alike.
- ``edge``: the paper's edge perceptual loss of the fused image against the optical guide
  (:mod:`msifusion.losses`: Laplacian of the image vs Laplacian of the guide's luminance).
  The image is divided by ``max|measured|`` first, which is exactly the normalisation the
  fitting sees (:func:`msifusion.methods.fuse` divides the ion by its maximum absolute
  value), so this number is comparable to the ``edge`` column of a training history.
- ``consistency``: :func:`msifusion.measurement.consistency_error`,
  ``mean|blockmean(fused) − measured| / mean|measured|``; 0 = quantitative.

Masks: Middlebury disparities hold ``+inf`` where there is no truth. An optional boolean
``mask`` (True = valid) restricts MSE/PSNR (and the data range) to the valid pixels; SSIM is
computed as a full map (``full=True``) and averaged over the valid pixels, after the
invalid truth pixels are filled with the fused values there (so they add no error and no
inf reaches the window sums; windows touching them are affected: on Middlebury ×8 at half size, 47 % of the valid
pixels, scoring 0.73 on average against 0.95 where the window holds only valid pixels). The edge
loss and the consistency error do not use the truth and ignore the mask; ``measured`` must
be finite.

LPIPS is not offered. The ``lpips`` PyPI wheel (0.1.4, checked) ships only the small linear
calibration layers (``lpips/weights/v0.1/{alex,vgg,squeeze}.pth``); its AlexNet/VGG/SqueezeNet
backbones come from ``torchvision.models.*(pretrained=True)``, which downloads them from a
model hub at run time: impossible offline, and torchvision is not a dependency. The other
LPIPS packages in the registry (jaxlpips, lpips-j, lpips-jax, lpips-nnx, mge-lpips, …) are
ports to other frameworks or wrappers, and those that say where their weights come from
name a hub. A score that silently depends on a network download would make evaluations
unreproducible, so the protocol uses the paper's own edge perceptual loss as its perceptual
score instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msifusion.measurement import consistency_error

__all__ = ["Scores", "score", "mse", "psnr", "ssim", "edge_loss", "consistency_error"]


@dataclass(frozen=True)
class Scores:
    """Every number of the evaluation protocol for one fused image."""

    mse: float
    psnr: float
    ssim: float
    edge: float
    consistency: float


def _valid(truth: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.ones(truth.shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != truth.shape:
        raise ValueError(f"mask shape {mask.shape} differs from truth shape {truth.shape}")
    if not mask.any():
        raise ValueError("mask selects no pixel")
    return mask


def _pair(fused: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fused, truth = np.asarray(fused, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if fused.shape != truth.shape:
        raise ValueError(f"fused shape {fused.shape} differs from truth shape {truth.shape}")
    return fused, truth


def data_range(truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """``max − min`` of the truth over the valid pixels; ValueError for a constant truth."""
    values = np.asarray(truth, dtype=np.float64)[_valid(np.asarray(truth), mask)]
    value = float(values.max() - values.min())
    if not np.isfinite(value) or value <= 0:
        raise ValueError("truth has no finite, non-zero data range (constant or non-finite); PSNR/SSIM undefined")
    return value


def mse(fused: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over the valid pixels."""
    fused, truth = _pair(fused, truth)
    valid = _valid(truth, mask)
    return float(np.mean((fused[valid] - truth[valid]) ** 2))


def psnr(fused: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB with the truth's data range; ``inf`` when the images agree exactly."""
    error = mse(fused, truth, mask)
    if error == 0:
        return float("inf")
    return float(10 * np.log10(data_range(truth, mask) ** 2 / error))


def ssim(fused: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM: scikit-image's map (its defaults, the truth's data range) averaged over the valid pixels, its border
    included (see the module's docstring)."""
    from skimage.metrics import structural_similarity

    fused, truth = _pair(fused, truth)
    valid = _valid(truth, mask)
    filled = np.where(valid, truth, fused)
    win = min(7, *truth.shape)
    win -= 1 - win % 2  # skimage needs an odd window no larger than the image
    _, ssim_map = structural_similarity(filled, fused, data_range=data_range(truth, mask), full=True, win_size=win)
    return float(np.mean(ssim_map[valid]))


def edge_loss(image: np.ndarray, guide: np.ndarray, norm: float = 1.0, kernel: str = "laplacian") -> float:
    """The paper's edge perceptual loss of ``image / norm`` against the (H, W, 3) guide in [0, 1]."""
    import torch

    from msifusion.losses import edge_map, edge_perceptual_loss, luminance_t

    image = np.asarray(image, dtype=np.float32) / np.float32(norm)
    guide = np.asarray(guide, dtype=np.float32)
    if guide.shape[:2] != image.shape:
        raise ValueError(f"guide shape {guide.shape[:2]} differs from image shape {image.shape}")
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(image))[None, None]
        g = torch.from_numpy(np.ascontiguousarray(guide.transpose(2, 0, 1)))[None]
        return float(edge_perceptual_loss(x, edge_map(luminance_t(g), kernel), kernel))


def score(
    fused: np.ndarray,
    truth: np.ndarray,
    measured: np.ndarray,
    scale: int,
    guide: np.ndarray,
    mask: np.ndarray | None = None,
    spot_sigma_px: float = 0.0,
) -> Scores:
    """All protocol scores of ``fused`` (H, W) against ``truth`` (H, W), ``measured`` (H/scale, W/scale) and ``guide``
    (H, W, 3); the consistency under the measurement model that made ``measured`` (a laser spot of
    ``spot_sigma_px``)."""
    norm = float(np.max(np.abs(measured)))
    return Scores(
        mse=mse(fused, truth, mask),
        psnr=psnr(fused, truth, mask),
        ssim=ssim(fused, truth, mask),
        edge=edge_loss(fused, guide, norm if norm > 0 else 1.0),
        consistency=consistency_error(fused, measured, scale, spot_sigma_px),
    )
