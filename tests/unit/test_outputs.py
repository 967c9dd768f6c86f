"""Unpacking a job's outputs archive, which comes from the cluster and is untrusted: only
regular files and directories under the listed paths land, never through or as a link."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from gateway.jobs.outputs import LOCAL_DIR, list_outputs, output_file, unpack


def archive(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    """A tar of (name, kind, data or link target) with kind file, dir, symlink, hardlink, fifo."""
    with tarfile.open(path, "w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                assert isinstance(data, str)
                info.linkname = data
            tar.addfile(info)
    return path


def test_files_and_directories_under_the_listed_paths_land(tmp_path: Path) -> None:
    tar = archive(tmp_path / "a.tar", [
        ("results", "dir", b""), ("results/a.txt", "file", b"A"),
        ("results/sub/b.csv", "file", b"1,2"), ("summary.json", "file", b"{}"),
        ("unlisted.txt", "file", b"no")])
    found = unpack(tar, tmp_path / "out", ["results", "summary.json", "missing.txt"])
    assert found == {"results", "summary.json"}
    assert (tmp_path / "out" / "results" / "sub" / "b.csv").read_bytes() == b"1,2"
    assert not (tmp_path / "out" / "unlisted.txt").exists()


@pytest.mark.parametrize("members", [
    [("results/evil", "symlink", "/etc/passwd")],
    [("results/hard", "hardlink", "/etc/passwd")],
    [("results/pipe", "fifo", b"")],
    [("/results/abs", "file", b"x")],
    [("results/../../escape", "file", b"x")],
    # A link first, then a file "through" it: the file must not follow the link.
    [("results", "symlink", "/tmp"), ("results/through", "file", b"x")],
])
def test_links_and_escapes_never_land(tmp_path: Path,
                                      members: list[tuple[str, str, bytes | str]]) -> None:
    out = tmp_path / "out"
    unpack(archive(tmp_path / "a.tar", members), out, ["results"])
    for root, dirs, files in os.walk(out):
        for name in dirs + files:
            assert not os.path.islink(os.path.join(root, name))
    assert not (tmp_path / "escape").exists() and not Path("/tmp/through").exists()
    # Whatever landed is a plain file under the outputs: at most the file sent through the
    # skipped link, now in a real directory.
    assert {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()} \
        <= {"results/through"}


def test_a_collected_file_is_served_only_from_the_outputs(tmp_path: Path) -> None:
    outputs = tmp_path / LOCAL_DIR
    (outputs / "results").mkdir(parents=True)
    (outputs / "results" / "a.txt").write_text("A")
    (tmp_path / "secret").write_text("S")
    (outputs / "link").symlink_to(tmp_path / "secret")
    (outputs / "dirlink").symlink_to(tmp_path)
    assert list_outputs(tmp_path) == [{"path": "results/a.txt", "size": 1}]
    assert output_file(tmp_path, "results/a.txt") == outputs / "results" / "a.txt"
    for bad in ("link", "dirlink/secret", "../secret", "/etc/passwd", "results", ""):
        assert output_file(tmp_path, bad) is None, bad
