"""``[limits] max_lab_connections``: how many lab connections one user holds at once through
the proxy, on the fast path and on aiohttp's. A hostile user holding WebSockets open (each two
of the gateway's descriptors) stops at the limit with 429, other users are not touched, and
every way a request or WebSocket can end gives its connection back (a leak would lock the
user out for good)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.api.keys import PROXY
from gateway.proxy.labs import LabProxy
from tests.unit.test_fast_path import held, wait_until
from tests.unit.test_relay import BOTH_SERVERS, PROBLEM, Gateway, bearer
from tests.unit.test_relay import gw as gw  # the fixture
from tests.unit.test_relay_wire import Wire, deadline, request

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def limit_to(gw: Gateway, limit: int) -> LabProxy:
    proxy = gw.app[PROXY]
    proxy.connections.limit = limit
    return proxy


@contextlib.asynccontextmanager
async def at_the_limit(gw: Gateway) -> AsyncIterator[Wire]:
    """Alice at a limit of 1 (one WebSocket of hers held open), and a new client connection
    to the gateway; both closed at the end."""
    limit_to(gw, 1)
    ws = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
    wire = await Wire.open(gw.port)
    try:
        yield wire
    finally:
        wire.close()
        await ws.close()


async def hand_to_aiohttp(gw: Gateway, wire: Wire) -> None:
    """A request that is not for a lab: aiohttp serves ``wire``'s connection from now on."""
    await wire.send(request(gw, "GET", "/api/v1/health"))
    assert (await wire.response()).status == 200


def assert_limit_problem(status: int, content_type: str, problem: dict[str, object],
                         retry_after: str | None, limit: int) -> None:
    assert (status, content_type) == (429, PROBLEM)
    assert (problem["limit"], problem["value"], problem["status"]) == (
        "max_lab_connections", limit, 429)
    assert retry_after == "1"


async def test_a_user_holding_the_limit_gets_429_and_other_users_do_not(gw: Gateway) -> None:
    limit_to(gw, 2)
    sockets = [await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
               for _ in range(2)]
    try:
        response = await gw.http.get(gw.url(gw.prefix() + "lab"), headers=bearer(gw.alice))
        assert_limit_problem(response.status, response.content_type, await response.json(),
                             response.headers.get("Retry-After"), 2)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
        assert refused.value.status == 429
        other = await gw.http.get(gw.url(gw.prefix(gw.bob_lab) + "lab"),
                                  headers=bearer(gw.bob))
        assert (other.status, await other.text()) == (200, "ok")
        for ws in sockets:  # the held ones still work
            await ws.send_str("still here")
            assert (await ws.receive(timeout=5)).data == "still here"
    finally:
        await sockets[0].close()
    await wait_until(lambda: held(gw) == 1, "a closed WebSocket gives its connection back")
    response = await gw.http.get(gw.url(gw.prefix() + "lab"), headers=bearer(gw.alice))
    assert (response.status, await response.text()) == (200, "ok")
    await sockets[1].close()
    await wait_until(lambda: held(gw) == 0, "every connection given back")


async def test_every_way_a_lab_request_ends_gives_its_connection_back(gw: Gateway) -> None:
    """With a limit of 1, each of these would lock alice out if it leaked its hold."""
    limit_to(gw, 1)
    url, auth = gw.url(gw.prefix()), bearer(gw.alice)
    response = await gw.http.get(url + "lab", headers=auth)  # answered whole
    assert response.status == 200
    await response.read()
    response = await gw.http.get(url + "truncated", headers=auth)  # the lab cuts it short
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    response = await gw.http.get(url + "hangup", headers=auth)  # the lab answers nothing
    assert response.status == 503
    response = await gw.http.get(url + "download?n=64&gate=1", headers=auth)
    await response.content.readexactly(1024)
    response.close()  # the client leaves mid-answer
    await wait_until(lambda: gw.upstream.download_aborted.is_set(), "the lab saw it go")
    gw.upstream.gate.set()
    for ending in ("close 1000 done", "drop", None):  # lab closes, lab drops, client leaves
        ws = await gw.http.ws_connect(url + "ws", headers=auth)
        if ending is None:
            await ws.close()
        else:
            await ws.send_str(ending)
            await ws.receive(timeout=5)
        await wait_until(lambda: held(gw) == 0, f"the WebSocket ended ({ending}) let go")
    await wait_until(lambda: held(gw) == 0, "nothing held at the end")
    response = await gw.http.get(url + "lab", headers=auth)
    assert response.status == 200


