import os

import pytest

from msifusion.errors import InputError
from msifusion.io.outdir import check_output_dir, is_earlier_output, staged_output_dir

EARLIER = '{"tool": "msifusion", "versions": {"msifusion": "0.1.0"}}'  # how every msifusion run.json opens


def test_success_moves_folder_into_place(tmp_path):
    out = tmp_path / "run"
    with staged_output_dir(out) as stage:
        (stage / "a.txt").write_text("x")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with staged_output_dir(out) as stage:
            (stage / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_overwrite_and_is_kept_on_failure(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    (out / "run.json").write_text(EARLIER)  # an earlier run's output, its record written last
    with pytest.raises(InputError, match="--overwrite"):
        with staged_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with staged_output_dir(out, overwrite=True):
            raise RuntimeError("boom")
    assert (out / "precious.txt").read_text() == "keep"
    with staged_output_dir(out, overwrite=True) as stage:
        (stage / "new.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_overwrite_refuses_files_its_run_did_not_write(tmp_path):
    import os

    from msifusion.provenance import write_run_json

    out = tmp_path / "run"
    (out / "mz_1").mkdir(parents=True)
    (out / "fused.tiff").write_text("output")
    (out / "mz_1" / "run.json").write_text(EARLIER)
    write_run_json(out, {"tool": "msifusion"})  # lists fused.tiff and mz_1/run.json as the run's
    for name in ("notes.txt", "mz_1/stats.csv", ".DS_Store"):  # the user's, and a file browser's clutter
        (out / name).write_text("mine")
        os.utime(out / name, (1, 1))  # moved in with its old time: still not the run's
    refused = r"holds files its run did not write \(mz_1/stats.csv, notes.txt\); --overwrite would delete them"
    with pytest.raises(InputError, match=refused):
        check_output_dir(out, overwrite=True)
    (out / "notes.txt").unlink()
    (out / "mz_1" / "stats.csv").unlink()
    os.utime(out / "fused.tiff")  # the run's own file, touched (copied with `cp -r`): still the run's
    assert check_output_dir(out, overwrite=True) == out


def test_overwrite_of_a_record_without_its_file_list_goes_by_time(tmp_path):
    import os

    out = tmp_path / "run"
    out.mkdir()
    (out / "fused.tiff").write_text("output")
    (out / "run.json").write_text(EARLIER)  # a run.json older than files_written
    written = (out / "run.json").stat().st_mtime
    (out / "notes.txt").write_text("mine")
    os.utime(out / "notes.txt", (written + 5, written + 5))
    with pytest.raises(InputError, match=r"did not write \(notes.txt\)"):
        check_output_dir(out, overwrite=True)


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "run").mkdir()
    with staged_output_dir(tmp_path / "run") as stage:
        (stage / "f").write_text("1")
    assert (tmp_path / "run" / "f").exists()


def test_refuses_a_folder_that_holds_an_input_even_with_overwrite(tmp_path):
    inputs = tmp_path / "data" / "sub"
    inputs.mkdir(parents=True)
    (inputs / "ion.tif").write_text("measured")
    with pytest.raises(InputError, match="holds the input"):
        with staged_output_dir(tmp_path / "data", overwrite=True, inputs=[inputs / "ion.tif"]):
            pass
    assert (inputs / "ion.tif").read_text() == "measured"


def test_refuses_the_current_folder_and_paths_through_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(InputError, match="current folder"):
        check_output_dir(".", overwrite=True)
    with pytest.raises(InputError, match="current folder"):
        check_output_dir("..", overwrite=True)
    with pytest.raises(InputError, match="not a writable folder"):
        check_output_dir(tmp_path / "x.txt" / "sub", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_output_folder_follows_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        with staged_output_dir(tmp_path / "run") as stage:
            (stage / "f").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("length", [300, 240])  # 240: a name the drive takes, but not its staging folder's
def test_a_name_too_long_for_its_staging_folder_is_an_input_error(tmp_path, length):
    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("a drive whose names are not limited to 255 bytes")
    with pytest.raises(InputError, match=f"the folder's name is {length} bytes long; its output is staged beside it "
                                         "under a name 22 bytes longer, past this drive's 255: use a shorter name"):
        check_output_dir(tmp_path / ("a" * length), overwrite=False)
    with staged_output_dir(tmp_path / ("a" * 233), overwrite=False) as stage:  # 233 + 22 = 255: fits
        (stage / "x.txt").write_text("x")
    assert (tmp_path / ("a" * 233) / "x.txt").exists()


@pytest.mark.parametrize("said", [-1, 0])  # POSIX: -1 for no limit; 0 from an odd file system
def test_a_drive_that_states_no_name_limit_takes_any_name(tmp_path, monkeypatch, said):
    monkeypatch.setattr(os, "pathconf", lambda path, name: said)
    assert check_output_dir(tmp_path / "run", overwrite=False) == tmp_path / "run"


def test_failure_also_removes_the_parent_folders_it_made(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyboardInterrupt):
        with staged_output_dir(tmp_path / "kept" / "new" / "deeper" / "out"):
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]


@pytest.mark.parametrize("existed_empty", [False, True])
def test_a_folder_filled_by_another_run_meanwhile_is_not_replaced(tmp_path, existed_empty):
    out = tmp_path / "out"
    if existed_empty:
        out.mkdir()
    with pytest.raises(InputError, match=r"another run wrote into the output folder meanwhile; this run's results "
                                         r"are in .*out\.new-"):
        with staged_output_dir(out) as stage:
            (stage / "mine.txt").write_text("mine")
            out.mkdir(exist_ok=True)
            (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    (kept,) = [p for p in tmp_path.iterdir() if p.name != "out"]  # nothing hidden left
    assert kept.name.startswith("out.new-") and (kept / "mine.txt").read_text() == "mine"


def test_an_empty_folder_is_replaced_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with staged_output_dir(out) as stage:
        (stage / "mine.txt").write_text("mine")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "mine.txt").read_text() == "mine"


def test_a_failed_final_rename_keeps_the_old_results_and_no_staging(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "run.json").write_text(EARLIER)  # a run writes its record last
    real_rename = type(out).rename

    def rename(self, target):
        if self.name.startswith(".out.partial-"):
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(type(out), "rename", rename)
    with pytest.raises(InputError, match=r"could not take the output folder's place \(No space left on device\); "
                                         r"this run's results could not be kept beside it either"):
        with staged_output_dir(out, overwrite=True) as stage:
            (stage / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "old.txt").read_text() == "old"


def test_overwrite_replaces_only_an_earlier_output(tmp_path):
    """A folder of other data named by mistake is never deleted, --overwrite or not."""
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "thesis.docx").write_text("years of work")
    for overwrite in (False, True):  # one message either way: this folder is never replaced
        with pytest.raises(InputError, match="no earlier msifusion output"):
            with staged_output_dir(project, overwrite=overwrite):
                pass
    (project / "run.json").write_text('{"tool": "another tool"}')  # a run.json of another tool's
    with pytest.raises(InputError, match="no earlier msifusion output"):
        with staged_output_dir(project, overwrite=True):
            pass
    assert (project / "thesis.docx").read_text() == "years of work" and (project / ".git").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


@pytest.mark.parametrize("target", ["empty", "earlier", "dangling"])
def test_an_output_link_is_followed(tmp_path, target):
    real = tmp_path / "scratch" / "results"
    if target != "dangling":
        real.mkdir(parents=True)
    if target == "earlier":
        (real / "old.txt").write_text("old")
        (real / "run.json").write_text(EARLIER)
    else:
        real.parent.mkdir(exist_ok=True)
    link = tmp_path / "results"
    link.symlink_to(real)
    assert check_output_dir(link, overwrite=True) == real
    with staged_output_dir(link, overwrite=target == "earlier") as stage:
        (stage / "new.txt").write_text("new")
    assert link.is_symlink() and sorted(p.name for p in real.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "scratch"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["results"]  # no staging or backup left beside it


@pytest.mark.parametrize("text, earlier", [
    (EARLIER, True), ('{"tool": "msifusion benchmark"}', True), ('{"versions": {"msifusion": "0.0.9"}}', True),
    ('{"tool": "sacred"}', False), ("[1, 2]", False), ("not json", False), (None, False),
])
def test_an_earlier_output_is_known_by_its_run_json(tmp_path, text, earlier):
    if text is not None:
        (tmp_path / "run.json").write_text(text)
    assert is_earlier_output(tmp_path) is earlier


def test_a_loop_of_links_is_an_input_error(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match="loop of symbolic links"):
        check_output_dir(loop, overwrite=True)


def test_one_ion_folder_of_a_panel_is_not_replaced_alone(tmp_path):
    """A panel's run.json lists its ions' files: replacing one ion's folder would leave it describing others."""
    import json

    panel, ion = tmp_path / "panel", tmp_path / "panel" / "mz_656.7762"
    ion.mkdir(parents=True)
    (ion / "fused.tiff").write_bytes(b"x")
    (ion / "run.json").write_text(json.dumps({"tool": "msifusion", "files_written": ["fused.tiff"]}))
    (panel / "run.json").write_text(json.dumps({"tool": "msifusion", "files_written": ["mz_656.7762/fused.tiff",
                                                                                        "mz_656.7762/run.json"]}))
    with pytest.raises(InputError, match=f"part of the earlier run in {panel} "):
        check_output_dir(ion, overwrite=True)
    check_output_dir(panel, overwrite=True)  # the panel as a whole may be replaced
    (panel / "run.json").write_text(json.dumps({"tool": "msifusion", "files_written": ["fused.tiff"]}))
    check_output_dir(ion, overwrite=True)  # a folder the run above did not write is the user's own earlier run


def _earlier_run(out, files=("fused.tiff",)):
    """An earlier output as a run leaves it: its files, then its record with their fingerprints."""
    from msifusion.provenance import write_run_json

    out.mkdir(parents=True)
    for name in files:
        (out / name).write_text(f"{name} as the run wrote it")
    write_run_json(out, {"tool": "msifusion"})
    return out


def test_a_hand_edited_record_is_read_as_far_as_it_makes_sense(tmp_path):
    import json

    out = _earlier_run(tmp_path / "run", ("a.txt", "b.txt"))
    record = json.loads((out / "run.json").read_text())
    record.update(files_written=["a.txt", {"b.txt": 1}], file_fingerprints={"a.txt": None, "b.txt": [5]})
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"holds files its run did not write \(b.txt\)"):  # not listed as a name
        check_output_dir(out, overwrite=True)


def test_overwrite_refuses_a_run_file_edited_since_but_not_one_copied(tmp_path):
    import shutil

    out = _earlier_run(tmp_path / "reg", ("landmarks.csv", "fused.tiff"))
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copy)  # `cp -r`: new times, same contents
    assert check_output_dir(copy, overwrite=True) == copy
    (out / "landmarks.csv").write_text("landmarks.csv as BigWarp refined it")  # same length: the content tells
    with pytest.raises(InputError, match=r"holds files edited since its run wrote them \(landmarks.csv\)"):
        check_output_dir(out, overwrite=True)


