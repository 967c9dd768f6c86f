"""The local transport: the gateway runs on a login node and reaches Slurm with local processes."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import ClusterConfig
from .base import CommandResult, CommandTransport
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

