import pytest

from msifusion.errors import InputError
from msifusion.io.outdir import staged_output_dir


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


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "run").mkdir()
    with staged_output_dir(tmp_path / "run") as stage:
        (stage / "f").write_text("1")
    assert (tmp_path / "run" / "f").exists()
