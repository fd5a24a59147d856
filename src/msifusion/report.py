"""Figures: ion images with colour bar and scale bar, loss curves, comparison panels.

Display only: colour scales clip hotspots at the 99th percentile so one hot pixel does not
wash out the image; the data written to TIFF are never clipped. Figures are drawn without pyplot
(:func:`new_figure`), so importing msifusion leaves a notebook's matplotlib backend and figures alone.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from mpl_toolkits.axes_grid1 import make_axes_locatable

from msifusion.io.images import c_stderr_captured, luminance, rgb_to_uint8

DISPLAY_PERCENTILE = 99.0
ION_CMAP = "viridis"


def new_figure(figsize: tuple[float, float], dpi: float) -> Figure:
    """A figure to draw and save (:func:`save_figure`), outside pyplot: no backend is chosen, no figure is left open."""
    return Figure(figsize=figsize, dpi=dpi)


PNG_COMPRESS_LEVEL = 3  # zlib level: a fused ion's picture in 0.20 s instead of 0.27 s at the default 6, 10 % larger


def save_figure(fig: Figure, path: str | Path, **options) -> Path:
    """Save ``fig`` as a PNG at :data:`PNG_COMPRESS_LEVEL`: a panel writes one per ion, so encoding speed counts."""
    fig.savefig(path, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL}, **options)
    return Path(path)


def display_range(image: np.ndarray, percentile: float = DISPLAY_PERCENTILE) -> tuple[float, float]:
    """Colour limits for display: [min(0, 1st pct), `percentile`-th pct] (hotspots clipped)."""
    finite = np.asarray(image)[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    low, hi = (float(v) for v in np.percentile(finite, [1, percentile]))  # one partition for both
    lo = min(0.0, low)
    if hi <= lo:
        hi = float(finite.max()) if finite.max() > lo else lo + 1.0
    return lo, hi


def clip_note(images: np.ndarray | Sequence[np.ndarray], lo: float, hi: float,
              percentile: float = DISPLAY_PERCENTILE) -> str:
    """What a colour scale [lo, hi] from :func:`display_range` leaves out of ``images`` (one or several shown with it),
    in words for its colour bar."""
    extremes = [_finite_extremes(np.asarray(a)) for a in ([images] if isinstance(images, np.ndarray) else images)]
    extremes = [e for e in extremes if e is not None]
    ends = []
    if extremes and min(e[0] for e in extremes) < lo:
        ends.append("below 0" if lo == 0 else "below the 1st pct")
    if extremes and max(e[1] for e in extremes) > hi:
        ends.append(f"above the {percentile:g}th pct")
    return f"display clipped {' and '.join(ends)}" if ends else ""


def _finite_extremes(image: np.ndarray) -> tuple[float, float] | None:
    finite = np.isfinite(image)
    values = image if finite.all() else image[finite]
    return (float(values.min()), float(values.max())) if values.size else None


def _for_display(image: np.ndarray, box: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """``image`` area-averaged to fit ``box`` (rows, columns of screen pixels it is drawn on), and the extent that keeps
    the original pixel coordinates (for the scale bar): a large fused image drawn with nearest-pixel sampling on a
    small figure would alias."""
    import cv2

    h, w = image.shape[:2]
    factor = max(h / box[0], w / box[1])
    extent = (0.0, float(w), float(h), 0.0)
    if factor <= 1:
        return image, extent
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return cv2.resize(np.asarray(image, np.float32), size, interpolation=cv2.INTER_AREA), extent


def _box(fig, rows: int = 1, cols: int = 1) -> tuple[float, float]:
    """Screen pixels of one of ``rows`` × ``cols`` panels of ``fig``, less the margins (about a fifth)."""
    width, height = fig.get_size_inches() * fig.dpi
    return 0.8 * height / rows, 0.8 * width / cols


def _wrapped(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points (about 0.55 em a character)."""
    import textwrap

    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def nice_length(target: float) -> float:
    """The 1-2-5 × 10^n number closest below ``target`` (for scale bars)."""
    if target <= 0:
        return 0.0
    exp = math.floor(math.log10(target))
    for mult in (5, 2, 1):
        if mult * 10**exp <= target:
            return mult * 10**exp
    return 10**exp


