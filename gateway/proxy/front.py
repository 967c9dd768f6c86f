"""The gateway's listening socket: lab traffic on a fast path, everything else to aiohttp.

Each client connection starts with a :class:`FrontProtocol`. It reads one request head at a
time (:mod:`.http1`). A request for ``/labs/<id>/...`` that the lab proxy admits (a valid
credential, the caller's own ready lab, the browser checks; :meth:`FastPath.admit`) is relayed
here, bytes in and bytes out, over a proven pooled connection (:mod:`.upstream`); a WebSocket
upgrade the lab accepts becomes a byte pipe. Anything else (another path, a request the proxy
does not admit, a head it refuses to parse) hands the connection over to aiohttp at that
request's first byte, and aiohttp serves it from then on: the API, the pages, and the lab
proxy's refusals (401, 403, 404, a lab still starting) are aiohttp's alone. The fast path
answers only three problems itself, as the API would: 503 (the lab's server did not answer),
429 (the user holds ``max_lab_connections``: :meth:`FastPath.hold`) and 408 (below).

Requests on one connection are answered in order (pipelined ones wait, with reading paused past
:data:`MAX_BUFFERED` bytes). The connection itself (:class:`.client.ClientConnection`) closes
when no head comes within ``header_timeout`` seconds of its opening or of its previous answer
(slowloris; aiohttp's keep-alive timer does the same after a hand-over), and lingers before
closing while its client may still be sending a request body nobody will read (a 429 or 503
here, a lab that answered early), so that the client reads the answer rather than a reset. A
request body that stops coming for ``body_timeout`` seconds while this side is ready to read
it (not paused for the lab, not yet answered) ends with 408. A client that shuts its side
while a request of its is in flight is taken to have gone (its access record says 499). An
answer still streaming :data:`CHECKED_AFTER` s after its request came is checked again every
second, as a WebSocket is (:mod:`.watch`), and cut once it is no longer admitted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .admission import Admission, FastPath
from .client import ClientConnection
from .http1 import (
    ChunkedScanner,
    HeadError,
    RequestHead,
    head_end,
    may_be_lab_request,
    parse_request_head,
)
from .identity import LabNotProven
from .pipe import WebSocketPipe
from .rules import CLIENT_CLOSED, reason_to_pass
from .splice import plain_socket
from .upstream import UpstreamConnection
from .watch import Watched

log = logging.getLogger(__name__)
# Admissions and retries run as tasks of their own; strong references until each ends.
_TASKS: set[asyncio.Task[None]] = set()
# An upstream that cannot be reached or failed its identity proof.
UNREACHABLE = (OSError, TimeoutError, LabNotProven)
MAX_BUFFERED = 256 * 1024  # client bytes held while the answer before them is relayed
CHECKED_AFTER = 1.0  # seconds an answer streams before it is watched as a WebSocket is


class FrontProtocol(ClientConnection):
    """One client connection's lab requests, until it is handed over to aiohttp."""

    def __init__(self, fallback: Callable[[], asyncio.Protocol], labs: FastPath,
                 header_timeout: float, body_timeout: float) -> None:
        super().__init__(fallback, header_timeout, body_timeout)
        self._labs = labs
        self._task: asyncio.Task[None] | None = None  # admitting or connecting the request
        self._upstream_full = False  # the lab's connection asked us to stop sending
        self._searched = 0  # bytes of the buffer head_end has looked through in vain
        # The request being served (None between requests).
        self._head: RequestHead | None = None
        self._admission: Admission | None = None
        self._upstream: UpstreamConnection | None = None
        self._body_left = 0  # bytes of the Content-Length body still to forward
        self._chunks: ChunkedScanner | None = None
        self._request_sent = False
        self._reused = False
        self._chunked_out = False
        self._held_head = b""
        self._answered = False  # the final response head went to the client
        self._status = 0
        self._sent = 0
        self._started = 0.0
        self._keep_alive = True
        self._draining: Admission | None = None  # a finished request whose answer is unsent
        self._watched: Watched | None = None  # the answer, streaming for CHECKED_AFTER s
        self._watch_timer: asyncio.TimerHandle | None = None  # a chunked answer's first check

    # -- asyncio.Protocol (client side) ---------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._drained()
        self._unwatch()
        if self._task is not None:  # a lab connection being proven for nobody: stop it
            self._task.cancel()
        if self._admission is not None:
            if self._head is not None:  # the client left with a request in flight
                self._status = self._status if self._answered else CLIENT_CLOSED
                self._record()
            self._labs.unhold(self._admission)
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _client_eof(self) -> None:
        """Between requests the connection ends. With a request in flight the client is taken
        to have gone, as nginx does unless told to ignore client aborts: a browser closing a
        tab sends just this, and nothing else would tell while the lab is silent."""
        if self._head is not None:
            self._abort()
        else:
            self._close()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.resume_reading()

    # -- requests ---------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Move buffered client bytes on: the current request's body to its lab, else the
        next head to its place."""
        if self._transport is None or self._transport.is_closing():
            return  # the client is gone: nothing more begins
        if self._head is not None:
            if self._upstream is not None and not self._request_sent:
                self._forward_body()
            if len(self._buffer) > MAX_BUFFERED:
                self._pause_reading()
                self._watch_body()
            return
        if not self._buffer:
            return
        try:
            end = head_end(self._buffer, searched=self._searched)
        except HeadError:
            self._hand_over()
            return
        if end < 0:
            self._searched = len(self._buffer)  # a head sent a byte at a time costs O(n)
            if not may_be_lab_request(self._buffer):
                self._hand_over()
            return
        self._begin(end)

    def _begin(self, end: int) -> None:
        try:
            head = parse_request_head(bytes(self._buffer[:end]))
        except HeadError:
            self._hand_over()
            return
        if not head.target.startswith("/labs/"):
            self._hand_over()
            return
        self._idle_since, self._searched = None, 0
        self._drained()
        self._head, self._started = head, time.monotonic()
        self._request_sent = False
        admission = self._labs.admit_cached(head, self._remote)
        if admission is None:
            self._spawn(self._admit(head, end))
        elif self._held(admission):
            upstream = admission.take_idle()
            if upstream is not None:  # no task, no wait: most requests
                del self._buffer[:end]
                self._start_exchange(head, admission, upstream, True)
            else:
                self._spawn(self._connect(head, admission, end, may_retry=True))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (admitting or retrying a request) as a task; if it fails unexpectedly
        the client gets a 503 rather than a connection that hangs."""
        task = asyncio.get_running_loop().create_task(work)
        _TASKS.add(task)
        self._task = task
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Task[None]) -> None:
        _TASKS.discard(task)
        if self._task is task:
            self._task = None
        if task.cancelled() or task.exception() is None:
            return
        log.error("a lab request failed unexpectedly", exc_info=task.exception())
        if self._transport is not None and not self._answered:
            self._unavailable()
        else:
            self._abort()

    async def _admit(self, head: RequestHead, end: int) -> None:
        admission = await self._labs.admit(head, self._remote)
        if self._transport is None or self._transport.is_closing():
            return
        if admission is None:
            self._head = None
            self._hand_over()
            return
        if self._held(admission):
            await self._connect(head, admission, end, may_retry=True)

    def _held(self, admission: Admission) -> bool:
        """Count the admitted request against its user's lab connections; at the limit the
        client gets 429 and the connection ends (:meth:`_refuse`)."""
        self._admission = admission
        if self._labs.hold(admission):
            return True
        self._refuse(429, self._labs.answer_too_many())
        return False

    async def _connect(self, head: RequestHead, admission: Admission, consumed: int, *,
                       may_retry: bool) -> None:
        """A connection to the admitted lab (the request's first ``consumed`` buffered bytes,
        its head, then leave the buffer), and the exchange on it; ``may_retry``: a reused
        connection found closed may be tried once more."""
        try:
            upstream, reused = await admission.acquire()
        except UNREACHABLE:
            self._unavailable()
            return
        if self._transport is None or self._transport.is_closing():
            admission.release(upstream)  # the client left meanwhile
            self._labs.unhold(admission)
            return
        del self._buffer[:consumed]
        self._start_exchange(head, admission, upstream, reused and may_retry)

    def _start_exchange(self, head: RequestHead, admission: Admission,
                        upstream: UpstreamConnection, reused: bool) -> None:
        self._admission, self._upstream, self._reused = admission, upstream, reused
        self._upstream_full = False
        self._body_left = head.length or 0
        self._chunks = ChunkedScanner() if head.chunked else None
        self._request_sent = False
        self._answered, self._status, self._sent = False, 0, 0
        self._held_head = b""
        self._keep_alive = head.keep_alive
        self._labs.touch(admission.job_id)
        upstream.start(self, admission.upstream_head, no_body=head.method == "HEAD")
        if self._writing_paused and upstream.transport is not None:
            upstream.transport.pause_reading()
        self._forward_body()

    def _forward_body(self) -> None:
        """Send what the buffer holds of the request's body, and no byte of the next one."""
        assert self._upstream is not None
        if self._chunks is not None:
            try:
                count = self._chunks.feed(self._buffer)
            except HeadError:
                self._abort()
                return
            done = self._chunks.done
        else:
            count = min(self._body_left, len(self._buffer))
            self._body_left -= count
            done = self._body_left == 0
        if count:
            self._upstream.send(bytes(self._buffer[:count]))
            del self._buffer[:count]
        if done:
            self._request_sent = True
        if len(self._buffer) <= MAX_BUFFERED and not self._upstream_full:
            self._resume_reading()
        self._watch_body(read=count > 0)

    def _watch_body(self, *, read: bool = False) -> None:
        """The body timeout runs while the client owes this request's body and only the
        client holds it up: not while reading is paused (the lab, or the buffer, is full),
        nor once the lab has answered. An ``Expect: 100-continue`` client waiting for the
        go-ahead counts as owing (a lab's server sends its 100 at once); ``read``: body bytes
        came just now."""
        self._body_clock(self._upstream is not None and not self._request_sent
                         and not self._reading_paused and not self._answered, read=read)

    def _body_timed_out(self) -> None:
        """408, as the API would answer it; the lab's connection, which has part of the
        request, is closed."""
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        self._refuse(408, self._labs.answer_body_timeout())

    # -- the upstream's answer (upstream.Exchange) ----------------------------------------------

    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      chunked: bool, length: int | None) -> None:
        assert self._admission is not None and self._head is not None
        if 100 <= status < 200 and status != 101:
            if self._head.version == (1, 1):  # HTTP/1.0 clients get no interim answers
                self._write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason_to_pass(status, reason)))
            return
        if status == 101 and not self._admission.websocket:
            self._abort()
            return
        head, framing = self._admission.response_head(
            status, reason, headers, chunked, length, self._head)
        if framing == "close":
            self._keep_alive = False
        if not self._keep_alive and status != 101:
            head = head[:-2] + b"Connection: close\r\n\r\n"
        self._chunked_out = framing == "chunked"
        self._status, self._answered = status, True
        self._body_clock(False)
        if status == 101 or framing == "none":
            self._write(head)
        else:
            self._held_head = head  # goes out with the first piece of body: one send
        if framing in ("chunked", "close"):  # may stream, and go quiet: watched from its head
            self._watch_timer = asyncio.get_running_loop().call_later(
                CHECKED_AFTER, self._watch_answer)

    def upstream_body(self, data: bytes) -> None:
        """A piece of the lab's answer: to the client, and activity for the idle cull (an
        answer that streams for longer than ``labs.idle_timeout`` keeps its lab)."""
        self.upstream_spliced(len(data))
        head, self._held_head = self._held_head, b""
        if self._chunked_out:
            self._write(b"%s%x\r\n%s\r\n" % (head, len(data), data))
        else:
            self._write(head + data if head else data)

    def upstream_spliced(self, count: int) -> None:
        """``count`` bytes of the answer went to the client (by :meth:`upstream_body`, or
        moved in the kernel: :mod:`.splice`): counted, activity, and checked after a while."""
        assert self._admission is not None and self._head is not None
        self._labs.touch(self._admission.job_id)
        if self._watched is None and time.monotonic() - self._started >= CHECKED_AFTER:
            self._watch_answer()
        self._sent += count

    def upstream_splice_sink(self) -> socket.socket | None:
        """The client's socket, for the rest of a long body to be spliced into, if nothing
        of the answer waits in front of it (or is to be framed: a chunked answer)."""
        if self._chunked_out or self._held_head or self._transport is None \
                or self._transport.get_write_buffer_size():
            return None
        return plain_socket(self._transport)

    def upstream_end(self, reusable: bool) -> None:
        assert self._admission is not None and self._upstream is not None
        head, self._held_head = self._held_head, b""
        if self._chunked_out:
            self._write(head + b"0\r\n\r\n")
        elif head:
            self._write(head)
        upstream, self._upstream = self._upstream, None
        if reusable and self._request_sent:
            self._admission.release(upstream)
        else:
            upstream.close()
            self._keep_alive = self._keep_alive and self._request_sent
        self._finish()

    def upstream_upgraded(self, rest: bytes) -> None:
        """The lab's 101 went out: both connections become a :class:`.pipe.WebSocketPipe`,
        which relays every byte from now on (this protocol is done with them)."""
        transport, upstream = self._transport, self._upstream
        admission, head = self._admission, self._head
        assert transport is not None and upstream is not None
        assert admission is not None and head is not None
        self._record()
        self._cancel_timer()
        pipe = WebSocketPipe(transport, upstream, self._labs, admission, head,
                             self._body_timeout)
        self._transport = self._upstream = self._head = self._admission = None
        transport.set_protocol(pipe)
        upstream.pipe_to(pipe)
        if self._reading_paused and not upstream.paused:
            transport.resume_reading()
        from_client, self._buffer = bytes(self._buffer), bytearray()
        pipe.start(rest, from_client)

    def upstream_lost(self, exc: Exception | None) -> None:
        self._upstream = None
        if self._answered:
            self._abort()  # a cut answer must look cut, never complete
            return
        if self._reused and self._head is not None and self._head.method in ("GET", "HEAD") \
                and not self._head.length and not self._head.chunked:
            self._retry()
            return
        self._unavailable()

    def _unavailable(self) -> None:
        """The lab's server did not answer (or failed its proof): 503, as the API says it,
        and the connection ends (:meth:`_refuse`)."""
        if self._admission is not None:
            self._labs.unreachable(self._admission)
        self._refuse(503, self._labs.answer_unavailable())

    def upstream_paused(self, paused: bool) -> None:
        """The lab's connection has too much to send (an upload faster than the lab reads
        it): the client is not read until it drains."""
        self._upstream_full = paused
        if paused:
            self._pause_reading()
        elif len(self._buffer) <= MAX_BUFFERED:
            self._resume_reading()
        self._watch_body()

    def _retry(self) -> None:
        """The lab had closed the reused connection just as the request went: once more, on
        a fresh one."""
        head, admission = self._head, self._admission
        assert head is not None and admission is not None
        self._spawn(self._connect(head, admission, 0, may_retry=False))

    # -- endings ----------------------------------------------------------------------------------

    def _finish(self) -> None:
        """The answer is complete: log it, then the next request (or close: after lingering
        while the client may still be sending this request's body)."""
        self._record()
        self._body_clock(False)
        self._unwatch()
        if self._admission is not None:
            self._release(self._admission)
        head, self._head, self._admission = self._head, None, None
        if not self._keep_alive or self._transport is None or self._transport.is_closing():
            sending = head is not None and bool(head.length or head.chunked) \
                and not self._request_sent
            self._linger() if sending else self._close()
            return
        self._idle_since = time.monotonic()
        if self._buffer:  # a pipelined request: not from inside the lab connection's parser
            asyncio.get_running_loop().call_soon(self._advance)

    def _release(self, admission: Admission) -> None:
        """Give a finished request's hold back once its answer has left this connection's
        buffer: until then (the next request, or the connection's end) it still counts, so
        that clients that do not read cannot park the gateway's memory and sockets beyond
        ``max_lab_connections``."""
        if self._transport is not None and self._transport.get_write_buffer_size():
            self._draining = admission
        else:
            self._labs.unhold(admission)

    def _hand_over(self) -> None:
        self._drained()  # aiohttp owns the connection from here: its end is not heard here
        super()._hand_over()

    def _drained(self) -> None:
        if self._draining is not None:
            self._labs.unhold(self._draining)
            self._draining = None

    def _cut(self, code: int) -> None:
        """The streaming answer is no longer admitted (or the gateway stops): it looks cut."""
        self._abort()

    def _watch_answer(self) -> None:
        """The answer has streamed for :data:`CHECKED_AFTER` s: checked again as a WebSocket
        is, until it ends (:meth:`_unwatch`). A chunked or close-delimited answer is watched
        from then whatever it sends; one with a length from its first piece after then."""
        self._watch_timer = None
        if self._watched is None and self._admission is not None and self._head is not None:
            self._watched = self._labs.answer_streaming(self._admission, self._head, self._cut)

    def _unwatch(self) -> None:
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        if self._watched is not None:
            self._labs.answer_ended(self._watched)
            self._watched = None

    def _record(self) -> None:
        if self._head is not None and self._admission is not None:
            self._labs.record(self._head, self._admission, self._status, self._sent,
                              time.monotonic() - self._started, self._remote)

    def _refuse(self, status: int, answer: bytes) -> None:
        """The gateway's own whole ``answer`` (only its head to a HEAD request) in place of
        the lab's; then the connection ends (the rest of the request's body is not read)."""
        if self._head is not None and self._head.method == "HEAD":
            answer = answer[:answer.index(b"\r\n\r\n") + 4]
        self._status, self._keep_alive = status, False
        self._write(answer)
        self._finish()

    def _abort(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        if self._transport is not None:
            self._transport.abort()

    def shut(self) -> None:
        """Close the connection (the gateway stops), unless aiohttp serves it already."""
        if self._transport is not None:
            self._abort()
