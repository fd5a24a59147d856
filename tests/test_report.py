"""Figures: scale bars that fit the image they label."""

import cv2
import matplotlib
import numpy as np
import pytest

from msifusion.report import Figure, add_scale_bar, new_figure, nice_length, save_ion_png


def test_nice_length_is_the_1_2_5_step_below():
    assert [nice_length(v) for v in (7.3, 19.9, 450.0, 1.0)] == [5, 10, 200, 1]


@pytest.mark.parametrize("shape, loc, colour", [((120, 160), 4, "white"), ((20, 2000), 1, "black")])
def test_a_strip_gets_its_scale_bar_below_it_in_black(shape, loc, colour):
    ax = new_figure((4, 3), 100).subplots()
    add_scale_bar(ax, shape, 2.0)
    (bar,) = ax.artists
    assert bar.loc == loc  # 4: lower right, inside the image; 1: upper right of the box under the image
    assert matplotlib.colors.to_rgb(bar.size_bar.get_children()[0].get_facecolor()) == matplotlib.colors.to_rgb(colour)


@pytest.mark.parametrize("shape, thickness", [((3, 3), 0.02), ((120, 1500), 10.0), ((40, 60), 0.4)])
def test_a_scale_bar_is_thin_beside_the_image_however_few_its_pixels(shape, thickness):
    """A 3×3-pixel ion's bar was a whole pixel, a third of the image, tall."""
    ax = new_figure((4, 3), 100).subplots()
    add_scale_bar(ax, shape, 2.0)
    (bar,) = ax.artists
    assert bar.size_bar.get_children()[0].get_height() == pytest.approx(thickness)


