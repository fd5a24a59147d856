"""The optical's fine texture: :func:`optical_detail` (the optical density minus its blur), the guide's pixel
noise (:func:`guide_noise`), how far the texture stands above that noise (:func:`texture_snr_db`), and whether
its strength β can be chosen at all (:func:`_texture_testable`)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from msifusion.harmonic.config import HarmonicConfig, window_shrink
from msifusion.measurement import gauss_taps


def _detail_eps(guide: np.ndarray) -> float:
    """The optical density's floor: 1e-3 of the guide's brightest value (so black pixels stay finite)."""
    return 1e-3 * max(float(np.max(guide)), 1e-12)


def optical_detail(guide: torch.Tensor, sigma: float, eps: float) -> torch.Tensor:
    """The optical's fine texture as (H, W): its optical density −log(mean colour + eps) minus a Gaussian
    blur of it (``sigma`` px, replicated borders): positive on what is darker than its surroundings."""
    od = -torch.log(guide.float().mean(-1) + eps)
    taps, radius = gauss_taps(sigma, 3.0)
    taps = taps.to(od)
    blurred = od[None, None]
    blurred = F.conv2d(F.pad(blurred, (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1))
    return od - blurred[0, 0]


def _channels(guide: np.ndarray) -> np.ndarray:
    """The guide as float32 (H, W, C): a grey (H, W) guide gets one channel."""
    g = np.asarray(guide, dtype=np.float32)
    return g if g.ndim == 3 else g[..., None]


def _central(guide: np.ndarray, max_pixels: int) -> torch.Tensor:
    """A central window of the guide (H, W, C) of at most ``max_pixels``, at least 3×3 where the guide is."""
    H, W = guide.shape[:2]
    shrink = window_shrink(H, W, max_pixels)
    h, w = min(H, max(3, int(H * shrink))), min(W, max(3, int(W * shrink)))
    return torch.as_tensor(np.ascontiguousarray(guide[(H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w]))


def _mask_noise(window: torch.Tensor) -> float:
    """:func:`guide_noise` of a window (h, w, C) of at least 3×3."""
    mask = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]).view(1, 1, 3, 3)
    response = F.conv2d(window.permute(2, 0, 1).contiguous()[:, None], mask)
    per_channel = response.abs().flatten(1).median(1).values / (0.6745 * 6)
    return float(per_channel.mean()) / math.sqrt(window.shape[-1])


def guide_noise(guide: np.ndarray, max_pixels: int = 1_000_000) -> float:
    """The guide's pixel noise, as the standard deviation of its mean colour: the response to Immerkær's
    3×3 mask [1 −2 1; −2 4 −2; 1 −2 1] (it cancels planes and straight ramps; white noise of std σ gives
    a response of std 6σ), whose median absolute value / (0.6745 · 6) estimates σ robustly, per channel
    on a central window of at most ``max_pixels``; their mean divided by √channels (the channels'
    noise taken as independent).

    The median, not Immerkær's mean: edges respond too, and on a guide of dense sharp cell walls the
    mean overestimated the noise 6-fold (the median 1.5-fold). (Immerkær, "Fast noise variance
    estimation", CVIU 1996. Written out here: scikit-image's ``estimate_sigma`` needs PyWavelets, one
    more dependency, for a 3×3 convolution.)
    """
    g = _channels(guide)
    return _mask_noise(_central(g, max_pixels)) if min(g.shape[:2]) >= 3 else 0.0


def texture_snr_db(guide: np.ndarray, sigma: float, eps: float, max_pixels: int = 1_000_000) -> float:
    """How far the optical's fine texture (:func:`optical_detail`) stands above what the guide's pixel noise
    alone would give it, in dB: 10·log10 of the detail's mean square over the noise's, the noise carried
    into the optical density (std ``guide_noise / (mean colour + eps)``, larger where the optical is dark).
    The noise is taken as at least an 8-bit camera's quantisation noise (max / 255 / √12), so a noise-free
    synthetic guide gets a finite value. On a central window of at most ``max_pixels`` (noise and detail
    from the same one)."""
    g = _channels(guide)
    window = _central(g, max_pixels)
    measured = _mask_noise(window) if min(window.shape[:2]) >= 3 else 0.0
    noise = max(measured, float(g.max()) / (255 * math.sqrt(12)))
    detail = optical_detail(window, sigma, eps)
    from_noise = float(((noise / (window.mean(-1) + eps)) ** 2).mean())
    if from_noise <= 0:  # an all-black guide: no texture at all
        return -math.inf
    return 10 * math.log10(max(float(detail.pow(2).mean()), 1e-30) / from_noise)


def _texture_testable(f: int, config: HarmonicConfig) -> bool:
    """Whether β can be chosen at all: there are strengths to try, the coarse-level test resolves the texture
    (it sees it only through its sums over f×f blocks, so a block must span 5 σ of it), and the output is made
    non-negative (the texture is a factor on a non-negative image)."""
    return len(config.texture.strengths) > 1 and f >= 5 * config.texture.sigma_px and config.positive
