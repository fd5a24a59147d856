"""Closed-form and training-free fusion methods: the paper's comparisons and the peers to beat.

All functions take the guide as (H, W, 3) float in [0, 1] and the ion image as (h, w) with
H = h·scale, W = w·scale; the fusion methods return an (H, W) float32 image in the ion's units.

- :func:`guided_filter` / :func:`guided_upsample`: He, Sun & Tang's guided filter (ECCV 2010,
  colour-guide form) applied to the bilinearly upsampled ion image, the RGB optical as guide.
  One setting for every case: radius = scale (one MSI pixel's footprint), eps = 1e-3 on the
  [0, 1] guide (edges whose local standard deviation exceeds ≈ 0.03 are kept).
- Back-projection onto the measurement (Irani & Peleg: add the bilinearly upsampled residual
  ``measured − blockmean(x)`` until it vanishes) is its closed-form limit,
  :func:`msifusion.measurement.project_consistent`, used by the ``-bp`` methods.
- :func:`anisotropic_diffusion`: training-free "DADA without its feature network" (Metzger
  et al., CVPR 2023): Perona–Malik diffusion on the fine grid with conductances from the
  guide's colour differences, alternated with a per-block rescale so that every block mean
  equals the measurement (exact consistency).
- :func:`pls1` / :func:`pls_fusion`: Van de Plas et al. (Nat. Methods 2015)-style regression
  fusion: PLS from optical features (block-averaged to the MSI grid) to the ion image,
  then prediction from the same features at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from msifusion.harmonic import colour_differences, edge_scales
from msifusion.io.images import luminance
from msifusion.measurement import block_mean, upsample



def _box(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window, reflecting at the border with the edge pixel repeated (OpenCV's BORDER_REFLECT)."""
    import cv2

    size = 2 * radius + 1
    return cv2.boxFilter(image, -1, (size, size), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of ``src`` (H, W) with a grey (H, W) or colour (H, W, 3) guide.

    Per window the output is locally linear in the guide, ``q = aᵀI + b``, with ``a`` the
    ridge-regularised (``eps``) regression of ``src`` on the guide; ``a`` and ``b`` are then
    averaged over the windows covering each pixel. A constant guide gives ``a = 0`` and the
    output is the box filter applied twice. (Written out: OpenCV's ``ximgproc.guidedFilter`` is in
    opencv-contrib only, and the project depends on the plain headless build.)
    """
    I = np.asarray(guide, dtype=np.float64)
    p = np.asarray(src, dtype=np.float64)
    if I.shape[:2] != p.shape:
        raise ValueError(f"guide shape {I.shape[:2]} differs from source shape {p.shape}")
    mean_p = _box(p, radius)
    if I.ndim == 2:
        mean_I = _box(I, radius)
        cov_Ip = _box(I * p, radius) - mean_I * mean_p
        var_I = _box(I * I, radius) - mean_I**2
        a = cov_Ip / (var_I + eps)
        b = mean_p - a * mean_I
        return (_box(a, radius) * I + _box(b, radius)).astype(np.float32)
    channels = I.shape[2]
    mean_I = _box(I, radius)  # cv2 filters every channel
    cov_Ip = _box(I * p[..., None], radius) - mean_I * mean_p[..., None]
    sigma = np.empty(p.shape + (channels, channels))
    for i in range(channels):
        for j in range(i, channels):
            v = _box(I[..., i] * I[..., j], radius) - mean_I[..., i] * mean_I[..., j]
            sigma[..., i, j] = sigma[..., j, i] = v
    sigma += eps * np.eye(channels)
    a = np.linalg.solve(sigma, cov_Ip[..., None])[..., 0]
    b = mean_p - np.einsum("...c,...c->...", a, mean_I)
    return (np.einsum("...c,...c->...", _box(a, radius), I) + _box(b, radius)).astype(np.float32)


@dataclass(frozen=True)
class GuidedConfig:
    """Guided-filter upsampling: radius = ``radius_per_scale · scale`` fine pixels, ``eps`` on [0, 1] data."""

    radius_per_scale: float = 1.0
    eps: float = 1e-3


def guided_upsample(guide: np.ndarray, ion: np.ndarray, scale: int, config: GuidedConfig = GuidedConfig()) -> np.ndarray:
    """Bilinear upsampling of the ion image, then the guided filter with the RGB optical as guide."""
    radius = max(1, round(config.radius_per_scale * scale))
    return guided_filter(guide, upsample(ion, scale, "bilinear"), radius, config.eps)


@dataclass(frozen=True)
class DiffusionConfig:
    """Guided anisotropic diffusion with exact block consistency.

    ``iterations`` None → ``4·scale²``: an explicit step with weight λ spreads a value with
    variance ≈ 2λ per axis, so 4·scale² steps at λ = 0.24 diffuse ≈ 1.4 MSI pixels, far
    enough for every block to exchange with its neighbours; capped at ``max_iterations``.
    ``kappa`` None → Perona & Malik's rule: the 90th percentile of the guide's neighbour
    colour differences (at least 1e-3; outside areas of exactly one colour, as the default method's κ), so only the
    strongest 10 % of guide edges block.
    """

    iterations: int | None = None
    max_iterations: int = 4000
    step: float = 0.24  # < 0.25: the explicit 4-neighbour scheme is stable
    kappa: float | None = None


def _conductances(guide: np.ndarray, kappa: float | None) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(guide, dtype=np.float32)
    g = g[..., None] if g.ndim == 2 else g
    dh, dv = (d.numpy() for d in colour_differences(torch.as_tensor(g)))
    if kappa is None:  # every pair however large the guide (not sampled), outside areas of one colour
        kappa = edge_scales(g, (90.0,), max_samples=g.shape[0] * g.shape[1] * 2)[90.0]
    return np.exp(-((dh / kappa) ** 2)), np.exp(-((dv / kappa) ** 2))


def _rescale_blocks(x: np.ndarray, measured: np.ndarray, scale: int) -> None:
    """Make every block mean equal ``measured``, in place.

    Multiplicative (DADA's adjustment) where the block is non-negative with a positive mean
    and the measurement is non-negative: zero background stays zero; additive elsewhere. The
    published method's own step, run inside its loop: unlike the default method's
    :func:`msifusion.measurement.positive_rescale` it clips nothing, so mixed-sign images stay as DADA leaves them.
    """
    h, w = measured.shape
    blocks = x.reshape(h, scale, w, scale)
    mean = blocks.mean(axis=(1, 3), dtype=np.float64)
    tiny = 1e-6 * max(float(np.abs(measured).max()), 1e-30)
    mult = (mean > tiny) & (measured >= 0) & (blocks.min(axis=(1, 3)) >= 0)
    ratio = np.where(mult, measured / np.where(mult, mean, 1.0), 1.0).astype(np.float32)
    shift = np.where(mult, 0.0, measured - mean).astype(np.float32)
    blocks *= ratio[:, None, :, None]
    blocks += shift[:, None, :, None]


def anisotropic_diffusion(guide: np.ndarray, ion: np.ndarray, scale: int,
                          config: DiffusionConfig = DiffusionConfig()) -> np.ndarray:
    """Diffuse the bilinear upsampling along the guide, rescaling blocks to the measurement each step.

    Zero-flux borders. Ends with a rescale, so every block mean equals the measurement.
    """
    ion = np.asarray(ion, dtype=np.float32)
    ch, cv = _conductances(guide, config.kappa)
    ch *= config.step
    cv *= config.step
    iterations = config.iterations if config.iterations is not None else 4 * scale * scale
    iterations = min(iterations, config.max_iterations)
    x = upsample(ion, scale, "bilinear")
    _rescale_blocks(x, ion, scale)
    for _ in range(iterations):
        fh = ch * (x[:, 1:] - x[:, :-1])
        fv = cv * (x[1:] - x[:-1])
        x[:, :-1] += fh
        x[:, 1:] -= fh
        x[:-1] += fv
        x[1:] -= fv
        _rescale_blocks(x, ion, scale)
    return x


def pls1(X: np.ndarray, y: np.ndarray, n_components: int) -> tuple[np.ndarray, float]:
    """PLS1 regression by NIPALS: coefficients ``beta`` and intercept with ``y ≈ X·beta + c``.

    Columns are centred (not scaled; scale them first if wanted). With as many components
    as the rank of X the fit equals ordinary least squares. (Written out, twenty lines, rather than
    scikit-learn's ``PLSRegression``: one dependency less for a comparison method.)
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_mean, y_mean = X.mean(axis=0), y.mean()
    E, f = X - x_mean, y - y_mean
    W, P, Q = [], [], []
    first = 0.0
    for _ in range(min(n_components, *X.shape)):
        w = E.T @ f
        norm = float(np.linalg.norm(w))
        first = first or norm
        if norm <= 1e-10 * first or norm == 0:
            break  # nothing left in X that covaries with y
        w /= norm
        t = E @ w
        tt = t @ t
        p = E.T @ t / tt
        q = f @ t / tt
        E -= np.outer(t, p)
        f -= q * t
        W.append(w), P.append(p), Q.append(q)
    if not W:
        return np.zeros(X.shape[1]), float(y_mean)
    W, P, Q = np.array(W).T, np.array(P).T, np.array(Q)
    beta = W @ np.linalg.solve(P.T @ W, Q)
    return beta, float(y_mean - x_mean @ beta)


def optical_features(guide: np.ndarray, scale: int) -> list[np.ndarray]:
    """The 16 full-resolution predictors of :func:`pls_fusion`, each (H, W) float32.

    R, G, B; their squares and pairwise products RG, RB, GB (a quadratic colour model);
    Gaussian local means of R, G, B at σ = scale/2 and σ = scale fine pixels (context of
    about one MSI pixel); the gradient magnitude of the luminance (Sobel after a σ = 1 blur).
    """
    from scipy.ndimage import gaussian_filter, sobel

    g = np.asarray(guide, dtype=np.float32)
    r, gr, b = g[..., 0], g[..., 1], g[..., 2]
    features = [r, gr, b, r * r, gr * gr, b * b, r * gr, r * b, gr * b]
    for sigma in (scale / 2, scale):
        features += [gaussian_filter(c, sigma, mode="reflect") for c in (r, gr, b)]
    lum = gaussian_filter(luminance(g), 1.0, mode="reflect")
    features.append(np.hypot(sobel(lum, axis=0, mode="reflect"), sobel(lum, axis=1, mode="reflect")))
    return [np.ascontiguousarray(f, dtype=np.float32) for f in features]


def pls_fusion(guide: np.ndarray, ion: np.ndarray, scale: int, n_components: int | None = None) -> np.ndarray:
    """Regression fusion: PLS from block-averaged optical features to the ion, predicted at full resolution.

    Features are block-averaged (the MSI pixel integrates its footprint, and a linear model
    commutes with the block mean, so this is the right low-resolution design) and standardised
    with their low-resolution mean and standard deviation. ``n_components`` None →
    ``min(8, n_features, n_pixels − 1)``: half the 16 features, enough for the colour model
    without fitting the noise of small ion images.
    """
    ion = np.asarray(ion, dtype=np.float64)
    features = optical_features(guide, scale)
    X = np.stack([block_mean(f, scale).ravel() for f in features], axis=1).astype(np.float64)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    k = n_components if n_components is not None else min(8, X.shape[1], X.shape[0] - 1)
    beta, intercept = pls1(X / sd, ion.ravel(), max(k, 1))
    out = np.full(features[0].shape, intercept, dtype=np.float64)
    for coef, f, s in zip(beta, features, sd):
        out += (coef / s) * f
    return out.astype(np.float32)
