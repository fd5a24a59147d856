"""The optical's fine texture: where it has none at all (:func:`one_colour_area`), :func:`optical_detail` (the
optical density minus its blur), the guide's pixel noise (:func:`guide_noise`), how far the texture stands above that
noise (:func:`texture_snr_db`), and whether its strength β can be chosen at all (:func:`_texture_testable`)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from msifusion.harmonic.config import HarmonicConfig, window_shrink
from msifusion.measurement import gaussian_blur_t


# px: a pixel this far from every colour difference lies inside an area of one colour. Beside a straight edge between
# two flat colours 2·8+1 pixels a row stay, about 30 zero pairs for each of the edge's: the 90th percentile (the
# `diffusion` method's κ) stays at the floor; of a frame, only a band 8 px wide stays.
ONE_COLOUR_RADIUS = 8


def one_colour_area(guide: np.ndarray, radius: int = ONE_COLOUR_RADIUS) -> np.ndarray:
    """(H, W) bool: the pixels of an (H, W, C) guide further than ``radius`` px (in x and in y) from every pair of
    neighbours that differ in colour: the inside of an area of exactly one colour, such as glass clipped at white,
    the fill where the optical does not reach, or a rendered frame.

    Such an area holds no texture and nothing measured of the section, yet as many zero differences as it has pairs:
    enough, in a frame as wide as the section, to pull every percentile of
    :func:`msifusion.harmonic.setting.edge_scales` to its floor (docs/benchmarks.md, "a frame of one colour").
    Within ``radius`` of a difference the pairs stay, so a guide of a few flat colours, whose every difference is an
    edge, keeps its zeros beside each edge and its low percentiles at the floor (its edges block).
    """
    import cv2

    g = np.asarray(guide)
    g = g[..., None] if g.ndim == 2 else g
    H, W, C = g.shape
    dh, dv = np.zeros((H, W - 1), bool), np.zeros((H - 1, W), bool)
    for c in range(C):  # channel by channel: 6× faster than any() over the last axis of a 57 M-pixel guide
        dh |= g[:, 1:, c] != g[:, :-1, c]
        dv |= g[1:, :, c] != g[:-1, :, c]
    touches = np.zeros((H, W), np.uint8)
    touches[:, 1:] |= dh
    touches[:, :-1] |= dh
    touches[1:] |= dv
    touches[:-1] |= dv
    return cv2.dilate(touches, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) == 0


def _detail_eps(guide: np.ndarray) -> float:
    """The optical density's floor: 1e-3 of the guide's brightest value (so black pixels stay finite)."""
    return 1e-3 * max(float(np.max(guide)), 1e-12)


def optical_detail(guide: torch.Tensor, sigma: float, eps: float) -> torch.Tensor:
    """The optical's fine texture as (H, W): its optical density −log(mean colour + eps) minus a Gaussian
    blur of it (``sigma`` px, replicated borders): positive on what is darker than its surroundings."""
    od = -torch.log(guide.float().mean(-1) + eps)
    return od - gaussian_blur_t(od, sigma)


def _channels(guide: np.ndarray) -> np.ndarray:
    """The guide as float32 (H, W, C): a grey (H, W) guide gets one channel."""
    g = np.asarray(guide, dtype=np.float32)
    return g if g.ndim == 3 else g[..., None]


def _central_window(guide: np.ndarray, max_pixels: int,
                    one_colour: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A central window (h, w, C) of an (H, W, C) guide, of at most ``max_pixels`` and at least 3×3 where the guide
    is, and where it lies outside the guide's areas of one colour, (h, w) bool (``one_colour``:
    :func:`one_colour_area`, computed when None; everywhere where that leaves nothing)."""
    H, W = guide.shape[:2]
    shrink = window_shrink(H, W, max_pixels)
    h, w = min(H, max(3, int(H * shrink))), min(W, max(3, int(W * shrink)))
    rows, cols = slice((H - h) // 2, (H - h) // 2 + h), slice((W - w) // 2, (W - w) // 2 + w)
    flat = one_colour_area(guide) if one_colour is None else one_colour
    kept = torch.as_tensor(~flat[rows, cols])
    return torch.as_tensor(np.ascontiguousarray(guide[rows, cols])), kept if bool(kept.any()) else ~kept


IMMERKAER_SCALE = 0.6745 * 6  # white noise of std σ gives a response of std 6σ, whose median |·| is 0.6745 of that


def _noise_responses(images: torch.Tensor) -> torch.Tensor:
    """|Immerkær's 3×3 mask [1 −2 1; −2 4 −2; 1 −2 1]| over each of (N, h, w) images of at least 3×3, (N, h−2, w−2),
    in their dtype: it cancels planes and straight ramps, so a median of it / :data:`IMMERKAER_SCALE` estimates the
    images' white noise (:func:`guide_noise`, :func:`msifusion.harmonic.setting.measurement_noise`)."""
    mask = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=images.dtype,
                        device=images.device)
    return F.conv2d(images[:, None], mask.view(1, 1, 3, 3))[:, 0].abs()


