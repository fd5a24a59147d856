import hashlib
import json
import math
import os
import sys

import numpy as np

from msifusion.provenance import run_header, write_run_json


def test_run_json_is_strict_json_with_non_finite_numbers_as_null(tmp_path):
    record = {"consistency_error": math.nan, "peak": np.float32(np.inf), "scores": [1.5, -math.inf],
              "nested": {"x": np.float64(2.0), "n": np.int64(3)}}
    text = write_run_json(tmp_path, record).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"consistency_error": None, "peak": None, "scores": [1.5, None],
                                "nested": {"x": 2.0, "n": 3}, "files_written": [], "file_fingerprints": {}}


def test_run_json_lists_the_files_written_before_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "fused.tiff").write_bytes(b"x")
    (tmp_path / "sub" / "run.json").write_text("{}")
    write_run_json(tmp_path, {"tool": "msifusion"})
    write_run_json(tmp_path, {"tool": "msifusion"})  # written again: it does not list itself
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["files_written"] == ["fused.tiff", "sub/run.json"]
    assert record["file_fingerprints"] == {"fused.tiff": [1, hashlib.blake2b(b"x", digest_size=16).hexdigest()],
                                           "sub/run.json": [2, hashlib.blake2b(b"{}", digest_size=16).hexdigest()]}


def test_every_run_json_opens_with_the_same_header():
    header = run_header("msifusion study")
    assert list(header) == ["tool", "created", "command", "cwd", "versions", "machine"]
    assert header["tool"] == "msifusion study" and header["command"] == sys.argv and header["cwd"] == os.getcwd()
    assert header["versions"]["numpy"] == np.__version__ and header["machine"]["cpu_count"] == os.cpu_count()
    import torch

    # the GPU is named only where the run started CUDA (asking its name would start it for a run that reads files)
    assert header["machine"]["cuda_devices"] == torch.cuda.device_count()
    assert (header["machine"]["cuda"] is None) == (not torch.cuda.is_initialized())


def test_the_machine_records_the_cores_it_may_use_and_the_thread_variables(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    machine = run_header()["machine"]
    assert machine["cpus_usable"] == len(os.sched_getaffinity(0))
    assert machine["thread_settings"].get("OMP_NUM_THREADS") == "1"
    assert "NUMBA_NUM_THREADS" not in machine["thread_settings"]


def test_a_git_checkout_records_its_commit_and_whether_it_was_modified(tmp_path):
    import subprocess

    from msifusion.provenance import source_revision as cached

    source_revision = cached.__wrapped__  # asked once per process in a run; here after each change

    package = tmp_path / "src" / "package"
    package.mkdir(parents=True)
    (package / "code.py").write_text("x = 1\n")
    assert source_revision(package) == {}  # not in a checkout (an installed package)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    installed = tmp_path / ".venv" / "site-packages" / "msifusion"  # a pip install inside the user's own repository
    installed.mkdir(parents=True)
    (installed / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "src"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert source_revision(package) == {"msifusion_commit": head, "msifusion_modified": False}
    assert source_revision(installed) == {}  # the repository does not track it: not its commit
    (tmp_path / "notes.txt").write_text("untracked files are not a change to the code\n")
    (tmp_path / "src" / "README").write_text("tracked\n")
    subprocess.run([*git, "add", "src/README"], check=True)
    subprocess.run([*git, "commit", "-qm", "two"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "src" / "README").write_text("edited: a tracked file beside the package, not its code\n")
    assert source_revision(package) == {"msifusion_commit": head, "msifusion_modified": False}
    (package / "code.py").write_text("x = 2\n")
    assert source_revision(package) == {"msifusion_commit": head, "msifusion_modified": True}


def test_input_files_are_recorded_with_their_size_and_modification_time(tmp_path):
    from msifusion.provenance import input_files

    ion = tmp_path / "ion.tiff"
    ion.write_bytes(b"12345")
    os.utime(ion, (0, 86400))  # 1970-01-02 00:00 UTC
    assert input_files({"ion": ion, "landmarks": None, "ibd": tmp_path / "absent.ibd", "optical": tmp_path}) == {
        "ion": {"path": str(ion), "bytes": 5, "modified": "1970-01-02T00:00:00+00:00"}}


def test_output_run_checks_first_and_writes_its_record_only_on_success(tmp_path):
    import pytest

    from msifusion.errors import InputError
    from msifusion.provenance import OutputRun

    ion = tmp_path / "ion.tiff"
    ion.write_bytes(b"12345")
    os.utime(ion, (0, 86400))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("not an msifusion output")
    with pytest.raises(InputError, match="mine"):  # refused before any work, the user's file untouched
        OutputRun(mine, overwrite=True, inputs={"ion": ion})
    assert (mine / "thesis.docx").read_text() == "not an msifusion output"

    out = tmp_path / "run"
    run = OutputRun(out, inputs={"ion": ion, "landmarks": None})
    with pytest.raises(RuntimeError), run.staged() as stage:  # a failing run leaves nothing
        (stage / "fused.tiff").write_bytes(b"half")
        raise RuntimeError("the fusion failed")
    assert not out.exists()
    ion.write_bytes(b"123456")  # edited after the run began: the record keeps what the run read
    with run.staged() as stage:
        (stage / "fused.tiff").write_bytes(b"x")
        record = run.finish(stage, {**run.header("msifusion test"), "timings_s": {"fuse": 1.5}}, load=0.25)
    written = json.loads((out / "run.json").read_text())
    assert written["tool"] == "msifusion test" and written["files_written"] == ["fused.tiff"]
    assert written["input_files"] == {"ion": {"path": str(ion), "bytes": 5, "modified": "1970-01-02T00:00:00+00:00"}}
    assert written["timings_s"]["fuse"] == 1.5 and written["timings_s"]["load"] == 0.25
    assert 0 < written["timings_s"]["total"] == record["timings_s"]["total"] <= run.seconds()
