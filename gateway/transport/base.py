"""The transport contract every scheduler backend and connector goes through.

A transport runs a command as a given unix user on the cluster's login side and reads and writes
files there. The local transport does it with processes on this machine (through an admin-set
prefix such as ``sudo -n -u {unix_user} --``); the SSH transport over a pooled connection per
(cluster, unix user). Backends never know which one they have.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

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

    async def close(self) -> None:
        """Release connections; further calls may reconnect."""
        ...


class CommandTransport:
    """File transfer built on :meth:`run` alone, so every transport that can run a command moves
    files the same way: a whole job directory is one ``tar`` reading from stdin, a file is one
    ``cat`` (or ``tail -c``). Subclasses implement ``run`` and ``close``."""

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
        await self.run(["mkdir", "-p", "-m", "700", "--", directory], user=user)
        await self.run(
            ["tar", "-x", "-m", "--no-same-owner", "--no-overwrite-dir",
             "-C", directory, "-f", "-"],
            user=user,
            stdin=tar_archive(files),
        )

    async def read_file(self, path: str, *, user: str, tail_bytes: int | None = None) -> bytes:
        argv = ["tail", "-c", str(tail_bytes), "--", path] if tail_bytes else ["cat", "--", path]
        try:
            return (await self.run(argv, user=user)).stdout
        except CommandFailed as exc:
            if "No such file" in exc.stderr:
                raise RemoteFileMissing(exc.argv, exc.returncode, exc.stderr) from None
            raise

    async def close(self) -> None:
        return None


def tar_archive(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar of plain files, each mode 0600."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            if "/" in name or name in ("", ".", ".."):
                raise ValueError(f"not a plain file name: {name!r}")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
