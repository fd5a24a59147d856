import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.fit import EdgeLossStopper, FitConfig, fit_network
from msifusion.runtime import Runtime, seed_everything
from msifusion.models.lcrn import LCRN


def _run(values, patience):
    stopper = EdgeLossStopper(patience)
    for epoch, value in enumerate(values, 1):
        if stopper.update(value):
            return epoch
    return None


def test_stops_at_the_fifth_total_increase_not_consecutive():
    # increases at epochs 3, 5, 7, 9, 11 (interleaved with decreases)
    values = [10, 9, 9.5, 8, 8.5, 7, 7.5, 6, 6.5, 5, 5.5, 4, 3]
    assert _run(values, 5) == 11


def test_monotone_decrease_never_stops_and_patience_zero_disables():
    assert _run(list(range(100, 0, -1)), 5) is None
    assert _run([1, 2, 3, 4, 5, 6, 7, 8], 0) is None


def test_equal_values_are_not_increases():
    assert _run([1.0] * 50, 1) is None
    assert _run([1.0, 1.0, 1.5], 1) == 3


@pytest.mark.parametrize("bad, message", [
    (dict(max_epochs=0), "--epochs: must be a whole number ≥ 1, got 0"),
    (dict(max_epochs=2.5), "--epochs: must be a whole number ≥ 1, got 2.5"),
    (dict(max_epochs="10"), "--epochs: must be a whole number ≥ 1, got '10'"),
    (dict(lr=0), "--lr: must be a finite number > 0, got 0"),
    (dict(lr=float("nan")), "--lr: must be a finite number > 0, got nan"),
    (dict(w_edge=float("nan")), "--w-edge: must be a finite number ≥ 0, got nan"),
    (dict(w_mse=0, w_edge=0), "--w-mse/--w-edge: the loss weights cannot both be 0"),
    (dict(patience=1.5), "--patience: must be a whole number ≥ 0, got 1.5"),
    (dict(checkpoint_every=True), "--checkpoint-every: must be a whole number ≥ 0, got True"),
    (dict(edge_kernel="x"), "--edge-kernel: must be one of laplacian, sobel, got 'x'"),
])
def test_config_rejects_nonsense_naming_the_option(bad, message):
    with pytest.raises(InputError) as caught:
        FitConfig(**bad)
    assert str(caught.value) == message


def test_fit_reduces_loss_and_records_history(small_pair):
    guide, ion, scale = small_pair
    from msifusion.measurement import upsample

    target = upsample(ion / ion.max(), scale)
    seed_everything(0)
    result = fit_network(LCRN(), guide, target, FitConfig(max_epochs=40, patience=0, lr=3e-3), Runtime(quiet=True))
    assert result.epochs == 40 and len(result.history) == 40
    assert result.history[-1]["mse"] < 0.5 * result.history[0]["mse"]
    assert result.image.shape == guide.shape[:2]
    assert [r["epoch"] for r in result.history] == list(range(1, 41))


def test_early_stopping_ends_the_fit(small_pair):
    guide, ion, scale = small_pair
    from msifusion.measurement import upsample

    seed_everything(0)
    result = fit_network(LCRN(), guide, upsample(ion / ion.max(), scale),
                         FitConfig(max_epochs=2000, patience=1, lr=3e-2), Runtime(quiet=True))
    assert result.epochs < 2000 and result.stop_reason.startswith("early stop")
    edges = [r["edge"] for r in result.history]
    assert sum(b > a for a, b in zip(edges, edges[1:])) == 1


def test_checkpoints_called_every_n_epochs(small_pair):
    guide, ion, scale = small_pair
    seen = []
    fit_network(LCRN(), guide, np.zeros(guide.shape[:2], np.float32), FitConfig(max_epochs=7, patience=0, checkpoint_every=3),
                Runtime(quiet=True), on_checkpoint=lambda epoch, image: seen.append((epoch, image.shape)))
    assert seen == [(3, guide.shape[:2]), (6, guide.shape[:2])]


def test_bf16_is_ignored_on_the_cpu(small_pair):
    """bf16 autocast applies on CUDA only: on the CPU the fit is bit-for-bit the float32 one."""
    guide, ion, scale = small_pair
    from msifusion.measurement import upsample

    target = upsample(ion / ion.max(), scale)
    runs = []
    for bf16 in (False, True):
        seed_everything(0)
        runs.append(fit_network(LCRN(), guide, target, FitConfig(max_epochs=5, patience=0),
                                Runtime(device="cpu", quiet=True, bf16=bf16)).image)
    np.testing.assert_array_equal(*runs)


def test_the_fit_runs_under_bf16_autocast_where_it_applies(small_pair, monkeypatch):
    """Where bf16 applies (CUDA; here the CPU, told it applies) the forward pass runs in bfloat16: another result."""
    guide, ion, scale = small_pair
    from msifusion.measurement import upsample

    target = upsample(ion / ion.max(), scale)
    seed_everything(0)
    plain = fit_network(LCRN(), guide, target, FitConfig(max_epochs=5, patience=0), Runtime(device="cpu", quiet=True))
    monkeypatch.setattr(Runtime, "bf16_on", lambda self, device: self.bf16)
    seed_everything(0)
    bf16 = fit_network(LCRN(), guide, target, FitConfig(max_epochs=5, patience=0),
                       Runtime(device="cpu", quiet=True, bf16=True))
    assert bf16.image.dtype == np.float32 and np.all(np.isfinite(bf16.image))
    assert 1e-5 < np.abs(bf16.image - plain.image).max() < 0.1  # bfloat16's 8-bit mantissa, not another fit


def test_a_diverging_fit_stops_at_the_first_non_finite_loss(small_pair):
    from msifusion.errors import InputError
    from msifusion.measurement import upsample

    guide, ion, scale = small_pair
    seed_everything(0)
    seen: list[dict] = []
    with pytest.raises(InputError, match=r"--lr: the fit diverged at epoch \d+") as err:
        fit_network(LCRN(), guide, upsample(ion / ion.max(), scale), FitConfig(max_epochs=50, patience=0, lr=1e9),
                    Runtime(quiet=True), on_epoch=seen.append)
    diverged = int(err.value.problem.split("epoch ")[1].split()[0])
    assert diverged < 50 and len(seen) == diverged - 1 and all(np.isfinite(r["total"]) for r in seen)


def test_a_loss_that_overflows_before_training_names_the_weights_not_the_learning_rate(small_pair):
    from msifusion.measurement import upsample

    guide, ion, scale = small_pair
    with pytest.raises(InputError, match=r"^--w-mse/--w-edge: the loss is not finite before training \(loss inf, "
                                         r"weights 1e\+300 and 1\); use smaller loss weights$"):
        fit_network(LCRN(), guide, upsample(ion / ion.max(), scale), FitConfig(max_epochs=5, w_mse=1e300),
                    Runtime(quiet=True))


def test_the_stop_reason_names_the_epochs_the_edge_loss_rose():
    stopper = EdgeLossStopper(2)
    assert [stopper.update(v) for v in (3.0, 2.0, 2.5, 2.4, 2.6)] == [False, False, False, False, True]
    assert stopper.rises == [3, 5] and stopper.increases == 2