def _mask_noise(window: torch.Tensor, kept: torch.Tensor) -> float:
    """:func:`guide_noise` of a window (h, w, C) of at least 3×3, over the responses centred on ``kept`` (h, w)."""
    response = _noise_responses(window.permute(2, 0, 1).contiguous())
    inner = kept[1:-1, 1:-1]
    response = response[:, inner] if bool(inner.any()) else response.flatten(1)
    per_channel = response.median(1).values / IMMERKAER_SCALE
    return float(per_channel.mean()) / math.sqrt(window.shape[-1])


def guide_noise(guide: np.ndarray, max_pixels: int = 1_000_000, one_colour: np.ndarray | None = None) -> float:
    """The guide's pixel noise, as the standard deviation of its mean colour: the response to Immerkær's
    3×3 mask [1 −2 1; −2 4 −2; 1 −2 1] (it cancels planes and straight ramps; white noise of std σ gives
    a response of std 6σ), whose median absolute value / (0.6745 · 6) estimates σ robustly, per channel
    on a central window of at most ``max_pixels``, outside areas of exactly one colour (``one_colour``,
    :func:`one_colour_area`, computed when None: a frame of glass clipped at white would make the median 0); their
    mean divided by √channels (the channels' noise taken as independent).

    The median, not Immerkær's mean: edges respond too, and on a guide of dense sharp cell walls the
    mean overestimated the noise 6-fold (the median 1.5-fold). (Immerkær, "Fast noise variance
    estimation", CVIU 1996. Written out here: scikit-image's ``estimate_sigma`` needs PyWavelets, one
    more dependency, for a 3×3 convolution.)
    """
    g = _channels(guide)
    return _mask_noise(*_central_window(g, max_pixels, one_colour)) if min(g.shape[:2]) >= 3 else 0.0


def texture_snr_db(guide: np.ndarray, sigma: float, eps: float, max_pixels: int = 1_000_000,
                   one_colour: np.ndarray | None = None) -> float:
    """How far the optical's fine texture (:func:`optical_detail`) stands above what the guide's pixel noise
    alone would give it, in dB: 10·log10 of the detail's mean square over the noise's, the noise carried
    into the optical density (std ``guide_noise / (mean colour + eps)``, larger where the optical is dark).
    The noise is taken as at least an 8-bit camera's quantisation noise (max / 255 / √12), so a noise-free
    synthetic guide gets a finite value. On a central window of at most ``max_pixels`` (noise and detail
    from the same one), outside areas of exactly one colour (``one_colour``, as :func:`guide_noise`; a frame of
    glass would also dilute the detail)."""
    g = _channels(guide)
    window, kept = _central_window(g, max_pixels, one_colour)
    measured = _mask_noise(window, kept) if min(window.shape[:2]) >= 3 else 0.0
    noise = max(measured, float(g.max()) / (255 * math.sqrt(12)))
    detail = optical_detail(window, sigma, eps)[kept]
    from_noise = float(((noise / (window.mean(-1)[kept] + eps)) ** 2).mean())
    if from_noise <= 0:  # an all-black guide: no texture at all
        return -math.inf
    return 10 * math.log10(max(float(detail.pow(2).mean()), 1e-30) / from_noise)


def _texture_testable(f: int, config: HarmonicConfig) -> bool:
    """Whether β can be chosen at all: there are strengths to try, the coarse-level test resolves the texture
    (it sees it only through its sums over f×f blocks, so a block must span 5 σ of it), and the output is made
    non-negative (the texture is a factor on a non-negative image)."""
    return len(config.texture.strengths) > 1 and f >= 5 * config.texture.sigma_px and config.positive
