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


def test_progress_bars_hide_when_quiet_show_on_a_terminal_and_turn_to_lines_in_a_log_file(monkeypatch):
    import io
    import sys

    from msifusion.runtime import LogProgress, progress_bar

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no terminal
    assert isinstance(progress_bar(10, "x", "step", quiet=False), LogProgress)
    assert progress_bar(10, "x", "step", quiet=False).counts  # "step 3 of 10"
    assert not progress_bar(10, "x", "step", quiet=False, bar_format="{l_bar}{bar}| {elapsed}").counts  # "30%"
    assert progress_bar(10, "x", "step", quiet=True).disable

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress_bar(10, "x", "step", quiet=False)
    assert not isinstance(bar, LogProgress) and not bar.disable


def test_log_progress_says_how_far_each_minute_and_nothing_for_a_short_step(monkeypatch):
    import io
    import sys

    from msifusion.runtime import LogProgress, duration

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    now = [0.0]
    epochs = LogProgress(2000, "lcrn", "epoch", clock=lambda: now[0])
    for _ in range(50):  # 50 epochs of 1.5 s: a line at 60 s (1960 epochs left at 1.5 s), one at the end
        now[0] += 1.5
        epochs.update(1)
        epochs.set_postfix(mse="0.01")
    epochs.close()
    assert log.getvalue().splitlines() == [
        "msifusion: lcrn: epoch 40 of 2000 after 1 min 00 s, about 49 min 00 s left (mse 0.01)",
        "msifusion: lcrn: done after 1 min 15 s"]

    log.truncate(0), log.seek(0)
    steps = LogProgress(3, "guided-harmonic", "batch", clock=lambda: now[0])
    now[0] += 59.0
    steps.update(2.5)  # a short step tells nothing, not even that it ended
    steps.close()
    assert log.getvalue() == ""
    batches = LogProgress(2, "guided-harmonic", "batch", clock=lambda: now[0], counts=False)
    now[0] += 70.0
    batches.update(1)
    now[0] += 70.0
    batches.update(0.99999)  # fractional steps summed short of the total: no "about 0 s left"
    assert log.getvalue().splitlines() == ["msifusion: guided-harmonic: 50% after 1 min 10 s, about 1 min 10 s left",
                                           "msifusion: guided-harmonic: 100% after 2 min 20 s"]
    log.truncate(0), log.seek(0)
    waiting = LogProgress(1, "registering (automatic)", "step", clock=lambda: now[0])
    now[0] += 61.0
    waiting.refresh()  # what elapsed_bar's timer calls
    now[0] += 30.0
    waiting.update(0.5)
    assert log.getvalue().splitlines() == ["msifusion: registering (automatic): running for 1 min 01 s"]
    now[0] += 30.0
    waiting.update(0.1)
    assert log.getvalue().splitlines()[-1] == ("msifusion: registering (automatic): 60% after 2 min 01 s, about "
                                               "1 min 21 s left")
    log.truncate(0), log.seek(0)
    with pytest.raises(OSError), LogProgress(2, "writing", "ion", clock=lambda: now[0]) as writing:
        now[0] += 60.0
        writing.update()
        raise OSError("disk full")  # a step that fails is not said to be done
    assert log.getvalue() == "msifusion: writing: ion 1 of 2 after 1 min 00 s, about 1 min 00 s left\n"
    assert [duration(s) for s in (0.4, 59.6, 200, 3600 * 2 + 300)] == ["0 s", "1 min 00 s", "3 min 20 s", "2 h 05 min"]


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


def test_a_fused_image_beyond_the_machines_memory_is_refused_up_front():
    from msifusion.runtime import check_fused_size

    check_fused_size((20, 30), 20)
    with pytest.raises(InputError, match=r"--scale: ×1000000 makes a 20000000×30000000 fused image, about \d+ GB"):
        check_fused_size((20, 30), 1_000_000)  # 29 PB


def test_a_panel_beyond_the_machines_memory_is_fused_in_parts_that_fit(monkeypatch):
    import msifusion.runtime as runtime

    monkeypatch.setattr(runtime, "machine_memory_bytes", lambda: 8_192_000_000)
    # the ginkgo ion at ×20: 2.646 M fused pixels, 48 bytes each for the first ion and 4 for each further one
    # half of what one ion leaves holds (8.192 − 0.127) GB / 2 / 10.6 MB per ion + 1 = 381 at a time
    assert runtime.panel_part_size((49, 135), 20, 381) == 381  # 2.646 M × (48 + 4 × 380) = 4.15 GB: at once
    # two parts, though the 8.19 GB machine holds their 4.16 GB bound
    assert runtime.panel_part_size((49, 135), 20, 382) == 191
    assert runtime.panel_part_size((49, 135), 20, 1000) == 334  # three parts of even size: 334, 333 and 333
    assert runtime.panel_part_size((49, 135), 20, 763) == 255  # not 381, 381 and a lone ion
    # a method needing 1500 bytes a pixel (lcrn, one ion at a time): (8.192 − 3.969) GB / 2 / 10.6 MB + 1 = 200
    assert runtime.panel_part_size((49, 135), 20, 1000, 1500, "lcrn") == 200
    with pytest.raises(InputError, match=r"^--scale: ×200 makes a 9800×27000 fused image, about 13 GB"):
        runtime.panel_part_size((49, 135), 200, 100)  # one ion does not fit: its own size is named
    monkeypatch.setattr(runtime, "machine_memory_bytes", lambda: None)  # a system that does not say: all at once
    assert runtime.panel_part_size((49, 135), 20, 1000) == 1000


def test_amounts_read_in_the_unit_that_shows_them():
    from msifusion.runtime import amount

    assert [amount(n) for n in (0, 512, 999, 1000, 58_368, 999_600, 3.2e6, 45e6, 999.6e6, 2.44e9, 9.97e9, 13.4e9)] == [
        "0 bytes", "512 bytes", "999 bytes", "1.0 kB", "58 kB", "1.0 MB", "3.2 MB", "45 MB", "1.0 GB", "2.4 GB",
        "10 GB", "13 GB"]
