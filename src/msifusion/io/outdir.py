"""Output folders that are either complete or absent.

Everything is written into a hidden staging folder beside the target and moved into place
only when the run succeeds, so a crash or a bad input never leaves a half-written folder,
and an existing non-empty folder is replaced only when the user said ``--overwrite`` and it is
an earlier msifusion output (it holds msifusion's ``run.json``): ``--out`` naming a folder of other data by
mistake never deletes it. An ``--out`` that is a symbolic link (a results folder kept on scratch
space) is followed: the results go where the link points.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from msifusion.errors import InputError

RUN_RECORD = "run.json"  # every output folder has one: the mark of a folder that --overwrite may replace


def check_output_dir(out: str | Path, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse early (before any work) when ``out`` holds something other than an earlier msifusion output
    (:func:`is_earlier_output`), or one while overwrite is off, when it is or holds
    the current folder or one of the run's ``inputs`` (replacing it would delete them), or when no folder
    can be made there. First clears what runs into ``out`` that were killed outright left (:func:`_clear_killed_runs`).
    Returns the folder to write: ``out``, or where it points if it is a symbolic link."""
    out = Path(out)
    _check_name_length(out)
    try:
        if out.is_symlink():
            out = Path(os.path.realpath(out))
        _clear_killed_runs(out)
        _check_output_dir(out, overwrite, inputs)
    except OSError as exc:  # a name too long, a parent that cannot be read, …
        raise InputError(out, f"cannot use the output folder: {exc.strerror or exc}") from None
    except RuntimeError:  # Path.resolve of a symbolic link that points to itself
        raise InputError(out, "cannot use the output folder: a loop of symbolic links") from None
    return out


def _holds(folder: Path, path: str | Path) -> bool:
    """Whether replacing ``folder`` (resolved) would remove ``path``."""
    path = Path(path).resolve()
    return folder == path or folder in path.parents


def _check_name_length(out: Path) -> None:
    """Refuse a name the drive takes but not with the staging folders' longer names beside it (the longest of
    :class:`_RunFolders`' names, its ``partial`` folder)."""
    longest = _longest_name(out.parent)
    own = len(os.fsencode(out.name))
    extra = len(os.fsencode(_RunFolders(out, "0" * 12).path("partial").name)) - own
    if longest is not None and own + extra > longest:
        raise InputError(out, f"the folder's name is {own} bytes long; its output is staged beside it under a name "
                              f"{extra} bytes longer, past this drive's {longest}: use a shorter name")


def _check_output_dir(out: Path, overwrite: bool, inputs: Iterable[str | Path | None]) -> None:
    where = out.resolve()
    if _holds(where, Path.cwd()):
        raise InputError(out, "output folder is the current folder or one above it; name a new folder")
    if out.exists() and not out.is_dir():
        raise InputError(out, "output path exists and is not a folder")
    for path in inputs:
        if path is not None and _holds(where, path):
            raise InputError(out, f"output folder holds the input {path}; replacing it would delete it")
    if out.exists() and any(out.iterdir()):
        if not is_earlier_output(out):
            raise InputError(out, f"output folder is not empty and is no earlier msifusion output (no msifusion "
                                  f"{RUN_RECORD} in it), so it is never replaced: name a new folder")
        if not overwrite:
            raise InputError(out, "output folder holds an earlier run; pass --overwrite to replace it")
        owner = enclosing_run(where)
        if owner is not None:
            raise InputError(out, f"output folder is part of the earlier run in {owner} (its {RUN_RECORD} lists its "
                                  "files): replacing it alone would leave that run's records describing other files; "
                                  f"overwrite {owner} as a whole, or name a new folder")
        problem = _not_replaceable(out)
        if problem:
            raise InputError(out, f"output folder {problem}; --overwrite would delete them: move them out first")
    parent = nearest_existing(where.parent)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(out, f"cannot create the output folder: {parent} is not a writable folder")


def _longest_name(folder: Path) -> int | None:
    """The longest file name (bytes) the drive holding ``folder`` takes (255 on most), None where it does not say."""
    where = nearest_existing(folder.resolve())
    try:
        longest = os.pathconf(where, "PC_NAME_MAX") if where is not None else None
    except (AttributeError, ValueError, OSError):  # Windows has no pathconf
        return None
    return longest if longest is not None and longest > 0 else None  # -1: no limit


