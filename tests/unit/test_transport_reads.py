"""Capped reads through both real transports: LocalTransport (empty command prefix: the gateway's
own account) and SSHTransport against an in-process asyncssh server that runs each command with
``/bin/sh -c`` on this machine, as OpenSSH would. Real files in tmp_path: regular files under and
over the cap, a symlink to a 4 GiB sparse file, to /dev/zero, a FIFO, a directory, a dangling
symlink, a symlink swapped under the reader; a hostile remote side that ignores the cap; the
gateway's peak memory while fetching a capped big file; and, over SSH, a user's login shell that
prints 64 MiB before every command (what run() keeps of a command's output is capped too)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from gateway.config import Config, SSHConfig
from gateway.errors import CommandFailed
from gateway.scheduler.slurm_output import MAX_JSON_BYTES
from gateway.transport import (
    CommandOutputTooLarge,
    NotARegularFile,
    RemoteFileMissing,
    RemoteFileRefused,
    RemoteFileTooLarge,
    Transport,
)
from gateway.transport.local import LocalTransport
from gateway.transport.process import run_command
from gateway.transport.ssh import (
    QUERY_STDOUT_LIMIT,
    STDERR_TAIL,
    USER_STDOUT_LIMIT,
    SSHTransport,
)

CAP = 4096
BIG = 4 << 30
SPARSE_END = b"the end of a 4 GiB sparse file"
FLOOD = 64 << 20  # what a user's login shell prints before each command (gigabytes, for real)


@dataclass
class Server:
    port: int
    known_hosts: Path
    key: Path
    hostile: bool = False  # answer every command with endless zeros instead
    login: str = ""  # shell text run before each command: the user's ~/.bashrc or ~/.ssh/rc
    children: list[asyncio.subprocess.Process] = field(default_factory=list)


async def _serve(server: Server, process: asyncssh.SSHServerProcess[bytes]) -> None:
    command = "exec cat /dev/zero" if server.hostile else server.login + (process.command or "")
    child = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", command, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    server.children.append(child)
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None

    async def feed(source: asyncssh.SSHReader[bytes], sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):  # the command exited without reading it all
            while chunk := await source.read(256 * 1024):
                sink.write(chunk)
                await sink.drain()
            sink.close()

    async def pump(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
        while not sink.channel.is_closing() and (chunk := await source.read(256 * 1024)):
            sink.write(chunk)
            await sink.drain()

    feeding = asyncio.ensure_future(feed(process.stdin, child.stdin))
    pumps = [asyncio.ensure_future(pump(child.stdout, process.stdout)),
             asyncio.ensure_future(pump(child.stderr, process.stderr))]
    try:
        await asyncio.gather(*pumps)
        process.exit(await child.wait())
    except (OSError, asyncssh.Error):
        pass  # the client went away mid-transfer
    finally:
        _kill(child)
        for task in (feeding, *pumps):
            task.cancel()
        await asyncio.gather(feeding, *pumps, return_exceptions=True)
        child.stdin.close()
        # Its pipes read to their end: one left paused (the client gone) would stay open
        # until garbage collection, after the test's event loop is closed.
        await asyncio.wait_for(asyncio.gather(child.stdout.read(), child.stderr.read()), 10)
        await child.wait()


def _kill(child: asyncio.subprocess.Process) -> None:
    """Kill ``child`` and what it started (the login shell's ``head``, say): its own session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[Server]:
    """An in-process SSH server on 127.0.0.1 (port 0) that accepts one generated key."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key = tmp_path / "alice_ed25519"
    client_key.write_private_key(str(key))
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
    server = Server(0, tmp_path / "known_hosts", key)
    listener = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=authorized,
        process_factory=lambda process: _serve(server, process), encoding=None)
    server.port = listener.sockets[0].getsockname()[1]
    server.known_hosts.write_text(
        f"[127.0.0.1]:{server.port} {host_key.export_public_key().decode()}")
    try:
        yield server
    finally:
        for child in server.children:
            _kill(child)
            await child.wait()
        listener.close()
        await listener.wait_closed()


@contextlib.asynccontextmanager
async def ssh_transport(config: Config, server: Server) -> AsyncIterator[SSHTransport]:
    ssh = SSHConfig(host="127.0.0.1", port=server.port, known_hosts=server.known_hosts,
                    keys={"alice": server.key}, query_user="alice")
    remote = SSHTransport(config.clusters[0].model_copy(update={"transport": "ssh", "ssh": ssh}))
    try:
        yield remote
    finally:
        await remote.close()


@pytest.fixture(params=["local", "ssh"])
async def transport(request: pytest.FixtureRequest, config: Config,
                    tmp_path: Path) -> AsyncIterator[Transport]:
    if request.param == "local":
        yield LocalTransport(config.clusters[0].model_copy(update={"command_prefix": []}))
        return
    async with serving(tmp_path) as server, ssh_transport(config, server) as remote:
        yield remote


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """``small`` (5 bytes), ``exact`` (the cap), ``over`` (cap + 1), ``big`` -> a 4 GiB sparse
    file ending in SPARSE_END, ``zero`` -> /dev/zero, ``fifo``, ``dir``, ``dangling``."""
    root = tmp_path / "files"
    root.mkdir()
    (root / "small").write_bytes(b"hello")
    (root / "exact").write_bytes(os.urandom(CAP))
    (root / "over").write_bytes(os.urandom(CAP + 1))
    with (root / "sparse").open("wb") as sparse:
        sparse.truncate(BIG - len(SPARSE_END))
        sparse.seek(0, os.SEEK_END)
        sparse.write(SPARSE_END)
    (root / "big").symlink_to(root / "sparse")
    (root / "zero").symlink_to("/dev/zero")
    os.mkfifo(root / "fifo")
    (root / "dir").mkdir()
    (root / "dangling").symlink_to(root / "nothing")
    return root


async def test_a_regular_file_within_the_cap_is_read_whole(
        transport: Transport, files: Path) -> None:
    for name in ("small", "exact"):
        data = await transport.read_file(str(files / name), user="alice", limit=CAP)
        assert data == (files / name).read_bytes()


async def test_a_file_over_the_cap_is_refused_naming_the_file_and_the_cap(
        transport: Transport, files: Path) -> None:
    for name in ("over", "big"):
        with pytest.raises(RemoteFileTooLarge) as caught:
            await transport.read_file(str(files / name), user="alice", limit=CAP)
        assert caught.value.detail == f"{files / name}: larger than the cap of 4 KiB (4096 bytes)"
        assert (caught.value.path, caught.value.limit) == (str(files / name), CAP)


async def test_a_tail_read_gives_the_last_bytes_even_of_a_4_gib_sparse_file(
        transport: Transport, files: Path) -> None:
    assert await transport.read_file(str(files / "small"), user="alice", limit=CAP,
                                     tail=True) == b"hello"
    over = (files / "over").read_bytes()
    assert await transport.read_file(str(files / "over"), user="alice", limit=CAP,
                                     tail=True) == over[-CAP:]
    tail = await transport.read_file(str(files / "big"), user="alice", limit=CAP, tail=True)
    assert len(tail) == CAP and tail.endswith(SPARSE_END) and not tail.strip(b"\0").strip(
        SPARSE_END)


async def test_a_window_read_gives_the_bytes_from_an_offset_up_to_the_cap(
        transport: Transport, files: Path) -> None:
    over = (files / "over").read_bytes()
    path = str(files / "over")
    assert await transport.read_file(path, user="alice", limit=CAP, offset=0) == over[:CAP]
    assert await transport.read_file(path, user="alice", limit=CAP, offset=CAP) == over[CAP:]
    assert await transport.read_file(path, user="alice", limit=10, offset=7) == over[7:17]
    assert await transport.read_file(path, user="alice", limit=CAP, offset=CAP + 1) == b""
    assert await transport.read_file(path, user="alice", limit=CAP, offset=10**12) == b""
    far = await transport.read_file(str(files / "big"), user="alice", limit=CAP,
                                    offset=BIG - len(SPARSE_END))
    assert far == SPARSE_END  # a window far into a 4 GiB file: tail seeks, nothing streams
    with pytest.raises(RemoteFileMissing):
        await transport.read_file(str(files / "dangling"), user="alice", limit=CAP, offset=0)
    with pytest.raises(NotARegularFile):
        await transport.read_file(str(files / "zero"), user="alice", limit=CAP, offset=0)


@pytest.mark.parametrize("name", ["zero", "fifo", "dir"])
@pytest.mark.parametrize("tail", [False, True])
async def test_what_is_not_a_regular_file_is_refused(
        transport: Transport, files: Path, name: str, tail: bool) -> None:
    with pytest.raises(NotARegularFile) as caught:
        await asyncio.wait_for(
            transport.read_file(str(files / name), user="alice", limit=CAP, tail=tail), 10)
    assert caught.value.detail.startswith(f"{files / name}: not a regular file")
    assert isinstance(caught.value, RemoteFileRefused)


async def test_a_missing_file_or_dangling_symlink_is_missing(
        transport: Transport, files: Path, tmp_path: Path) -> None:
    for name in ("dangling", "nothing", "-n"):
        with pytest.raises(RemoteFileMissing):
            await transport.read_file(str(files / name), user="alice", limit=CAP)
        with pytest.raises(RemoteFileMissing):
            await transport.fetch_to(str(files / name), tmp_path / "out", user="alice",
                                     limit=CAP)


async def test_a_path_is_never_shell_text(transport: Transport, tmp_path: Path) -> None:
    odd = tmp_path / "a 'b' $(touch pwned) `x` ;\n-c"
    odd.write_bytes(b"odd")
    assert await transport.read_file(str(odd), user="alice", limit=CAP) == b"odd"
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()


async def test_fetch_to_copies_within_the_cap_and_refuses_over_it(
        transport: Transport, files: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    assert await transport.fetch_to(str(files / "exact"), out, user="alice", limit=CAP) == CAP
    assert out.read_bytes() == (files / "exact").read_bytes()
    for name in ("over", "big"):
        with pytest.raises(RemoteFileTooLarge, match="larger than the cap of 4 KiB"):
            await transport.fetch_to(str(files / name), out, user="alice", limit=CAP)
        assert out.stat().st_size <= CAP + 1
    for name in ("zero", "fifo"):
        with pytest.raises(NotARegularFile):
            await asyncio.wait_for(
                transport.fetch_to(str(files / name), out, user="alice", limit=CAP), 10)


@pytest.fixture
def swapping(files: Path) -> Iterator[Path]:
    """A symlink that a thread keeps pointing at ``small`` and at /dev/zero, in turn."""
    link, stop = files / "swapping", threading.Event()
    link.symlink_to(files / "small")

    def swap() -> None:
        while not stop.is_set():
            for target in ("/dev/zero", str(files / "small")):
                (files / "next").symlink_to(target)
                (files / "next").replace(link)

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    yield link
    stop.set()
    thread.join()


async def test_a_file_swapped_under_the_reader_is_read_or_refused_never_more(
        transport: Transport, swapping: Path) -> None:
    outcomes = set()
    for _ in range(60):
        for tail in (False, True):
            try:
                data = await asyncio.wait_for(
                    transport.read_file(str(swapping), user="alice", limit=CAP, tail=tail), 10)
                assert data == b"hello"
                outcomes.add("read")
            except NotARegularFile:
                outcomes.add("refused")
    assert outcomes <= {"read", "refused"}


async def test_local_output_past_the_limit_is_cut_and_the_command_killed() -> None:
    result = await asyncio.wait_for(
        run_command(["cat", "/dev/zero"], timeout=30, stdout_limit=CAP), 10)
    assert result.truncated and result.stdout == bytes(CAP)


async def test_a_hostile_remote_side_is_stopped_at_the_cap(
        config: Config, files: Path, tmp_path: Path) -> None:
    async with serving(tmp_path) as server, ssh_transport(config, server) as remote:
        server.hostile = True  # endless zeros whatever the command
        with pytest.raises(RemoteFileTooLarge):
            await asyncio.wait_for(
                remote.read_file(str(files / "small"), user="alice", limit=CAP, tail=True), 10)
        out = tmp_path / "out.bin"
        with pytest.raises(RemoteFileTooLarge):
            await asyncio.wait_for(
                remote.fetch_to(str(files / "small"), out, user="alice", limit=1 << 20), 10)
        assert out.stat().st_size <= 1 << 20


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


async def test_fetch_to_of_a_capped_big_file_keeps_memory_flat(
        transport: Transport, files: Path, tmp_path: Path) -> None:
    limit = 64 << 20
    await transport.fetch_to(str(files / "small"), tmp_path / "warm", user="alice", limit=CAP)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _rss_kib("VmRSS")
    with pytest.raises(RemoteFileTooLarge):
        await transport.fetch_to(str(files / "big"), tmp_path / "out", user="alice", limit=limit)
    growth_mib = (_rss_kib("VmHWM") - before) / 1024
    print(f"peak RSS growth while fetching 64 MiB: {growth_mib:.1f} MiB")
    # SSH: the in-process server's pipe buffers and the channel window (16 MiB) count here too.
    assert growth_mib < 40, f"peak RSS grew {growth_mib:.0f} MiB while fetching 64 MiB"
    assert (tmp_path / "out").stat().st_size <= limit + 1


async def test_a_login_shell_flooding_stderr_leaves_only_its_tail(
        config: Config, files: Path, tmp_path: Path) -> None:
    async with serving(tmp_path) as server, ssh_transport(config, server) as remote:
        server.login = f"head -c {FLOOD} /dev/zero >&2; "
        result = await asyncio.wait_for(remote.run(
            ["sh", "-c", "cat; echo why >&2; exit 3"], user="alice", stdin=b"#!/bin/sh\n",
            check=False), 30)
        assert (result.returncode, result.stdout) == (3, b"#!/bin/sh\n")
        held = len(result.stderr.encode())
        assert held <= STDERR_TAIL, f"run() kept {held} bytes of what the login shell printed"
        assert result.stderr.endswith("\0why\n")
        assert await asyncio.wait_for(remote.read_file(
            str(files / "small"), user="alice", limit=CAP), 30) == b"hello"
        server.login += "echo 'no shell for you' >&2; exit 9; "
        with pytest.raises(CommandFailed) as caught:  # a read (streamed) keeps the tail too
            await asyncio.wait_for(remote.read_file(
                str(files / "small"), user="alice", limit=CAP), 30)
        held = len(caught.value.stderr.encode())
        assert held <= STDERR_TAIL, f"a read kept {held} bytes of what the login shell printed"
        assert caught.value.returncode == 9
        assert caught.value.stderr.endswith("\0no shell for you\n")


async def test_a_login_shell_flooding_stdout_stops_the_command_at_the_cap(
        config: Config, tmp_path: Path) -> None:
    async with serving(tmp_path) as server, ssh_transport(config, server) as remote:
        server.login = f"head -c {FLOOD} /dev/zero; "
        for check in (True, False):
            with pytest.raises(CommandOutputTooLarge) as caught:
                await asyncio.wait_for(remote.run(
                    ["mkdir", "-p", "--", str(tmp_path / "w")], user="alice", check=check), 30)
            assert caught.value.detail == ("mkdir printed more than the cap of 1 MiB (1048576 "
                                           "bytes) to stdout; stopped")
        server.login = ""
        for size in (USER_STDOUT_LIMIT, USER_STDOUT_LIMIT + 1):
            argv = ["head", "-c", str(size), "/dev/zero"]
            if size > USER_STDOUT_LIMIT:
                with pytest.raises(CommandOutputTooLarge):
                    await remote.run(argv, user="alice")
            else:
                assert (await remote.run(argv, user="alice")).stdout == bytes(size)
            # the gateway's own queries (squeue for every job) keep up to squeue --json's cap
            assert (await remote.run(argv, user=None)).stdout == bytes(size)
        assert QUERY_STDOUT_LIMIT >= MAX_JSON_BYTES
        done = await remote.run(["sh", "-c", "echo out; exit 3"], user="alice", check=False)
        assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", "")
