"""Shared fixtures: small synthetic registered pairs made on the fly."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def small_pair() -> tuple[np.ndarray, np.ndarray, int]:
    """A guide (32×48 RGB) whose two regions match a measured 8×12 ion image at ×4."""
    rng = np.random.default_rng(1)
    scale = 4
    fine = np.zeros((32, 48), np.float32)
    yy, xx = np.mgrid[:32, :48]
    fine[(yy - 15) ** 2 + (xx - 22) ** 2 < 120] = 1.0
    guide = np.stack([0.8 - 0.5 * fine, 0.7 - 0.3 * fine, 0.6 + 0.2 * fine], axis=-1)
    guide = (guide + 0.01 * rng.standard_normal(guide.shape)).clip(0, 1).astype(np.float32)
    truth = 100.0 + 400.0 * fine
    ion = truth.reshape(8, scale, 12, scale).mean(axis=(1, 3)).astype(np.float32)
    return guide, ion, scale


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test images run far faster on one thread than with the pool's overhead on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
