"""The one function that runs a local command: argv, bytes on stdin, a timeout, a rich error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import BinaryIO

from ..errors import CommandFailed, CommandTimeout
from .base import CommandResult

log = logging.getLogger(__name__)
READ_CHUNK = 256 * 1024
DRAIN_TIMEOUT = 5.0  # seconds to read a killed process's pipes to their end


async def run_command(
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    timeout: float,
    check: bool = True,
    stdout_to: BinaryIO | None = None,
    stdout_limit: int | None = None,
) -> CommandResult:
    """Run ``argv`` (never through a shell) and return its exit status and output.

    ``stdin`` is written to the process and closed (scripts travel this way, never in argv).
    On timeout the process is killed and :class:`CommandTimeout` raised. With ``check`` a non-zero
    exit raises :class:`CommandFailed` carrying argv, status and stderr; a missing executable raises
    CommandFailed with ``returncode=None``. With ``stdout_to`` the process writes its stdout
    straight into that file (nothing passes through this process; ``stdout`` is then empty).
    With ``stdout_limit`` (and no ``stdin``) at most that many bytes of stdout are kept: once
    more arrives the process is killed, the result is ``truncated`` and its status not checked.
    """
    started = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=stdout_to if stdout_to is not None else asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise CommandFailed(argv, None, str(exc)) from exc
    try:
        stdout, stderr, truncated = await asyncio.wait_for(
            _communicate(process, stdin, stdout_limit), timeout)
    except TimeoutError:
        await _kill(process)
        raise CommandTimeout(argv, timeout) from None
    except asyncio.CancelledError:
        await _kill(process)
        raise
    result = CommandResult(
        argv=list(argv),
        returncode=process.returncode if process.returncode is not None else -1,
        stdout=stdout or b"",
        stderr=stderr.decode(errors="replace"),
        truncated=truncated,
    )
    log.debug("ran %s -> %s in %.3fs", argv[0], result.returncode, time.monotonic() - started)
    if check and result.returncode != 0 and not truncated:
        raise CommandFailed(argv, result.returncode, result.stderr)
    return result


async def _communicate(
    process: asyncio.subprocess.Process, stdin: bytes | None, stdout_limit: int | None
) -> tuple[bytes, bytes, bool]:
    """``(stdout, stderr, truncated)`` of ``process`` once it ends: all of both, or with
    ``stdout_limit`` stdout read only until more than that arrives (then the process is
    killed and ``truncated`` is True), so memory never holds more than the limit."""
    if stdout_limit is None or process.stdout is None or process.stderr is None:
        stdout, stderr = await process.communicate(stdin)
        return stdout or b"", stderr or b"", False
    assert stdin is None, "stdout_limit is for commands without input"
    stderr_read = asyncio.ensure_future(process.stderr.read())
    try:
        stdout = await _read_upto(process.stdout, stdout_limit + 1)
        if len(stdout) > stdout_limit:
            stderr_read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stderr_read  # unwound: _kill may read stderr now
            await _kill(process)
            return stdout[:stdout_limit], b"", True
        stderr = await stderr_read
        await process.wait()
        return stdout, stderr, False
    finally:
        stderr_read.cancel()


async def _read_upto(stream: asyncio.StreamReader, size: int) -> bytes:
    """At most ``size`` bytes of ``stream``: fewer only at its end."""
    chunks, received = [], 0
    while received < size and (chunk := await stream.read(min(READ_CHUNK, size - received))):
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(READ_CHUNK):
        pass


async def _kill(process: asyncio.subprocess.Process) -> None:
    """Kill ``process`` and its process group (its own session: see ``start_new_session``),
    so that nothing it started keeps running or holding its pipes; then wait for it.

    What is left in its pipes is read and dropped first (for at most DRAIN_TIMEOUT): before
    Python 3.12, ``Process.wait`` returns only once every pipe has reached its end, and a pipe
    whose reading was paused (its buffer full, nobody reading) never does.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await asyncio.sleep(0)  # let reads cancelled by our caller unwind before we read
    drains = [_discard(stream) for stream in (process.stdout, process.stderr) if stream]
    with contextlib.suppress(TimeoutError, RuntimeError):
        await asyncio.wait_for(asyncio.gather(*drains), DRAIN_TIMEOUT)
    await process.wait()
