"""The SSH transport: the gateway outside the cluster reaches its login host with asyncssh.

One connection per unix user, opened on first use and reused (pooled per (cluster, unix user):
each cluster has its own transport). Each user logs in with the key the admin configured for it;
the host key is checked against a pinned known_hosts file. Keepalives detect a dead link in
``keepalive_interval * keepalive_count_max`` seconds. A broken connection is dropped from the pool
and the call raises :class:`ClusterUnavailable`; the caller's retry opens a fresh one (the
submitter, poller and collector all retry with backoff).

Commands are argv lists joined by ``shlex.join`` — the one place where anything is quoted for
the remote shell — with bytes on stdin. Each runs on an exec channel of its own, through one
function (:meth:`SSHTransport._exec`), and what the gateway keeps of its output is capped: the
user's login shell runs first (``~/.bashrc``, ``~/.ssh/rc``) and may print anything. Stdout past
its cap stops the command (:class:`CommandOutputTooLarge`); of stderr only the tail is kept.

Files move over an exec channel of their own with a large window and packets, in pieces of
``STREAM_CHUNK`` bytes as the link takes them (``tar -x`` reading stdin, the read script writing
stdout): nothing is collected into one buffer on the way, and a download to a local file keeps
memory flat. Every read is counted here against its cap: the user's login shell runs the remote
side (its rc files, its PATH), so nothing it sends is trusted to respect the cap.
This measured faster than SFTP here (bench/ssh_transfer.py).

Port forwards (a lab's server on its node, reached from the gateway) are local forwards on
127.0.0.1 with a port the kernel picks, one per (unix user, host, port), opened on that user's
pooled connection, so the forwarded connection is made *as that user*, from the login host: it
can reach nothing the user couldn't. A forward whose connection has closed is re-opened on the
fresh one the next time it is asked for, so a dropped link heals on the next request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import asyncssh

from ..config import ClusterConfig, SSHConfig
from ..errors import ClusterUnavailable, CommandFailed, CommandTimeout, ConfigError
from .base import (
    CommandOutputTooLarge,
    CommandResult,
    CommandTransport,
    capped_sink,
    mkdir_argv,
    open_private,
    read_argv,
    read_error,
    tar_pieces,
    untar_argv,
)

log = logging.getLogger(__name__)

# File transfer channels: receive window, largest packet, piece size (bench/ssh_transfer.py).
STREAM_WINDOW = 16 * 1024 * 1024
STREAM_PACKET = 256 * 1024
STREAM_CHUNK = 1024 * 1024

# What run() keeps of a command's output. Stdout: as a user, the largest answer parsed is the
# stager's report (64 KiB); sbatch's job id, stat, ssh-keyscan and id are a line or a few.
# The gateway's own queries (squeue, sacct, sinfo) list every user's jobs: squeue --json's own
# cap (MAX_JSON_BYTES in gateway/scheduler/slurm_output.py). Stderr only goes into errors.
USER_STDOUT_LIMIT = 1 << 20
QUERY_STDOUT_LIMIT = 256 << 20
STDERR_TAIL = 64 << 10


class HostKeyRejected(ClusterUnavailable):
    type_slug = "host-key-rejected"
    title = "SSH host key rejected"


class _Ended(NamedTuple):
    status: int  # the exit status; -1 for a command ended by a signal
    stderr: str  # its last STDERR_TAIL bytes
    received: int  # stdout bytes handed to the sink


@dataclass
class _Forward:
    connection: asyncssh.SSHClientConnection
    listener: asyncssh.SSHListener


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
        self._forwards: dict[tuple[str, str, int], _Forward] = {}
        self._forward_locks: dict[tuple[str, str, int], asyncio.Lock] = {}

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

    @contextmanager
    def _link_errors(self, user: str, connection: asyncssh.SSHClientConnection,
                     argv: Sequence[str], limit: float) -> Iterator[None]:
        """Map what a broken or wedged link raises inside the block: the connection is dropped
        from the pool (the next call opens a fresh one) and the caller gets CommandTimeout or
        ClusterUnavailable."""
        try:
            yield
        except TimeoutError:
            self._drop(user, connection)
            raise CommandTimeout(argv, limit) from None
        except (OSError, asyncssh.Error) as exc:
            self._drop(user, connection)
            raise ClusterUnavailable(f"SSH to {self._where()} as {user} failed: "
                                     f"{str(exc) or type(exc).__name__}") from exc

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
        """As :meth:`Transport.run`; ``timeout`` bounds the whole command. Stdout past
        :data:`USER_STDOUT_LIMIT` bytes (:data:`QUERY_STDOUT_LIMIT` for the gateway's own
        queries, ``user`` None) raises :class:`CommandOutputTooLarge`, with or without
        ``check``, and the channel is closed; of stderr only the last :data:`STDERR_TAIL` bytes
        are kept. A channel closed without an exit status raises ClusterUnavailable."""
        cap = QUERY_STDOUT_LIMIT if user is None else USER_STDOUT_LIMIT
        stdout = bytearray()
        ended = await self._exec(argv, user=user or self._ssh.query_user,
                                 pieces=(stdin,) if stdin else (),
                                 sink=_keep_upto(stdout, argv, cap), limit=timeout or self._timeout)
        if check and ended.status != 0:
            raise CommandFailed(argv, ended.status, ended.stderr)
        return CommandResult(argv=list(argv), returncode=ended.status, stdout=bytes(stdout),
                             stderr=ended.stderr)

    async def put_files(self, directory: str, files: Mapping[str, bytes], *, user: str) -> None:
        """As :meth:`Transport.put_files`; the archive streams to ``tar`` piece by piece."""
        pieces = tar_pieces(files, STREAM_CHUNK)
        await self.run(mkdir_argv(directory), user=user)
        await self._stream(untar_argv(directory), user=user, pieces=pieces)

    async def read_file(self, path: str, *, user: str, limit: int, tail: bool = False,
                        offset: int | None = None) -> bytes:
        """As :meth:`Transport.read_file`, streamed and counted: the transfer stops (and the
        channel closes) at the first chunk past ``limit``, whatever the remote side sends."""
        buffer = bytearray()
        await self._read(read_argv(path, limit, tail, offset), path, limit, user, buffer.extend)
        return bytes(buffer)

    async def fetch_to(self, path: str, local_path: str | os.PathLike[str], *, user: str,
                       limit: int) -> int:
        """As :meth:`Transport.fetch_to`: each chunk is counted, then written to the file as it
        arrives; the transfer stops at the first chunk past ``limit``."""
        with open_private(local_path) as out:
            return await self._read(read_argv(path, limit, False), path, limit, user, out.write)

    async def _read(self, argv: list[str], path: str, limit: int, user: str,
                    sink: Callable[[bytes], object]) -> int:
        try:
            return await self._stream(argv, user=user, sink=capped_sink(sink, argv, path, limit))
        except CommandFailed as exc:
            raise read_error(exc, path) from None

    async def _stream(
        self,
        argv: Sequence[str],
        *,
        user: str,
        pieces: Iterable[bytes | memoryview] = (),
        sink: Callable[[bytes], object] | None = None,
    ) -> int:
        """Run ``argv`` as ``user`` for a file transfer (:meth:`_exec` with a large window and
        packets): write ``pieces`` to its stdin, hand its stdout to ``sink`` (dropped without
        one). Returns the number of stdout bytes. The command timeout bounds every stall
        (opening the channel, each piece, each chunk, the exit status), not the whole
        transfer. Errors as :meth:`run` with ``check``."""
        ended = await self._exec(argv, user=user, pieces=pieces, sink=sink, limit=self._timeout,
                                 bulk=True)
        if ended.status != 0:
            raise CommandFailed(argv, ended.status, ended.stderr)
        return ended.received

    async def _exec(
        self,
        argv: Sequence[str],
        *,
        user: str,
        pieces: Iterable[bytes | memoryview],
        sink: Callable[[bytes], object] | None,
        limit: float,
        bulk: bool = False,
    ) -> _Ended:
        """The one place a command runs: ``argv`` as ``user`` on an exec channel of its own.
        ``pieces`` go to its stdin, then EOF; its stdout goes to ``sink`` chunk by chunk as it
        arrives (a sink that raises stops the command: the error propagates); its stderr is
        read meanwhile, only the last :data:`STDERR_TAIL` bytes kept. The channel is closed
        however it ends.

        ``limit`` seconds bound the whole command, or with ``bulk`` (a file transfer: a large
        window and packets) each stall. Past it: :class:`CommandTimeout`; a broken link, or a
        channel closed without an exit status: ClusterUnavailable (the connection is dropped
        from the pool either way)."""
        connection = await self.connection(user)
        channel = {"window": STREAM_WINDOW, "max_pktsize": STREAM_PACKET} if bulk else {}
        with self._link_errors(user, connection, argv, limit):
            async with asyncio.timeout(limit) as deadline:
                process = await connection.create_process(
                    remote_command(argv), encoding=None, **channel)
                errors = asyncio.ensure_future(_tail(process.stderr, STDERR_TAIL))
                errors.add_done_callback(_settled)
                try:
                    received = await _pump(process, pieces, sink, deadline if bulk else None,
                                           limit)
                    stderr = await errors
                    await process.wait_closed()
                finally:
                    errors.cancel()
                    process.close()
        if process.exit_status is None and process.exit_signal is None:
            self._drop(user, connection)  # closed without an exit status: the link went
            raise ClusterUnavailable(f"SSH to {self._where()} as {user} closed mid-command")
        status = process.exit_status if process.exit_status is not None else -1
        return _Ended(status, stderr.decode(errors="replace"), received)

    async def forward(self, host: str, port: int, *, user: str) -> tuple[str, int]:
        """As :meth:`Transport.forward`: a local forward on ``user``'s pooled connection."""
        key = (user, host, port)
        async with self._forward_locks.setdefault(key, asyncio.Lock()):
            connection = await self.connection(user)
            forward = self._forwards.get(key)
            if forward is None or forward.connection is not connection:
                if forward is not None:
                    forward.listener.close()
                try:
                    listener = await connection.forward_local_port("127.0.0.1", 0, host, port)
                except (OSError, asyncssh.Error) as exc:
                    raise ClusterUnavailable(f"cannot forward to {host}:{port}: {exc}") from exc
                forward = self._forwards[key] = _Forward(connection, listener)
                log.info("forward to %s:%s as %s on 127.0.0.1:%s", host, port, user,
                         listener.get_port())
            return "127.0.0.1", forward.listener.get_port()

    def retain_forwards(self, keep: set[tuple[str, str, int]]) -> None:
        """As :meth:`Transport.retain_forwards`: an ended lab's local port stops listening."""
        for key in [k for k in self._forwards if k not in keep]:
            self._forwards.pop(key).listener.close()
            self._forward_locks.pop(key, None)

    async def close(self) -> None:
        self.retain_forwards(set())
        for user, connection in list(self._pool.items()):
            self._drop(user, connection)