def test_a_strip_png_has_its_colour_bar_below_it(tmp_path, monkeypatch):
    seen = []
    real = Figure.colorbar

    def colorbar(self, *args, **kwargs):
        seen.append(kwargs["orientation"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "colorbar", colorbar)
    for shape in ((20, 2000), (120, 160)):
        save_ion_png(tmp_path / "ion.png", np.random.default_rng(0).random(shape), 1.0)
    assert seen == ["horizontal", "vertical"]


def test_an_overview_of_strips_has_room_for_their_scale_bars(tmp_path):
    import warnings

    from msifusion.report import save_ion_grid

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when tight_layout cannot fit the bars below the strips
        save_ion_grid(tmp_path / "ions.png", np.random.default_rng(0).random((7, 20, 2000)), list("abcdefg"), 1.0)
    drawn = cv2.imread(str(tmp_path / "ions.png"))
    assert drawn.shape[1] > drawn.shape[0] and drawn.std() > 10  # the seven strips, drawn wide


@pytest.mark.parametrize("shape", [(1, 20), (1, 5000), (2, 500)])
@pytest.mark.parametrize("count", [1, 4])
@pytest.mark.parametrize("pixel_size_um", [None, 10.0])
def test_an_overview_of_one_row_images_lays_out_without_a_warning(tmp_path, shape, count, pixel_size_um):
    """`ions` on a one-row imzML printed matplotlib's "Tight layout not applied" as two raw lines of stderr: a
    strip's row had no room for its title and colour bar, nor the figure for its heading."""
    import warnings

    from msifusion.report import save_ion_grid

    images = np.random.default_rng(0).random((count, *shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_ion_grid(tmp_path / "ions.png", images, [f"m/z {i}" for i in range(count)], pixel_size_um, "ions")
    assert cv2.imread(str(tmp_path / "ions.png")).std() > 10


def test_a_tall_image_is_drawn_narrower_not_taller(tmp_path):
    """A 1200×20 px image at the usual width would make figures tens of thousands of pixels tall; each figure stays
    within MAX_IMAGE_HEIGHT_IN (plus titles and bars) and narrows instead, while a landscape image keeps its width."""
    from PIL import Image

    from msifusion.report import MAX_IMAGE_HEIGHT_IN, save_ion_grid, save_overlay, save_panel

    rng = np.random.default_rng(0)
    for shape in ((1200, 20), (120, 300)):
        ion, rgb = rng.random(shape), rng.random((*shape, 3))
        save_ion_png(tmp_path / "ion.png", ion, 1.0)
        save_panel(tmp_path / "panel.png", [("optical", rgb), ("measured", ion[::4, ::4]), ("fused", ion)], 1.0)
        save_ion_grid(tmp_path / "grid.png", [ion, ion], ["a", "b"], 1.0)
        save_overlay(tmp_path / "overlay.png", rgb, ion[::4, ::4], 1.0)
        sizes = {}
        for name in ("ion", "panel", "grid", "overlay"):
            with Image.open(tmp_path / f"{name}.png") as picture:
                sizes[name] = picture.size
        dpi = {"ion": 120, "panel": 130, "grid": 110, "overlay": 110}
        for name, (width, height) in sizes.items():
            assert height <= (MAX_IMAGE_HEIGHT_IN + 2.5) * dpi[name], (shape, name, sizes)
        if shape == (1200, 20):
            assert sizes["ion"][0] < 4 * 120 and sizes["panel"][0] < 6 * 130, sizes
        else:
            assert sizes["ion"][0] == 8 * 120 and sizes["panel"][0] == round(3 * 4.2 * 130), sizes


@pytest.mark.parametrize("low, negatives, note", [
    (0.0, 0, "display clipped above the 99th pct"),  # a hot pixel above the 99th percentile
    (-50.0, 200, "display clipped below the 1st pct and above the 99th pct"),  # 2 % negative: the 1st pct bounds it
    (-50.0, 50, "display clipped below 0 and above the 99th pct"),  # 0.5 % negative: the scale starts at 0
])
def test_the_colour_bar_says_which_ends_the_display_clips(low, negatives, note):
    from msifusion.report import clip_note, display_range

    image = np.linspace(0, 1, 10_000).reshape(100, 100)
    image.ravel()[:negatives] = np.linspace(low, -1, negatives) if negatives else image.ravel()[:0]
    image[-1, -1] = 100.0
    assert clip_note(image, *display_range(image)) == note
    assert clip_note(image, image.min(), image.max()) == ""
    assert clip_note([image[:50], image[50:]], *display_range(image)) == note  # panels shown on one scale


def test_a_large_image_is_area_averaged_for_display_in_its_own_pixel_coordinates():
    from msifusion.report import _for_display

    image = np.zeros((1000, 4000), np.float32)
    image[:, ::2] = 1.0  # a one-pixel pattern that drawing every fourth pixel would show as all ones (aliasing)
    drawn, extent = _for_display(image, (600, 1000))
    assert drawn.shape == (250, 1000) and extent == (0.0, 4000.0, 1000.0, 0.0)
    np.testing.assert_allclose(drawn, 0.5)
    small = np.ones((10, 20))
    assert _for_display(small, (600, 1000))[0] is small


def test_a_panel_draws_one_colour_bar_for_its_shared_scale(tmp_path, monkeypatch):
    import msifusion.report as report

    labels = []
    real = Figure.colorbar

    def colorbar(self, *args, **kwargs):
        bar = real(self, *args, **kwargs)
        original = bar.set_label
        bar.set_label = lambda label, **kw: (labels.append(label), original(label, **kw))
        return bar

    monkeypatch.setattr(Figure, "colorbar", colorbar)
    rng = np.random.default_rng(0)
    truth = rng.random((40, 80))
    report.save_panel(tmp_path / "p.png", [("optical", rng.random((40, 80, 3))), ("a", truth), ("b", truth / 2)],
                      1.0, reference=truth)
    report.save_panel(tmp_path / "q.png", [("optical", rng.random((40, 80, 3)))], 1.0)  # colours only: no bar
    assert labels == ["ion intensity, one scale for every ion panel (display clipped above the 99th pct)"]


def test_a_panels_colour_bar_sits_under_its_lowest_image_not_at_the_figures_foot(tmp_path):
    import cv2

    import msifusion.report as report

    rng = np.random.default_rng(0)
    truth = rng.random((40, 100))
    report.save_panel(tmp_path / "p.png", [("optical", rng.random((40, 100, 3)))] +
                      [(f"m/z {i}", truth) for i in range(5)], 1.0, reference=truth)
    blank = (cv2.imread(str(tmp_path / "p.png")) >= 250).all(axis=(1, 2))  # rows of white only
    drawn = np.flatnonzero(~blank)
    longest = max(len(run) for run in "".join("1" if b else "0" for b in blank[drawn[0]:drawn[-1]]).split("0"))
    assert longest < 60  # 130 dpi: under half an inch between rows, bar and images (93 px with the bar at the foot)
    assert blank[:drawn[0]].size < 40 and blank[drawn[-1] + 1:].size < 40  # the margins cropped


def test_a_png_that_cannot_be_written_is_an_os_error_naming_it(tmp_path):
    from msifusion.report import save_rgb_png

    target = tmp_path / "gone" / "optical.png"  # OpenCV answers False, as on a full disk
    with pytest.raises(OSError, match="cannot write the PNG") as error:
        save_rgb_png(target, np.zeros((4, 4, 3)))
    assert error.value.filename == str(target)


def test_drawing_leaves_the_callers_matplotlib_backend_and_figures_alone(tmp_path):
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt; import numpy as np; "
            "from msifusion.report import save_ion_png; "
            "save_ion_png('ion.png', np.ones((4, 5)), 1.0); "
            "print(matplotlib.get_backend(), len(plt.get_fignums()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svg", "0"] and (tmp_path / "ion.png").read_bytes().startswith(b"\x89PNG")


def test_an_overview_heading_says_each_ion_has_its_own_clipped_scale(tmp_path, monkeypatch):
    from msifusion.report import save_ion_grid

    headings = []
    real = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, **kw: headings.append(text) or real(self, text, **kw))
    ramp = np.linspace(0, 1, 400).reshape(20, 20)
    save_ion_grid(tmp_path / "a.png", [ramp, ramp], ["a", "b"], 1.0, "measured ion images")
    signed = ramp - 0.5
    save_ion_grid(tmp_path / "b.png", [ramp, signed, np.zeros((20, 20))], ["a", "b", "c"], max_panels=2)
    assert [h.replace("\n", " ") for h in headings] == [
        "measured ion images each on its own colour scale, display clipped above the 99th pct",
        "first 2 of 3 ions, each on its own colour scale, display clipped where each ion's colour bar ends (its 99th "
        "pct, and 1st pct or 0)"]


def test_the_detail_window_covers_whole_msi_pixels_where_the_ion_is_brightest():
    from msifusion.report import detail_window

    ion = np.zeros((100, 150))
    ion[80:83, 140:143] = 5.0  # the brightest 3×3 near the lower right corner
    rows, cols = detail_window(ion, 8)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (512, 512)  # 64 MSI pixels of 8 fused pixels
    assert rows.start % 8 == 0 and cols.start % 8 == 0 and rows.stop <= 800 and cols.stop == 1200  # kept inside
    assert rows.start <= 81 * 8 < rows.stop and cols.start <= 141 * 8 < cols.stop
    assert detail_window(ion[:60, :60], 8) is None  # 480 fused pixels: the whole picture shows it already
    assert detail_window(-ion, 8) == (rows, cols)  # an ion ≤ 0 everywhere: by magnitude
    hot = ion.copy()
    hot[20:40, 20:40], hot[2, 2] = 5.0, 500.0  # a patch, and one hot pixel in a corner: the window goes to the patch
    rows, cols = detail_window(hot, 8)
    assert rows.start <= 30 * 8 < rows.stop and cols.start <= 30 * 8 < cols.stop
    flat = detail_window(np.ones((100, 150)), 8)  # nothing brighter anywhere: the centre
    assert flat == (slice(18 * 8, 82 * 8), slice(43 * 8, 107 * 8))


def test_a_comparison_with_a_detail_row_crops_every_panel_alike(tmp_path, monkeypatch):
    import msifusion.report as report

    drawn = []
    real = report._draw_panel
    monkeypatch.setattr(report, "_draw_panel", lambda ax, image, *a: drawn.append(image) or real(ax, image, *a))
    titles = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, text, **kw: titles.append(text))
    rng = np.random.default_rng(0)
    guide, ion = rng.random((64, 96, 3)), rng.random((8, 12))
    fused = np.kron(ion, np.ones((8, 8)))
    report.save_panel(tmp_path / "c.png", [("optical", guide), ("measured", ion), ("fused", fused)], 2.0,
                      detail=(slice(16, 48), slice(40, 72)), detail_titles=("o", "m", "f"))
    whole, crops = drawn[0::2], drawn[1::2]  # each panel, then its detail
    assert [a.shape for a in whole] == [(64, 96, 3), (8, 12), (64, 96)]
    np.testing.assert_array_equal(crops[0], guide[16:48, 40:72])
    np.testing.assert_array_equal(crops[1], ion[2:6, 5:9])  # the same window in MSI pixels
    np.testing.assert_array_equal(crops[2], fused[16:48, 40:72])
    assert titles == ["optical", "o", "measured", "m", "fused", "f"]
    with pytest.raises(ValueError, match="one row of panels"):
        report.save_panel(tmp_path / "d.png", [("a", ion)] * 4, detail=(slice(0, 8), slice(0, 8)))
    with pytest.raises(ValueError, match="whole pixels"):  # a window cutting MSI pixels of the measured panel
        report.save_panel(tmp_path / "e.png", [("measured", ion), ("fused", fused)], detail=(slice(4, 36), slice(0, 32)))


