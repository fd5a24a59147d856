"""What every command and method shares about running: the seed, the device, the memory, progress on a terminal or
in a log.

:class:`Runtime` (seed, device, quiet, bf16), :func:`resolve_device`, :func:`seeded` (a library call seeded without
touching the caller's random states), the progress displays (:func:`progress_bar`, :func:`elapsed_bar`), and what
fits in this machine's memory (:func:`check_fused_size`, :func:`panel_part_size`). torch is imported only where a
device or a seed needs it, so that reading an imzML file (``msifusion peaks``) does not load it for a progress bar.
"""

from __future__ import annotations

import math
import os
import random
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from msifusion.errors import InputError

if TYPE_CHECKING:
    import torch


def check_whole(value, option: str, least: int) -> None:
    """InputError naming ``option`` unless ``value`` is a whole number ≥ ``least`` (bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise InputError(option, f"must be a whole number ≥ {least}, got {value!r}")


def check_finite(value, option: str, positive: bool = False) -> None:
    """InputError naming ``option`` unless ``value`` is a finite number ≥ 0 (> 0 with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise InputError(option, f"must be a finite number {'> 0' if positive else '≥ 0'}, got {value!r}")


@dataclass(frozen=True)
class Runtime:
    """Where and how reproducibly to run: seed, device ('auto', 'cpu', 'cuda', 'cuda:1'…), progress.

    ``bf16``: run fitted networks' forward passes under bfloat16 autocast on CUDA (losses and
    the optimiser stay float32; ignored on the CPU, where it is slower). The guided harmonic
    solver always runs in float32: its exact consistency needs it.
    """

    seed: int = 0
    device: str = "auto"
    quiet: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        check_whole(self.seed, "--seed", 0)
        if self.seed >= 2**32:
            raise InputError("--seed", f"must be below 2**32, got {self.seed}")
        for name in ("quiet", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"Runtime.{name}", f"must be True or False, got {getattr(self, name)!r}")

    def bf16_on(self, device: torch.device) -> bool:
        """Whether bfloat16 autocast applies on ``device`` (asked for, and a CUDA device)."""
        return self.bf16 and device.type == "cuda"


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; anything else is checked for availability."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_device(name: str) -> None:
    """InputError (naming --device) when ``name`` is not a usable torch device here."""
    try:
        resolve_device(name)
    except (ValueError, RuntimeError) as exc:
        raise InputError("--device", str(exc)) from None


def seed_everything(seed: int) -> None:
    """Same seed → same result on the same CPU: seeds every RNG and asks for deterministic kernels (for the whole
    process: commands and tests; library calls use :func:`seeded`)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """:func:`seed_everything` for the duration of a library call only: the caller's random states (Python's, NumPy's
    global one, torch's on every device) and torch's determinism settings are restored afterwards, so that fusing
    inside a user's own random loop does not reset it."""
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    # CUDA's generators only where CUDA is already up: reading their state would start CUDA on every call (and
    # break forked workers); a CUDA run started inside is seeded lazily by manual_seed
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            seed_everything(seed)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.backends.cudnn.benchmark = benchmark


LOG_LINE_EVERY_S = 60.0  # how often progress is told where no bar can show


def progress_bar(total: float, desc: str, unit: str, quiet: bool, bar_format: str | None = None):
    """A progress bar on a terminal or in a notebook; none with ``quiet``. Where stderr is a log file (a batch job,
    ``2> log``), a plain line now and then instead (:class:`LogProgress`): a bar's carriage returns would garble it."""
    from tqdm.auto import tqdm

    notebook = tqdm.__module__.startswith("tqdm.notebook") or tqdm.__name__ == "tqdm_notebook"
    if not (quiet or notebook or _is_terminal(sys.stderr)):
        return LogProgress(total, desc, unit, counts=bar_format is None or "{n" in bar_format)
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, bar_format=bar_format,
                disable=quiet)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogProgress:
    """Progress for a log file: a line on stderr as a long step advances, at most one each ``every`` seconds (how
    far, how long, and about how long is left), and one when it ends, if it was told; nothing for a step shorter than
    ``every``. A step that cannot count (:func:`elapsed_bar`) is told each ``every`` seconds that it goes on. Used as a
    context manager, as tqdm's, it closes at the end, and says nothing more where the step ends with an error.
    How far: "epoch 40 of 2000" (``unit`` singular, as tqdm's), or a percentage without ``counts`` (steps that mean
    nothing to a user). ``update``, ``set_postfix``, ``refresh`` and ``close`` as tqdm's."""

    disable = False

    def __init__(self, total: float, desc: str, unit: str, every: float = LOG_LINE_EVERY_S, clock=None,
                 counts: bool = True):
        self.total, self.desc, self.unit, self.every, self.counts = total, desc, unit, every, counts
        self.clock = clock or time.monotonic
        self.stream = sys.stderr
        self.n, self.postfix, self.told = 0.0, "", False
        self.start = self.last = self.clock()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix(self, **values) -> None:
        self.postfix = " (" + ", ".join(f"{name} {value}" for name, value in values.items()) + ")"

    def refresh(self) -> None:
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._say(self._how_far(now - self.start))

    def close(self) -> None:
        if self.told:
            self._say(f"done after {duration(self.clock() - self.start)}")

    def _how_far(self, elapsed: float) -> str:
        if self.n == 0:
            return f"running for {duration(elapsed)}"
        share = min(self.n / self.total, 1.0) if self.total else 0.0
        whole = self.counts and float(self.n).is_integer() and float(self.total).is_integer()
        done = f"{self.unit} {self.n:.0f} of {self.total:.0f}" if whole else f"{share:.0%}"
        remaining = elapsed * (1 - share) / share if share > 0 else 0.0
        left = f", about {duration(remaining)} left" if remaining >= 1 else ""  # none for a share summed to 0.99999
        return f"{done} after {duration(elapsed)}{left}{self.postfix}"

    def _say(self, what: str) -> None:
        self.told = True
        print(f"msifusion: {self.desc}: {what}", file=self.stream, flush=True)


