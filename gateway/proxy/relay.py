"""Relaying one HTTP request to a lab's server on aiohttp's path, streaming both ways.

Nothing here knows about jobs or users: the caller has checked who may use which upstream and
hands over an :class:`Upstream` (an address the gateway chose, never one from the URL). The
relay drops hop-by-hop headers (and those named in ``Connection``), strips the gateway's own
cookies and credentials, injects the lab's token, never follows redirects, passes bodies through
untouched (gzip stays gzip) and keeps ``Location`` and ``Set-Cookie`` under the lab's prefix.
WebSockets on this path are relayed by :mod:`.relay_ws`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ..errors import RequestTimeout
from .rules import (
    HOP_BY_HOP,
    NOT_DOWNSTREAM,
    NOT_UPSTREAM,
    Upstream,
    filter_cookies,
    reason_to_pass,
    rewrite_location,
    scope_set_cookie,
)
from .upstream import HEADER_LINE_EXTRA, MAX_RESPONSE_HEAD
from .watch import Watch

_WS_HANDSHAKE = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "content-length",
})
CHUNK = 256 * 1024
CLIENT_CHECK_INTERVAL = 1.0  # seconds between looks at the client while the lab is silent
T = TypeVar("T")

Activity = Callable[[], None]


def _named_in_connection(headers: CIMultiDict[str] | object) -> set[str]:
    values = headers.getall("Connection", []) if isinstance(headers, CIMultiDict) else []
    return {token.strip().lower() for value in values for token in value.split(",")}


def _end_to_end(headers: Iterable[tuple[str, str]], named: set[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


def upstream_headers(
    request: web.Request, upstream: Upstream, gateway_cookies: frozenset[str], *,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """Request headers for the upstream: end-to-end ones only, the gateway's cookies and
    Authorization removed, the lab token injected, Host and Origin the upstream's own (the
    gateway has already checked the browser's Origin where that matters)."""
    named = _named_in_connection(CIMultiDict(request.headers))
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in _end_to_end(request.headers.items(), named):
        lower = name.lower()
        if lower in NOT_UPSTREAM or lower == "expect" or (websocket and lower in _WS_HANDSHAKE):
            continue  # (relay_http asks the lab for a 100 in the one form its server knows)
        headers.add(name, value)
    cookies = filter_cookies(request.headers.getall("Cookie", []), gateway_cookies)
    if cookies:
        headers["Cookie"] = cookies
    headers["Authorization"] = f"token {upstream.token}"
    headers["Host"] = f"{upstream.host}:{upstream.port}"
    if "Origin" in request.headers:
        headers["Origin"] = upstream.origin
    if request.remote:
        headers["X-Forwarded-For"] = request.remote
    return headers


def response_headers(upstream_response: aiohttp.ClientResponse, upstream: Upstream
                     ) -> CIMultiDict[str]:
    named = _named_in_connection(CIMultiDict(upstream_response.headers))
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in _end_to_end(upstream_response.headers.items(), named):
        lower = name.lower()
        if lower in NOT_DOWNSTREAM:
            continue
        if lower == "location":
            value = rewrite_location(value, upstream)
        elif lower == "set-cookie":
            value = scope_set_cookie(value, upstream.prefix)
        headers.add(name, value)
    return headers


async def expect_later(request: web.Request) -> None:
    """The lab routes' ``Expect`` handler: nothing now. aiohttp's own would send a 100 (or a
    417) before any check ran; the relay sends the lab's 100 when the lab sends it, so a
    refused request, or a lab that answers first, never invites the body."""


