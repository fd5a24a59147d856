"""Synthetic plant tissue with ground truth: the embedded demo and the benchmark's data.

A phantom is a cross-section drawn cell by cell at a fine grid (default 1 µm per pixel):

- ``kind="leaf"``: a ginkgo-like leaf blade (the paper's first sample): cuticle and a
  one-cell epidermis on both faces, elongated palisade mesophyll under the upper face,
  spongy mesophyll with air spaces, collateral vascular bundles (thick-walled xylem above,
  small-celled phloem below, a sheath around both) and secretory cavities (a round lumen
  lined by small epithelial cells) near both faces.
- ``kind="stem"``: the upper half of a mint-like square stem (the paper's second sample):
  epidermis, collenchyma in the corners, cortex, phloem, a cambium of small flattened cells,
  xylem in radial files (large bundles in the corners) and a pith of large cells.

From one set of cells the module renders three things that agree with each other:

- ``guide``: an RGB bright-field micrograph (Beer–Lambert absorbance of each tissue, dark
  walls, chloroplasts, stained xylem, vignetting, blur, sensor noise);
- ``truth``: the ion's concentration at the fine grid, set by tissue *and* by cell (random
  per-cell amounts, less in walls, none off tissue) with structure the optical does not
  show: per-cell amounts, smooth fields, for ``ion="gradient"`` no relation to tissue;
- ``labels``: the tissue of each pixel (names in :data:`TISSUES`).

:meth:`Phantom.measure` is the MSI acquisition: the box average of each MSI pixel's
footprint (:func:`msifusion.measurement.block_mean`) plus noise. Everything follows from
``PhantomConfig.seed``: same config, same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from msifusion.measurement import MeasurementModel


class Tissue(IntEnum):
    """Tissue labels (uint8 values of :attr:`Phantom.labels`)."""

    BACKGROUND = 0
    CUTICLE = 1
    EPIDERMIS = 2
    PALISADE = 3
    SPONGY = 4
    AIR = 5
    SHEATH = 6
    XYLEM = 7
    PHLOEM = 8
    EPITHELIUM = 9
    CAVITY = 10
    CORTEX = 11
    COLLENCHYMA = 12
    CAMBIUM = 13
    PITH = 14


TISSUES: dict[int, str] = {
    Tissue.BACKGROUND: "background",
    Tissue.CUTICLE: "cuticle",
    Tissue.EPIDERMIS: "epidermis",
    Tissue.PALISADE: "palisade mesophyll",
    Tissue.SPONGY: "spongy mesophyll",
    Tissue.AIR: "air space",
    Tissue.SHEATH: "bundle sheath",
    Tissue.XYLEM: "xylem",
    Tissue.PHLOEM: "phloem",
    Tissue.EPITHELIUM: "secretory epithelium",
    Tissue.CAVITY: "secretory cavity lumen",
    Tissue.CORTEX: "cortex",
    Tissue.COLLENCHYMA: "collenchyma",
    Tissue.CAMBIUM: "cambium",
    Tissue.PITH: "pith",
}

T = Tissue
KIND_TISSUES: dict[str, tuple[int, ...]] = {
    "leaf": (T.BACKGROUND, T.CUTICLE, T.EPIDERMIS, T.PALISADE, T.SPONGY, T.AIR, T.SHEATH,
             T.XYLEM, T.PHLOEM, T.EPITHELIUM, T.CAVITY),
    "stem": (T.BACKGROUND, T.CUTICLE, T.EPIDERMIS, T.AIR, T.XYLEM, T.PHLOEM, T.EPITHELIUM,
             T.CAVITY, T.CORTEX, T.COLLENCHYMA, T.CAMBIUM, T.PITH),
}

IONS: dict[str, str] = {
    "apigenin": "flavonoid (m/z 269.045): epidermis, secretory cavities, a few hot cells",
    "pheophytin": "chlorophyll a derivative (m/z 871.57): chloroplast-rich mesophyll / cortex",
    "sucrose": "transport sugar ([M+K]+ m/z 381.08): phloem, sheath, cambium",
    "gradient": "a smooth gradient across the section that the optical image does not show",
}


@dataclass(frozen=True)
class PhantomConfig:
    """What to draw. ``fine_shape`` is (rows, cols) of the truth; a tall shape turns the section.

    ``noise`` is the Gaussian noise std of :meth:`Phantom.measure` as a fraction of the
    truth's maximum; ``shot`` adds Poisson-like noise of std ``shot·sqrt(value·max)``. The noisy
    measurement is clipped at 0, as intensities are (``clip``; the benchmark's model): where the
    truth is 0 that leaves about half the blocks at 0 and biases the rest upwards; ``clip=False``
    keeps the noise signed and unbiased.
    """

    fine_shape: tuple[int, int] = (320, 800)
    fine_pixel_um: float = 1.0
    seed: int = 0
    noise: float = 0.02
    shot: float = 0.0
    kind: str = "leaf"
    ion: str = "apigenin"
    clip: bool = True

    def __post_init__(self) -> None:
        h, w = self.fine_shape
        if min(h, w) < 64:
            raise ValueError(f"fine_shape {self.fine_shape} is too small (at least 64×64)")
        if self.kind not in KIND_TISSUES:
            raise ValueError(f"kind {self.kind!r} is not one of {sorted(KIND_TISSUES)}")
        if self.ion not in IONS:
            raise ValueError(f"ion {self.ion!r} is not one of {sorted(IONS)}")
        if self.noise < 0 or self.shot < 0 or self.fine_pixel_um <= 0:
            raise ValueError("noise and shot must be ≥ 0 and fine_pixel_um > 0")


@dataclass(frozen=True, eq=False)
class Phantom:
    """A drawn section: optical ``guide`` (H, W, 3), ion ``truth`` (H, W), tissue ``labels``
    (H, W) uint8 and ``cells`` (H, W) int32 cell ids (0 = no cell: background, air, lumen)."""

    config: PhantomConfig
    guide: np.ndarray
    truth: np.ndarray
    labels: np.ndarray
    cells: np.ndarray

    @property
    def tissues(self) -> dict[int, str]:
        """The labels this kind of phantom uses, with their names."""
        return {int(t): TISSUES[t] for t in KIND_TISSUES[self.config.kind]}

    def measure(self, scale: int, spot_sigma_px: float = 0.0) -> np.ndarray:
        """The MSI image at ``scale`` × the fine pixel: block mean (after a Gaussian laser spot of ``spot_sigma_px``
        fine pixels, :class:`msifusion.measurement.MeasurementModel`) plus the configured noise.

        Deterministic for (seed, scale); clipped at 0 like counts.
        """
        cfg = self.config
        measured = MeasurementModel(spot_sigma_px).apply(self.truth, scale)
        if cfg.noise == 0 and cfg.shot == 0:
            return measured.astype(np.float32)
        rng = np.random.default_rng([cfg.seed, 0x4D5349, scale])
        return with_noise(measured, float(self.truth.max()), cfg.noise, cfg.shot, rng, cfg.clip)


def with_noise(measured: np.ndarray, peak: float, noise: float, shot: float, rng: np.random.Generator,
               clip: bool = True) -> np.ndarray:
    """A measurement with the phantoms' noise: Gaussian of std ``noise``·``peak`` plus counting (shot) noise of std
    ``shot``·sqrt(value·``peak``), clipped at 0 like counts unless ``clip`` is False; float32."""
    var = (noise * peak) ** 2 + shot**2 * peak * np.clip(measured, 0, None)
    measured = measured + rng.standard_normal(measured.shape) * np.sqrt(var)
    return (np.clip(measured, 0, None) if clip else measured).astype(np.float32)


def make_phantom(config: PhantomConfig = PhantomConfig()) -> Phantom:
    """Draw the phantom that ``config`` describes (deterministic for its seed)."""
    rng = np.random.default_rng(config.seed)
    h, w = config.fine_shape
    tall = h > w
    shape = (w, h) if tall else (h, w)
    um = 1.0 / config.fine_pixel_um  # pixels per µm
    section = _draw_leaf(rng, shape, um) if config.kind == "leaf" else _draw_stem(rng, shape, um)
    walls = _wall_fields(section, um)
    guide, chloroplasts = _render_guide(rng, section, walls, um)
    truth = _ion_truth(rng, section, walls, chloroplasts, config.ion, um)
    labels, cells = section.labels, section.cells
    if tall:
        guide, truth = guide.transpose(1, 0, 2), truth.T
        labels, cells = labels.T, cells.T
    return Phantom(
        config=config,
        guide=np.ascontiguousarray(guide, dtype=np.float32),
        truth=np.ascontiguousarray(truth, dtype=np.float32),
        labels=np.ascontiguousarray(labels, dtype=np.uint8),
        cells=np.ascontiguousarray(cells, dtype=np.int32),
    )


# --------------------------------------------------------------------------- drawing cells


@dataclass
class _Section:
    """The cells of a section, before rendering (all arrays (H, W) in canonical orientation)."""

    labels: np.ndarray  # uint8 tissue
    cells: np.ndarray  # int32 cell id, 0 = none
    gradient: np.ndarray  # float32 in [0, 1]: position along the section, for ion="gradient"
    chloroplasts: np.ndarray  # float32 weight of chloroplast-bearing cells (0..1)


class _Cells:
    """Hands out globally unique cell ids and fills them in, tissue by tissue (Voronoi)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.ids = np.zeros(shape, np.int32)
        self.seed_dist = np.full(shape, np.inf, np.float32)  # metric distance to own seed
        self.next_id = 1

    def fill(self, mask: np.ndarray, coords: np.ndarray, seeds: np.ndarray,
             box: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
        """Give each pixel of ``mask`` (within ``box``) the id of its nearest seed; ``coords``
        are those pixels' metric-scaled coordinates, one row per True pixel. Returns the ids."""
        if not mask.any():
            return np.zeros(0, np.int32)
        if len(seeds) == 0:
            seeds = coords[:1]
        dist, idx = cKDTree(seeds).query(coords, k=1)
        self.ids[box][mask] = self.next_id + idx.astype(np.int32)
        self.seed_dist[box][mask] = dist
        used = np.arange(self.next_id, self.next_id + len(seeds), dtype=np.int32)
        self.next_id += len(seeds)
        return used

    def single(self, mask: np.ndarray, box: tuple[slice, slice] = (slice(None), slice(None))) -> int:
        """One cell (or one compartment such as a cavity lumen) covering ``mask``."""
        cid = self.next_id
        self.ids[box][mask] = cid
        self.seed_dist[box][mask] = 0
        self.next_id += 1
        return cid


def _hex_seeds(rng: np.random.Generator, box: tuple[float, float, float, float],
               spacing: tuple[float, float], jitter: float) -> np.ndarray:
    """Jittered hexagonal lattice over box (x0, x1, y0, y1): regular cells, like plant tissue."""
    x0, x1, y0, y1 = box
    sx, sy = spacing
    rows = np.arange(y0 - sy, y1 + sy, sy)
    cols = np.arange(x0 - sx, x1 + sx, sx)
    xs, ys = np.meshgrid(cols, rows)
    xs = xs + (np.arange(len(rows)) % 2)[:, None] * (sx / 2)
    pts = np.column_stack([xs.ravel(), ys.ravel()])
    return pts + rng.uniform(-jitter, jitter, pts.shape) * (sx, sy)


def _smooth_1d(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Smooth random curve of length n with correlation length ``scale`` px, std 1."""
    pad = int(3 * scale) + 1
    v = ndimage.gaussian_filter1d(rng.standard_normal(n + 2 * pad), max(scale, 0.5))[pad:pad + n]
    return (v / (v.std() + 1e-12)).astype(np.float64)


def _smooth_2d(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth random field with correlation length ``scale`` px, mean 0, std 1 (float32)."""
    import cv2

    step = max(scale, 2.0)
    ch, cw = int(np.ceil(shape[0] / step)) + 4, int(np.ceil(shape[1] / step)) + 4
    coarse = ndimage.gaussian_filter(rng.standard_normal((ch, cw)), 0.8).astype(np.float32)
    fine = cv2.resize(coarse, (int(cw * step), int(ch * step)), interpolation=cv2.INTER_CUBIC)
    off = int(step)
    fine = fine[off:off + shape[0], off:off + shape[1]]
    return ((fine - fine.mean()) / (fine.std() + 1e-12)).astype(np.float32)


def _label_at(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Labels at fractional positions (255 outside the image)."""
    r, c = np.rint(rows).astype(np.int64), np.rint(cols).astype(np.int64)
    ok = (r >= 0) & (r < labels.shape[0]) & (c >= 0) & (c < labels.shape[1])
    out = np.full(r.shape, 255, np.uint8)
    out[ok] = labels[r[ok], c[ok]]
    return out


def _ring_seeds(rng: np.random.Generator, cx: float, cy: float, ax: float, ay: float,
                spacing: float) -> np.ndarray:
    """Seeds evenly along an ellipse (x, y) with radii (ax, ay): a one-cell layer."""
    perimeter = np.pi * (3 * (ax + ay) - np.sqrt((3 * ax + ay) * (ax + 3 * ay)))
    n = max(6, int(round(perimeter / spacing)))
    theta = (np.arange(n) + rng.uniform(-0.2, 0.2, n)) * (2 * np.pi / n) + rng.uniform(0, 2 * np.pi)
    return np.column_stack([cx + ax * np.cos(theta), cy + ay * np.sin(theta)])


def _fan_seeds(rng: np.random.Generator, cx: float, cy: float, r0: float, r1: float,
               spacing: float, r_ref: float) -> np.ndarray:
    """Seeds in radial files fanning upwards from (cx, cy): xylem as sections show it.

    Files are ``spacing`` apart at radius ``r_ref``; one seed in ten is dropped, so that
    some cells (vessels) come out larger.
    """
    theta = np.arange(-np.pi, 0, spacing / r_ref) + rng.uniform(0, spacing / r_ref)
    radii = np.arange(r0, r1, spacing * 0.9)
    th, rr = np.meshgrid(theta, radii)
    rr = rr + rng.uniform(-0.15, 0.15, rr.shape) * spacing
    pts = np.column_stack([(cx + rr * np.cos(th)).ravel(), (cy + rr * np.sin(th)).ravel()])
    return pts[rng.random(len(pts)) > 0.1]


def _draw_leaf(rng: np.random.Generator, shape: tuple[int, int], um: float) -> _Section:
    """A ginkgo-like leaf blade lying across the image (local coords: x, d = y − midline)."""
    h, w = shape
    x = np.arange(w, dtype=np.float64)
    half_len = 0.47 * w
    xc = w / 2 + rng.uniform(-0.01, 0.01) * w
    u = (x - xc) / half_len
    thick = min(0.60 * h, 420 * um)
    t = 0.5 * thick * np.sqrt(np.clip(1 - np.abs(u) ** 4, 0, None)) * (1 + 0.035 * _smooth_1d(rng, w, 80 * um))
    sag = rng.uniform(-1, 1) * 0.07 * h
    yc = h / 2 + sag * (u**2 - 1 / 3) + 0.012 * h * _smooth_1d(rng, w, 150 * um)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = yy - yc[None, :].astype(np.float32)
    tt = np.broadcast_to(t[None, :].astype(np.float32), shape)
    inside = np.abs(d) < tt
    depth = ndimage.distance_transform_edt(inside).astype(np.float32)
    z = d + tt  # depth below the upper (adaxial) face, measured across the blade

    epi = 16 * um * (1 + 0.06 * _smooth_1d(rng, w, 60 * um))
    inner = np.clip(2 * (t - epi), 0, None)
    pal_bottom = epi + 0.36 * inner  # palisade: the upper third of the mesophyll
    labels = np.zeros(shape, np.uint8)
    labels[inside] = T.SPONGY
    labels[inside & (z < pal_bottom[None, :])] = T.PALISADE
    cells = _Cells(shape)

    # Epidermis: one layer of cells, seeds along both faces, each cell its own height.
    band = inside & (depth < 1.3 * epi[None, :])
    seeds = []
    for side in (-1.0, 1.0):
        xs = np.arange(0, w, 0.25)
        ts = np.interp(xs, x, t)
        keep = ts > 0
        xs, ts = xs[keep], ts[keep]
        ys = side * ts
        dy = np.gradient(ys, xs)
        arc = np.concatenate([[0], np.cumsum(np.hypot(np.diff(xs), np.diff(ys)))])
        steps = rng.uniform(13, 24, int(arc[-1] / (13 * um)) + 2) * um
        s = np.cumsum(steps) - steps[0] * rng.uniform(0, 1)
        s = s[(s > 0) & (s < arc[-1])]
        sx, sy, sdy = np.interp(s, arc, xs), np.interp(s, arc, ys), np.interp(s, arc, dy)
        nx, ny = -side * -sdy, -side * np.ones_like(sdy)  # inward normal of the face
        norm = np.hypot(nx, ny)
        e = np.interp(sx, x, epi) / 2
        seeds.append(np.column_stack([sx + nx / norm * e, sy + ny / norm * e]))
    used = cells.fill(band, np.column_stack([xx[band], d[band]]), np.concatenate(seeds))
    height = np.zeros(cells.next_id, np.float32)
    height[used] = rng.uniform(0.8, 1.2, len(used))
    is_epi = band & (depth < height[cells.ids] * epi[None, :].astype(np.float32))
    cells.ids[band & ~is_epi] = 0
    labels[is_epi] = T.EPIDERMIS

    # Vascular bundles along the blade, at the palisade/spongy border; xylem above phloem.
    lo, hi = xc - half_len, xc + half_len
    spacing = 250 * um
    bundles: list[tuple[float, float, float, float]] = []
    bx = lo + rng.uniform(0.45, 0.9) * spacing
    while bx < hi - 0.3 * spacing:
        i = int(round(bx))
        b = rng.uniform(30, 40) * um
        b = min(b, 0.36 * inner[i])
        if b > 12 * um:
            a = b * rng.uniform(1.1, 1.35)
            db = -t[i] + pal_bottom[i] + 0.25 * b
            db = min(db, t[i] - epi[i] - b - 4 * um)
            bundles.append((bx, db, a, b))
        bx += spacing * rng.uniform(0.8, 1.2)

    # Secretory cavities between the bundles, alternating faces, just under the epidermis.
    cavities: list[tuple[float, float, float, float]] = []
    stops = [lo] + [bd[0] for bd in bundles] + [hi]
    side = rng.choice([-1.0, 1.0])
    for left, right in zip(stops[:-1], stops[1:]):
        cx = (left + right) / 2 + rng.uniform(-0.15, 0.15) * (right - left)
        i = int(np.clip(round(cx), 0, w - 1))
        r = rng.uniform(17, 27) * um
        ep = 6 * um
        rx = r * rng.uniform(1.0, 1.25)
        room = inner[i] - 2 * (r + ep) - 6 * um
        clear = all(abs(cx - bd[0]) > bd[2] + rx + ep + 6 * um for bd in bundles)
        if room > 0 and clear:
            cy = side * (t[i] - epi[i] - 3 * um - ep - r)
            cavities.append((cx, cy, rx, r))
            side = -side

    def box_of(cx: float, cy: float, rx: float, ry: float) -> tuple[slice, slice]:
        """Pixel window around an ellipse given in local (x, d) coordinates."""
        mid = float(np.interp(cx, x, yc)) + cy
        return (slice(max(0, int(mid - ry - 4)), max(0, int(mid + ry + 5))),
                slice(max(0, int(cx - rx - 4)), max(0, int(cx + rx + 5))))

    mesophyll = (labels == T.PALISADE) | (labels == T.SPONGY)
    sheath = 10 * um
    ep = 6 * um
    for bxc, byc, a, b in bundles:
        bb = box_of(bxc, byc, a, b)
        bx_, bd_ = xx[bb] - bxc, d[bb] - byc
        rho = np.sqrt((bx_ / a) ** 2 + (bd_ / b) ** 2)
        inb = mesophyll[bb] & (rho < 1)
        core = inb & (rho < 1 - sheath / ((a + b) / 2))
        upper = bd_ < (0.15 * b + 0.25 * b * (bx_ / a) ** 2)
        sub = labels[bb]
        sub[inb] = T.SHEATH
        sub[core & upper] = T.XYLEM
        sub[core & ~upper] = T.PHLOEM
    for cxc, cyc, rx, ry in cavities:
        bb = box_of(cxc, cyc, rx + ep, ry + ep)
        rho = np.sqrt(((xx[bb] - cxc) / rx) ** 2 + ((d[bb] - cyc) / ry) ** 2)
        sub = labels[bb]
        sub[mesophyll[bb] & ((rho - 1) * (rx + ry) / 2 < ep)] = T.EPITHELIUM
        sub[mesophyll[bb] & (rho < 1)] = T.CAVITY

    def seeds_where(pts: np.ndarray, tissue: int, d_of: np.ndarray | None = None) -> np.ndarray:
        rows = np.interp(pts[:, 0], x, yc) + (pts[:, 1] if d_of is None else d_of)
        return pts[_label_at(labels, rows, pts[:, 0]) == tissue]

    # Palisade: columns perpendicular to the face (anisotropic metric across the blade),
    # rounded at both ends: cells may reach half a cell into the spongy layer.
    aspect = 2.8
    nominal = labels == T.PALISADE
    m = nominal | ((labels == T.SPONGY) & (z < pal_bottom[None, :] + 6 * um * aspect))
    grid = _hex_seeds(rng, (0, w, 0, float(pal_bottom.max()) / aspect), (12 * um, 12 * um), 0.18)
    d_grid = grid[:, 1] * aspect - np.interp(grid[:, 0], x, t)
    grid = seeds_where(grid, T.PALISADE, d_grid)
    cells.fill(m, np.column_stack([xx[m], z[m] / aspect]), grid)
    far = m & (cells.seed_dist > 6.9 * um * (1 + 0.12 * _smooth_2d(rng, shape, 3 * um)))
    low = z > pal_bottom[None, :] - 6 * um * aspect  # gaps at the layer's foot go to spongy
    pal_air = far & nominal & ~low
    labels[m & ~far] = T.PALISADE
    labels[m & far & low] = T.SPONGY
    cells.ids[m & far & low] = 0

    # Spongy mesophyll: rounded lobed cells, wide air spaces, a few cells missing.
    m = labels == T.SPONGY
    sp = 17 * um
    grid = seeds_where(_hex_seeds(rng, (0, w, -h / 2, h / 2), (sp, sp * 0.87), 0.3), T.SPONGY)
    used = cells.fill(m, np.column_stack([xx[m], d[m]]), grid)
    radius = np.zeros(cells.next_id, np.float32)
    radius[used] = rng.uniform(0.5, 0.72, len(used)) * sp
    radius[used[rng.random(len(used)) < 0.12]] = 0
    lobes = 1 + 0.22 * _smooth_2d(rng, shape, 5 * um)
    sp_air = m & (cells.seed_dist > radius[cells.ids] * lobes)
    for air in (pal_air, sp_air):
        labels[air] = T.AIR
        cells.ids[air] = 0

    for bxc, byc, a, b in bundles:
        bb = box_of(bxc, byc, a, b)
        box = (bxc - a, bxc + a, byc - b, byc + b)
        for tissue, pts in (
            (T.SHEATH, _ring_seeds(rng, bxc, byc, a - sheath / 2, b - sheath / 2, 11 * um)),
            (T.XYLEM, _fan_seeds(rng, bxc, byc + 0.6 * b, 0.45 * b, 1.05 * np.hypot(a, 1.6 * b), 8 * um, b)),
            (T.PHLOEM, _hex_seeds(rng, box, (4.5 * um, 4.0 * um), 0.25)),
        ):
            m = labels[bb] == tissue
            cells.fill(m, np.column_stack([xx[bb][m], d[bb][m]]), pts, bb)
    for cxc, cyc, rx, ry in cavities:
        bb = box_of(cxc, cyc, rx + ep, ry + ep)
        m = labels[bb] == T.EPITHELIUM
        pts = _ring_seeds(rng, cxc, cyc, rx + ep / 2, ry + ep / 2, 8 * um)
        cells.fill(m, np.column_stack([xx[bb][m], d[bb][m]]), pts, bb)
        cells.single(labels[bb] == T.CAVITY, bb)
    cuticle = inside & (depth < 2.5 * um)
    labels[cuticle] = T.CUTICLE
    cells.single(cuticle)

    along = np.clip((xx - lo) / (hi - lo), 0, 1)
    chl = np.isin(labels, (T.PALISADE, T.SPONGY)).astype(np.float32)
    chl[labels == T.SPONGY] = 0.6
    chl[labels == T.SHEATH] = 0.15
    return _Section(labels, cells.ids, along.astype(np.float32), chl)


def _draw_stem(rng: np.random.Generator, shape: tuple[int, int], um: float) -> _Section:
    """The upper half of a mint-like square stem, its centre at the bottom edge of the image.

    Layers follow a rounded square (a superellipse with slightly concave sides); corners
    (ribs) carry collenchyma and the large vascular bundles. Ring tissues (phloem, cambium,
    xylem) are drawn in polar coordinates so that their cells line up in radial files.
    """
    h, w = shape
    half = min(0.88 * h, 0.47 * w)  # half the side of the square
    cy = h * rng.uniform(0.96, 1.0)
    cx = w / 2 + rng.uniform(-0.01, 0.01) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.hypot(yy - cy, xx - cx)

    def corner(th: np.ndarray) -> np.ndarray:
        return ((1 - np.cos(4 * th)) / 2) ** 6  # 1 at the four corners, 0 mid-side

    def boundary(th: np.ndarray) -> np.ndarray:
        sq = (np.abs(np.cos(th)) ** 3.5 + np.abs(np.sin(th)) ** 3.5) ** (-1 / 3.5)
        return half * sq * (1 - 0.045 * (1 + np.cos(4 * th)) / 2)

    wobble = _smooth_1d(rng, 720, 12)
    def rim(th: np.ndarray) -> np.ndarray:
        k = ((th % (2 * np.pi)) / (2 * np.pi) * 720).astype(np.int64) % 720
        return boundary(th) * (1 + 0.012 * wobble[k])

    rb = rim(theta)
    q = radius / rb
    kappa = corner(theta)
    inside = q < 1
    depth = ndimage.distance_transform_edt(inside).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    cells = _Cells(shape)

    # Vascular ring: cambium at q_c, phloem outside, xylem inside (deep in the corners,
    # with a few smaller bundles along the sides).
    bumps = np.zeros_like(theta)
    for centre in rng.uniform(0, 2 * np.pi, 6):
        bumps += np.exp(-(((theta - centre + np.pi) % (2 * np.pi) - np.pi) / 0.14) ** 2)
    g = float(np.clip(np.sqrt(half / (300 * um)), 1, 2))  # older, larger stems: more wood
    broad = ((1 - np.cos(4 * theta)) / 2) ** 2  # the corner bundles are wide
    q_c = 0.62 + 0.05 * broad
    q_cam = q_c + 8 * um / rb
    q_phl = q_cam + g * (12 + 24 * broad + 8 * bumps) * um / rb
    q_xyl = q_c - g * (14 + 60 * broad + 25 * bumps) * um / rb
    epi = 12 * um
    col_depth = epi + g * (18 + 120 * kappa) * um
    labels[inside] = T.CORTEX
    labels[inside & (depth < col_depth) & (kappa > 0.05)] = T.COLLENCHYMA
    labels[inside & (q < q_phl)] = T.PHLOEM
    labels[inside & (q < q_cam)] = T.CAMBIUM
    labels[inside & (q < q_c)] = T.XYLEM
    labels[inside & (q < q_xyl)] = T.PITH

    # Epidermis: small cells along the surface, one layer, each its own height.
    band = inside & (depth < 1.3 * epi)
    th = np.linspace(-np.pi, np.pi, 8000, endpoint=False)
    px, py = cx + rim(th) * np.cos(th), cy + rim(th) * np.sin(th)
    arc = np.concatenate([[0], np.cumsum(np.hypot(np.diff(px), np.diff(py)))])
    steps = rng.uniform(10, 17, int(arc[-1] / (10 * um)) + 2) * um
    sarc = np.cumsum(steps)
    sarc = sarc[sarc < arc[-1]]
    sth = np.interp(sarc, arc, th)
    sr = rim(sth) - epi / 2
    used = cells.fill(band, np.column_stack([xx[band], yy[band]]),
                      np.column_stack([cx + sr * np.cos(sth), cy + sr * np.sin(sth)]))
    height = np.zeros(cells.next_id, np.float32)
    height[used] = rng.uniform(0.8, 1.2, len(used))
    is_epi = band & (depth < height[cells.ids] * epi)
    cells.ids[band & ~is_epi] = 0
    labels[is_epi] = T.EPIDERMIS

    def seeds_in(pts: np.ndarray, tissue: int) -> np.ndarray:
        return pts[_label_at(labels, pts[:, 1], pts[:, 0]) == tissue]

    box = (cx - 1.3 * half, cx + 1.3 * half, cy - 1.3 * half, min(cy + 1.3 * half, h + 30 * um))

    m = labels == T.COLLENCHYMA
    cells.fill(m, np.column_stack([xx[m], yy[m]]), seeds_in(_hex_seeds(rng, box, (12 * um, 10.4 * um), 0.25), T.COLLENCHYMA))

    m = labels == T.CORTEX
    sp = 21 * um
    used = cells.fill(m, np.column_stack([xx[m], yy[m]]), seeds_in(_hex_seeds(rng, box, (sp, sp * 0.87), 0.25), T.CORTEX))
    rcell = np.zeros(cells.next_id, np.float32)
    rcell[used] = rng.uniform(0.58, 0.72, len(used)) * sp
    cortex_air = m & (cells.seed_dist > rcell[cells.ids] * (1 + 0.12 * _smooth_2d(rng, shape, 4 * um)))

    # Ring tissues in polar coordinates: s along the ring, p across it (both in px).
    ring_r = 0.64 * half
    phi = (theta - np.pi / 2) % (2 * np.pi)  # seam straight down, below the centre
    s_coord, p_coord = phi * ring_r, q * half

    for tissue, (ds, dp, jitter, drop, flat) in {
        T.PHLOEM: (4.5 * um, 4.5 * um, 0.25, 0.0, 1.0),
        T.CAMBIUM: (9 * um, 3.2 * um, 0.1, 0.0, 2.8),
        T.XYLEM: (9 * um, 9 * um, 0.1, 0.22, 1.0),
    }.items():
        m = labels == tissue
        if not m.any():
            continue
        ps = p_coord[m]
        pts = _hex_seeds(rng, (0, 2 * np.pi * ring_r, float(ps.min()) - dp, float(ps.max()) + dp), (ds, dp), jitter)
        if tissue == T.XYLEM:  # radial files: no hexagonal offset, some seeds dropped (vessels)
            pts[:, 0] = np.round(pts[:, 0] / ds) * ds + rng.uniform(-0.1, 0.1, len(pts)) * ds
        pts = pts[rng.random(len(pts)) >= drop]
        th_ = pts[:, 0] / ring_r + np.pi / 2
        rr = pts[:, 1] / half * rim(th_)
        keep = _label_at(labels, cy + rr * np.sin(th_), cx + rr * np.cos(th_)) == tissue
        pts = pts[keep]
        cells.fill(m, np.column_stack([s_coord[m], p_coord[m] * flat]), pts * (1.0, flat))

    # Pith: large thin-walled cells; old stems tear open in the centre.
    m = labels == T.PITH
    sp = float(np.clip(0.12 * half / um, 28, 70)) * um
    used = cells.fill(m, np.column_stack([xx[m], yy[m]]), seeds_in(_hex_seeds(rng, box, (sp, sp * 0.87), 0.28), T.PITH))
    rcell = np.zeros(cells.next_id, np.float32)
    rcell[used] = rng.uniform(0.6, 0.7, len(used)) * sp
    pith_air = m & (cells.seed_dist > rcell[cells.ids])
    if half > 450 * um:
        pith_air |= m & (q < 0.14 * (1 + 0.25 * _smooth_2d(rng, shape, 25 * um)))
    for air in (cortex_air, pith_air):
        labels[air] = T.AIR
        cells.ids[air] = 0

    # Peltate glandular trichomes: a row of secretory head cells under a cuticle blister
    # filled with oil, sitting on the epidermis of the visible (upper) faces.
    cuticle = inside & (depth < 2.5 * um)
    n_glands = max(1, int(round(2 * half / (250 * um))))
    for tg in rng.uniform(-np.pi + 0.35, -0.35, n_glands):
        pgx, pgy = cx + rim(tg) * np.cos(tg), cy + rim(tg) * np.sin(tg)
        dxt, dyt = cx + rim(tg + 1e-3) * np.cos(tg + 1e-3) - pgx, cy + rim(tg + 1e-3) * np.sin(tg + 1e-3) - pgy
        tx, ty = np.array([dxt, dyt]) / np.hypot(dxt, dyt)
        nx, ny = ty, -tx
        if nx * np.cos(tg) + ny * np.sin(tg) < 0:
            nx, ny = -nx, -ny
        ga, gb = rng.uniform(26, 34) * um, rng.uniform(18, 24) * um
        r0, r1 = max(0, int(pgy - ga - gb)), max(0, int(pgy + ga + gb))
        c0, c1 = max(0, int(pgx - ga - gb)), max(0, int(pgx + ga + gb))
        bb = (slice(r0, r1), slice(c0, c1))
        gu = (xx[bb] - pgx) * tx + (yy[bb] - pgy) * ty
        gv = (xx[bb] - pgx) * nx + (yy[bb] - pgy) * ny
        rho = np.hypot(gu / ga, gv / gb)
        blister = (rho < 1) & (gv > -2 * um) & ~inside[bb]
        head = blister & (gv < 8 * um) & (np.abs(gu) < 0.8 * ga)
        skin = blister & (rho > 1 - 2.5 * um / gb)
        sub = labels[bb]
        sub[blister] = T.CAVITY
        sub[head] = T.EPITHELIUM
        cuticle[bb] |= skin
        hs = np.linspace(-0.7 * ga, 0.7 * ga, 6)
        cells.fill(head, np.column_stack([gu[head], gv[head]]), np.column_stack([hs, np.full(6, 4 * um)]), bb)
        cells.single(blister & ~head, bb)
    labels[cuticle] = T.CUTICLE
    cells.single(cuticle)
    along = np.clip((xx - (cx - 1.2 * half)) / (2.4 * half), 0, 1)
    chl = np.zeros(shape, np.float32)
    chl[labels == T.CORTEX] = 0.55
    chl[labels == T.COLLENCHYMA] = 0.12
    chl[labels == T.PITH] = 0.04
    return _Section(labels, cells.ids, along.astype(np.float32), chl)


# --------------------------------------------------------------------------- rendering

# Per tissue: interior colour and wall colour as transmitted light, wall half-width (µm),
# per-cell optical-density spread. Colours are what a bright-field camera shows.
_LOOK: dict[int, tuple[tuple[float, float, float], tuple[float, float, float], float, float]] = {
    T.BACKGROUND: ((0.95, 0.94, 0.91), (0.95, 0.94, 0.91), 0.0, 0.0),
    T.CUTICLE: ((0.82, 0.74, 0.50), (0.82, 0.74, 0.50), 0.0, 0.0),
    T.EPIDERMIS: ((0.90, 0.90, 0.82), (0.42, 0.40, 0.33), 0.9, 0.10),
    T.PALISADE: ((0.74, 0.84, 0.60), (0.36, 0.46, 0.30), 0.6, 0.12),
    T.SPONGY: ((0.80, 0.88, 0.68), (0.40, 0.50, 0.34), 0.6, 0.15),
    T.AIR: ((0.90, 0.91, 0.87), (0.90, 0.91, 0.87), 0.0, 0.0),
    T.SHEATH: ((0.88, 0.89, 0.76), (0.45, 0.42, 0.36), 0.8, 0.10),
    T.XYLEM: ((0.95, 0.90, 0.93), (0.62, 0.26, 0.48), 0.9, 0.10),
    T.PHLOEM: ((0.86, 0.82, 0.90), (0.52, 0.42, 0.58), 0.5, 0.12),
    T.EPITHELIUM: ((0.80, 0.66, 0.40), (0.42, 0.32, 0.22), 0.6, 0.12),
    T.CAVITY: ((0.93, 0.85, 0.58), (0.93, 0.85, 0.58), 0.0, 0.0),
    T.CORTEX: ((0.80, 0.88, 0.68), (0.40, 0.50, 0.34), 0.6, 0.12),
    T.COLLENCHYMA: ((0.90, 0.92, 0.84), (0.70, 0.66, 0.70), 2.0, 0.08),
    T.CAMBIUM: ((0.78, 0.76, 0.84), (0.46, 0.42, 0.52), 0.5, 0.10),
    T.PITH: ((0.91, 0.91, 0.84), (0.46, 0.44, 0.38), 0.7, 0.08),
}
_WHITE = np.array(_LOOK[T.BACKGROUND][0], np.float32)
_CELLULAR = np.array([t not in (T.BACKGROUND, T.CUTICLE, T.AIR, T.CAVITY) for t in range(256)])


def _od(colour: tuple[float, float, float]) -> np.ndarray:
    """Optical density giving ``colour`` under the slide's white (Beer–Lambert)."""
    return -np.log(np.clip(np.array(colour, np.float32) / _WHITE, 1e-3, 1.0))


@dataclass
class _Walls:
    """Wall strength (0..1) per pixel and distance to the nearest cell boundary in px."""

    wall: np.ndarray
    dist: np.ndarray


def _wall_fields(section: _Section, um: float) -> _Walls:
    ids = section.cells
    edge = np.zeros(ids.shape, bool)
    dv = ids[1:, :] != ids[:-1, :]
    dh = ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= dv
    edge[:-1, :] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    dist = ndimage.distance_transform_edt(~edge).astype(np.float32)
    hw = np.zeros(256, np.float32)
    for t, (_, _, half, _) in _LOOK.items():
        hw[t] = half * um
    half = hw[section.labels]
    wall = np.where(half > 0, np.exp(-(dist / np.maximum(half, 1e-3)) ** 2), 0).astype(np.float32)
    wall[~_CELLULAR[section.labels]] = 0
    return _Walls(wall, dist)


def _render_guide(rng: np.random.Generator, section: _Section, walls: _Walls,
                  um: float) -> tuple[np.ndarray, np.ndarray]:
    """Bright-field micrograph of the section, RGB float32 in [0, 1], and its chloroplasts
    (0..1 per pixel), which hold the chlorophyll-derived ions."""
    labels, ids = section.labels, section.cells
    shape = labels.shape
    od_in = np.zeros((256, 3), np.float32)
    od_wall = np.zeros((256, 3), np.float32)
    spread = np.zeros(256, np.float32)
    for t, (inner, wall, _, s) in _LOOK.items():
        od_in[t], od_wall[t], spread[t] = _od(inner), _od(wall), s
    per_cell = 1 + rng.standard_normal(int(ids.max()) + 1).astype(np.float32) * spread[_cell_tissue(section)]
    per_cell[0] = 1
    hue = 1 + 0.06 * rng.standard_normal((len(per_cell), 3)).astype(np.float32)
    wall = (walls.wall * (0.8 + 0.2 * np.tanh(_smooth_2d(rng, shape, 6 * um))))[..., None]
    grain = 1 + 0.12 * _smooth_2d(rng, shape, 1.5 * um)
    od = od_in[labels] * ((per_cell[ids] * grain)[..., None] * hue[ids] * (1 - wall)) + od_wall[labels] * wall

    # Nuclei: a small grey body in some cells of the tissues that show them.
    nuclear = np.zeros(256, np.float32)
    for t, per_area in ((T.EPIDERMIS, 0.35 / 300), (T.SHEATH, 0.3 / 120), (T.EPITHELIUM, 0.4 / 60),
                        (T.CORTEX, 0.3 / 500), (T.PITH, 0.2 / 3000), (T.COLLENCHYMA, 0.3 / 250)):
        nuclear[t] = per_area
    p_nuc = nuclear[labels] * (walls.dist > 3 * um) / (um * um)
    nuc = ndimage.gaussian_filter((rng.random(shape) < p_nuc).astype(np.float32), 1.6 * um)
    od += (np.clip(nuc * (2 * np.pi * (1.6 * um) ** 2), 0, 1.2))[..., None] * _od((0.72, 0.68, 0.66))

    # Chloroplasts: small dark-green discs lining the walls of mesophyll cells.
    near_wall = np.exp(-(((walls.dist - 2.6 * um) / (1.6 * um)) ** 2)) + 0.15
    p = 0.05 * section.chloroplasts * near_wall * (walls.wall < 0.3)
    spots = (rng.random(shape) < p / (um * um)).astype(np.float32)
    sigma = 1.2 * um
    blobs = ndimage.gaussian_filter(spots, sigma) * (2 * np.pi * sigma**2)
    chl = 1 - np.exp(-1.6 * blobs)
    od += chl[..., None] * _od((0.30, 0.50, 0.20))[None, None, :]

    # Cavity contents: mottled resin with droplets.
    cav = labels == T.CAVITY
    if cav.any():
        drops = ndimage.gaussian_filter((rng.random(shape) < 0.004 / (um * um)).astype(np.float32), 2.0 * um)
        mott = 0.35 * _smooth_2d(rng, shape, 6 * um) + 40 * drops * um * um
        od[cav] *= (1 + mott[cav])[:, None]

    tissue = labels != T.BACKGROUND
    thickness = 1 + 0.12 * _smooth_2d(rng, shape, 120 * um)
    od *= np.where(tissue, thickness, 1)[..., None]

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    r2 = ((yy - cy) / (0.5 * max(h, w))) ** 2 + ((xx - cx) / (0.5 * max(h, w))) ** 2
    light = _WHITE[None, None, :] * (1 - 0.10 * r2)[..., None] * (1 + 0.01 * _smooth_2d(rng, shape, 60 * um))[..., None]
    img = light * np.exp(-od)
    img = ndimage.gaussian_filter(img, (0.7 * um, 0.7 * um, 0))
    img += rng.standard_normal(img.shape).astype(np.float32) * 0.008
    return np.clip(img, 0, 1).astype(np.float32), chl.astype(np.float32)


def _cell_tissue(section: _Section) -> np.ndarray:
    """Tissue label of each cell id (0 for id 0)."""
    n = int(section.cells.max()) + 1
    out = np.zeros(n, np.uint8)
    out[section.cells.ravel()] = section.labels.ravel()
    out[0] = 0
    return out


# --------------------------------------------------------------------------- chemistry

# Base amount per tissue for each ion (absent = 0), the per-cell spread (lognormal sigma)
# and the amount left in walls.
_CHEM: dict[str, tuple[dict[int, float], float, float]] = {
    "apigenin": ({T.CUTICLE: 0.35, T.EPIDERMIS: 1.0, T.PALISADE: 0.3, T.SPONGY: 0.15, T.SHEATH: 0.12,
                  T.XYLEM: 0.04, T.PHLOEM: 0.08, T.EPITHELIUM: 0.8, T.CAVITY: 1.4, T.CORTEX: 0.2,
                  T.COLLENCHYMA: 0.3, T.CAMBIUM: 0.06, T.PITH: 0.05}, 0.35, 0.35),
    "pheophytin": ({T.EPIDERMIS: 0.04, T.PALISADE: 1.0, T.SPONGY: 0.6, T.SHEATH: 0.15, T.XYLEM: 0.01,
                    T.PHLOEM: 0.03, T.EPITHELIUM: 0.05, T.CORTEX: 0.8, T.COLLENCHYMA: 0.2,
                    T.CAMBIUM: 0.05, T.PITH: 0.05}, 0.25, 0.3),
    "sucrose": ({T.EPIDERMIS: 0.05, T.PALISADE: 0.2, T.SPONGY: 0.15, T.SHEATH: 0.55, T.XYLEM: 0.2,
                 T.PHLOEM: 1.0, T.EPITHELIUM: 0.1, T.CORTEX: 0.15, T.COLLENCHYMA: 0.1,
                 T.CAMBIUM: 0.7, T.PITH: 0.25}, 0.3, 0.4),
    "gradient": ({t: 1.0 for t in Tissue if t not in (T.BACKGROUND, T.AIR)}, 0.12, 0.6),
}


def _ion_truth(rng: np.random.Generator, section: _Section, walls: _Walls, chloroplasts: np.ndarray,
              ion: str, um: float) -> np.ndarray:
    """The ion's concentration at the fine grid, max 1, zero off tissue."""
    base_by_tissue, cell_sigma, in_wall = _CHEM[ion]
    base = np.zeros(256, np.float32)
    for t, v in base_by_tissue.items():
        base[t] = v
    labels, ids = section.labels, section.cells
    n = int(ids.max()) + 1
    per_cell = np.exp(np.clip(rng.standard_normal(n), -2.5, 2.5) * cell_sigma).astype(np.float32)
    if ion == "apigenin":  # a few hot cells: chemistry no stain shows
        hot = rng.random(n) < 0.02
        per_cell[hot] *= rng.uniform(2.0, 3.0, int(hot.sum()))
    per_cell[0] = 1
    amount = base[labels] * per_cell[ids] * (1 - (1 - in_wall) * walls.wall)
    field = np.exp(0.25 * _smooth_2d(rng, labels.shape, 150 * um))
    if ion == "gradient":
        along = section.gradient
        field = (0.15 + 0.85 * along**1.5) * (1 + 0.4 * _smooth_2d(rng, labels.shape, 250 * um).clip(-1.5, 1.5))
    elif ion == "pheophytin":
        field = field * (0.3 + chloroplasts)
    truth = (amount * field).astype(np.float32)
    truth[~np.isin(labels, [t for t, v in base_by_tissue.items() if v > 0])] = 0
    return truth / max(float(truth.max()), 1e-12)
