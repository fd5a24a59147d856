"""What made an output folder: every ``run.json``'s header (tool, time, command, folder, versions, machine) and its writer.

Every command's record opens with :func:`run_header` and is written by :func:`write_run_json`, so each output folder
says, in one form, which software on which machine made it; the settings and timings that follow are the command's.
:class:`OutputRun` is how a command goes from its first check of the output folder to that record.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from msifusion.io.outdir import RUN_RECORD, check_output_dir, fingerprints, staged_output_dir

# Libraries recorded in run.json where the run loaded them: the name users know them by, and the module that runs.
_LIBRARIES = {"numpy": "numpy", "torch": "torch", "numba": "numba", "scipy": "scipy", "scikit-image": "skimage",
              "opencv": "cv2", "tifffile": "tifffile", "pyimzML": "pyimzml", "SimpleITK": "SimpleITK",
              "matplotlib": "matplotlib"}


def run_header(tool: str = "msifusion") -> dict:
    """How every run.json opens: the tool, when, the command line as typed, the folder it was typed in (the record's
    relative input paths are relative to it), the software's versions and the machine its timings were measured on."""
    return {"tool": tool, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": sys.argv,
            "cwd": os.getcwd(), "versions": software_versions(), "machine": machine()}


def software_versions() -> dict:
    """Versions of msifusion (from a git checkout also its commit: :func:`source_revision`), Python and the numerical
    libraries the run loaded (a library it did not load did not make its outputs, and loading torch only to name its
    version would cost ``msifusion ions`` a second and a half), as their modules report them.

    The module's own ``__version__`` (not a pip distribution's metadata), so that a conda build or
    whichever OpenCV package is installed (headless or not, contrib or not) is recorded as well
    (OpenCV's version without the wheel's build number).
    """
    import msifusion

    versions = {"msifusion": msifusion.__version__, **dict(source_revision()), "python": platform.python_version()}
    for name, module in _LIBRARIES.items():
        version = getattr(sys.modules.get(module), "__version__", None)
        if version is not None:
            versions[name] = str(version)
    return {**versions, "platform": platform.platform()}


@functools.lru_cache(maxsize=None)
def source_revision(package: Path | None = None) -> dict:
    """Where msifusion (or the folder ``package``) runs from a git checkout that tracks it (an editable install, as
    ``make install`` makes): the commit and whether the package's tracked files differ from it, since the version
    string stays the same across commits. Empty for an installed package (also one installed into a virtualenv
    inside the user's own repository, which does not track it), or where git is not at hand. Asked once per process
    (a panel writes a record per ion), as the code running does not change when its files do."""
    import subprocess

    package = Path(package or Path(__file__).parent).resolve()
    if not any((folder / ".git").exists() for folder in (package, *package.parents)):
        return {}
    try:
        tracked = subprocess.run(["git", "-C", str(package), "ls-files", "--error-unmatch", "."], capture_output=True,
                                 text=True, timeout=10)
        commit = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        status = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--untracked-files=no", "--", "."],
                                capture_output=True, text=True, timeout=10)  # the package's files: not docs or tests
    except (OSError, subprocess.SubprocessError):
        return {}
    if tracked.returncode or commit.returncode or status.returncode:
        return {}
    return {"msifusion_commit": commit.stdout.strip(), "msifusion_modified": bool(status.stdout.strip())}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine a run's timings were measured on: ``cpus_usable`` the cores this process may run on (fewer than
    ``cpu_count`` under ``taskset`` or a batch scheduler's pinning), ``thread_settings`` the thread variables set in
    its environment; ``cuda`` names the GPU where the run used one (asking for its name would start CUDA, seconds and
    memory, on a run that only read files), ``cuda_devices`` counts them. ``torch_threads`` and ``cuda_devices`` are
    None for a run that did not load torch (``msifusion ions``)."""
    torch = sys.modules.get("torch")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    settings = {name: os.environ[name] for name in _THREAD_VARIABLES if name in os.environ}
    return {"processor": cpu_model(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "cpus_usable": usable, "torch_threads": torch.get_num_threads() if torch else None,
            "thread_settings": settings, "cuda_devices": torch.cuda.device_count() if torch else None,
            "cuda": torch.cuda.get_device_name(0) if torch and torch.cuda.is_initialized() else None}


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                     "NUMBA_THREADING_LAYER")


def input_files(roles: Mapping[str, str | Path | None]) -> dict:
    """What each input file was as the run began, by its role (``optical``, ``ion``, ``imzml``, ``ibd``…): its path as
    given, size in bytes and last modification (UTC), so that a record tells an edited or replaced input from the one
    that made it (a checksum would read a whole-slide image a second time). Roles without a file are left out."""
    described = {}
    for role, path in roles.items():
        if path is None or not Path(path).is_file():
            continue
        stat = Path(path).stat()
        modified = datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")
        described[role] = {"path": str(path), "bytes": stat.st_size, "modified": modified}
    return described


class OutputRun:
    """One command's output folder, from its first check to its ``run.json``.

    Made before any work, so that an output folder the run may not write (see
    :func:`msifusion.io.outdir.check_output_dir`) costs nothing, and the inputs, by role, are described as the run
    began (:func:`input_files`; the readers check them). :meth:`staged` gives the folder the outputs are written into,
    which becomes ``out`` only on success; :meth:`finish` writes the record there, with the total time since the start.
    """

    def __init__(self, out: str | Path, overwrite: bool = False,
                 inputs: Mapping[str, str | Path | None] | None = None):
        self.started = time.perf_counter()
        self.inputs = [path for path in (inputs or {}).values() if path is not None]
        self.out = check_output_dir(out, overwrite, self.inputs)
        self.overwrite = overwrite
        self.input_files = input_files(inputs or {})

    def seconds(self) -> float:
        """Seconds since the run began."""
        return time.perf_counter() - self.started

    def header(self, tool: str = "msifusion") -> dict:
        """How the run's record opens: :func:`run_header` and the inputs as they were when the run began."""
        return {**run_header(tool), "input_files": self.input_files}

    def staged(self) -> AbstractContextManager[Path]:
        """The staging folder (:func:`msifusion.io.outdir.staged_output_dir`), checked again as it is made."""
        return staged_output_dir(self.out, self.overwrite, self.inputs)

    def finish(self, stage: Path, record: dict, **timings: float | dict) -> dict:
        """Write ``record`` as ``stage``'s run.json, ``timings`` and the ``total`` added to its ``timings_s``;
        returns it."""
        record.setdefault("timings_s", {}).update(timings, total=self.seconds())
        write_run_json(stage, record)
        return record


def write_run_json(folder: Path, record: dict) -> Path:
    """``run.json``, strict JSON: a NaN or infinite number is written as null (bare NaN is not JSON). It lists the
    files the run wrote into ``folder`` before it (``files_written``, with their ``file_fingerprints``), so that
    ``--overwrite`` can tell them from files added or edited later (:func:`msifusion.io.outdir.not_written_by_its_run`,
    :func:`msifusion.io.outdir.changed_since_its_run`)."""
    path = folder / RUN_RECORD
    written = fingerprints(folder)
    record = {**record, "files_written": list(written), "file_fingerprints": written}
    path.write_text(json.dumps(_finite(record), indent=2, default=_json_default, allow_nan=False) + "\n")
    return path


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