async def relay_http(
    request: web.Request, upstream: Upstream, session: aiohttp.ClientSession,
    gateway_cookies: frozenset[str], on_activity: Activity, body_timeout: float,
    watch: Watch,
) -> web.StreamResponse:
    """Send ``request`` to ``upstream`` and stream the answer back, chunk by chunk.

    Raises aiohttp.ClientError (and TimeoutError) if the upstream can't be reached before the
    response starts, :class:`LabAnswerRefused` for an answer's head not to pass on,
    :class:`ClientLeft` if the client goes while the lab has not answered,
    RequestTimeout (408) if the request's body stops coming for ``body_timeout`` s before the
    lab answers (the lab's connection is closed); after that, a broken upstream or a stalled
    body ends the response early, and a client that went away ends the relay quietly (none
    of these is raised). While the body streams it is registered with ``watch``, which cuts it
    (as a broken upstream would) once the request is no longer admitted. The client's
    connection is closed after the answer (``Connection: close``): its next request opens a
    new one, which the fast path (:mod:`.front`) serves.
    """
    url = upstream.url(request.rel_url.raw_path, request.rel_url.raw_query_string)
    headers = upstream_headers(request, upstream, gateway_cookies)
    stalled: list[bool] = []  # set by the body when it times out
    expects = request.version == aiohttp.HttpVersion11 and \
        request.headers.get("Expect", "").lower() == "100-continue"
    asked = asyncio.Event()  # set once the body is first asked for
    body = _in_time(request, body_timeout, stalled, expects, asked) \
        if request.body_exists else None
    sending: Awaitable[aiohttp.ClientResponse] = session.request(
        request.method, url, headers=headers, data=body, allow_redirects=False,
        expect100=expects)
    if body is not None and expects:
        sending = _go_ahead_in_time(sending, asked, body_timeout, stalled)
    try:
        answer = await while_client_waits(request, sending)
    except (aiohttp.ClientError, TimeoutError):  # the body's error, as aiohttp passes it on
        if stalled:
            raise RequestTimeout() from None
        raise
    async with answer:
        head_size = sum(len(name) + len(value) + HEADER_LINE_EXTRA
                        for name, value in answer.raw_headers)
        if head_size > MAX_RESPONSE_HEAD:  # (aiohttp's own cap is 128 headers of 8 KiB)
            raise LabAnswerRefused("the lab's answer has too much besides its body")
        on_activity()
        try:
            reason = reason_to_pass(answer.status,
                                    (answer.reason or "").encode("latin-1", "replace"))
        except ValueError as exc:
            raise LabAnswerRefused(str(exc)) from None
        response = web.StreamResponse(status=answer.status,
                                      reason=reason.decode("latin-1") or None,
                                      headers=response_headers(answer, upstream))
        response.force_close()
        await response.prepare(request)
        gone = watch(lambda _code: _cut(request))
        try:
            await _copy_body(request, answer, response, on_activity, _connection_end(answer))
        finally:
            gone()
        return response


def _cut(request: web.Request) -> None:
    """End the client's connection mid-answer: the answer looks cut, never complete."""
    if request.transport is not None:
        request.transport.abort()


def _connection_end(answer: aiohttp.ClientResponse) -> asyncio.Future[None] | None:
    """For an answer whose body may end with its connection (neither a length nor chunks):
    that connection's end, an error if it was reset (which cuts the body: RFC 9112 §8)."""
    if answer.content_length is not None or "Transfer-Encoding" in answer.headers:
        return None
    connection = answer.connection
    if connection is None or connection.protocol is None:  # (a protocol may have len() 0)
        return None
    end = connection.protocol.closed
    if end is not None:  # looked at whatever happens to the answer (no "never retrieved")
        end.add_done_callback(lambda done: done.cancelled() or done.exception())
    return end


