"""File transfer helpers of the transports: the streamed tar archive, and LocalTransport.fetch_to
(as the gateway's own user: an empty command prefix, so no sudo and no cluster)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.transport import RemoteFileMissing
from gateway.transport.base import tar_archive, tar_pieces
from gateway.transport.local import LocalTransport


def tarfile_archive(files: dict[str, bytes]) -> bytes:
    """What the standard library writes for ``files`` (the reference for tar_pieces)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


FILES = {
    "notebook.ipynb": os.urandom(10_000),
    "empty": b"",
    "exactly-a-block": b"x" * 512,
    "nötebook ünïcode.ipynb": b"{}",
    "a" * 120: b"long name",  # needs a PAX header
}


@pytest.mark.parametrize("chunk", [7, 512, 1 << 20])
def test_tar_pieces_are_the_bytes_tarfile_writes(chunk: int) -> None:
    pieces = tar_pieces(FILES, chunk)
    assert b"".join(pieces) == tarfile_archive(FILES)
    assert max(len(piece) for piece in pieces if isinstance(piece, memoryview)) <= chunk
    assert tar_archive(FILES) == tarfile_archive(FILES)


def test_tar_pieces_view_the_data_without_copying() -> None:
    data = os.urandom(3 << 20)
    views = [p for p in tar_pieces({"big": data}, 1 << 20) if isinstance(p, memoryview)]
    assert len(views) == 3 and all(view.obj is data for view in views)


def test_tar_members_are_plain_files_with_mode_0600() -> None:
    with tarfile.open(fileobj=io.BytesIO(tar_archive(FILES))) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == list(FILES)
        assert all(m.isfile() and m.mode == 0o600 for m in members)


@pytest.mark.parametrize("name", ["a/b", "", ".", ".."])
def test_tar_pieces_refuse_names_that_are_not_plain_before_producing_anything(
        name: str) -> None:
    with pytest.raises(ValueError, match="not a plain file name"):
        tar_pieces({"fine": b"1", name: b"2"})


@pytest.fixture
def local(config: Config) -> LocalTransport:
    return LocalTransport(config.clusters[0].model_copy(update={"command_prefix": []}))


async def test_local_fetch_to_copies_into_a_new_private_file(
        local: LocalTransport, tmp_path: Path) -> None:
    source, target = tmp_path / "remote.bin", tmp_path / "local.bin"
    source.write_bytes(os.urandom(300_000))
    target.write_bytes(b"old content, longer than nothing" * 100_000)
    size = await local.fetch_to(str(source), target, user="alice", limit=300_000)
    assert size == 300_000 and target.read_bytes() == source.read_bytes()
    fresh = tmp_path / "fresh.bin"
    await local.fetch_to(str(source), fresh, user="alice", limit=300_000)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


async def test_local_fetch_to_a_missing_file_raises_remote_file_missing(
        local: LocalTransport, tmp_path: Path) -> None:
    with pytest.raises(RemoteFileMissing):
        await local.fetch_to(str(tmp_path / "nope"), tmp_path / "x", user="alice", limit=10)
