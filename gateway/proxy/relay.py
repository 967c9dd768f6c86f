"""Relaying one HTTP request or one WebSocket to a lab's server, streaming both ways.

Nothing here knows about jobs or users: the caller has checked who may use which upstream and
hands over an :class:`Upstream` (an address the gateway chose, never one from the URL). The
relay drops hop-by-hop headers (and those named in ``Connection``), strips the gateway's own
cookies and credentials, injects the lab's token, never follows redirects, passes bodies through
untouched (gzip stays gzip), keeps ``Location`` and ``Set-Cookie`` under the lab's prefix, and
relays WebSocket subprotocols, frames and close codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from ..errors import GatewayError, RequestTimeout
from .identity import UpgradeRedirected
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
from .upstream import MAX_RESPONSE_HEAD
from .wsframes import GOING_AWAY, POLICY_VIOLATION

_WS_HANDSHAKE = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "content-length",
})
MAX_WS_MESSAGE = 64 * 1024 * 1024
CHUNK = 256 * 1024
WS_CLOSE_TIMEOUT = 5.0  # seconds for the second side's close handshake
CLIENT_CHECK_INTERVAL = 1.0  # seconds between looks at the client while the lab is silent
T = TypeVar("T")
log = logging.getLogger(__name__)

Activity = Callable[[], None]


@dataclass(frozen=True)
class Recheck:
    """The caller's check of an open WebSocket (is it still admitted?), asked every ``every``
    seconds; and ``stopping``, set when the gateway stops (every WebSocket then ends)."""

    admitted: Callable[[], Awaitable[bool]]
    every: float
    stopping: asyncio.Event


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
) -> web.StreamResponse:
    """Send ``request`` to ``upstream`` and stream the answer back, chunk by chunk.

    Raises aiohttp.ClientError (and TimeoutError) if the upstream can't be reached before the
    response starts, :class:`ClientLeft` if the client goes while the lab has not answered,
    RequestTimeout (408) if the request's body stops coming for ``body_timeout`` s before the
    lab answers (the lab's connection is closed); after that, a broken upstream or a stalled
    body ends the response early, and a client that went away ends the relay quietly (none
    of these is raised). The client's connection is closed
    after the answer (``Connection: close``): its next request opens a new one, which the fast
    path (:mod:`.front`) serves.
    """
    url = upstream.url(request.rel_url.raw_path, request.rel_url.raw_query_string)
    headers = upstream_headers(request, upstream, gateway_cookies)
    stalled: list[bool] = []  # set by the body when it times out
    expects = request.version == aiohttp.HttpVersion11 and \
        request.headers.get("Expect", "").lower() == "100-continue"
    body = _in_time(request, body_timeout, stalled, expects) if request.body_exists else None
    try:
        answer = await while_client_waits(request, session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False,
            expect100=expects))
    except (aiohttp.ClientError, TimeoutError):  # the body's error, as aiohttp passes it on
        if stalled:
            raise RequestTimeout() from None
        raise
    async with answer:
        if sum(len(name) + len(value) + 4 for name, value in answer.raw_headers) \
                > MAX_RESPONSE_HEAD:  # (aiohttp's own cap is 128 headers of 8 KiB)
            raise aiohttp.ClientConnectionError("the lab's answer has too much besides its body")
        on_activity()
        try:
            reason = reason_to_pass(answer.status,
                                    (answer.reason or "").encode("latin-1", "replace"))
        except ValueError as exc:
            raise aiohttp.ClientConnectionError(str(exc)) from None
        response = web.StreamResponse(status=answer.status,
                                      reason=reason.decode("latin-1") or None,
                                      headers=response_headers(answer, upstream))
        response.force_close()
        await response.prepare(request)
        await _copy_body(request, answer, response, on_activity, _connection_end(answer))
        return response


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


async def _in_time(request: web.Request, timeout: float, stalled: list[bool],
                   expects: bool) -> AsyncIterator[bytes]:
    """The client's request body as it comes, each read within ``timeout`` s (else
    ``stalled`` gets an entry and the body ends in an error, which ends the lab's request).
    ``expects``: the client waits for a 100, sent when the body is first asked for, which is
    when the lab has sent its own (:func:`expect_later` held aiohttp's back)."""
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

    A client that leaves while the lab is silent mid-body ends the relay too (each read is
    watched, as the wait for the head is: a quiet event stream would hold the user's lab
    connection). Errors on the two sides are told apart: aiohttp raises
    ClientConnectionResetError, a ClientError, when the *client* has gone, so one ``except``
    around both would blame the lab.
    """
    while True:
        try:
            chunk = await while_client_waits(request, answer.content.read(CHUNK))
            if not chunk and connection_end is not None and connection_end.done() \
                    and not connection_end.cancelled() and connection_end.exception():
                raise aiohttp.ClientConnectionError("the lab's connection was reset")
        except ClientLeft:
            return
        except (aiohttp.ClientError, TimeoutError):
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


class ClientLeft(Exception):
    """The client's connection went while the relay waited for the lab."""


async def while_client_waits(request: web.Request, waiting: Awaitable[T]) -> T:
    """``waiting`` (the lab's answer head, or its acceptance of a WebSocket), cancelled with
    :class:`ClientLeft` raised if the client's connection goes first.

    ``hpcgw serve`` runs aiohttp without handler cancellation, so that an API request finishes
    what it began even if its client leaves; aiohttp tells a handler nothing when its client
    goes. A relay waiting on a lab that never answers would then hold the user's lab connection
    and one to the lab for as long as the lab stays silent, so the client is looked at every
    :data:`CLIENT_CHECK_INTERVAL` s. Only waits on the lab are watched (the head, each read
    of the body, a WebSocket's acceptance): a WebSocket's frames relay ends with either
    side."""
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


class UpstreamRefused(GatewayError):
    """The lab's server refused a WebSocket upgrade: its 4xx status is passed on (a 401 means
    the gateway's token was refused, not the caller: 502 like any other status)."""

    type_slug = "lab-refused"
    title = "Refused by the lab"

    def __init__(self, status: int) -> None:
        super().__init__(f"the lab's server answered the WebSocket upgrade with {status}")
        self.status = status if 400 <= status < 500 and status != 401 else 502


# Relays run as tasks of their own (see relay_websocket); strong references until they end.
_RELAYS: set[asyncio.Task[None]] = set()


async def relay_websocket(
    request: web.Request, upstream: Upstream, session: aiohttp.ClientSession,
    gateway_cookies: frozenset[str], on_activity: Activity, recheck: Recheck,
) -> web.StreamResponse:
    """Open the upstream WebSocket first (so its subprotocol choice can be passed on), then
    accept the client's and relay frames both ways until either side closes, or until
    ``recheck`` says it is no longer admitted (the client gets a close saying 1008, policy)
    or the gateway stops (both sides get 1001, going away: a browser's lab reconnects).

    A request that is not a valid upgrade is refused (400) before anything reaches the lab; a
    lab that refuses the upgrade gives :class:`UpstreamRefused` (a redirect is the client's
    answer, not followed), a client that leaves before the lab accepts :class:`ClientLeft`.
    The frames are relayed by a task of its own, so a server that cancels this handler when
    the client disconnects still lets the relay close the lab's side with the client's close
    code.
    """
    client_ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, compress=False,
                                      heartbeat=None)
    if not client_ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(reason="not a valid WebSocket upgrade")
    url = upstream.url(request.rel_url.raw_path, request.rel_url.raw_query_string)
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
               if p.strip()]
    try:
        upstream_ws = await while_client_waits(request, session.ws_connect(
            url, headers=upstream_headers(request, upstream, gateway_cookies, websocket=True),
            protocols=offered, max_msg_size=MAX_WS_MESSAGE, autoping=True, heartbeat=None))
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamRefused(exc.status) from None
    except UpgradeRedirected as exc:
        moved = {"Location": rewrite_location(exc.location, upstream)} if exc.location else {}
        return web.Response(status=exc.status, headers=moved)
    try:
        client_ws = web.WebSocketResponse(
            protocols=[upstream_ws.protocol] if upstream_ws.protocol else (),
            max_msg_size=MAX_WS_MESSAGE, compress=False, heartbeat=None)
        await client_ws.prepare(request)
    except BaseException:
        await upstream_ws.close()
        raise
    relay = asyncio.create_task(_relay_frames(client_ws, upstream_ws, on_activity, recheck))
    _RELAYS.add(relay)
    relay.add_done_callback(_RELAYS.discard)
    await asyncio.shield(relay)
    return client_ws