def nearest_existing(path: Path) -> Path | None:
    """``path`` or its nearest parent that exists: where a folder not made yet will go."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def free_bytes(out: str | Path) -> int | None:
    """Free space on the drive that holds (or will hold) the output folder ``out``; None where no parent exists."""
    where = nearest_existing(Path(out).resolve())
    return shutil.disk_usage(where).free if where is not None else None


_CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini"}  # what file browsers leave in a folder they showed


def files_in(folder: Path) -> list[str]:
    """The files under ``folder`` as sorted relative paths, but its run record and file browsers' clutter."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p != folder / RUN_RECORD and p.name not in _CLUTTER and not p.name.startswith("._"))


def not_written_by_its_run(folder: Path) -> list[str]:
    """Files in an earlier output ``folder`` (relative paths, sorted) that its run did not write: the user's notes
    and analyses, which replacing the folder would lose. The run record lists what the run wrote
    (``files_written``); a record older than that list counts the files modified after it was written (a run writes
    its record last)."""
    listed = (_record(folder) or {}).get("files_written")
    if isinstance(listed, list):
        return sorted(set(files_in(folder)) - {name for name in listed if isinstance(name, str)})
    written = (folder / RUN_RECORD).stat().st_mtime
    return [f for f in files_in(folder) if (folder / f).stat().st_mtime > written]


FINGERPRINT_BYTES = 1 << 20  # a run's files up to this size are known by their content, larger ones by their size


def fingerprints(folder: Path) -> dict[str, list]:
    """Each file :func:`files_in` ``folder`` lists, as [bytes, content digest] (the digest None above
    :data:`FINGERPRINT_BYTES`): what a run wrote, so that a later edit (a ``landmarks.csv`` refined in BigWarp) can
    be told from the run's own file, whatever its modification time (a copy with ``cp -r`` changes that)."""
    return {name: _fingerprint(folder / name) for name in files_in(folder)}


def _fingerprint(path: Path) -> list:
    """[bytes, content digest] of one file (the digest None above :data:`FINGERPRINT_BYTES`, or where unreadable)."""
    size = path.stat().st_size
    digest = None
    if size <= FINGERPRINT_BYTES:
        try:
            digest = _digest(path.read_bytes())
        except OSError:  # unreadable: known by its size alone
            pass
    return [size, digest]


def _digest(content: bytes) -> str:
    """A file's content as run.json's fingerprints and the swap's check know it."""
    return hashlib.blake2b(content, digest_size=16).hexdigest()


def changed_since_its_run(folder: Path) -> list[str]:
    """Files of an earlier output ``folder`` (relative paths, sorted) that differ from what its run wrote, by the
    fingerprints its record keeps (records older than those: none)."""
    kept = (_record(folder) or {}).get("file_fingerprints")
    if not isinstance(kept, dict):
        return []
    now = fingerprints(folder)
    changed = []
    for name, print_ in kept.items():
        if name not in now or not isinstance(print_, list) or len(print_) != 2:  # removed since, or not ours to read
            continue
        if _differs(print_, now[name]):
            changed.append(name)
    return sorted(changed)


def _not_replaceable(folder: Path) -> str | None:
    """Why ``--overwrite`` must not replace the earlier output ``folder`` ("holds files …"): files its run did not
    write, or that were edited since (replacing the folder would lose them); None when it may."""
    for files, what in ((not_written_by_its_run(folder), "files its run did not write"),
                        (changed_since_its_run(folder), "files edited since its run wrote them")):
        if files:
            return f"holds {what} ({_first_few(files)})"
    return None


