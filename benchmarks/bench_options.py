"""What the benchmark scripts share: argparse types that refuse a bad value before any work starts (a benchmark that
dies on its third task after ten minutes, or prints numbers for a negative noise, wastes the machine it measures),
and the header line that names the machine, its cores and the date.

The scripts import it as ``bench_options``: run as ``python benchmarks/bench_….py``, their own folder is on the path.
"""

from __future__ import annotations

import argparse
import math
import os
from datetime import date
from typing import Callable


def _parsed(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")


def at_least(minimum: float, kind: type = int) -> Callable[[str], int | float]:
    """An argparse type: a finite ``kind`` (int or float) of at least ``minimum``."""

    def parse(text: str):
        value = _parsed(kind, text)
        if not (math.isfinite(value) and value >= minimum):
            what = "an integer" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {what} of at least {minimum:g}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} ≥ {minimum:g}"  # argparse names the type by it in its message
    return parse


def comma_list(item: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse type: a non-empty comma-separated list, each item through ``item`` (another argparse type)."""

    def parse(text: str) -> list:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"expected values separated by commas, got {text!r}")
        return [item(part) for part in parts]

    parse.__name__ = "list"
    return parse


def device_name(text: str) -> str:
    """An argparse type: a torch device this machine has (auto, cpu, cuda, cuda:N), checked before any work."""
    from msifusion.runtime import resolve_device

    try:
        resolve_device(text)
    except (ValueError, RuntimeError) as exc:  # RuntimeError: a CUDA driver that cannot count its devices
        raise argparse.ArgumentTypeError(str(exc))
    return text


def machine() -> str:
    """``CPU model, N CPU cores``: the machine a benchmark ran on."""
    from msifusion.provenance import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPU cores"


def header(title: str) -> str:
    """``# title, CPU model, N CPU cores, the threads torch uses, date``: the first line each benchmark prints (the
    threads set the timings; the default method's numba kernels run on as many, its output does not depend on them)."""
    import torch

    return f"# {title}, {machine()}, {torch.get_num_threads()} threads, {date.today()}"
