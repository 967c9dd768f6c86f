"""A client's connection to the gateway's listening socket, as :mod:`.front` builds on it:
what it has sent and not yet used, the header and body timeouts, flow control on its side, the
hand-over to aiohttp, and how it ends (closed, or lingering while the client still sends).

:class:`ClientConnection` knows nothing of requests. A subclass reads :attr:`_buffer` in
:meth:`_advance` (called after each read), says when a head is awaited (``_idle_since``, the
time since which the header timeout counts; None while a request is served) and when body
bytes are owed (:meth:`_body_clock`), hears of the client's end of sending in
:meth:`_client_eof`, and ends a request whose body stalled in :meth:`_body_timed_out`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from .closing import close_unless_stalled

# Bytes queued for a client before the connection asks not to be written to (pause_writing):
# a big download keeps flowing while the event loop turns, and a slow client holds at most
# about this much of it here.
WRITE_BUFFER = 512 * 1024
# Seconds a connection closed after an answer waits for the client to stop sending a request
# body nobody reads (a reset at once would destroy the answer in the client's receive buffer).
LINGER = 5.0


class ClientConnection(asyncio.Protocol):
    """One client connection until it ends or is handed over to aiohttp (``fallback``)."""

    def __init__(self, fallback: Callable[[], asyncio.Protocol], header_timeout: float,
                 body_timeout: float) -> None:
        self._fallback = fallback
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._buffer = bytearray()  # what the client sent that is not used yet
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # None while a request is being served
        self._body_since: float | None = None  # the last body bytes, while more are owed
        self._eof = False  # the client shut its side
        self._lingering = False  # our side shut; what the client still sends is dropped
        self._reading_paused = False
        self._writing_paused = False

    # -- what a subclass does -------------------------------------------------------------------

    def _advance(self) -> None:
        """Use what :attr:`_buffer` holds now."""
        raise NotImplementedError

    def _client_eof(self) -> None:
        """The client shut its side (the connection stays half-open until closed here)."""
        raise NotImplementedError

    def _body_timed_out(self) -> None:
        """Nothing of the body the client owes came for ``body_timeout`` s."""
        raise NotImplementedError

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=WRITE_BUFFER)
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if peer else None
        self._idle_since = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(self._header_timeout,
                                                            self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        self._buffer += data
        self._advance()

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._lingering:
            self._close()
        else:
            self._client_eof()
        return True  # half-open: a pipelined answer may still be going out

    # -- writing and ending ---------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        """Close once the answers are sent; a client that stops reading them for
        ``body_timeout`` s is cut off (:mod:`.closing`)."""
        if self._transport is not None:
            close_unless_stalled(self._transport, self._body_timeout)

    def _linger(self) -> None:
        """Shut our side after the answer, and drop what the client still sends until it
        closes or LINGER s pass (then close)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._lingering = True
        self._buffer.clear()
        transport.write_eof()
        self._resume_reading()
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(LINGER, self._close)

    def _hand_over(self) -> None:
        """aiohttp serves this connection from the first byte of :attr:`_buffer` on."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._cancel_timer()
        handler = self._fallback()
        handler.connection_made(transport)
        transport.set_protocol(handler)
        self._transport = None
        if self._writing_paused:
            handler.pause_writing()
        if self._reading_paused:
            transport.resume_reading()
        if self._buffer:
            handler.data_received(bytes(self._buffer))
            self._buffer.clear()
        if self._eof:
            handler.eof_received()

    # -- the header timeout and reading ---------------------------------------------------------

    def _check_idle(self) -> None:
        """The header timeout: close a connection that has sent no complete head for
        ``header_timeout`` s since it opened or since its last answer; and the body timeout
        (:meth:`_body_clock`). One timer per connection, moved on only when it fires (nothing
        to do per request or per read)."""
        self._timer = None
        if self._transport is None:
            return
        now = time.monotonic()
        waited = now - self._idle_since if self._idle_since is not None else 0.0
        if waited >= self._header_timeout:
            self._close()
            return
        wait = self._header_timeout - waited
        if self._body_since is not None:
            stalled = now - self._body_since
            if stalled >= self._body_timeout:
                self._body_since = None
                self._body_timed_out()
                return
            wait = min(wait, self._body_timeout - stalled)
        self._timer = asyncio.get_running_loop().call_later(wait, self._check_idle)

    def _body_clock(self, owed: bool, *, read: bool = False) -> None:
        """The body timeout runs while ``owed`` (the client owes bytes of a body and nothing
        on the gateway's side holds them up), from when it started or from the last ``read``
        of body bytes: it is for a stall, not for the whole body. Stopped otherwise."""
        if not owed:
            self._body_since = None
            return
        started = self._body_since is None
        if started or read:
            self._body_since = time.monotonic()
        if started and self._transport is not None and not self._lingering:
            loop = asyncio.get_running_loop()
            timer = self._timer
            if timer is None or timer.when() > loop.time() + self._body_timeout:
                self._cancel_timer()  # it would be due after the body's deadline
                self._timer = loop.call_later(self._body_timeout, self._check_idle)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