def test_files_added_or_edited_during_an_overwrite_keep_the_earlier_run_and_the_results_beside_it(tmp_path):
    import shutil

    out = _earlier_run(tmp_path / "run")
    for change in (lambda: (out / "notes.txt").write_text("saved while the run worked"),
                   lambda: (out / "fused.tiff").write_text("edited while the run worked!")):
        with pytest.raises(InputError, match=r"output folder now holds files .*, saved while this run worked; it is "
                                             r"kept as it was; this run's results are in .*run\.new-") as error:
            with staged_output_dir(out, overwrite=True) as stage:
                (stage / "new.txt").write_text("new")
                change()
        (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.new-")]
        assert str(kept) in str(error.value) and (kept / "new.txt").read_text() == "new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run", kept.name]  # nothing hidden left
        assert not (out / "new.txt").exists()
        shutil.rmtree(kept)
        (out / "notes.txt").unlink(missing_ok=True)
        (out / "fused.tiff").write_text("fused.tiff as the run wrote it")


@pytest.mark.parametrize("meanwhile", ["replaced", "moved aside"])
def test_an_earlier_run_replaced_by_another_meanwhile_is_kept(tmp_path, meanwhile):
    import shutil

    out = _earlier_run(tmp_path / "run")
    with pytest.raises(InputError, match="another run replaced or removed the output folder meanwhile; what is "
                                         "there is kept"):
        with staged_output_dir(out, overwrite=True) as stage:
            (stage / "mine.txt").write_text("mine")
            if meanwhile == "replaced":  # a second --overwrite run finished first
                shutil.rmtree(out)
                _earlier_run(out, ("theirs.txt",))
            else:  # a second --overwrite run is checking it, moved aside
                out.rename(tmp_path / ".run.old-0123456789ab")
    if meanwhile == "replaced":
        assert sorted(p.name for p in out.iterdir()) == ["run.json", "theirs.txt"]
    else:
        assert not out.exists()  # this run did not step in: the other puts the earlier run back or replaces it
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("run.new-")]) == 1


