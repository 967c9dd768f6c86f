"""The local transport: the gateway runs on a login node and reaches Slurm with local processes."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..config import ClusterConfig
from ..errors import CommandFailed
from .base import (
    CommandResult,
    CommandTransport,
    RemoteFileTooLarge,
    open_private,
    read_argv,
    read_error,
)
from .process import run_command


class LocalTransport(CommandTransport):
    """Runs each command as the job's unix user through the cluster's ``command_prefix``.

    With an empty prefix every command runs as the gateway's own account (a single-user gateway).
    Files are read and written by commands run the same way, so they are owned by, and only
    readable by, the job's user, exactly as they would be over SSH.
    """

    def __init__(self, cluster: ClusterConfig) -> None:
        self._prefix = cluster.command_prefix
        self._timeout = cluster.command_timeout

    def _as_user(self, argv: Sequence[str], user: str | None) -> list[str]:
        if user is None:
            return list(argv)
        return [part.replace("{unix_user}", user) for part in self._prefix] + list(argv)

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        return await run_command(
            self._as_user(argv, user),
            stdin=stdin,
            timeout=timeout or self._timeout,
            check=check,
        )

    async def read_file(self, path: str, *, user: str, limit: int, tail: bool = False,
                        offset: int | None = None) -> bytes:
        """As :meth:`Transport.read_file`: the read command's output is counted as it arrives
        and the command killed as soon as there is more than ``limit`` bytes of it."""
        argv = self._as_user(read_argv(path, limit, tail, offset), user)
        try:
            result = await run_command(argv, timeout=self._timeout, stdout_limit=limit)
        except CommandFailed as exc:
            raise read_error(exc, path) from None
        if result.truncated:
            raise RemoteFileTooLarge(argv, path, limit)
        return result.stdout

    async def fetch_to(self, path: str, local_path: str | os.PathLike[str], *, user: str,
                       limit: int) -> int:
        """As :meth:`Transport.fetch_to`: the read command as ``user`` writes straight into the
        local file, within the command timeout. Nothing passes through the gateway, so the
        bound is the command's own ``head -c`` (run through the admin's prefix, never the
        user's shell or PATH); the size is checked once it is done."""
        argv = self._as_user(read_argv(path, limit, False), user)
        with open_private(local_path) as out:
            try:
                await run_command(argv, timeout=self._timeout, stdout_to=out)
            except CommandFailed as exc:
                raise read_error(exc, path) from None
            size = os.fstat(out.fileno()).st_size
        if size > limit:
            raise RemoteFileTooLarge(argv, path, limit)
        return size
