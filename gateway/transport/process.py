"""The one function that runs a local command: argv, bytes on stdin, a timeout, a rich error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import BinaryIO

from ..errors import CommandFailed, CommandTimeout
from .base import CommandResult

log = logging.getLogger(__name__)


async def run_command(
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    timeout: float,
    check: bool = True,
    stdout_to: BinaryIO | None = None,
) -> CommandResult:
    """Run ``argv`` (never through a shell) and return its exit status and output.

    ``stdin`` is written to the process and closed (scripts travel this way, never in argv).
    On timeout the process is killed and :class:`CommandTimeout` raised. With ``check`` a non-zero
    exit raises :class:`CommandFailed` carrying argv, status and stderr; a missing executable raises
    CommandFailed with ``returncode=None``. With ``stdout_to`` the process writes its stdout
    straight into that file (nothing passes through this process; ``stdout`` is then empty).
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
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), timeout)
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
    )
    log.debug("ran %s -> %s in %.3fs", argv[0], result.returncode, time.monotonic() - started)
    if check and result.returncode != 0:
        raise CommandFailed(argv, result.returncode, result.stderr)
    return result


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
