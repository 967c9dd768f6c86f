"""Relaying one WebSocket to a lab's server on aiohttp's path: frames, subprotocols and close
codes passed both ways, the caller's admission checked again while it lasts.

The upgrade's headers are built as for any request (:func:`.relay.upstream_headers`): the
gateway's cookies and credentials stripped, the lab's token injected. A redirect of the upgrade
is the client's answer, never followed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from ..errors import GatewayError
from .identity import UpgradeRedirected
from .relay import Activity, upstream_headers, while_client_waits
from .rules import Upstream, rewrite_location
from .watch import Watch

# aiohttp holds a message whole until its last frame comes, each way, and a message being
# passed on while the next one arrives: with MAX_MESSAGE_RELAYS open at once a user holds a
# few times 4 x 2 x 16 MiB here at most (some hundreds of MiB; before, 256 x 2 x 64 MiB).
# Browsers open each WebSocket on a new connection: the fast path's, which relays bytes.
MAX_WS_MESSAGE = 16 * 1024 * 1024  # (JupyterLab's own server refuses more than 10 MiB)
MAX_MESSAGE_RELAYS = 4  # per user, at once
WS_CLOSE_TIMEOUT = 5.0  # seconds for the second side's close handshake



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
    gateway_cookies: frozenset[str], on_activity: Activity, watch: Watch,
) -> web.StreamResponse:
    """Open the upstream WebSocket first (so its subprotocol choice can be passed on), then
    accept the client's and relay frames both ways until either side closes, or until
    ``watch`` ends it: it is no longer admitted (the client gets a close saying 1008,
    policy) or the gateway stops (both sides get 1001, going away: a browser's lab
    reconnects).

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
    relay = asyncio.create_task(_relay_frames(client_ws, upstream_ws, on_activity, watch))
    _RELAYS.add(relay)
    relay.add_done_callback(_RELAYS.discard)
    await asyncio.shield(relay)
    return client_ws


async def _relay_frames(client_ws: web.WebSocketResponse,
                        upstream_ws: aiohttp.ClientWebSocketResponse,
                        on_activity: Activity, watch: Watch) -> None:
    """Pump both ways until one side closes, let the other side's close handshake finish
    (bounded by WS_CLOSE_TIMEOUT), then make sure both are closed; or, once ``watch`` ends
    it, stop pumping and close both sides with its code."""
    ended: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def end(code: int) -> None:
        if not ended.done():
            ended.set_result(code)

    gone = watch(end)
    pumps = [
        asyncio.create_task(_pump(client_ws, upstream_ws, on_activity)),
        asyncio.create_task(_pump(upstream_ws, client_ws, on_activity)),
    ]
    try:
        waiting: list[asyncio.Future[Any]] = [*pumps, ended]
        done, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if ended in done:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for ws in (client_ws, upstream_ws):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(code=ended.result()), WS_CLOSE_TIMEOUT)
        else:
            # The finished pump is closing the other side: let that close handshake (and so
            # the close code) complete rather than cancelling it halfway.
            pending.discard(ended)
            if pending:
                await asyncio.wait(pending, timeout=WS_CLOSE_TIMEOUT)
    finally:
        gone()
        for task in pumps:
            if not task.done():
                task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for ws in (client_ws, upstream_ws):
            with contextlib.suppress(Exception):
                await ws.close()


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
