"""The thin plate: the smoothest image with the measured block means, in closed form.

:func:`plate_interpolate_t` minimises ``xᵀ (L + ℓ² L²) x`` (L the uniform 4-neighbour Laplacian with mirrored
borders: a membrane plus a bending energy of length ℓ) over the images whose f×f block means are ``y``. It ignores
the optical: it is what an ion gets that the optical's edges do not predict, where the membrane's solution (the
ladder's smoothest setting) keeps a kink at every block border. Both L and the box average are diagonal in the
cosine basis up to aliasing (a fine mode k folds onto the coarse mode k' = |k mod 2h| with a sign), so the
constrained minimum is one coarse cosine transform, one division per coarse mode and one fine inverse transform:
exact, with no iterations, at any ℓ. Written with ``torch.fft`` (not SciPy's DCT) so that it runs where the
ions are, CPU or CUDA; float64 throughout, about 120 bytes per fine pixel (0.5 GB for a 4 M-pixel tile).

The bending term ‖L x‖² is (Δx)², the thin-plate energy up to terms at the border; this is not the registration's
thin-plate spline (:mod:`msifusion.register`), which interpolates landmarks.
"""

from __future__ import annotations

import functools
import math

import torch


def _dct(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Unnormalised DCT-II along ``dim``: X_k = Σ_n x_n cos(πk(n + ½)/N)."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    v = torch.fft.fft(torch.cat([x, x.flip(-1)], -1), dim=-1)[..., :n]
    k = torch.arange(n, device=x.device, dtype=x.dtype)
    out = 0.5 * (v * torch.polar(torch.ones_like(k), -math.pi * k / (2 * n))).real
    return out.movedim(-1, dim)


def _synthesis(c: torch.Tensor, dim: int) -> torch.Tensor:
    """The image of cosine coefficients along ``dim``: x_n = Σ_k c_k cos(πk(n + ½)/N) (DCT-III, unnormalised), as
    the real inverse FFT of length 2N of z_k = c_k·e^{iπk/2N} (z_N = 0): Re Σ_k z_k e^{iπkn/N} = N·irfft + z_0/2."""
    n = c.shape[dim]
    shape = [1] * c.dim()
    shape[dim] = n
    k = torch.arange(n, device=c.device, dtype=c.dtype).reshape(shape)
    z = c * torch.polar(torch.ones_like(k), math.pi * k / (2 * n))
    x = torch.fft.irfft(z, n=2 * n, dim=dim).narrow(dim, 0, n) * n
    return x + 0.5 * c.narrow(dim, 0, 1)


def _axis(n: int, f: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per fine mode k along one axis of n = h·f pixels: the coarse mode it folds onto (h: none, the coarse grid's
    Nyquist, where every block mean of it is 0), the factor that the box average puts on it there (sign included),
    the squared norm of its cosine over the n pixels, and the path graph's Laplacian eigenvalue."""
    h = n // f
    k = torch.arange(n, device=device, dtype=torch.int64)
    r = k % (2 * h)
    folded = torch.where(r <= h, r, 2 * h - r)
    sign = 1.0 - 2.0 * ((k // (2 * h) + (r > h).long()) % 2).to(dtype)  # cos(πm(2j+1) ± α) = (−1)^m cos α
    # with k = 2hm − k' (r > h) the fold is cos(π(2h(m+1) − k')(j+½)/h): (−1)^(m+1)
    theta = math.pi * k.to(dtype) / n
    box = torch.where(k == 0, torch.ones_like(theta),
                      torch.sin(theta * f / 2) / (f * torch.sin(theta / 2).clamp_min(1e-300)))
    norm = torch.where(k == 0, torch.full_like(theta, float(n)), torch.full_like(theta, n / 2))
    return folded, sign * box, norm, 2 - 2 * torch.cos(theta)


def _modes(h: int, w: int, f: int, length_px: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The part of an h×w measurement's plate at ×f that does not depend on the measurement: each fine mode's share
    of its coarse mode (h·f, w·f), the shares' totals per coarse mode ((h + 1, w + 1), the last row and column for the
    coarse Nyquist, where nothing folds that a block sees) and the coarse mode each fine row and column folds onto."""
    kr, ar, nr, lr = _axis(h * f, f, torch.float64, device)
    kc, ac, nc, lc = _axis(w * f, f, torch.float64, device)
    lam = lr[:, None] + lc[None, :]
    q = lam + length_px ** 2 * lam ** 2
    q[0, 0] = 1.0  # the constant has no energy; it is set from the mean alone (below), this only avoids 0/0
    a = ar[:, None] * ac[None, :]
    share = a / (nr[:, None] * nc[None, :] * q)  # each mode's part of its coarse mode, up to that mode's total
    total = torch.zeros((h + 1, w + 1), dtype=torch.float64, device=device)
    total.index_put_((kr[:, None].expand_as(a), kc[None, :].expand_as(a)), a * share, accumulate=True)
    return share, torch.where(total > 0, total, torch.ones_like(total)), kr, kc


_cached_modes = functools.lru_cache(maxsize=6)(_modes)  # the coarse test's windows: every ion and phase the same
CACHED_PIXELS = 2_000_000  # larger images (the output's tiles) are not kept: 8 bytes per fine pixel each


def plate_interpolate_t(y: torch.Tensor, f: int, length_px: float) -> torch.Tensor:
    """The image (…, h·f, w·f) whose f×f block means are ``y`` (…, h, w) and whose energy ``xᵀ (L + ℓ² L²) x`` is
    least, ℓ = ``length_px`` fine pixels (see the module). Computed in float64, returned in ``y``'s dtype."""
    h, w = y.shape[-2:]
    dev = y.device
    modes = _cached_modes if h * w * f * f <= CACHED_PIXELS else _modes
    share, total, kr, kc = modes(h, w, f, float(length_px), dev)
    coarse = _dct(_dct(y.to(torch.float64), -1), -2)  # synthesis coefficients: × 1/h (k' = 0) or 2/h, likewise
    for n, dim in ((h, -2), (w, -1)):
        scale = torch.full((n,), 2.0 / n, dtype=torch.float64, device=dev)
        scale[0] = 1.0 / n
        coarse = coarse * (scale[:, None] if dim == -2 else scale)
    padded = torch.zeros((*coarse.shape[:-2], h + 1, w + 1), dtype=torch.float64, device=dev)
    padded[..., :h, :w] = coarse
    ratio = padded / total
    # the constant's aliases average to 0 over every block (a = 0: sin(πm) = 0), and the modes that fold onto the
    # coarse Nyquist get ratio 0 (padded's last row and column), so they carry nothing
    fine = share * ratio[..., kr[:, None], kc[None, :]]
    fine[..., 0, 0] = padded[..., 0, 0]
    return _synthesis(_synthesis(fine, -1), -2).to(y.dtype)
