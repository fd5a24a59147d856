"""What every command shares about running (:mod:`msifusion.runtime`): settings, devices, seeding, progress."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from msifusion.errors import InputError
from msifusion.runtime import Runtime


@pytest.mark.parametrize("bad, message", [(dict(seed=-1), "--seed: must be a whole number ≥ 0, got -1"),
                                          (dict(seed=1.5), "--seed: must be a whole number ≥ 0, got 1.5"),
                                          (dict(seed=2**32), "--seed: must be below 2**32, got 4294967296"),
                                          (dict(bf16="yes"), "Runtime.bf16: must be True or False, got 'yes'")])
def test_runtime_rejects_nonsense_naming_the_option(bad, message):
    with pytest.raises(InputError) as caught:
        Runtime(**bad)
    assert str(caught.value) == message


def test_bf16_applies_only_when_asked_and_on_cuda():
    assert Runtime(bf16=True).bf16_on(torch.device("cuda"))
    assert not Runtime(bf16=True).bf16_on(torch.device("cpu"))
    assert not Runtime(bf16=False).bf16_on(torch.device("cuda"))


@pytest.mark.parametrize("name, problem", [("gpu", "unknown device 'gpu'"), ("mps", "'mps' is not supported")])
def test_devices_other_than_cpu_and_cuda_are_named_as_such(name, problem):
    from msifusion.runtime import resolve_device

    with pytest.raises(ValueError, match=problem + ".*expected auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_progress_bars_hide_when_quiet_or_in_a_log_file_and_show_on_a_terminal(monkeypatch):
    import io
    import sys

    from msifusion.runtime import progress_bar

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no terminal
    assert progress_bar(10, "x", "step", quiet=False).disable
    assert progress_bar(10, "x", "step", quiet=True).disable

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not progress_bar(10, "x", "step", quiet=False).disable


def test_elapsed_bar_stops_its_timer_and_lets_errors_through(capsys):
    import threading

    from msifusion.runtime import elapsed_bar

    before = threading.active_count()
    with elapsed_bar("registering (automatic)", quiet=False):  # stderr here is no terminal: no bar, no output
        assert threading.active_count() == before + 1
    with pytest.raises(ValueError):
        with elapsed_bar("registering (automatic)", quiet=True):
            raise ValueError("the step failed")
    assert threading.active_count() == before
    assert capsys.readouterr().err == ""


def test_seeded_restores_the_callers_states_even_when_the_run_fails(global_random_state):
    from msifusion.runtime import seeded

    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = True
    with pytest.raises(RuntimeError, match="inside"):
        with seeded(0):
            assert torch.is_deterministic_algorithms_warn_only_enabled()  # the run's own setting
            np.random.rand(3), torch.rand(3)
            raise RuntimeError("a failure inside the run")
    assert global_random_state.draws() == global_random_state.expected
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.benchmark


def test_reading_an_imzml_loads_no_torch_for_its_progress_bar():
    """torch takes seconds to import: the runtime helpers import it only where a device or a seed needs it."""
    code = "import sys, msifusion.runtime, msifusion.io.imzml; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