def duration(seconds: float) -> str:
    """``seconds`` as people read a wait: 45 s, 3 min 20 s, 2 h 05 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def amount(n_bytes: float) -> str:
    """A size on disk or in memory as people read it: 2.4 GB, 380 MB, 12 kB, 512 bytes (decimal units, as drives are
    sold), in the largest unit of which it is at least one once rounded."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        value = n_bytes / size
        if value >= 0.9995:
            return f"{value:.1f} {unit}" if value < 9.95 else f"{value:.0f} {unit}"
    return f"{max(n_bytes, 0):.0f} bytes"


@contextmanager
def elapsed_bar(desc: str, quiet: bool) -> Iterator[None]:
    """For one long step that cannot report its progress: ``desc`` and the seconds elapsed, refreshed every second
    by a timer thread (a bar that never moves looks like a hang), where :func:`progress_bar` would show; in a log
    file, a line each minute the step goes on."""
    bar = progress_bar(1, desc, "step", quiet, bar_format="{desc} … {elapsed}")
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            bar.refresh()

    timer = threading.Thread(target=tick, daemon=True)
    timer.start()
    try:
        yield
    finally:
        stop.set()
        timer.join()
        bar.close()


BYTES_PER_FUSED_PIXEL = 48  # the guide (RGB float32), its resampling and the output, outside the solver's tiles


CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v2, v1


def machine_memory_bytes() -> int | None:
    """The memory this process may use, in bytes: the machine's physical memory, or a container's (cgroup) limit where
    that is lower; None where the system does not say (not POSIX)."""
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    for path in CGROUP_LIMITS:
        try:
            have = min(have, int(Path(path).read_text().strip()))  # "max" (no limit) is not a number
        except (OSError, ValueError):
            pass
    return have


OPTICAL_BYTES_PER_PIXEL = 12  # a microscope image becomes float32 RGB (optical_to_rgb), beside its decoded pixels


def refuse_beyond_memory(path: Path, rows: int, cols: int, decoded_bytes: int, way_round: str | None) -> None:
    """Refuse, before decoding, a microscope image whose ``decoded_bytes`` and their float32 RGB copy alone would not
    fit in this machine's memory (or its container's limit; a whole-slide scan at full resolution: 46000×33000 px is
    18 GB as float32 RGB), rather than be killed by the system minutes later. A lower bound: reading makes further
    copies. ``way_round``: what the file is, where a command can read it smaller (the message then names it)."""
    have = machine_memory_bytes()
    need = rows * cols * OPTICAL_BYTES_PER_PIXEL + decoded_bytes
    if have is None or need <= have:
        return
    raise InputError(path, f"{rows}×{cols} px needs about {amount(need)} to read, more than this machine's "
                           f"{amount(have)} of memory; save a copy downsampled to the fused grid's pixel size"
                           + (f" (it is {way_round})" if way_round else ""))


def check_fused_size(ion_shape: tuple[int, int], scale: int, bytes_per_pixel: int = BYTES_PER_FUSED_PIXEL,
                     method: str | None = None) -> None:
    """Refuse, before any work, a fused image that cannot fit in this machine's memory.

    A lower bound: ``bytes_per_pixel`` per fused pixel, by default :data:`BYTES_PER_FUSED_PIXEL` (the default method's
    solver works in tiles; ``method`` names one that needs more, :attr:`msifusion.methods.Method.bytes_per_pixel`);
    without the check a mistyped ``--scale 1000`` ran out of memory after minutes, or was killed by the system.
    """
    have = machine_memory_bytes()
    h, w = ion_shape
    one = h * scale * w * scale * bytes_per_pixel
    if have is not None and one > have:
        by = f" with --method {method}" if method else ""
        tiled = "; the default method works in tiles" if bytes_per_pixel > BYTES_PER_FUSED_PIXEL else ""
        raise InputError("--scale", f"×{scale} makes a {h * scale}×{w * scale} fused image, about {amount(one)} "
                                    f"to fuse{by}, more than this machine's {amount(have)} of memory; use a smaller "
                                    f"scale or crop the ion image{tiled}")


def panel_part_size(ion_shape: tuple[int, int], scale: int, ions: int, bytes_per_pixel: int = BYTES_PER_FUSED_PIXEL,
                    method: str | None = None) -> int:
    """How many of a panel's ``ions`` to fuse at once: as many as half of what one ion leaves of this machine's memory
    holds (one ion's :data:`BYTES_PER_FUSED_PIXEL` per fused pixel and 4 bytes, its float32 image, for each further
    one: a lower bound; the other half for what the bound does not count, measured at 1.5 times the bound on 416
    prostate ions), all where they fit, else parts of even size (at least one ion). Refuses what
    :func:`check_fused_size` refuses (``bytes_per_pixel`` and ``method`` as there)."""
    check_fused_size(ion_shape, scale, bytes_per_pixel, method)
    have = machine_memory_bytes()
    h, w = ion_shape
    pixels = h * scale * w * scale
    one = pixels * bytes_per_pixel
    fit = ions if have is None else int(max(1, min(ions, (have - one) // 2 // (pixels * 4) + 1)))
    if fit >= ions:
        return ions
    parts = -(-ions // fit)  # ceil
    return -(-ions // parts)  # the same number of parts, of even size: 763 ions fitting 381 at a time, 3 of ≤ 255
