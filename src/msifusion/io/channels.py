"""A microscope's separate channels (a fluorescence or autofluorescence image: DAPI, FITC, TRITC…) as one colour
guide.

The method's conductances measure colour differences, so every channel's edges count; a fluorescence camera fills
each channel to its own level (a bright nuclear stain beside a faint autofluorescence), so each channel is first
stretched to its own range, the 0.1 and 99.9 percentiles (a hot pixel or the black glass does not set it). Two
channels become red and green, three red, green and blue (each channel's differences weigh alike); four or more
their three principal components (the three colours that keep the most of their differences), on one common scale so
that the components' relative weights stay, the first in green: it is mostly the channels' common brightness, where
tissue glows, and green weighs most in the luminance the registration's search may take as the tissue image. Three
channels can also be a bright field's red, green and blue stored as channels: the TIFF reader tells them apart by what
the file says of them (:func:`msifusion.io.tiff._microscope_channels`). The TIFF and CZI readers compose their channel
stacks here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msifusion.errors import InputError

STRETCH_PERCENTILES = (0.1, 99.9)
SAMPLED_PIXELS = 1_000_000  # percentiles and components from at most about this many pixels (a regular grid of them)
PRINCIPAL_COLOURS = (1, 0, 2)  # the first component (mostly brightness) green, the colour luminance weighs most
WORKING_BYTES_PER_PIXEL = 8  # beside the composite itself: one channel stretched, and one weighted copy of it


def _sampled(channel: np.ndarray) -> np.ndarray:
    """A regular grid of at most about :data:`SAMPLED_PIXELS` of a channel's pixels (a view)."""
    step = max(1, math.ceil(math.sqrt(channel.size / SAMPLED_PIXELS)))
    return channel[::step, ::step]


def _checked(channel: np.ndarray, source: str | Path | None, k: int) -> np.ndarray:
    """A channel as real numbers: bool as 0/1, complex and NaN or inf refused (they would blank it silently)."""
    channel = np.asarray(channel)
    if channel.dtype == bool:
        return channel.astype(np.uint8)
    if channel.dtype.kind not in "iuf":
        raise InputError(source, f"channel {k + 1} has non-real type {channel.dtype}")
    if channel.dtype.kind == "f" and not np.isfinite(channel).all():
        raise InputError(source, f"optical image contains NaN or inf (channel {k + 1})")
    return channel


def _range(channel: np.ndarray) -> tuple[float, float]:
    """Where a channel's stretch starts and ends: its :data:`STRETCH_PERCENTILES`, or its least and greatest value
    where those are equal (a channel lit in fewer pixels than a thousandth is no flat one)."""
    sample = _sampled(channel)
    lo, hi = (float(v) for v in np.percentile(sample, STRETCH_PERCENTILES))
    if not hi > lo:
        lo, hi = float(channel.min()), float(channel.max())
    return lo, hi


def _stretch(channel: np.ndarray, lo: float, hi: float, out: np.ndarray) -> np.ndarray:
    """``channel`` into ``out`` (float32, the same shape) mapped from [lo, hi] onto [0, 1], clipped; 0 where flat."""
    if not hi > lo:
        out[...] = 0.0
        return out
    out[...] = channel
    out -= lo
    out *= 1.0 / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def stretched(channel: np.ndarray) -> np.ndarray:
    """One channel (H, W) as float32 in [0, 1] between its :data:`STRETCH_PERCENTILES` (all 0 where it is flat)."""
    channel = np.asarray(channel)
    return _stretch(channel, *_range(channel), np.empty(channel.shape, np.float32))


def composite(channels: Sequence[np.ndarray], source: str | Path | None = None) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] of a microscope's channels, each (H, W), in their order (see the module).
    ``source``: the file, named by the error for a channel that is no real image (NaN, inf, complex)."""
    channels = [_checked(c, source, k) for k, c in enumerate(channels)]
    if len(channels) < 2:
        raise ValueError("a composite needs two channels or more")
    ranges = [_range(c) for c in channels]
    out = np.zeros((*channels[0].shape, 3), np.float32)
    if len(channels) <= 3:
        for k, (channel, (lo, hi)) in enumerate(zip(channels, ranges)):
            _stretch(channel, lo, hi, out[..., k])
        return out
    samples = [(_sampled(c), lo, hi) for c, (lo, hi) in zip(channels, ranges)]
    sample = np.stack([_stretch(c, lo, hi, np.empty(c.shape, np.float32)).ravel() for c, lo, hi in samples],
                      axis=1).astype(np.float64)
    mean = sample.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov(sample, rowvar=False))
    axes = vectors[:, ::-1][:, :3].T  # the three largest components, (3, C)
    axes = axes * np.sign(axes[np.arange(3), np.abs(axes).argmax(axis=1)])[:, None]  # signs fixed: reproducible
    projected = (sample - mean) @ axes.T
    lo3, span = projected.min(axis=0), max(float(np.ptp(projected, axis=0).max()), 1e-12)
    layer = np.empty(channels[0].shape, np.float32)
    for channel, (lo, hi), weights in zip(channels, ranges, axes.T):
        _stretch(channel, lo, hi, layer)
        for weight, colour in zip(weights, PRINCIPAL_COLOURS):
            out[..., colour] += np.float32(weight) * layer
    for k, colour in enumerate(PRINCIPAL_COLOURS):
        out[..., colour] -= np.float32(mean @ axes[k] + lo3[k])
    out *= np.float32(1.0 / span)
    return np.clip(out, 0.0, 1.0, out=out)


def composite_note(source: str, channels: Sequence[np.ndarray], names: Sequence[str] = ()) -> str:
    """What :func:`composite` made of a file's ``channels`` (``names``: the file's, where it gives one for each),
    naming a channel that is flat (all one value: it adds nothing)."""
    count = len(channels)
    named = f" ({', '.join(names[:6])}{', …' if len(names) > 6 else ''})" if len(names) == count else ""
    made = {2: "red and green", 3: "red, green and blue"}.get(count, "their three principal components in green, red "
                                                                     "and blue")
    flat = [f"{k + 1}{f' ({names[k]})' if named else ''}" for k, c in enumerate(channels)
            if not np.ptp(_range(_checked(c, source, k))) > 0]
    several = len(flat) > 1
    said = (f"; channel{'s' * several} {', '.join(flat)} {'are' if several else 'is'} uniform and add"
            f"{'' if several else 's'} nothing" if flat else "")
    return (f"{source}: its {count} channels{named} are read as one colour image, each stretched to its own "
            f"{STRETCH_PERCENTILES[0]:g}–{STRETCH_PERCENTILES[1]:g} percentile range, as {made}{said}; to use one of "
            "them alone, keep that channel in an OME-TIFF")