def test_two_alignments_are_drawn_on_one_image_and_enlarged_where_they_differ(tmp_path, monkeypatch):
    """Two outlines that agree but for one bump: the enlarged window is the bump's."""
    import matplotlib.axes

    from msifusion.report import save_alignments

    boxes = []
    real = matplotlib.axes.Axes.add_patch
    monkeypatch.setattr(matplotlib.axes.Axes, "add_patch", lambda self, p: boxes.append(p) or real(self, p))
    y, x = np.mgrid[:120, :200]
    disc = np.hypot(y - 60, x - 80) - 40.0
    bumped = np.minimum(disc, np.hypot(y - 90, x - 160) - 12.0)  # the other alignment's outline reaches further there
    save_alignments(tmp_path / "a.png", np.random.default_rng(0).random((30, 50)),
                    [("used", -disc, 0.0), ("other", -bumped, 0.0)], 2.0)
    (box,) = [b for b in boxes if isinstance(b, matplotlib.patches.Rectangle) and b.get_edgecolor()[:3] == (1, 1, 1)]
    left, top = box.get_xy()
    assert left <= 160 <= left + box.get_width() and top <= 90 <= top + box.get_height()
    assert box.get_width() == box.get_height() == 40  # a fifth of the longer side


@pytest.mark.parametrize("shape", [(6, 6), (2, 80), (80, 2), (7, 100)])
def test_alignments_of_a_tiny_grid_are_drawn_without_error(tmp_path, shape):
    from msifusion.report import save_alignments

    y, x = np.mgrid[: shape[0], : shape[1]]
    field = -np.hypot(y - shape[0] / 2, x - shape[1] / 2)
    save_alignments(tmp_path / "a.png", np.ones((1, 1)), [("used", field, field.mean()), ("other", field + 0.5,
                                                                                          field.mean())])
    drawn = cv2.imread(str(tmp_path / "a.png"))
    assert drawn.ndim == 3 and min(drawn.shape[:2]) > 100 and drawn.std() > 10  # a picture, not a blank page