def _first_few(names: list[str]) -> str:
    """The first three names, and how many more."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def enclosing_run(folder: Path) -> Path | None:
    """The earlier msifusion output above ``folder`` (resolved) whose run wrote files inside it (a panel's
    ``mz_<m/z>/`` folders), else None."""
    for parent in folder.parents:
        record = _record(parent)
        if not _by_msifusion(record):
            continue
        listed = record.get("files_written")
        inside = folder.relative_to(parent).as_posix() + "/"
        if isinstance(listed, list) and any(str(name).startswith(inside) for name in listed):
            return parent
    return None


def is_earlier_output(folder: Path) -> bool:
    """Whether ``folder`` is an msifusion output: its ``run.json`` is JSON that msifusion wrote (its ``tool`` starts
    with "msifusion", or, in records older than that field, its ``versions`` name msifusion). Other tools write
    a run.json too; a folder of theirs is not replaced."""
    return _by_msifusion(_record(folder))


def _record(folder: Path) -> dict | None:
    """The run record in ``folder``; None where there is none or it is no JSON object."""
    try:
        record = json.loads((folder / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def record_of_the_run_that_wrote(path: Path) -> dict | None:
    """The run record of the msifusion run whose output ``path`` is, as that run wrote it (a ``landmarks.csv`` fed
    back: which units its points are in); None where its folder holds no msifusion record listing it, or the file
    changed since (refined in BigWarp, whose units are then its own)."""
    record, kept = _kept(Path(path))
    if kept is None or kept[1] is None:
        return None
    try:
        content = path.read_bytes()
    except OSError:
        return None
    return record if [len(content), _digest(content)] == kept else None


def unchanged_outputs(*paths: Path) -> bool:
    """Whether each of ``paths`` is listed by the msifusion run record in its folder, unchanged since as far as its
    fingerprint tells (files over :data:`FINGERPRINT_BYTES` by their size): an ion TIFF and the ``acquired.tiff`` that
    an ``msifusion ions`` run, or a panel's run, wrote."""
    for path in map(Path, paths):
        kept = _kept(path)[1]
        if kept is None or not path.is_file() or _differs(kept, _fingerprint(path)):
            return False
    return True


def _kept(path: Path) -> tuple[dict | None, list | None]:
    """The msifusion run record in ``path``'s folder and the [bytes, digest] it keeps for ``path`` (None where it
    keeps none)."""
    record = _record(path.parent)
    kept = ((record or {}).get("file_fingerprints") or {}).get(path.name) if _by_msifusion(record) else None
    return record, kept if isinstance(kept, list) and len(kept) == 2 else None


def _differs(kept: list, now: list) -> bool:
    """Whether a file's fingerprint now differs from the one its run kept (digests compared where both have one)."""
    return now[0] != kept[0] or (kept[1] is not None and now[1] is not None and now[1] != kept[1])


def _by_msifusion(record: dict | None) -> bool:
    """Whether a run record is msifusion's (see :func:`is_earlier_output`)."""
    if record is None:
        return False
    versions = record.get("versions")
    return str(record.get("tool", "")).startswith("msifusion") or (isinstance(versions, dict) and "msifusion" in versions)


def missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: what creating it makes."""
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Undo :func:`missing_folders`' creation after a failure: remove each folder, deepest first, until one is not
    empty (another run may have written there meanwhile)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


@contextmanager
def staged_output_dir(out: str | Path, overwrite: bool = False,
                      inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``out``, on any error it vanishes.

    With ``overwrite``, the earlier run in ``out`` is replaced only if it is still the one checked before the work
    began, with nothing added or edited in it meanwhile. Where the results cannot take their place (another run got
    there first, a file was saved into ``out`` meanwhile) ``out`` is kept as it is and the complete results are left
    beside it as ``DIR.new-…``, named in the error. Ctrl-C or a kill (SIGTERM) while the two folders trade places is
    ignored (the results are complete by then). What a run killed outright (SIGKILL, a power cut) left beside ``out``
    is cleared by the next run into it: see :class:`_RunFolders`."""
    out = check_output_dir(out, overwrite, inputs)
    checked = _record_digest(out) if overwrite else None
    _name_unclaimed(out)
    made = missing_folders(out.parent)
    run = lock = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        run, lock = _RunFolders.start(out)
        stage = run.path("partial")
        stage.mkdir()  # as any folder the user makes (their umask)
    except OSError as exc:
        if run is not None:
            run.release(lock)
        remove_empty_folders(made)
        raise InputError(out, f"cannot create the output folder: {exc.strerror or exc}") from None
    try:
        yield stage
        _move_into_place(stage, out, checked, run)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # gone already where the results are in place or kept beside
        run.release(lock)
        remove_empty_folders(made)
        raise
    try:
        _remove(run.path("trash"))
    except (KeyboardInterrupt, SystemExit):  # the results are in place: a long removal may be cut short
        print(f"msifusion: warning: the replaced run's files are left in {run.path('trash')}; the next run into "
              f"{out} removes them", file=sys.stderr)
    run.release(lock)


