"""The transport contract every scheduler backend and connector goes through.

A transport runs a command as a given unix user on the cluster's login side and reads and writes
files there. The local transport does it with processes on this machine (through an admin-set
prefix such as ``sudo -n -u {unix_user} --``); the SSH transport over a pooled connection per
(cluster, unix user). Backends never know which one they have.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from ..errors import CommandFailed


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


class RemoteFileMissing(CommandFailed):
    """The file asked for does not exist on the cluster (yet)."""

    status = 404
    type_slug = "remote-file-missing"
    title = "File not found on the cluster"


class Transport(Protocol):
    """Runs commands and moves files on one cluster. All calls take explicit timeouts."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run ``argv`` as unix user ``user`` (None: the gateway's own identity on the cluster).

        Same contract as :func:`gateway.transport.process.run_command`.
        """
        ...

    async def put_files(self, directory: str, files: Mapping[str, bytes], *, user: str) -> None:
        """Create ``directory`` (and parents) as ``user``, the leaf mode 0700, and write each
        of ``files`` (plain names, no slashes) into it with mode 0600, replacing what was there.
        """
        ...

    async def read_file(self, path: str, *, user: str, tail_bytes: int | None = None) -> bytes:
        """Read ``path`` as ``user`` (only its last ``tail_bytes`` if given).

        Raises :class:`RemoteFileMissing` if it does not exist.
        """
        ...

    async def fetch_to(self, path: str, local_path: str | os.PathLike[str], *, user: str) -> int:
        """Copy ``path`` (read as ``user``) into the local file ``local_path`` (created with mode
        0600, or truncated) and return its size. Streams: memory use does not grow with the
        file. Raises :class:`RemoteFileMissing` if it does not exist; on any failure
        ``local_path`` may hold a partial copy (write to a temporary name, then rename).
        """
        ...

    async def close(self) -> None:
        """Release connections; further calls may reconnect."""
        ...


class CommandTransport:
    """File transfer built on :meth:`run` alone, so every transport that can run a command moves
    files the same way: a whole job directory is one ``tar`` reading from stdin, a file is one
    ``cat`` (or ``tail -c``). Subclasses implement ``run`` and ``close``, and ``fetch_to`` with a
    runner that streams the output (``run`` collects it); they may stream the others too."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        raise NotImplementedError

    async def put_files(self, directory: str, files: Mapping[str, bytes], *, user: str) -> None:
        archive = tar_archive(files)
        await self.run(mkdir_argv(directory), user=user)
        await self.run(untar_argv(directory), user=user, stdin=archive)

    async def read_file(self, path: str, *, user: str, tail_bytes: int | None = None) -> bytes:
        try:
            return (await self.run(read_argv(path, tail_bytes), user=user)).stdout
        except CommandFailed as exc:
            raise as_missing(exc) from None

    async def fetch_to(self, path: str, local_path: str | os.PathLike[str], *, user: str) -> int:
        raise NotImplementedError  # needs a streaming command runner: see the subclasses

    async def close(self) -> None:
        return None


def mkdir_argv(directory: str) -> list[str]:
    """Creates ``directory`` and its parents; the leaf gets mode 0700."""
    return ["mkdir", "-p", "-m", "700", "--", directory]


def untar_argv(directory: str) -> list[str]:
    """Extracts a tar archive read from stdin into ``directory``, owned by whoever runs it.
    Reads 1 MiB records (``-b 2048``, reassembled from short pipe reads by ``-B``): GNU tar's
    default 10 KiB records cost it about twice the system CPU per GiB."""
    return ["tar", "-x", "-m", "--no-same-owner", "--no-overwrite-dir", "-b", "2048", "-B",
            "-C", directory, "-f", "-"]


def read_argv(path: str, tail_bytes: int | None) -> list[str]:
    """Writes ``path`` (or its last ``tail_bytes``) to stdout."""
    return ["tail", "-c", str(tail_bytes), "--", path] if tail_bytes else ["cat", "--", path]


def as_missing(exc: CommandFailed) -> CommandFailed:
    """``exc`` of a read command, as :class:`RemoteFileMissing` if the file was not there."""
    if "No such file" in exc.stderr:
        return RemoteFileMissing(exc.argv, exc.returncode, exc.stderr)
    return exc


def open_private(local_path: str | os.PathLike[str]) -> BinaryIO:
    """``local_path`` opened for writing, truncated, created with mode 0600."""
    fd = os.open(local_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb")


TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tarfile's (and GNU tar's) default record size


def tar_archive(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar of plain files, each mode 0600 (see :func:`tar_pieces`)."""
    return b"".join(tar_pieces(files))


def tar_pieces(files: Mapping[str, bytes], chunk: int = 1 << 20) -> list[bytes | memoryview]:
    """The same bytes as ``tarfile`` writes for ``files`` (plain names, mode 0600, PAX format),
    as a list of pieces: headers, views of at most ``chunk`` bytes into each file's data (no
    copy), padding, the end-of-archive blocks. Raises ValueError for a name that is not a plain
    file name before anything is produced.
    """
    pieces: list[bytes | memoryview] = []
    written = 0
    for name, data in files.items():
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o600
        header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        view = memoryview(data)
        pieces += [header, *(view[at:at + chunk] for at in range(0, len(view), chunk))]
        padding = -len(data) % TAR_BLOCK
        pieces.append(bytes(padding))
        written += len(header) + len(data) + padding
    end = 2 * TAR_BLOCK
    pieces.append(bytes(end + -(written + end) % TAR_RECORD))
    return pieces
