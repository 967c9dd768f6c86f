"""The local transport: the gateway runs on a login node and reaches Slurm with local processes."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping, Sequence

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

    async def put_files(self, directory: str, files: Mapping[str, bytes], *, user: str) -> None:
        # Two processes whatever the number of files: mkdir, then tar reading from stdin.
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
