"""The rest of a long answer body moved from the lab's socket to the client's in the kernel.

A body with a Content-Length that has :data:`SPLICE_AT` bytes or more left once its first
piece went out is moved by :class:`BodySplice` (at most :data:`MAX_SPLICES` at once:
:class:`SpliceBudget`): ``splice(2)`` from the lab's socket into a pipe, then from the pipe
into the client's socket, both non-blocking and driven by the event loop, so that no byte of
it is read into Python (bench/README.md, "Splicing long bodies"). Exactly the body's remaining
length is taken from the lab's socket; bytes the lab sent past it (waiting at the end, or an
urgent mark) mean its connection is not kept. TCP urgent data mid-body, which splice(2) never
passes, cuts the answer.

Both transports stay in charge of their sockets; while the body moves, the lab's transport
does not read (:meth:`asyncio.Transport.pause_reading`) and nothing is written through the
client's (its buffer was empty when the splice began, and the front writes nothing until the
answer ends). The event loop watches duplicates of the two file descriptors, since asyncio
refuses readers on a descriptor that a transport owns; they are closed when the splice ends,
and always before either transport closes its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import termios
from collections.abc import Callable

SPLICE_AT = 1024 * 1024  # body bytes left after the first piece for a splice to be worth it
PIPE_BYTES = 1024 * 1024  # what the pipe holds between the two sockets (the kernel may cap it)
MAX_SPLICES = 32  # at once, gateway-wide (SpliceBudget): half of fs.pipe-user-pages-soft
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SIOCATMARK = 0x8905  # (Linux: at TCP urgent data, which splice(2) does not pass)
_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 2) | getattr(os, "SPLICE_F_MOVE", 1)
AVAILABLE = hasattr(os, "splice")


def plain_socket(transport: asyncio.BaseTransport | None) -> socket.socket | None:
    """The TCP socket under ``transport`` if bytes may be spliced into or out of it: a plain
    (not TLS) socket transport that is not closing; else None."""
    if not AVAILABLE or transport is None or transport.is_closing() \
            or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return None
    return sock  # type: ignore[no-any-return]  # (asyncio's TransportSocket is socket-like)


class SpliceBudget:
    """How many splices may be under way at once, gateway-wide. Each holds a pipe of up to
    :data:`PIPE_BYTES` of the kernel's memory, charged to the gateway's unix user: past
    ``fs.pipe-user-pages-soft`` (64 MiB by default) every new pipe of that user gets 8 KiB,
    the pipes of the gateway's own Slurm and SSH commands too. Past the limit an answer goes
    through Python, as a short one does."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def available(self) -> bool:
        return self.used < self.limit


class BodySplice:
    """Moves ``length`` bytes from ``source`` to ``sink``, then calls ``done(None)``; on a
    failure of either side (the lab closing before the end, the client gone) ``done(exc)``.
    ``moved(n)`` is told of every ``n`` bytes that reached the client's socket. ``close()``
    stops it at any point (no callback); it is called by the owner before either socket is
    closed. The caller has paused the source transport's reading. Raises OSError, having
    left nothing open, if it cannot have its four descriptors (``EMFILE``: the caller carries
    on without it). It holds one of ``budget``'s places until :meth:`close` (the caller saw
    one available)."""

    def __init__(self, source: socket.socket, sink: socket.socket, length: int,
                 moved: Callable[[int], None], done: Callable[[Exception | None], None],
                 budget: SpliceBudget) -> None:
        self._loop = asyncio.get_running_loop()
        self._left, self._held = length, 0  # bytes not yet taken from the lab; in the pipe
        self._moved, self._done = moved, done
        opened: list[int] = []
        try:
            opened.append(os.dup(source.fileno()))
            opened.append(os.dup(sink.fileno()))
            opened.extend(os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError:
            for fd in opened:
                os.close(fd)
            raise
        self._source, self._sink, self._pipe_out, self._pipe_in = opened
        self._budget = budget
        budget.used += 1
        with contextlib.suppress(OSError):  # (past fs.pipe-max-size the default pipe works)
            fcntl.fcntl(self._pipe_in, _F_SETPIPE_SZ, PIPE_BYTES)
        self._reading = self._writing = False
        self._closed = False
        self.lab_sent_more = False  # at the end: bytes past the body were waiting
        self._read(True)

    def _read(self, on: bool) -> None:
        if on and not self._reading:
            self._loop.add_reader(self._source, self._readable)
        elif not on and self._reading:
            self._loop.remove_reader(self._source)
        self._reading = on

    def _write(self, on: bool) -> None:
        if on and not self._writing:
            self._loop.add_writer(self._sink, self._flush)
        elif not on and self._writing:
            self._loop.remove_writer(self._sink)
        self._writing = on

    def _readable(self) -> None:
        try:
            # (never more than the pipe holds: a length a lab announces may be past ssize_t)
            count = os.splice(self._source, self._pipe_in, min(self._left, PIPE_BYTES),
                              flags=_FLAGS)
        except BlockingIOError:
            if self._held:  # the pipe is full (or the lab's bytes not yet there): drain first
                self._read(False)
            elif _ioctl_int(self._source, _SIOCATMARK) > 0:
                # splice(2) stops for good at TCP urgent data (MSG_OOB) and says EAGAIN while
                # the socket stays readable: the loop would call this again and again.
                self._fail(ConnectionError("the lab sent TCP urgent data mid-body"))
            return
        except OSError as exc:
            self._fail(exc)
            return
        if count == 0:
            self._fail(ConnectionError("the lab closed its connection before the body's end"))
            return
        self._left -= count
        self._held += count
        if self._left == 0:
            self._read(False)
        self._flush()

    def _flush(self) -> None:
        while self._held:
            try:
                count = os.splice(self._pipe_out, self._sink, self._held, flags=_FLAGS)
            except BlockingIOError:
                self._write(True)
                return
            except OSError as exc:
                self._fail(exc)
                return
            self._held -= count
            self._moved(count)
            if self._closed:  # (moved() may have ended it: the answer was cut)
                return
        self._write(False)
        if self._left:
            self._read(True)
        else:
            # (FIONREAD counts only up to TCP urgent data: at its mark, it says 0)
            self.lab_sent_more = _waiting(self._source) != 0 \
                or _ioctl_int(self._source, _SIOCATMARK) != 0
            self.close()
            self._done(None)

    def _fail(self, exc: Exception) -> None:
        self.close()
        self._done(exc)

    def close(self) -> None:
        """Stop watching and close the duplicates and the pipe (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._read(False)
        self._write(False)
        for fd in (self._source, self._sink, self._pipe_out, self._pipe_in):
            os.close(fd)
        self._budget.used -= 1


def _waiting(fd: int) -> int:
    """Bytes waiting to be read on the socket ``fd`` (-1 if it cannot tell)."""
    return _ioctl_int(fd, termios.FIONREAD)


def _ioctl_int(fd: int, request: int) -> int:
    """The int that ioctl ``request`` answers on ``fd`` (-1 if it fails)."""
    try:
        answer = fcntl.ioctl(fd, request, b"\0\0\0\0")
    except OSError:
        return -1
    return int(struct.unpack("i", answer)[0])