STRIP_ASPECT = 4  # an image this many times wider than tall is a strip: its bars go below it, not over it


def is_strip(shape: tuple[int, ...]) -> bool:
    """Whether an image of ``shape`` (H, W, …) is a strip, :data:`STRIP_ASPECT` times wider than tall or more."""
    return shape[1] > STRIP_ASPECT * shape[0]


def add_scale_bar(ax, shape: tuple[int, ...], pixel_size_um: float | None) -> None:
    """Draw a scale bar about a fifth of the image (``shape``: H, W, …) wide, labelled in µm or mm: white in the lower
    right corner, or black under the image for a strip (:func:`is_strip`), where a label would not fit inside."""
    if not pixel_size_um:
        return
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    height_px, width_px = shape[:2]
    length_um = nice_length(width_px * pixel_size_um / 5)
    label = f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"
    strip = is_strip(shape)
    thickness = min(width_px / 150, height_px / 10)  # in the image's pixels: under one on a small image
    place = dict(loc="upper right", bbox_to_anchor=(1, 0), bbox_transform=ax.transAxes) if strip else dict(loc="lower right")
    bar = AnchoredSizeBar(ax.transData, length_um / pixel_size_um, label, pad=0.4, borderpad=0.1,
                          color="black" if strip else "white", frameon=False, size_vertical=thickness,
                          label_top=not strip, **place)
    ax.add_artist(bar)


MAX_IMAGE_HEIGHT_IN = 9.0  # a taller image is drawn narrower instead (2400×20 px at 8 in wide: a 115 000 px PNG)


def _drawn_height(shape: tuple[int, ...], width_in: float) -> float:
    """Inches an image of ``shape`` (H, W, …) takes up drawn ``width_in`` wide, at most :data:`MAX_IMAGE_HEIGHT_IN`
    (a tall image keeps its aspect and leaves the rest of the width blank)."""
    return min(width_in * shape[0] / shape[1], MAX_IMAGE_HEIGHT_IN)


def _column_width(shape: tuple[int, ...], width_in: float, margin_in: float) -> float:
    """The width of a figure column for an image of ``shape`` up to ``width_in`` wide: narrower for a tall image
    (:func:`_drawn_height`), keeping ``margin_in`` beside it (titles, a colour bar)."""
    return min(width_in, MAX_IMAGE_HEIGHT_IN * shape[1] / shape[0] + margin_in)


def _figsize(shape: tuple[int, int], width: float, margin: float = 0.0) -> tuple[float, float]:
    """A figure for one image of ``shape`` ``width`` inches wide (less for a tall one, with ``margin`` beside it)."""
    return max(3.0, _column_width(shape, width, margin)), max(2.0, _drawn_height(shape, width))


def save_ion_png(path: str | Path, image: np.ndarray, pixel_size_um: float | None = None,
                 title: str = "", units: str = "ion intensity") -> Path:
    """One ion image: colour map, colour bar in the ion's units, scale bar when calibrated."""
    lo, hi = display_range(image)
    fig = new_figure(_figsize(image.shape, 8.0, margin=2.0), 120)
    ax = fig.subplots()
    drawn, extent = _for_display(image, _box(fig))
    shown = ax.imshow(drawn, cmap=ION_CMAP, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    add_scale_bar(ax, image.shape, pixel_size_um)
    strip = is_strip(image.shape)  # a colour bar beside a strip is too short for its label
    cbar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.25 if strip and pixel_size_um else 0.02,
                        orientation="horizontal" if strip else "vertical", aspect=40 if strip else 20)
    note = clip_note(image, lo, hi)
    length_in = fig.get_size_inches()[0 if strip else 1] * 0.8  # the bar's length: the figure's width or height
    cbar.set_label(_wrapped(f"{units} ({note})" if note else units, length_in, 10), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)


def save_rgb_png(path: str | Path, rgb: np.ndarray) -> Path:
    """An (H, W, 3) float RGB image in [0, 1] as an 8-bit PNG, pixel for pixel. OpenCV answers a failed write (a full
    disk) with False and a line from libpng on the C-level stderr: that line becomes the OSError raised."""
    import errno

    import cv2

    with c_stderr_captured() as said:
        written = cv2.imwrite(str(path), rgb_to_uint8(rgb)[..., ::-1])
    if not written:
        raise OSError(errno.EIO, f"cannot write the PNG ({'; '.join(said) or 'OpenCV could not write it'})", str(path))
    return Path(path)


