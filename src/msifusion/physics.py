"""The measurement model: how a high-resolution ion distribution becomes an MSI pixel.

An MSI pixel integrates the ion signal over its footprint. The default model is the box
average over each ``factor × factor`` block of the fine grid (:func:`block_mean`); an
optional Gaussian laser spot blurs before averaging (:class:`MeasurementModel`). Upsampling
(:func:`upsample`) is the paper's OpenCV interpolation, half-pixel centred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CV2_INTERP = {"nearest": 0, "bilinear": 1, "bicubic": 2}  # cv2.INTER_NEAREST/LINEAR/CUBIC


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Average over non-overlapping ``factor × factor`` blocks of the last two axes."""
    image = np.asarray(image)
    h, w = image.shape[-2] // factor, image.shape[-1] // factor
    if h * factor != image.shape[-2] or w * factor != image.shape[-1]:
        raise ValueError(f"shape {image.shape[-2:]} is not a multiple of {factor}")
    blocks = image.reshape(*image.shape[:-2], h, factor, w, factor)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(np.float32)


def upsample(image: np.ndarray, factor: int, kind: str = "bilinear") -> np.ndarray:
    """Resize a 2-D image by an integer factor with OpenCV (bilinear = the paper's INTER_LINEAR)."""
    import cv2

    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    return cv2.resize(image, (w * factor, h * factor), interpolation=_CV2_INTERP[kind])


@dataclass(frozen=True)
class MeasurementModel:
    """Box average of each MSI pixel's footprint, optionally after a Gaussian laser spot.

    ``spot_sigma_px`` is the spot's standard deviation in *fine* (optical) pixels; 0 means the
    pure box average (the default, also of the consistency error).
    """

    factor: int
    spot_sigma_px: float = 0.0

    def measure(self, fine: np.ndarray) -> np.ndarray:
        if self.spot_sigma_px > 0:
            from scipy.ndimage import gaussian_filter

            fine = gaussian_filter(np.asarray(fine, dtype=np.float32), self.spot_sigma_px, mode="reflect")
        return block_mean(fine, self.factor)


def consistency_error(fused: np.ndarray, measured: np.ndarray, factor: int, spot_sigma_px: float = 0.0) -> float:
    """``mean|A(fused) − measured| / mean|measured|``, A the measurement model (the block mean, after a
    Gaussian laser spot of ``spot_sigma_px`` fine pixels if given): 0 means fully quantitative."""
    measured = np.asarray(measured, dtype=np.float64)
    diff = MeasurementModel(factor, spot_sigma_px).measure(fused).astype(np.float64) - measured
    return float(np.mean(np.abs(diff)) / max(np.mean(np.abs(measured)), 1e-30))