def test_detail_titles_must_name_every_panel(tmp_path):
    from msifusion.report import save_panel

    ion = np.random.default_rng(0).random((8, 8))
    with pytest.raises(ValueError, match="2 detail titles for 3 panels"):
        save_panel(tmp_path / "p.png", [("a", ion), ("b", ion), ("c", ion)], detail=(slice(0, 4), slice(0, 4)),
                   detail_titles=("a", "b"))


def test_figures_are_saved_at_the_faster_png_compression(tmp_path):
    """zlib records its level's class in the stream's second byte: 1 ("fast", levels 2-5) for level 3, where the
    default level 6 would write 2."""
    import struct

    import numpy as np

    from msifusion.report import save_ion_png

    path = save_ion_png(tmp_path / "ion.png", np.random.default_rng(0).random((40, 60)).astype(np.float32))
    data = path.read_bytes()
    at = 8  # after the PNG signature: chunks of length, type, data, CRC
    while data[at + 4: at + 8] != b"IDAT":
        at += 12 + struct.unpack(">I", data[at: at + 4])[0]
    cmf, flg = data[at + 8], data[at + 9]
    assert cmf & 0x0F == 8 and flg >> 6 == 1


def test_the_loss_table_holds_each_epochs_losses_as_recorded(tmp_path):
    """losses.csv: one row per epoch, the fit's own numbers (to the last digit), in LOSS_FIELDS' order; extra keys of
    a history record are left out."""
    import csv

    from msifusion.report import LOSS_FIELDS, save_loss_plot, write_loss_csv

    history = [{"epoch": e, "mse": 0.1 / e, "edge": 1e-7 * e, "total": 0.1 / e + 1e-7 * e, "seconds": 0.25 * e,
                "lr": 3e-4} for e in range(1, 6)]
    write_loss_csv(tmp_path / "losses.csv", history)
    with open(tmp_path / "losses.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == LOSS_FIELDS == ("epoch", "mse", "edge", "total", "seconds")
    assert [[float(v) for v in row] for row in rows[1:]] == [[r[k] for k in LOSS_FIELDS] for r in history]
    save_loss_plot(tmp_path / "losses.png", history, title="lcrn: stopped")
    drawn = cv2.imread(str(tmp_path / "losses.png"))
    assert drawn.shape[:2] == (480, 768) and drawn.std() > 10  # 6.4 × 4 inches at 120 dpi


def test_an_overlay_marks_and_names_the_landmarks(tmp_path):
    from PIL import Image

    from msifusion.report import LandmarkMark, save_overlay

    rgb = np.full((80, 120, 3), 0.5)
    tissue = np.zeros((20, 30))
    tissue[5:15, 8:22] = 1.0
    marks = [LandmarkMark("Pt-0", 30.0, 20.0, 0.25), LandmarkMark("Pt-1", 90.0, 60.0, float("nan")),
             LandmarkMark("far", 500.0, -40.0, 1.0)]  # beyond the image: the view stays the image's
    save_overlay(tmp_path / "plain.png", rgb, tissue, 1.0)
    save_overlay(tmp_path / "marked.png", rgb, tissue, 1.0, marks=marks, error_measure="leave-one-out")
    pictures = {}
    for name in ("plain", "marked"):
        with Image.open(tmp_path / f"{name}.png") as picture:
            pictures[name] = np.asarray(picture.convert("RGB")).astype(int)
    assert pictures["plain"].shape == pictures["marked"].shape

    def gray(image: np.ndarray) -> int:  # the optical's own pixels, as large as without marks: the view is the image's
        return int((np.abs(image - 128).max(axis=2) <= 1).sum())

    assert 0.97 * gray(pictures["plain"]) < gray(pictures["marked"]) < gray(pictures["plain"])

    def mark_coloured(image: np.ndarray) -> int:  # the crosses' and names' green
        return int((np.abs(image - [0x39, 0xff, 0x14]).max(axis=2) < 12).sum())

    assert mark_coloured(pictures["plain"]) == 0 and mark_coloured(pictures["marked"]) > 100
