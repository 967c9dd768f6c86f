"""The local transport: the gateway runs on a login node and reaches Slurm with local processes."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from ..config import ClusterConfig
from ..errors import CommandFailed
from .base import CommandResult, RemoteFileMissing
from .process import run_command


class LocalTransport:
    """Runs each command as the job's unix user through the cluster's ``command_prefix``.

    With an empty prefix every command runs as the gateway's own account (a single-user gateway).
    Files are read and written by commands run the same way, so they are owned by, and only
    readable by, the job's user, exactly as they would be over SSH.
    """

    def __init__(self, cluster: ClusterConfig) -> None:
        self._prefix = cluster.command_prefix
        self._timeout = cluster.command_timeout

    def _as_user(self, argv: Sequence[str], user: str) -> list[str]:
        return [part.replace("{unix_user}", user) for part in self._prefix] + list(argv)

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str,
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

    async def make_private_dir(self, path: str, *, user: str) -> None:
        await self.run(["mkdir", "-p", posixpath.dirname(path)], user=user)
        await self.run(["mkdir", "-p", "-m", "700", path], user=user)

    async def write_file(self, path: str, data: bytes, *, user: str) -> None:
        # `dd of=` truncates and writes; umask 077 in the prefix environment is not guaranteed,
        # so the mode is set explicitly afterwards.
        await self.run(["dd", f"of={path}", "status=none"], user=user, stdin=data)
        await self.run(["chmod", "600", path], user=user)

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
