"""The SSH transport: the gateway outside the cluster reaches its login host with asyncssh.

One connection per unix user, opened on first use and reused (pooled per (cluster, unix user):
each cluster has its own transport). Each user logs in with the key the admin configured for it;
the host key is checked against a pinned known_hosts file. Keepalives detect a dead link in
``keepalive_interval * keepalive_count_max`` seconds. A broken connection is dropped from the pool
and the call raises :class:`ClusterUnavailable`; the caller's retry opens a fresh one (the
submitter, poller and collector all retry with backoff).

Commands are argv lists joined by ``shlex.join`` — the one place where anything is quoted for
the remote shell — with bytes on stdin.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Sequence

import asyncssh

from ..config import ClusterConfig, SSHConfig
from ..errors import ClusterUnavailable, CommandFailed, CommandTimeout, ConfigError
from .base import CommandResult, CommandTransport

log = logging.getLogger(__name__)


class HostKeyRejected(ClusterUnavailable):
    type_slug = "host-key-rejected"
    title = "SSH host key rejected"


def remote_command(argv: Sequence[str]) -> str:
    """The command line the remote shell runs for ``argv`` (each word quoted, nothing expanded)."""
    return shlex.join(argv)


class SSHTransport(CommandTransport):
    def __init__(self, cluster: ClusterConfig) -> None:
        if cluster.ssh is None:
            raise ConfigError(f"cluster {cluster.name}: transport ssh needs [clusters.ssh]")
        self._ssh: SSHConfig = cluster.ssh
        self._cluster = cluster.name
        self._timeout = cluster.command_timeout
        self._pool: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _where(self) -> str:
        return f"{self._ssh.host}:{self._ssh.port}"

    async def _connect(self, user: str) -> asyncssh.SSHClientConnection:
        key = self._ssh.keys.get(user)
        if key is None:
            raise ConfigError(f"cluster {self._cluster}: no SSH key configured for {user!r}")
        known_hosts = str(self._ssh.known_hosts) if self._ssh.verify_host_key else None
        if not self._ssh.verify_host_key:
            log.warning("cluster %s: SSH host key verification is OFF by config", self._cluster)
        try:
            return await asyncssh.connect(
                self._ssh.host, self._ssh.port, username=user, client_keys=[str(key)],
                known_hosts=known_hosts, agent_path=None, config=None,
                **({"encryption_algs": self._ssh.ciphers} if self._ssh.ciphers else {}),
                connect_timeout=self._ssh.connect_timeout,
                keepalive_interval=self._ssh.keepalive_interval,
                keepalive_count_max=self._ssh.keepalive_count_max,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyRejected(
                f"the host key of {self._where()} is unknown or changed (pinned in "
                f"{self._ssh.known_hosts}); refusing to connect: {exc.reason}") from exc
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise ClusterUnavailable(f"cannot log in to {self._where()} as {user}: {exc}") from exc

    async def connection(self, user: str) -> asyncssh.SSHClientConnection:
        """The pooled connection for ``user``, opened (once, even under concurrency) if needed."""
        lock = self._locks.setdefault(user, asyncio.Lock())
        async with lock:
            connection = self._pool.get(user)
            if connection is None or connection.is_closed():
                connection = self._pool[user] = await self._connect(user)
            return connection

    def _drop(self, user: str, connection: asyncssh.SSHClientConnection) -> None:
        if self._pool.get(user) is connection:
            del self._pool[user]
        connection.abort()

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        login = user or self._ssh.query_user
        limit = timeout or self._timeout
        connection = await self.connection(login)
        try:
            completed = await asyncio.wait_for(
                connection.run(remote_command(argv), input=stdin, encoding=None, check=False),
                limit)
        except TimeoutError:
            # The channel may be wedged on a dead link: start afresh next time.
            self._drop(login, connection)
            raise CommandTimeout(argv, limit) from None
        except (OSError, asyncssh.Error) as exc:
            self._drop(login, connection)
            raise ClusterUnavailable(f"SSH to {self._where()} as {login} failed: {exc}") from exc
        status = completed.exit_status if completed.exit_status is not None else -1
        result = CommandResult(
            argv=list(argv), returncode=status, stdout=_as_bytes(completed.stdout),
            stderr=_as_bytes(completed.stderr).decode(errors="replace"),
        )
        if check and status != 0:
            raise CommandFailed(argv, status, result.stderr)
        return result

    async def close(self) -> None:
        for user, connection in list(self._pool.items()):
            self._drop(user, connection)


def _as_bytes(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else bytes(value)