async def _pump(
    process: asyncssh.SSHClientProcess[bytes],
    pieces: Iterable[bytes | memoryview],
    sink: Callable[[bytes], object] | None,
    deadline: asyncio.Timeout | None,
    limit: float,
) -> int:
    """Feed ``pieces`` to ``process`` then read its stdout to EOF into ``sink``, moving
    ``deadline`` (if any) ``limit`` seconds ahead after each step; returns the bytes read. A
    command that exits without reading all of its input is left to report its own exit
    status."""
    loop = asyncio.get_running_loop()

    def progress() -> None:
        if deadline is not None:
            deadline.reschedule(loop.time() + limit)

    try:
        for piece in pieces:
            process.stdin.write(piece)  # type: ignore[arg-type]  # asyncssh takes any buffer
            await process.stdin.drain()
            progress()
        process.stdin.write_eof()
    except BrokenPipeError:
        if process.exit_status is None and process.exit_signal is None:
            raise  # the link broke, not the command
    received = 0
    while chunk := await process.stdout.read(STREAM_CHUNK):
        if sink is not None:
            sink(chunk)
        received += len(chunk)
        progress()
    return received


async def _tail(stream: asyncssh.SSHReader[bytes], size: int) -> bytes:
    """The last ``size`` bytes of ``stream`` (``size`` > 0), read to its end; what comes
    before is dropped as it arrives."""
    kept = bytearray()
    while chunk := await stream.read(STREAM_CHUNK):
        kept += chunk
        if len(kept) > size:
            del kept[:len(kept) - size]
    return bytes(kept)


def _settled(task: asyncio.Future[bytes]) -> None:
    """Retrieve a finished stderr reader's error, if any, so that asyncio does not log it: a
    broken link is reported by the stdout side, and a reader cancelled once the command has
    ended or failed has nothing to report."""
    if not task.cancelled():
        task.exception()


def _keep_upto(buffer: bytearray, argv: Sequence[str], limit: int) -> Callable[[bytes], None]:
    """A sink appending to ``buffer`` that raises :class:`CommandOutputTooLarge` instead of
    taking it past ``limit`` bytes (``buffer`` then holds at most ``limit``)."""

    def keep(chunk: bytes) -> None:
        if len(buffer) + len(chunk) > limit:
            raise CommandOutputTooLarge(argv, limit)
        buffer.extend(chunk)

    return keep