async def test_requests_on_a_connection_aiohttp_serves_count_too(gw: Gateway) -> None:
    """After a request that is not for a lab, aiohttp serves the connection, lab requests
    included (its relay): the limit holds there as well, answered as the API answers it."""
    limit_to(gw, 1)
    ws = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
    wire = await Wire.open(gw.port)
    try:
        await hand_to_aiohttp(gw, wire)
        await wire.send(request(gw, "GET", gw.prefix() + "lab"))
        refused = await wire.response()
        assert_limit_problem(refused.status, refused.content_type, refused.json(),
                             refused.headers.get("Retry-After"), 1)
        await ws.close()
        await wait_until(lambda: held(gw) == 0, "the WebSocket let go")
        wire.close()
        wire = await Wire.open(gw.port)
        await hand_to_aiohttp(gw, wire)
        await wire.send(request(gw, "GET", gw.prefix() + "lab"))
        answer = await wire.response()
        assert (answer.status, answer.body) == (200, b"ok")
    finally:
        wire.close()
        await ws.close()
    await wait_until(lambda: held(gw) == 0, "aiohttp's relay let go too")


async def test_each_user_has_a_count_of_their_own(gw: Gateway) -> None:
    """Alice at the limit takes nothing from bob: he holds as many as she does."""
    limit_to(gw, 2)
    first = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
    second = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
    try:
        assert held(gw) == 2 and held(gw, "bob") == 0
        bob = [await gw.http.ws_connect(gw.url(gw.prefix(gw.bob_lab) + "ws"),
                                        headers=bearer(gw.bob)) for _ in range(2)]
        assert held(gw, "bob") == 2
        for ws in bob:
            await ws.close()
    finally:
        await asyncio.gather(first.close(), second.close())
    await wait_until(lambda: held(gw) == held(gw, "bob") == 0, "all given back")


@BOTH_SERVERS
@pytest.mark.parametrize("upgrade", [False, True], ids=["http", "websocket"])
async def test_a_client_leaving_a_lab_that_never_answers_gives_its_connection_back(
        gw: Gateway, upgrade: bool) -> None:
    """On a connection aiohttp serves, alice asks a lab that never answers (nor accepts the
    WebSocket), then leaves. ``hpcgw serve`` does not cancel handlers, so without a watch on
    the client the relay would wait on the lab for ever, and with a limit of 1 alice could not
    reach her lab again: the hold and the lab's connection go with her instead."""
    limit_to(gw, 1)
    wire = await Wire.open(gw.port)
    try:
        await hand_to_aiohttp(gw, wire)
        await wire.send(request(gw, "GET", gw.prefix() + "silent", UPGRADE if upgrade else {}))
        await deadline(gw.upstream.silent_waiting.wait())
        assert held(gw) == 1
        wire.close()
        await wait_until(lambda: held(gw) == 0, "alice's hold went with her connection")
        await deadline(gw.upstream.silent_ended.wait())  # the lab saw the gateway give up
        assert not gw.upstream.silent_release.is_set()
    finally:
        wire.close()
        gw.upstream.silent_release.set()
    response = await gw.http.get(gw.url(gw.prefix() + "lab"), headers=bearer(gw.alice))
    assert (response.status, await response.text()) == (200, "ok")