async def _relay_frames(client_ws: web.WebSocketResponse,
                        upstream_ws: aiohttp.ClientWebSocketResponse,
                        on_activity: Activity, recheck: Recheck) -> None:
    """Pump both ways until one side closes, let the other side's close handshake finish
    (bounded by WS_CLOSE_TIMEOUT), then make sure both are closed; or, once ``recheck``
    ends it, stop pumping and close both sides with its code."""
    pumps = [
        asyncio.create_task(_pump(client_ws, upstream_ws, on_activity)),
        asyncio.create_task(_pump(upstream_ws, client_ws, on_activity)),
    ]
    watch = asyncio.create_task(_until_ended(recheck))
    try:
        done, pending = await asyncio.wait([*pumps, watch], return_when=asyncio.FIRST_COMPLETED)
        pending.discard(watch)
        if watch in done:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            code = watch.result()
            for ws in (client_ws, upstream_ws):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(code=code), WS_CLOSE_TIMEOUT)
        elif pending:
            # The finished pump is closing the other side: let that close handshake (and so
            # the close code) complete rather than cancelling it halfway.
            await asyncio.wait(pending, timeout=WS_CLOSE_TIMEOUT)
    finally:
        for task in (*pumps, watch):
            if not task.done():
                task.cancel()
        await asyncio.gather(*pumps, watch, return_exceptions=True)
        for ws in (client_ws, upstream_ws):
            with contextlib.suppress(Exception):
                await ws.close()


async def _until_ended(recheck: Recheck) -> int:
    """The close code once the WebSocket must end: 1001 when the gateway stops, 1008 when the
    check answers False (a check that fails is logged and asked again next time)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recheck.stopping.wait(), recheck.every)
        if recheck.stopping.is_set():
            return GOING_AWAY
        try:
            if not await recheck.admitted():
                return POLICY_VIOLATION
        except Exception:
            log.exception("could not check an open lab WebSocket again")


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: WebSocket, sink: WebSocket, on_activity: Activity) -> None:
    """Copy messages from ``source`` to ``sink``; when ``source`` closes, close ``sink`` with
    the same code and reason."""
    reason = ""
    while True:
        message = await source.receive()
        if message.type is WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type is WSMsgType.CLOSE:
            reason = message.extra or ""
            break
        elif message.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            break
        on_activity()
    code = source.close_code or 1000
    if code in (1005, 1006):  # "no code" and "abnormal" may not be sent on the wire
        code = 1000 if code == 1005 else 1011
    await sink.close(code=code, message=reason.encode()[:123])
