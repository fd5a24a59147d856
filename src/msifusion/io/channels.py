"""A microscope's separate channels (a fluorescence or autofluorescence image: DAPI, FITC, TRITC…) as one colour guide.

The method's conductances measure colour differences, so every channel's edges count; a fluorescence camera fills
each channel to its own level (a bright nuclear stain beside a faint autofluorescence), so each channel is first
stretched to its own range, the 0.1 and 99.9 percentiles (a hot pixel or the black glass does not set it). Two
channels become red and green, three red, green and blue (each channel's differences weigh alike); four or more
their three principal components (the three colours that keep the most of their differences), on one common scale so
that the components' relative weights stay, the first in green: it is mostly the channels' common brightness, where
tissue glows, and green weighs most in the luminance the registration's search may take as the tissue image. The TIFF and CZI readers compose their channel stacks here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

STRETCH_PERCENTILES = (0.1, 99.9)
SAMPLED_PIXELS = 1_000_000  # percentiles and components from about this many pixels (a regular grid of them)
PRINCIPAL_COLOURS = (1, 0, 2)  # the first component (mostly brightness) green, the colour luminance weighs most


def _sampled(channel: np.ndarray) -> np.ndarray:
    step = max(1, int(math.sqrt(channel.size / SAMPLED_PIXELS)))
    return channel[::step, ::step]


def stretched(channel: np.ndarray) -> np.ndarray:
    """One channel (H, W) as float32 in [0, 1] between its :data:`STRETCH_PERCENTILES` (all 0 where it is flat)."""
    channel = np.asarray(channel)
    lo, hi = (float(v) for v in np.percentile(_sampled(channel), STRETCH_PERCENTILES))
    if not hi > lo:
        return np.zeros(channel.shape, np.float32)
    out = channel.astype(np.float32)
    out -= lo
    out *= 1.0 / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def composite(channels: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] of a microscope's channels, each (H, W), in their order (see the module)."""
    layers = [stretched(c) for c in channels]
    if len(layers) < 2:
        raise ValueError("a composite needs two channels or more")
    if len(layers) <= 3:
        layers += [np.zeros_like(layers[0])] * (3 - len(layers))
        return np.stack(layers, axis=-1)
    sample = np.stack([_sampled(layer).ravel() for layer in layers], axis=1).astype(np.float64)
    mean = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    axes = vt[:3] * np.sign(vt[:3][np.arange(3), np.abs(vt[:3]).argmax(axis=1)])[:, None]  # signs fixed: reproducible
    projected = (sample - mean) @ axes.T
    lo, span = projected.min(axis=0), max(float(np.ptp(projected, axis=0).max()), 1e-12)
    out = np.empty((*layers[0].shape, 3), np.float32)
    for k, colour in enumerate(PRINCIPAL_COLOURS):
        out[..., colour] = sum(float(w) * layer for w, layer in zip(axes[k], layers))
        out[..., colour] -= float(mean @ axes[k] + lo[k])
    out *= 1.0 / span
    return np.clip(out, 0.0, 1.0, out=out)


def composite_note(source: str, count: int, names: Sequence[str] = ()) -> str:
    """What :func:`composite` made of a file's ``count`` channels (``names``: the file's, where it gives them)."""
    named = f" ({', '.join(names[:6])}{', …' if len(names) > 6 else ''})" if len(names) == count else ""
    made = {2: "red and green", 3: "red, green and blue"}.get(count, "their three principal components in green, red "
                                                                     "and blue")
    return (f"{source}: its {count} channels{named} are read as one colour image, each stretched to its own "
            f"{STRETCH_PERCENTILES[0]:g}–{STRETCH_PERCENTILES[1]:g} percentile range, as {made}; to use one of them "
            "alone, keep that channel in an OME-TIFF")