LOSS_FIELDS = ("epoch", "mse", "edge", "total", "seconds")


def write_loss_csv(path: str | Path, history: Sequence[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOSS_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    return Path(path)


def save_loss_plot(path: str | Path, history: Sequence[dict], title: str = "") -> Path:
    """MSE and edge perceptual loss per epoch on log–log axes (the paper's Figure 5)."""
    epochs = [r["epoch"] for r in history]
    fig = new_figure((6.4, 4.0), 120)
    ax = fig.subplots()
    for key, colour in (("mse", "tab:blue"), ("edge", "tab:orange"), ("total", "0.5")):
        values = [max(r[key], 1e-30) for r in history]
        ax.plot(epochs, values, label={"mse": "MSE", "edge": "edge perceptual", "total": "total"}[key],
                color=colour, lw=1.2 if key != "total" else 0.8, ls="-" if key != "total" else "--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (normalised units)")
    ax.set_title(title or "training losses")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)


def save_panel(path: str | Path, panels: Sequence[tuple[str, np.ndarray]], pixel_size_um: float | None = None,
               title: str = "", reference: np.ndarray | None = None, units: str = "ion intensity",
               detail: tuple[slice, slice] | None = None, detail_titles: Sequence[str] = ()) -> Path:
    """Side-by-side panels (the paper's Figure 2 c–f): up to three in a row, more in rows of two or three. RGB panels
    are shown as they are; ion panels share one colour scale, taken from ``reference`` (e.g. the truth) when given,
    so brightness is comparable across methods, and drawn once as a colour bar (labelled with ``units``) under them.
    Low-resolution panels are shown at the fine size. ``detail`` (rows, columns of the fine grid, whole MSI pixels;
    one row of panels only): a second row shows that window of every panel at full resolution, titled
    ``detail_titles`` (default: each panel's title, ", detail"), and the first row outlines it.
    """
    n = len(panels)
    fine_shape = max((p[1].shape[:2] for p in panels), key=lambda s: s[0] * s[1])
    ion_images = [img for _, img in panels if img.ndim == 2]
    scaled = reference if reference is not None else np.concatenate([i.ravel() for i in ion_images] or [[0.0]])
    lo, hi = display_range(scaled)
    cols = n if n <= 3 else 3 if fine_shape[1] < 1.6 * fine_shape[0] else 2
    rows = math.ceil(n / cols)
    if detail is not None and rows > 1:
        raise ValueError("a detail row needs one row of panels")
    if detail_titles and len(detail_titles) != n:
        raise ValueError(f"{len(detail_titles)} detail titles for {n} panels")
    fw = max(5.0, cols * max(1.6, _column_width(fine_shape, 4.2, 0.4)))  # 5 in: the colour bar's label
    bar_in = 0.8 if ion_images else 0.0  # room for the shared colour bar
    shapes = [fine_shape] * rows + ([(detail[0].stop - detail[0].start, detail[1].stop - detail[1].start)]
                                    if detail is not None else [])
    heights = [_drawn_height(shape, fw / cols) + 0.6 for shape in shapes]
    fh = sum(heights) + (0.4 if title else 0) + bar_in
    fig = new_figure((fw, fh), 130)
    axes = fig.subplots(len(shapes), cols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax in axes.ravel():
        ax.set_axis_off()
    shown = None
    for k, (name, img) in enumerate(panels):
        ax = axes.ravel()[k]
        shown = _draw_panel(ax, img, fine_shape, lo, hi, _box(fig, len(shapes), cols)) or shown
        ax.set_title(_wrapped(name, fw / cols, 9), fontsize=9)
        add_scale_bar(ax, fine_shape, pixel_size_um)
        if detail is not None:
            rows_, cols_ = detail
            for colour, width in (("black", 2.0), ("white", 1.0)):  # seen on dark ion images and pale slides alike
                ax.add_patch(Rectangle((cols_.start, rows_.start), cols_.stop - cols_.start, rows_.stop - rows_.start,
                                       fill=False, edgecolor=colour, linewidth=width))
            factor = fine_shape[0] // img.shape[0]  # 1 for fine panels, the scale for a measured one
            if (img.shape[0] * factor, img.shape[1] * factor) != tuple(fine_shape) or \
                    any(v % factor for v in (rows_.start, rows_.stop, cols_.start, cols_.stop)):
                raise ValueError(f"a detail row needs each panel the fine grid ÷ an integer and the window in whole "
                                 f"pixels of it; got {img.shape[:2]} under {fine_shape}")
            crop = img[rows_.start // factor: rows_.stop // factor, cols_.start // factor: cols_.stop // factor]
            below = axes[1, k]
            _draw_panel(below, crop, shapes[-1], lo, hi, (math.inf, math.inf))  # not resampled: its own pixels
            below.set_title(_wrapped(detail_titles[k] if detail_titles else f"{name}, detail", fw / cols, 9),
                            fontsize=9)
            add_scale_bar(below, shapes[-1], pixel_size_um)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, bar_in / fh, 1, 1))
    if shown is not None:
        for ax in axes.ravel():
            ax.apply_aspect()  # where the images are drawn, not the cells they sit in
        lowest = min(ax.get_position().y0 for ax in axes.ravel() if ax.images)
        top = lowest - 0.3 * bar_in / fh  # the bar just under the lowest image, not at the figure's foot
        bar = fig.colorbar(shown, cax=fig.add_axes((0.3, top - 0.14 * bar_in / fh, 0.4, 0.14 * bar_in / fh)),
                           orientation="horizontal")
        note = clip_note(ion_images, lo, hi)
        bar.set_label(f"{units}, one scale for every ion panel" + (f" ({note})" if note else ""), fontsize=8)
        bar.ax.tick_params(labelsize=7)
    save_figure(fig, path, bbox_inches="tight", pad_inches=0.15)  # without the blank the images' aspect leaves
    return Path(path)


def _draw_panel(ax, image: np.ndarray, shape: tuple[int, int], lo: float, hi: float, box: tuple[float, float]):
    """One panel of :func:`save_panel` over the extent of ``shape`` (a measured image at the fine size); the image
    artist of an ion panel (for the colour bar), None for an RGB one."""
    extent = (0, shape[1], shape[0], 0)
    drawn = _for_display(image, box)[0]
    if image.ndim == 3:
        ax.imshow(np.clip(drawn, 0, 1), extent=extent, interpolation="nearest")
        return None
    return ax.imshow(drawn, cmap=ION_CMAP, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")


DETAIL_PX = 512  # compare.png's detail window, in fused pixels: drawn about one to one, not resampled


def detail_window(ion: np.ndarray, scale: int, side: int = DETAIL_PX) -> tuple[slice, slice] | None:
    """Where compare.png looks closer: a window of about ``side`` fused pixels (whole MSI pixels) centred on the MSI
    pixel whose 3×3 neighbourhood is brightest (by magnitude, after a 3×3 median so that a lone hot pixel does not
    lead: where the ion is; the centre for a flat ion); None where the fused image is not more than twice as long as
    the window, since its whole picture shows it nearly at full resolution already."""
    from scipy.ndimage import median_filter, uniform_filter

    h, w = ion.shape
    if max(h, w) * scale <= 2 * side:
        return None
    smooth = uniform_filter(median_filter(np.abs(ion.astype(np.float64)), 3), 3)  # a lone hot pixel does not lead
    r, c = np.unravel_index(np.argmax(smooth), ion.shape) if np.ptp(smooth) > 0 else (h // 2, w // 2)
    span_h, span_w = min(h, max(1, side // scale)), min(w, max(1, side // scale))
    top, left = int(np.clip(r - span_h // 2, 0, h - span_h)), int(np.clip(c - span_w // 2, 0, w - span_w))
    return slice(top * scale, (top + span_h) * scale), slice(left * scale, (left + span_w) * scale)


def save_ion_grid(path: str | Path, images: np.ndarray | Sequence[np.ndarray], names: Sequence[str],
                  pixel_size_um: float | None = None, title: str = "", max_panels: int = 48) -> Path:
    """An overview of many ion images (a (K, H, W) stack or K (H, W) images) under ``title`` (what they are, in what
    units), each with its own colour scale (99th-percentile clipped, as the heading says; a small colour bar gives its
    range)."""
    n = min(len(images), max_panels)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    h, w = np.shape(images[0])
    pw = max(1.2, _column_width((h, w), 2.6 if n > 3 else 4.0, 0.5))  # a few ions get larger panels
    below = 0.4 if pixel_size_um and is_strip((h, w)) else 0.0  # room for a strip's scale bar under it
    row_in = max(_drawn_height((h, w), pw) + 0.35 + below, 1.0)  # a strip's row still holds its title and colour bar
    fig = new_figure((pw * cols, rows * row_in + 0.4), 110)  # + the heading's two lines
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    notes = []
    for ax, image, name in zip(axes.ravel(), images[:n], names[:n]):
        lo, hi = display_range(image)
        notes.append(clip_note(image, lo, hi))
        drawn, extent = _for_display(image, _box(fig, rows, cols))
        shown = ax.imshow(drawn, cmap=ION_CMAP, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
        ax.set_title(_wrapped(name, pw, 8), fontsize=8)
        add_scale_bar(ax, (h, w), pixel_size_um)
        bar = fig.colorbar(shown, cax=make_axes_locatable(ax).append_axes("right", size="4%", pad=0.04), ticks=[lo, hi])
        bar.ax.tick_params(labelsize=6)
        bar.ax.set_yticklabels([f"{lo:.3g}", f"{hi:.3g}"])
    heading = [title] if title else []
    kinds = set(notes) - {""}
    clipped = (f", {kinds.pop()}" if len(set(notes)) == 1 and kinds else  # the same ends on every panel
               ", display clipped where each ion's colour bar ends (its 99th pct, and 1st pct or 0)" if kinds else "")
    scales = f"each on its own colour scale{clipped}"
    heading.append(scales if len(images) <= n else f"first {n} of {len(images)} ions, {scales}")
    fig.suptitle(_wrapped("\n".join(heading), fig.get_size_inches()[0], 9), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)


def save_alignments(path: str | Path, tissue: np.ndarray, outlines: Sequence[tuple[str, np.ndarray, float]],
                    pixel_size_um: float | None = None) -> Path:
    """Two alignments compared: the MSI tissue image (gray, upsampled to the outlines' grid) under the contour of each
    (label, field, level) of ``outlines`` (the optical's tissue outline under each alignment; cyan, then orange),
    whole and, enlarged, in the window where the outlines enclose the most different area. Alignments a few MSI
    pixels apart look alike in two separate overlays at display size; drawn on one image they do not."""
    import cv2
    from scipy.ndimage import uniform_filter

    H, W = outlines[0][1].shape
    t = cv2.resize(np.asarray(tissue, np.float32), (W, H), interpolation=cv2.INTER_NEAREST)
    lo, hi = display_range(tissue)
    shade = np.clip((t - lo) / max(hi - lo, 1e-30), 0, 1)
    inside = [field > level for _, field, level in outlines]
    side = min(H, W, max(8, max(H, W) // 5))
    differ = uniform_filter(np.not_equal(*inside[:2]).astype(np.float32), side)
    r, c = np.unravel_index(np.argmax(differ), differ.shape)
    top, left = int(np.clip(r - side // 2, 0, H - side)), int(np.clip(c - side // 2, 0, W - side))
    window = (slice(top, top + side), slice(left, left + side))
    fig = new_figure((12.0, max(2.0, _drawn_height((H, W), 6.0)) + 1.0), 110)
    axes = fig.subplots(1, 2)
    colours = ("cyan", "orange")
    for ax, (rows, cols) in zip(axes, ((slice(0, H), slice(0, W)), window)):
        ax.imshow(shade[rows, cols], cmap="gray", extent=(cols.start, cols.stop, rows.stop, rows.start),
                  interpolation="nearest")
        y, x = np.mgrid[rows, cols] + 0.5  # pixel centres, as imshow's extent places them
        for (_, field, level), colour in zip(outlines, colours):
            part = field[rows, cols]
            if min(part.shape) >= 2 and part.min() < level < part.max():  # else there is no outline to draw
                ax.contour(x, y, part, levels=[level], colors=[colour], linewidths=1.0)
        ax.set_axis_off()
        add_scale_bar(ax, (rows.stop - rows.start, cols.stop - cols.start), pixel_size_um)
    axes[0].add_patch(Rectangle((left, top), side, side, fill=False, edgecolor="white", linewidth=1.0))
    names = " and ".join(f"{label} ({colour})" for (label, _, _), colour in zip(outlines, colours))
    axes[0].set_title(_wrapped(f"the optical's tissue outline under {names}, on the MSI tissue image it was "
                               "matched to (gray)", 5.5, 9), fontsize=9)
    axes[1].set_title("where the two differ most (boxed left), enlarged", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)


class LandmarkMark(NamedTuple):
    """A landmark as :func:`save_overlay` draws it: its name, where it lies on the registered optical (fractional
    column and row) and its error in ion pixels (NaN: not measured; see ``register.transforms.LandmarkErrors``)."""

    name: str
    column: float
    row: float
    error: float


LABELLED_MARKS = 60  # more landmarks than this are drawn without their names
MARK_COLOUR = "#39ff14"  # a green apart from the overlay's magenta and its yellow and cyan contours


def save_overlay(path: str | Path, rgb: np.ndarray, tissue: np.ndarray, pixel_size_um: float | None = None,
                 title: str = "registered optical", marks: Sequence[LandmarkMark] = (),
                 error_measure: str = "") -> Path:
    """Registration check: the registered optical (titled ``title``) beside it blended with the MSI tissue
    image (magenta, upsampled to the optical's grid), plus the tissue image's contours; with ``marks``, the
    landmarks on both, each named with its error (``error_measure``: what the error is, for the title)."""
    import cv2

    H, W = rgb.shape[:2]
    tissue = np.asarray(tissue, dtype=np.float32)
    lo, hi = display_range(tissue)
    t = np.clip((tissue - lo) / (hi - lo), 0, 1)
    t = cv2.resize(t, (W, H), interpolation=cv2.INTER_LINEAR)
    gray = luminance(rgb)
    blend = np.stack([gray * 0.6 + 0.4 * t, gray * 0.6, gray * 0.6 + 0.4 * t], axis=-1)
    fig = new_figure(_figsize((H, 2 * W), 12.0, margin=1.0), 110)
    axes = fig.subplots(1, 2)
    axes[0].imshow(np.clip(rgb, 0, 1))
    axes[0].set_title(title)
    axes[1].imshow(np.clip(blend, 0, 1))
    axes[1].contour(t, levels=[0.25, 0.5], colors=["yellow", "cyan"], linewidths=0.6)
    axes[1].set_title("overlay: optical (gray) + MSI tissue image (magenta);\n"
                      "its contours at 25 % (yellow) and 50 % (cyan) of its display range")
    for ax in axes:
        ax.set_axis_off()
        add_scale_bar(ax, (H, W), pixel_size_um)
        _draw_marks(ax, marks)
    if marks:
        axes[0].set_title(f"{title}\nlandmarks (+){f', {error_measure} error in ion pixels' if error_measure else ''}")
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)


def _draw_marks(ax, marks: Sequence[LandmarkMark]) -> None:
    """Landmark crosses, named (with their errors) up to :data:`LABELLED_MARKS` of them; the view stays the image's."""
    if not marks:
        return
    limits = ax.get_xlim(), ax.get_ylim()
    columns, rows = [m.column for m in marks], [m.row for m in marks]
    ax.scatter(columns, rows, marker="+", s=70, linewidths=2.2, color="black")
    ax.scatter(columns, rows, marker="+", s=60, linewidths=1.1, color=MARK_COLOUR)
    if len(marks) <= LABELLED_MARKS:
        for mark in marks:
            text = mark.name + (f" {mark.error:.2f}" if np.isfinite(mark.error) else "")
            ax.annotate(text, (mark.column, mark.row), xytext=(4, 4), textcoords="offset points", fontsize=7,
                        color=MARK_COLOUR, bbox={"boxstyle": "round,pad=0.15", "fc": "black", "alpha": 0.55,
                                               "lw": 0}, annotation_clip=True)
    ax.set_xlim(limits[0])
    ax.set_ylim(limits[1])