_TOKEN = re.compile(r"[0-9a-f]{12}")  # a run's folders' random part


@dataclass(frozen=True)
class _RunFolders:
    """One run's hidden folders beside ``out``, named by one random token: ``partial`` (the results being written),
    ``old`` (the earlier run they replace, moved aside), ``trash`` (that run on its way out), and a ``lock`` file the
    run holds while it lives (POSIX ``flock``: the system releases it when the process ends, however it ends), so a
    later run can tell a killed run's folders from a working one's, on this machine or another sharing the drive.
    The lock is taken before any folder is made and let go after the last is gone. Where no lock can be taken
    (Windows, a drive without locking) the run works unlocked, and no run clears anything."""

    out: Path
    token: str

    def path(self, kind: str) -> Path:
        return self.out.parent / f".{self.out.name}.{kind}-{self.token}"

    @classmethod
    def start(cls, out: Path) -> tuple["_RunFolders", object]:
        """A new run's folders and its held lock (None where locks do not work here: Windows, a drive without them);
        a token another run took, or whose lock file a clearing run caught before it was held, is passed over."""
        import secrets

        while True:
            run = cls(out, secrets.token_hex(6))
            try:
                handle = open(run.path("lock"), "x")
            except FileExistsError:
                continue
            taken = _lock(handle)
            if taken and _same_file(handle, run.path("lock")):
                return run, handle
            handle.close()
            if taken is None:
                run.path("lock").unlink(missing_ok=True)
                return run, None
            # held by a clearing run (it removes the file) or removed by one meanwhile: draw again

    def hold(self):
        """The run's lock file, opened and locked, when its run is over (the lock is free); else None."""
        try:
            handle = open(self.path("lock"), "r")
        except OSError:
            return None
        if _lock(handle) and _same_file(handle, self.path("lock")):
            return handle
        handle.close()
        return None

    def release(self, handle) -> None:
        """Let go of the lock; its file is removed first, and only once none of the run's folders is left to clear."""
        if not any(_there(self.path(kind)) for kind in ("partial", "old", "trash")):
            self.path("lock").unlink(missing_ok=True)
        if handle is not None:
            handle.close()


def _lock(handle) -> bool | None:
    """Take an exclusive flock on the open file ``handle`` without waiting: True when taken, False when another
    holds it, None where there are no locks (no fcntl, a drive without them)."""
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except (ImportError, OSError):
        return None


def _there(path: Path) -> bool:
    """Whether ``path`` exists (a name too long for the drive cannot)."""
    try:
        return path.exists()
    except OSError:
        return False


