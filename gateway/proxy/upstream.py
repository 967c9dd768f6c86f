"""Raw HTTP/1.1 connections to labs' servers, proven and pooled, for the proxy's fast path.

A :class:`UpstreamConnection` is an asyncio protocol over a socket whose server has proved it
is the lab's own (:func:`.identity.open_proven`). It sends what it is given as it is, and
parses what comes back with llhttp (httptools): one response at a time, handed to the
:class:`Exchange` being served through callbacks (head, body pieces, end), or, after a
``101 Switching Protocols``, every byte as it comes (a WebSocket relayed as bytes).

Connections are kept between requests by :class:`.pool.UpstreamPool`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Literal, Protocol

import httptools

from .closing import close_unless_stalled
from .splice import SPLICE_AT, BodySplice, SpliceBudget, plain_socket

log = logging.getLogger(__name__)
# What a lab may send of one answer besides its body (status line, headers, chunk framing,
# trailers, interim answers): counted on the bytes fed to the parser, since llhttp gathers a
# header's pieces before it hands the header over.
MAX_RESPONSE_HEAD = 64 * 1024
CHUNK_FRAMING = 32  # bytes of framing allowed per chunk on top of MAX_RESPONSE_HEAD
MAX_RESPONSE_HEADERS = 256
HEADER_LINE_EXTRA = 4  # a header line's bytes besides its name and value: ": " and CRLF
_FRAMING_NAME_LENGTHS = (len(b"content-length"), len(b"transfer-encoding"))

# How an answer's body ends: it has none (HEAD, 1xx, 204, 304), its last chunk, its
# Content-Length (counted: see _count_the_rest), or the end of the connection.
BodyEnd = Literal["none", "chunked", "length", "close"]


class Exchange(Protocol):
    """What one relayed request hears from its upstream connection."""

    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      chunked: bool, length: int | None) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_splice_sink(self) -> socket.socket | None: ...  # the client's, if it may

    def upstream_spliced(self, count: int) -> None: ...  # body bytes that went by splice

    def upstream_end(self, reusable: bool) -> None: ...

    def upstream_upgraded(self, rest: bytes) -> None: ...  # call pipe_to() before returning

    def upstream_lost(self, exc: Exception | None) -> None: ...

    def upstream_paused(self, paused: bool) -> None: ...  # its send buffer is full / drained


class PipePeer(Protocol):
    """What hears an upgraded connection (:meth:`UpstreamConnection.pipe_to`)."""

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_lost(self, exc: Exception | None) -> None: ...

    def upstream_eof(self) -> None: ...  # the lab will send nothing more (it may still read)

    def upstream_paused(self, paused: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to a lab's server; serves one :class:`Exchange` at a time."""

    def __init__(self, splices: SpliceBudget | None = None) -> None:
        """``splices``: the gateway's budget for splicing long bodies (None: never splice)."""
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.pipe: PipePeer | None = None  # after an upgrade
        self.closed = False
        self._gone = False  # the connection has ended (connection_lost)
        self._on_gone: Callable[[], None] | None = None  # after finish(): told when it ends
        self.idle_since = 0.0
        # One parser for the connection's life: llhttp starts on the next response after each
        # complete one. A connection is reused only after a complete one, and a response that
        # begins while no request is out is refused (on_message_begin).
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._fed = 0  # bytes of this answer fed to the parser
        self._body = 0  # of which body
        self._chunks = 0
        self._chunked = False  # the last Transfer-Encoding's last coding is exactly chunked
        self._length: int | None = None  # a well-formed Content-Length
        self._no_body = False
        self._upgraded = False
        self._complete = False
        self._body_end: BodyEnd = "none"  # known once the head is in
        self._body_left: int | None = None  # while counting: what is left of the body
        self._keep_alive = False  # llhttp's verdict, kept when counting starts
        self._head_bytes = 0  # of the answer's headers, interim answers' included
        self.paused = False  # its send buffer is over the high-water mark
        self._splices = splices
        self._splice: BodySplice | None = None  # the rest of a long body, moving

    # -- used by the exchange -----------------------------------------------------------------

    def start(self, exchange: Exchange, head: bytes, *, no_body: bool) -> None:
        """Serve ``exchange``: send the request head; ``no_body``: the request was HEAD (a
        response to it has no body whatever its headers say)."""
        assert self.transport is not None and not self.closed
        self.exchange, self._no_body = exchange, no_body
        self._new_response()
        self.transport.write(head)

    @property
    def idle_clean(self) -> bool:
        """Nothing left to send and not paused: fit to serve the next request."""
        return (self.transport is not None and not self.closed and not self.paused
                and self.transport.get_write_buffer_size() == 0)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pipe_to(self, peer: PipePeer) -> None:
        """Upgraded: every byte the lab sends from now on, and the end, go to ``peer``."""
        self.exchange, self.pipe = None, peer

    def finish(self, then: Callable[[], None], stalled_after: float) -> None:
        """Close after what was sent has gone out (a relayed pipe's end), or once sending it
        has stalled for ``stalled_after`` s (:mod:`.closing`); ``then()`` once it is gone."""
        self.exchange = self.pipe = None
        if self._gone:
            then()
            return
        self._on_gone = then
        if self.transport is not None and not self.closed:
            self.closed = True
            close_unless_stalled(self.transport, stalled_after)

    def close(self) -> None:
        self.exchange = self.pipe = None
        self._stop_splice()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        # (A write of the request's body can end the transport while a splice reads from its
        # socket: the splice's copies go first, before asyncio closes the socket itself.)
        self._stop_splice()
        self.closed = self._gone = True
        on_gone, self._on_gone = self._on_gone, None
        if on_gone is not None:
            on_gone()
        exchange, self.exchange = self.exchange, None
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            pipe.upstream_lost(exc)
            return
        if exchange is None:
            return
        if self._body_end == "close" and exc is None and not self._complete \
                and not self._upgraded:
            exchange.upstream_end(False)  # the end of the connection is the end of the body
        else:  # (a reset is no end of a body: RFC 9112 §8, the answer is incomplete)
            exchange.upstream_lost(exc)

    def eof_received(self) -> bool | None:
        """The lab shut its sending side. Piped, the pipe ends the connection (bounded:
        :meth:`finish`); otherwise asyncio closes it, and :meth:`connection_lost` follows."""
        if self.pipe is not None:
            self.pipe.upstream_eof()
            return True
        return None

    def pause_writing(self) -> None:
        self.paused = True
        peer = self.pipe or self.exchange
        if peer is not None:
            peer.upstream_paused(True)

    def resume_writing(self) -> None:
        self.paused = False
        peer = self.pipe or self.exchange
        if peer is not None:
            peer.upstream_paused(False)

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.upstream_data(data)
            return
        if self.exchange is None or self._upgraded:
            self.close()  # an idle connection that talks: not to be trusted again
            return
        if self._body_left is not None:
            self._counted(data)
            return
        self._fed += len(data)
        try:
            self._parser.feed_data(data)
            if self._fed - self._body > MAX_RESPONSE_HEAD + CHUNK_FRAMING * self._chunks:
                raise httptools.HttpParserError("the lab's answer has too much besides its body")
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0]:])
        except httptools.HttpParserError as exc:
            # A malformed answer, or an error raised by a callback (the exchange's own).
            log.warning("a lab's answer could not be relayed: %r (%r)", exc, exc.__context__)
            self._fail()
        else:
            if self._body_end == "length" and not self._complete and self.exchange is not None:
                self._count_the_rest()

    # -- a body with a length, after its first read ---------------------------------------------

    def _count_the_rest(self) -> None:
        """The rest of a body whose length is known is passed on as it is read, counted here
        rather than run through llhttp (which would copy every piece once more)."""
        assert self._length is not None
        self._body_left = self._length - self._body
        self._keep_alive = self._parser.should_keep_alive()
        self._maybe_splice()

    def _counted(self, data: bytes) -> None:
        assert self._body_left is not None and self.exchange is not None
        left = self._body_left
        piece = data if len(data) <= left else data[:left]
        self._body_left = left - len(piece)
        self._body += len(piece)
        self.exchange.upstream_body(piece)
        if self._body_left == 0 and self.exchange is not None:
            # Bytes past the answer (the lab talks out of turn): the connection is not kept.
            self._counted_end(reusable=self._keep_alive and len(piece) == len(data))
        else:
            self._maybe_splice()

    def _maybe_splice(self) -> None:
        """Move the rest of a long body in the kernel (:mod:`.splice`) if both sockets allow
        it now (the client's has nothing left to send of what went before)."""
        left, budget = self._body_left, self._splices
        if left is None or left < SPLICE_AT or self.exchange is None or self._splice is not None \
                or budget is None or not budget.available:
            return
        source = plain_socket(self.transport)
        sink = self.exchange.upstream_splice_sink()
        if source is None or sink is None or self.transport is None:
            return
        try:
            splice = BodySplice(source, sink, left, self._spliced, self._splice_ended, budget)
        except OSError as exc:  # out of descriptors: the body goes on through Python
            log.warning("a lab's answer is relayed without splice: %r", exc)
            return
        self.transport.pause_reading()  # (before the loop runs the splice's first read)
        self._splice = splice

    def _spliced(self, count: int) -> None:
        self._body += count
        if self.exchange is not None:
            self.exchange.upstream_spliced(count)

    def _splice_ended(self, exc: Exception | None) -> None:
        splice, self._splice = self._splice, None
        if exc is not None or splice is None or self.exchange is None:
            self._fail(exc)
            return
        self._body_left = 0  # (reading resumes when the pool takes the connection back)
        self._counted_end(reusable=self._keep_alive and not splice.lab_sent_more)

    def _stop_splice(self) -> None:
        if self._splice is not None:
            self._splice.close()
            self._splice = None

    def _counted_end(self, *, reusable: bool) -> None:
        self._body_left = None
        self._parser = httptools.HttpResponseParser(self)  # it never saw this body's end
        self._answered(reusable)

    # -- llhttp's callbacks -------------------------------------------------------------------

    def _new_response(self) -> None:
        self._headers, self._reason = [], b""
        self._fed = self._body = self._chunks = self._head_bytes = 0
        self._complete = self._chunked = False
        self._body_end = "none"
        self._length = self._body_left = None

    def on_message_begin(self) -> None:
        if self.exchange is None:  # bytes past a complete answer, in the same read
            raise ValueError("the lab sent more than its answer")

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        self._head_bytes += len(name) + len(value) + HEADER_LINE_EXTRA  # (a head may come whole)
        if self._head_bytes > MAX_RESPONSE_HEAD:
            raise ValueError("the lab's answer has too much besides its body")
        if len(name) in _FRAMING_NAME_LENGTHS:  # (a cheap test first: this runs per header)
            lower = name.lower()
            if lower == b"transfer-encoding":
                self._chunked = value.rpartition(b",")[2].strip().lower() == b"chunked"
            elif lower == b"content-length" and value.strip().isdigit():
                self._length = int(value)
        if len(headers) > MAX_RESPONSE_HEADERS:
            raise ValueError("the lab's answer has too many headers")

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_headers_complete(self) -> None:
        assert self.exchange is not None
        status = self._parser.get_status_code()
        chunked, length = self._chunked, self._length
        self.exchange.upstream_head(status, self._reason, self._headers, chunked, length)
        if status == 101:
            return  # llhttp stops at the upgrade (HttpParserUpgrade)
        self._body_end = self._how_body_ends(status)
        if self._no_body and status >= 200:
            # A HEAD response has no body: answer it now; the connection is not reused, as
            # the parser would wait for a body that will not come.
            self._answered(False)

    def _how_body_ends(self, status: int) -> BodyEnd:
        if self._no_body or status < 200 or status in (204, 304):
            return "none"
        if self._chunked:
            return "chunked"
        return "close" if self._length is None else "length"

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self.exchange is not None and not self._complete:
            self.exchange.upstream_body(body)

    def on_message_complete(self) -> None:
        if self._complete:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue): the final response follows
            self._new_response_after_interim()
            return
        self._answered(self._parser.should_keep_alive())

    def _new_response_after_interim(self) -> None:
        self._headers, self._reason = [], b""  # the bytes fed so far still count
        self._chunked, self._length = False, None

    # -- endings ------------------------------------------------------------------------------

    def _answered(self, reusable: bool) -> None:
        """The answer is complete; ``reusable``: the connection may serve another request."""
        self._complete = True
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_end(reusable)

    def _upgrade(self, rest: bytes) -> None:
        self._upgraded = True
        if self.exchange is not None:
            self.exchange.upstream_upgraded(rest)

    def _fail(self, exc: Exception | None = None) -> None:
        exchange, self.exchange = self.exchange, None
        self.close()
        if exchange is not None:
            exchange.upstream_lost(exc or ConnectionError("the lab sent a malformed response"))