async def _go_ahead_in_time(sending: Awaitable[aiohttp.ClientResponse], asked: asyncio.Event,
                            timeout: float, stalled: list[bool]) -> aiohttp.ClientResponse:
    """``sending``'s answer, for a client that waits for a 100 before its body: the lab's
    server sends its 100 (``asked``: the body is asked for) or its answer at once. Until one
    comes, the body clock runs (as on the fast path): after ``timeout`` s of neither,
    ``stalled`` gets an entry and TimeoutError is raised."""
    answer = asyncio.ensure_future(sending)
    go_ahead = asyncio.ensure_future(asked.wait())
    try:
        await asyncio.wait({answer, go_ahead}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if not answer.done() and not go_ahead.done():
            stalled.append(True)
            raise TimeoutError
        return await answer
    finally:
        go_ahead.cancel()
        if not answer.done():
            answer.cancel()
            await asyncio.gather(answer, return_exceptions=True)


async def _in_time(request: web.Request, timeout: float, stalled: list[bool],
                   expects: bool, asked: asyncio.Event) -> AsyncIterator[bytes]:
    """The client's request body as it comes, each read within ``timeout`` s (else
    ``stalled`` gets an entry and the body ends in an error, which ends the lab's request).
    ``expects``: the client waits for a 100, sent when the body is first asked for, which is
    when the lab has sent its own (:func:`expect_later` held aiohttp's back); ``asked`` is
    set then."""
    asked.set()
    if expects:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # (the answer has not begun: as aiohttp does)
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.readany(), timeout)
        except TimeoutError:
            stalled.append(True)
            raise
        if not chunk:
            return
        yield chunk


async def _copy_body(request: web.Request, answer: aiohttp.ClientResponse,
                     response: web.StreamResponse, on_activity: Activity,
                     connection_end: asyncio.Future[None] | None) -> None:
    """Upstream body to client, one read at a time (the client's pace sets the upstream's).
    If the upstream breaks mid-body (an error, or ``connection_end`` reset), the client's
    connection is cut so that it sees a truncated answer, never a complete-looking one.

    A client that leaves while the lab is silent mid-body ends the relay too (the copy is
    watched, as the wait for the head is: a quiet event stream would hold the user's lab
    connection). Errors on the two sides are told apart: aiohttp raises
    ClientConnectionResetError, a ClientError, when the *client* has gone, so one ``except``
    around both would blame the lab.
    """
    with contextlib.suppress(ClientLeft):
        await while_client_waits(request, _copy_pieces(request, answer, response, on_activity,
                                                       connection_end))


async def _copy_pieces(request: web.Request, answer: aiohttp.ClientResponse,
                       response: web.StreamResponse, on_activity: Activity,
                       connection_end: asyncio.Future[None] | None) -> None:
    while True:
        try:
            chunk: bytes | None = await answer.content.read(CHUNK)
        except (aiohttp.ClientError, TimeoutError):
            chunk = None  # the lab's side broke
        if chunk is None or (not chunk and _was_reset(connection_end)):
            if request.transport is not None:
                request.transport.close()
            return
        try:
            if not chunk:
                await response.write_eof()
                return
            await response.write(chunk)
        except ConnectionResetError:  # the client went away; leaving closes the upstream's
            return
        on_activity()


def _was_reset(connection_end: asyncio.Future[None] | None) -> bool:
    return connection_end is not None and connection_end.done() \
        and not connection_end.cancelled() and connection_end.exception() is not None


class LabAnswerRefused(Exception):
    """The lab's answer has a head the gateway does not pass on (a status under 100, a head
    over MAX_RESPONSE_HEAD): the client gets a 503, as from the fast path."""


class ClientLeft(Exception):
    """The client's connection went while the relay waited for the lab."""


async def while_client_waits(request: web.Request, waiting: Awaitable[T]) -> T:
    """``waiting`` (the lab's answer head, or its acceptance of a WebSocket), cancelled with
    :class:`ClientLeft` raised if the client's connection goes first.

    ``hpcgw serve`` runs aiohttp without handler cancellation, so that an API request finishes
    what it began even if its client leaves; aiohttp tells a handler nothing when its client
    goes. A relay waiting on a lab that never answers would then hold the user's lab connection
    and one to the lab for as long as the lab stays silent, so the client is looked at every
    :data:`CLIENT_CHECK_INTERVAL` s. Only waits on the lab are watched (the head, the copy of
    the body, a WebSocket's acceptance): a WebSocket's frames relay ends with either side."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CLIENT_CHECK_INTERVAL)
            if done:
                return task.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ClientLeft
    finally:
        if not task.done():  # the client left, or this handler was cancelled
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
