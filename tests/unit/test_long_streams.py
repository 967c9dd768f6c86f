"""Long-lived streams through the lab proxy: an HTTP download and a WebSocket that stay open,
mostly silent, for more than 300 s (real time, real loopback sockets) — no proxy timeout may
cut them. JupyterLab keeps kernel WebSockets open for hours and streams slow responses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from test_relay import SECRET, GatewayServer, bearer, ready_lab

from gateway.config import parse_config
from gateway.server import STORE, make_app
from gateway.tokens import lab_proof, lab_token

LIFETIME = 305.0  # seconds each stream stays open
GAP = LIFETIME / 2  # silence between two pieces of data, longer than any usual idle timeout
pytestmark = [pytest.mark.slow, pytest.mark.timeout(LIFETIME + 120)]


def slow_upstream() -> web.Application:
    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for piece in (b"first\n", b"middle\n", b"last\n"):
            await response.write(piece)
            if piece != b"last\n":
                await asyncio.sleep(GAP)
        await response.write_eof()
        return response

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data)
        return ws

    async def proof(request: web.Request) -> web.Response:
        """The identity proof, as the real launcher answers it (this lab holds the token)."""
        assert request.transport is not None
        host, port = request.transport.get_extra_info("sockname")[:2]
        address = f"{host}:{port}"
        token = lab_token(SECRET, request.match_info["id"])
        return web.json_response(
            {"address": address, "proof": lab_proof(token, request.query["nonce"], address)})

    app = web.Application()
    app.router.add_get("/labs/{id}/hpcgw/proof", proof)
    app.router.add_get("/labs/{id}/slow", slow)
    app.router.add_get("/labs/{id}/ws", echo)
    return app


async def test_http_and_websocket_streams_survive_past_300_seconds(
    tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]],
    fake_clusters: Any, make_raw_config: Callable[..., dict[str, Any]],
) -> None:
    upstream = await aiohttp_server(slow_upstream())
    raw = make_raw_config(tmp_path / "data")
    raw["clusters"][0]["lab_host"] = "127.0.0.1"
    raw["labs"] = {"check_interval": 3600, "idle_timeout": 3600}
    app = make_app(parse_config(raw), cluster_factory=fake_clusters)
    server = GatewayServer(app, handler_cancellation=False)  # as `hpcgw serve` runs it
    await server.start_server()
    store = app[STORE]
    alice = store.users.add_user("alice", "alice")
    token = store.users.issue_token(alice)
    lab = await ready_lab(store, fake_clusters.by_name["dev"].backend, alice, upstream.port)
    base = f"http://127.0.0.1:{server.port}/labs/{lab['id']}/"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)

    async def download() -> bytes:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                base + "slow", headers=bearer(token)) as response:
            assert response.status == 200
            return await response.read()

    async def websocket() -> list[str]:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.ws_connect(
                base + "ws", headers=bearer(token), heartbeat=None) as ws:
            echoes = []
            for text in ("hello", "after a long silence"):
                await ws.send_str(text)
                echoes.append((await ws.receive()).data)
                if len(echoes) == 1:
                    await asyncio.sleep(LIFETIME)
            return echoes

    started = time.monotonic()
    try:
        body, echoes = await asyncio.gather(download(), websocket())
    finally:
        await server.close()
    assert time.monotonic() - started >= 300
    assert body == b"first\nmiddle\nlast\n"
    assert echoes == ["hello", "after a long silence"]
