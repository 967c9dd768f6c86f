"""The transport contract every scheduler backend and connector goes through.

A transport runs a command as a given unix user on the cluster's login side and reads and writes
files there. The local transport does it with processes on this machine (through an admin-set
prefix such as ``sudo -n -u {unix_user} --``); the SSH transport over a pooled connection per
(cluster, unix user). Backends never know which one they have.
"""

from __future__ import annotations

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
