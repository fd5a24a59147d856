"""Guided harmonic fusion: the settings check their own values."""

from __future__ import annotations

import pytest
import torch

from msifusion.harmonic import (
    CoarseTest,
    HarmonicConfig,
    LadderSettings,
    PanelSettings,
    PlateSettings,
    SolverSettings,
    SpreadSettings,
    TextureSettings,
)
from msifusion.measurement import MeasurementModel


@pytest.mark.parametrize("group, bad", [
    (LadderSettings, dict(rungs=())), (LadderSettings, dict(rungs=((0.0, 0),))),
    (LadderSettings, dict(significance=-1.0)), (SolverSettings, dict(iterations=0)),
    (SolverSettings, dict(weight_floor=0.0)), (SolverSettings, dict(diagonal_weight=-0.5)),
    (SolverSettings, dict(tile_pixels=100)),
    (HarmonicConfig, dict(edge_weight=-1.0)), (MeasurementModel, dict(spot_sigma_px=-1.0)),
    (MeasurementModel, dict(spot_sigma_px=float("nan"))),
    (PanelSettings, dict(ion_batch=0)), (PanelSettings, dict(min_ions=1)), (PanelSettings, dict(whiteness=1.0)),
    (TextureSettings, dict(strengths=())), (TextureSettings, dict(strengths=(0.5, 0.0))),
    (TextureSettings, dict(strengths=(-1.0,))), (TextureSettings, dict(sigma_px=0.0)),
    (TextureSettings, dict(significance=-1.0)), (SpreadSettings, dict(widths=(0.0,))),
    (SpreadSettings, dict(widths=(0.5, 0.25))), (SpreadSettings, dict(widths=(3.0,))),
    (SpreadSettings, dict(significance=-1.0)), (SpreadSettings, dict(sign_significance=-1.0)),
    (PlateSettings, dict(lengths=(0.0,))), (PlateSettings, dict(lengths=(1.0, 0.5))),
    (PlateSettings, dict(lengths=(9.0,))), (PlateSettings, dict(significance=-1.0)),
    (CoarseTest, dict(winsor_percent=50.0)), (CoarseTest, dict(winsor_percent=-1.0)), (CoarseTest, dict(pixels=0))])
def test_config_rejects_nonsense(group, bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name.replace("_", "[_ ]")):  # the message names the setting
        group(**bad)


def test_ion_batch_defaults_by_device():
    panel = HarmonicConfig().panel
    assert panel.batch_on(torch.device("cpu")) == 1  # memory-bound on CPU: one ion at a time is fastest
    assert panel.batch_on(torch.device("cuda")) == 8
    assert PanelSettings(ion_batch=3).batch_on(torch.device("cpu")) == 3