def test_ctrl_c_while_the_folders_trade_places_waits_and_the_results_are_in(tmp_path, monkeypatch):
    import signal

    import msifusion.io.outdir as outdir

    out = _earlier_run(tmp_path / "run")
    snapshot = outdir._snapshot

    def interrupted(folder):
        if folder.name.startswith(".run.old-"):  # the earlier run moved aside, the results not yet in
            os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C could land
        return snapshot(folder)

    monkeypatch.setattr(outdir, "_snapshot", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    with staged_output_dir(out, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["run"]
    assert signal.getsignal(signal.SIGINT) is handler  # restored


def _killed_run(tmp_path, token, holder=None):
    """A run's lock file beside ``run``, free (its process was killed) or held by ``holder`` (a live process)."""
    lock = tmp_path / f".run.lock-{token}"
    lock.touch()
    if holder is not None:
        import subprocess
        import sys

        code = (f"import fcntl, time; f = open({str(lock)!r}); fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); "
                "time.sleep(60)")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # it holds the lock now
        holder.append(proc)
    return lock


@pytest.mark.skipif(os.name != "posix", reason="the locks that tell a killed run are POSIX flock")
@pytest.mark.parametrize("out_before", ["missing", "empty"])
def test_a_killed_runs_leftovers_are_cleared_and_its_hidden_earlier_run_put_back(tmp_path, out_before, capsys):
    out, live = tmp_path / "run", []
    if out_before == "empty":
        out.mkdir()  # a job script's `mkdir -p` before the rerun
    _killed_run(tmp_path, "a" * 12)  # killed between its two renames: the earlier run hidden, no results in place
    _earlier_run(tmp_path / f".run.old-{'a' * 12}")
    (tmp_path / f".run.partial-{'a' * 12}").mkdir()
    _killed_run(tmp_path, "b" * 12)  # killed while removing the run it had replaced
    (tmp_path / f".run.trash-{'b' * 12}").mkdir()
    _killed_run(tmp_path, "c" * 12, live)  # at work in another process
    (tmp_path / f".run.partial-{'c' * 12}").mkdir()
    (tmp_path / f".run.partial-{'d' * 12}").mkdir()  # no lock: a drive without locking
    try:
        with pytest.raises(InputError, match="holds an earlier run"):  # the hidden earlier run, back in place
            with staged_output_dir(out):
                pass
        assert (out / "fused.tiff").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".run.lock-{'c' * 12}", f".run.partial-{'c' * 12}",
                                                              f".run.partial-{'d' * 12}", "run"]
        with staged_output_dir(out, overwrite=True):
            pass
        told = capsys.readouterr().err  # the folder without a lock is named, once; the live run's is not
        assert told.count(f"hidden folders of runs that did not finish (.run.partial-{'d' * 12})") == 1
        assert "c" * 12 not in told
    finally:
        for proc in live:
            proc.kill()
            proc.wait()
            proc.stdout.close()


@pytest.mark.skipif(os.name != "posix", reason="the locks that tell a killed run are POSIX flock")
def test_a_killed_swaps_earlier_run_is_never_removed_under_other_files(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "mine").mkdir(parents=True)  # not an msifusion output: the user's own files, made after the kill
    _killed_run(tmp_path, "e" * 12)
    _earlier_run(tmp_path / f".run.old-{'e' * 12}")
    with pytest.raises(InputError, match="no msifusion run.json in it"):
        check_output_dir(out, overwrite=True)
    kept = tmp_path / f"run.old-{'e' * 12}"
    assert (kept / "fused.tiff").exists() and f"the run it replaced is kept in {kept}" in capsys.readouterr().err


def test_a_replaced_run_that_cannot_be_removed_is_named(tmp_path, monkeypatch, capsys):
    import shutil

    out = _earlier_run(tmp_path / "run")
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # a read-only folder's files stay
    with staged_output_dir(out, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".run.trash-")]
    assert f"an earlier run's files could not all be removed; they are in {left}" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.lock-")]  # kept, for a later run to clear


