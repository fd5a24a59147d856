"""Output folders that are either complete or absent.

Everything is written into a hidden staging folder beside the target and moved into place
only when the run succeeds, so a crash or a bad input never leaves a half-written folder,
and an existing non-empty folder is replaced only when the user said ``--overwrite``.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from msifusion.errors import InputError


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse early (before any work) when ``out`` holds something and overwrite is off."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output path exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(out, "output folder is not empty; pass --overwrite to replace it")
    return out


@contextmanager
def staged_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``out``, on any error it vanishes."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        backup.rmdir()
        out.rename(backup)
        stage.rename(out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        stage.rename(out)