def _same_file(handle, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``handle`` (a clearing run may have removed it meanwhile)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except OSError:
        return False


def _clear_killed_runs(out: Path) -> None:
    """Clear what runs into ``out`` that were killed outright left: a run whose lock is free is over. Its results
    being written and a replaced run on its way out are removed. A replaced run it had moved aside (the kill came
    between the two renames) is put back where ``out`` is missing or an empty folder, removed where ``out`` holds the
    new results (an msifusion run), and otherwise moved beside ``out`` under a visible name, and named."""
    prefix = f".{out.name}.lock-"
    for lock in sorted(out.parent.glob(f"{glob.escape(prefix)}*")):
        token = lock.name[len(prefix):]
        if not _TOKEN.fullmatch(token):
            continue
        run = _RunFolders(out, token)
        handle = run.hold()
        if handle is None:  # its run is at work (or locks do not work here)
            continue
        old = run.path("old")
        if old.is_dir():
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            if not out.exists():
                old.rename(out)
            elif run.path("partial").exists() or not is_earlier_output(out):  # what is in out is not its results
                kept = out.parent / f"{out.name}.old-{token}"
                old.rename(kept)
                print(f"msifusion: warning: {out} was being replaced when its run was killed, and now holds other "
                      f"files; the run it replaced is kept in {kept}", file=sys.stderr)
        for kind in ("old", "trash", "partial"):
            _remove(run.path(kind))
        run.release(handle)


def _name_unclaimed(out: Path) -> None:
    """Name the hidden folders beside ``out`` that no lock claims (an older version's, a drive without locks): whose
    run is over cannot be told, so they are left to the user."""
    unclaimed = []
    for folder in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-*")):
        kind, _, token = folder.name[len(out.name) + 2:].partition("-")
        locked = _TOKEN.fullmatch(token) and _RunFolders(out, token).path("lock").exists()
        if kind in ("partial", "old", "trash") and folder.is_dir() and not locked:
            unclaimed.append(folder.name)
    if unclaimed:  # an older version's, or a drive without locks: whose run is over cannot be told
        print(f"msifusion: warning: beside {out} lie hidden folders of runs that did not finish "
              f"({_first_few(unclaimed)}); if no msifusion run is writing there now, delete them (an .old- one holds "
              "a run an --overwrite was replacing)", file=sys.stderr)


def _remove(folder: Path) -> None:
    """Remove ``folder`` and what it holds, if it is there; where something cannot be removed (a read-only folder, a
    file held open on another system), say what is left."""
    if not folder.exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        print(f"msifusion: warning: an earlier run's files could not all be removed; they are in {folder}",
              file=sys.stderr)


def _record_digest(out: Path) -> str | None:
    """The earlier run's record as checked (its bytes' digest), to tell it from another run's that replaced it
    meanwhile; None where ``out`` holds no run."""
    try:
        return _digest((out / RUN_RECORD).read_bytes())
    except OSError:
        return None


def _snapshot(folder: Path) -> list[tuple[str, int, int]]:
    """Every file under ``folder`` with its size and modification time (a rename keeps both): a quick look that tells
    whether anything changed since a full check."""
    found = []
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()  # a link as itself: one that points nowhere is still a file of the folder
        found.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return found


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM are ignored while the folders trade places: the run has finished (or its error is on its
    way), and an interrupt now would only report "nothing written" over results in place. Their Python handlers are
    swapped, not the signals blocked: any thread may receive a signal, the main thread runs its handler. In the main
    thread only (elsewhere Python neither delivers signals nor lets handlers be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, lambda *_: None)
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


def _move_into_place(stage: Path, out: Path, checked: str | None, run: _RunFolders) -> None:
    """Rename ``stage`` to ``out``. Where no earlier run was checked, the rename itself is the check: it replaces
    nothing but an empty folder. Otherwise the earlier run is checked in full where it is, then moved aside, seen to
    be unchanged since (its record's digest, each file's size and time) and replaced, then moved to ``trash`` for the
    caller to remove. Where the results cannot take its place, ``out`` is left as it is (put back as it was) and the
    results are kept beside it as ``DIR.new-…``, named in the error."""
    kept = out.parent / f"{out.name}.new-{run.token}"

    def refuse(problem: str) -> InputError:
        try:
            stage.rename(kept)
        except OSError as exc:
            return InputError(out, f"{problem}; this run's results could not be kept beside it either "
                                   f"({exc.strerror or exc}): nothing written")
        return InputError(out, f"{problem}; this run's results are in {kept}")

    if checked is None:
        try:
            stage.rename(out)
        except OSError as exc:
            if out.is_dir() and any(out.iterdir()):
                raise refuse("another run wrote into the output folder meanwhile") from None
            if out.exists() and not out.is_dir():
                raise refuse("the output path became a file meanwhile") from None
            raise exc
        return
    try:
        if not out.is_dir() or _record_digest(out) != checked:
            raise refuse("another run replaced or removed the output folder meanwhile; what is there is kept")
        problem = _not_replaceable(out)
        seen = _snapshot(out)
    except OSError as exc:  # a file gone between listing and reading it: the folder is changing
        raise refuse(f"the output folder changed as this run finished ({exc.strerror or exc}); it is kept as it "
                     "was") from None
    if problem:
        raise refuse(f"output folder now {problem}, saved while this run worked; it is kept as it was")
    backup = run.path("old")
    with _signals_held():
        out.rename(backup)
        try:
            unchanged = _record_digest(backup) == checked and _snapshot(backup) == seen
        except OSError:
            unchanged = False
        failed = None
        if unchanged:
            try:
                stage.rename(out)
            except OSError as exc:
                failed = exc
        if not unchanged or failed:
            backup.rename(out)
            raise refuse(f"the results could not take the output folder's place ({failed.strerror or failed})" if failed
                         else "the output folder changed as this run finished; it is kept as it was")
        backup.rename(run.path("trash"))