def test_an_earlier_run_holding_a_link_that_points_nowhere_is_replaced(tmp_path):
    out = _earlier_run(tmp_path / "run")
    (out / "raw").symlink_to(tmp_path / "nowhere")  # the user's link, gone stale: not a file, nothing to lose
    with staged_output_dir(out, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_run_that_cannot_make_its_staging_folder_leaves_no_lock(tmp_path, monkeypatch):
    from pathlib import Path

    make = Path.mkdir

    def refused(self, *args, **kwargs):  # e.g. a quota reached between the lock file and the staging folder
        if ".partial-" in self.name:
            raise OSError(13, "Permission denied", str(self))
        return make(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    out = tmp_path / "made" / "run"
    with pytest.raises(InputError, match="cannot create the output folder: Permission denied"):
        with staged_output_dir(out):
            pass
    assert list(tmp_path.iterdir()) == []  # neither the lock file nor the parent folder it made


@pytest.mark.skipif(os.name != "posix", reason="the locks that tell a killed run are POSIX flock")
def test_a_killed_swaps_earlier_run_is_kept_under_another_runs_output(tmp_path, capsys):
    out = _earlier_run(tmp_path / "run", ("theirs.txt",))  # an msifusion output, but not the killed run's results
    _killed_run(tmp_path, "f" * 12)
    _earlier_run(tmp_path / f".run.old-{'f' * 12}")
    (tmp_path / f".run.partial-{'f' * 12}").mkdir()  # its results never reached DIR
    check_output_dir(out, overwrite=True)
    kept = tmp_path / f"run.old-{'f' * 12}"
    assert (kept / "fused.tiff").exists() and f"the run it replaced is kept in {kept}" in capsys.readouterr().err


def test_the_record_of_the_run_that_wrote_a_file_is_found_while_the_file_is_unchanged(tmp_path):
    import json

    from msifusion.io.outdir import record_of_the_run_that_wrote
    from msifusion.provenance import run_header, write_run_json

    run = tmp_path / "reg"
    run.mkdir()
    (run / "landmarks.csv").write_text('"Pt-0","true","1.0","2.0","3.0","4.0"\n')
    write_run_json(run, {**run_header(), "register_settings": {"optical_pixel_size": None}})
    record = record_of_the_run_that_wrote(run / "landmarks.csv")
    assert record["register_settings"] == {"optical_pixel_size": None}
    (tmp_path / "copy.csv").write_bytes((run / "landmarks.csv").read_bytes())
    assert record_of_the_run_that_wrote(tmp_path / "copy.csv") is None  # no record beside it
    (run / "notes.txt").write_text("mine")
    assert record_of_the_run_that_wrote(run / "notes.txt") is None  # not listed: the run did not write it
    (run / "landmarks.csv").write_text('"Pt-0","true","1.5","2.0","3.0","4.0"\n')  # refined in BigWarp since
    assert record_of_the_run_that_wrote(run / "landmarks.csv") is None
    (run / "landmarks.csv").write_text('"Pt-0","true","1.0","2.0","3.0","4.0"\n')
    foreign = {**json.loads((run / "run.json").read_text()), "tool": "another tool", "versions": {}}
    (run / "run.json").write_text(json.dumps(foreign))
    assert record_of_the_run_that_wrote(run / "landmarks.csv") is None  # not an msifusion record
