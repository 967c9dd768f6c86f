"""What the lab proxy's fast path (gateway/proxy/front.py, fastpath.py) must keep doing that
the aiohttp relay did: checks that reach the very next request and open WebSockets, an access
record for every request, counters, and connections that stay usable after slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
from pathlib import Path

import pytest
from aiohttp import WSMsgType

from gateway.api.keys import PROXY
from gateway.proxy.identity import LabIdentity
from gateway.proxy.pool import UpstreamPool
from gateway.proxy.upstream import UpstreamConnection
from gateway.server import STORE
from gateway.states import State
from gateway.store import Store
from tests.unit import test_relay as relay
from tests.unit.test_relay import BLOCK, MIB, PROBLEM, WAIT, Gateway, bearer
from tests.unit.test_relay_wire import Wire, deadline, request

gw = relay.gw  # the fixture (a module attribute, so that pytest finds it here too)


def held(gw: Gateway, user: str = "alice") -> int:
    """The lab connections ``user`` holds now, as the gateway counts them."""
    found = gw.app[STORE].users.get_user(user)
    assert found is not None
    return gw.app[PROXY].connections.held(found.id)


async def wait_until(condition: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT
    while not condition():  # type: ignore[operator]
        assert loop.time() < end, f"not within {WAIT} s: {what}"
        await asyncio.sleep(0.01)


async def test_a_revoked_token_stops_the_next_request_on_the_same_connection(
        gw: Gateway) -> None:
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "echo/one"))
        assert (await wire.response()).status == 200
        assert gw.app[STORE].users.revoke_token(gw.alice)
        await wire.send(request(gw, "GET", gw.prefix() + "echo/two"))
        assert (await wire.response()).status == 401
    finally:
        wire.close()
    assert [seen.raw_path for seen in gw.upstream.seen] == [gw.prefix() + "echo/one"]


async def test_a_user_disabled_by_another_process_is_refused_at_once(
        gw: Gateway, tmp_path: Path) -> None:
    """The admin CLI writes through its own connection: the cached answer must not outlive
    that write."""
    response = await gw.http.get(gw.url(gw.prefix() + "x"), headers=bearer(gw.alice))
    assert response.status == 200
    cli = Store(tmp_path / "data" / "hpcgw.db")
    try:
        cli.users.set_user("alice", disabled=True)
    finally:
        cli.close()
    response = await gw.http.get(gw.url(gw.prefix() + "x"), headers=bearer(gw.alice))
    assert response.status == 401


async def test_an_open_websocket_closes_when_its_token_is_revoked(gw: Gateway) -> None:
    async with gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice)) as ws:
        await ws.send_str("still mine")
        assert (await ws.receive(WAIT)).data == "still mine"
        assert gw.app[STORE].users.revoke_token(gw.alice)
        message = await ws.receive(WAIT)
        assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    await deadline(gw.upstream.ws_done.wait())


async def test_an_open_websocket_closes_when_its_lab_ends(gw: Gateway) -> None:
    async with gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice)) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(WAIT)).data == "hello"
        gw.app[STORE].transition(gw.lab["id"], State.CANCELLED, reason="user_cancelled")
        message = await ws.receive(WAIT)
        assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    bob = await gw.http.ws_connect(gw.url(gw.prefix(gw.bob_lab) + "ws"), headers=bearer(gw.bob))
    await bob.send_str("bob's goes on")
    assert (await bob.receive(WAIT)).data == "bob's goes on"
    await bob.close()


async def test_open_websockets_end_when_the_gateway_stops_listening(gw: Gateway) -> None:
    """If this fails, stopping the gateway leaves relayed WebSockets open (a pipe belongs to
    no connection handler once upgraded: the site must still reach it), or ends them without
    the close frame (1001, going away) that tells a browser's lab to reconnect."""
    async with gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice)) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(WAIT)).data == "hello"
        runner = gw.client.server.runner
        assert runner is not None
        for site in list(runner.sites):
            await site.stop()
        message = await ws.receive(WAIT)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1001)
    await deadline(gw.upstream.ws_done.wait())
    assert gw.upstream.ws_closes[-1][0] == 1001


async def test_a_client_that_shuts_its_side_before_the_upgrade_ends_the_labs_side(
        gw: Gateway) -> None:
    """If this fails, a WebSocket whose client shut its side before the lab's 101 is opened
    anyway (the client is taken to have gone, as a browser closing a tab looks), or the lab
    connection it was to use stays held."""
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "ws", {
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}))
        wire.writer.write_eof()
        try:
            seen = await wire.eof()
        except ConnectionError:  # (the gateway ends it with a reset)
            seen = b""
        assert b" 101 " not in seen, seen
        await wait_until(lambda: held(gw) == 0, "the upgrade's lab connection given back")
    finally:
        wire.close()


async def test_every_request_has_an_access_record(gw: Gateway,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hpcgw.access")
    for name in ("a", "b", "c?token=secret"):
        response = await gw.http.get(gw.url(gw.prefix() + "echo/" + name),
                                     headers=bearer(gw.alice))
        assert response.status == 200
    gw.app[PROXY].fast.flush()
    records = [entry for record in caplog.records if record.name == "hpcgw.access"
               for entry in getattr(record, "requests", [])]
    paths = [entry["path"] for entry in records]
    assert paths == [gw.prefix() + "echo/a", gw.prefix() + "echo/b",
                     gw.prefix() + "echo/c?token=***"]
    assert {entry["user"] for entry in records} == {"alice"}
    assert {entry["status"] for entry in records} == {200}
    assert all(entry["time"].endswith("Z") for entry in records)  # as every event's time
    json.dumps(records)  # what the JSON log format writes


async def test_proxied_requests_are_counted_at_the_next_write(gw: Gateway) -> None:
    """Counters are kept with the access records and written with them (and by every
    ``/metrics`` scrape, tests/integration/test_metrics.py)."""
    counter = gw.app[PROXY].metrics.proxy_requests.labels("http", "2xx")
    gw.app[PROXY].fast.flush()
    before = counter._value.get()
    response = await gw.http.get(gw.url(gw.prefix() + "x"), headers=bearer(gw.alice))
    assert response.status == 200
    gw.app[PROXY].fast.flush()
    assert counter._value.get() == before + 1


async def test_a_big_download_then_a_request_on_the_same_connection(gw: Gateway) -> None:
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "download?n=16"))
        answer = await wire.response()
        assert answer.body == BLOCK * 16
        await wire.send(request(gw, "GET", gw.prefix() + "echo/after"))
        answer = await wire.response()
        assert (answer.status, answer.body) == (200, (gw.prefix() + "echo/after").encode())
    finally:
        wire.close()


async def test_a_pooled_connection_is_reading_again() -> None:
    """A lab connection is paused while its client is slow; if the answer ends then, the
    connection goes back to the pool paused, and the next request on it would never hear
    its answer."""
    loop = asyncio.get_running_loop()
    mine, theirs = socket.socketpair()
    try:
        _, connection = await loop.create_connection(UpstreamConnection, sock=mine)
        assert connection.transport is not None
        connection.transport.pause_reading()
        identity = LabIdentity("token", "/labs/0123456789abcdef/", 8888)
        pool = UpstreamPool()
        pool.release(identity, "127.0.0.1", 8888, connection)
        assert connection.transport.is_reading()
        assert await pool.acquire(identity, "127.0.0.1", 8888) == (connection, True)
        pool.close()
    finally:
        theirs.close()


async def test_an_upload_waits_for_a_lab_that_does_not_read(gw: Gateway) -> None:
    """A lab that reads slowly must slow the client down, not make the gateway hold the
    body: the client's sending stalls long before 64 MiB, then completes once the lab reads."""
    size = 64 * MIB
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "POST", gw.prefix() + "upload?gate=1",
                                {"Content-Length": str(size)}))
        sent, stalled = 0, False
        while sent < size:
            wire.writer.write(BLOCK)
            sent += len(BLOCK)
            try:
                await asyncio.wait_for(wire.writer.drain(), 1.0)
            except TimeoutError:
                stalled = True
                break
        assert stalled, "the gateway took the whole body while the lab read nothing"
        assert sent < size // 2
        gw.upstream.gate.set()
        await deadline(wire.writer.drain())
        while sent < size:
            await wire.send(BLOCK)
            sent += len(BLOCK)
        answer = await wire.response()
        assert answer.json() == {"size": size,
                                 "sha256": hashlib.sha256(BLOCK * (size // MIB)).hexdigest()}
    finally:
        wire.close()


async def test_a_client_that_shuts_its_side_gets_the_end_or_is_taken_to_have_gone(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    """After its answers, a client that shuts its side (a FIN) gets the end of the connection.
    While a request of its waits on the lab, the same FIN is what a browser closing a tab
    sends, and nothing else would tell while the lab is silent: the client is taken to have
    gone, as nginx does unless told to ignore client aborts. The lab's connection is closed,
    the user's hold given back, and the access record says 499."""
    caplog.set_level(logging.INFO, "hpcgw.access")
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "echo/one")
                        + request(gw, "GET", gw.prefix() + "echo/two"))
        for name in ("one", "two"):
            answer = await wire.response()
            assert (answer.status, answer.body) == (200, (gw.prefix() + f"echo/{name}").encode())
        wire.writer.write_eof()
        assert await wire.eof() == b""
    finally:
        wire.close()
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "silent"))
        await deadline(gw.upstream.silent_waiting.wait())
        wire.writer.write_eof()
        with contextlib.suppress(ConnectionError):
            assert await wire.eof() == b""
        await deadline(gw.upstream.silent_ended.wait())  # the lab's connection closed
        await wait_until(lambda: held(gw) == 0, "the hold given back")
    finally:
        wire.close()
        gw.upstream.silent_release.set()
    gw.app[PROXY].fast.flush()
    statuses = [(entry["path"], entry["status"]) for record in caplog.records
                if record.name == "hpcgw.access" for entry in getattr(record, "requests", [])]
    assert statuses[-1] == (gw.prefix() + "silent", 499)


async def test_a_lab_answer_on_a_connection_aiohttp_serves_closes_it(gw: Gateway) -> None:
    """aiohttp keeps a connection it took over; a lab request there is still answered, and
    the connection then closes, so the client's next one starts on the fast path."""
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", "/api/v1/health"))
        assert (await wire.response()).status == 200
        await wire.send(request(gw, "GET", gw.prefix() + "echo/there"))
        answer = await wire.response()
        assert answer.status == 200
        assert answer.headers.get("Connection", "").lower() == "close"
        assert await wire.eof() == b""
    finally:
        wire.close()


async def test_a_lab_with_an_endless_header_gets_cut_off(gw: Gateway) -> None:
    """A hostile lab's answer whose header never ends costs the gateway a bounded amount
    (64 KiB besides bodies) and its client gets a 503, not a wait without end."""
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "endlesshead"))
        answer = await wire.response()
        assert answer.status == 503 and answer.content_type == PROBLEM
    finally:
        wire.close()
    await deadline(gw.upstream.endless_ended.wait())


async def test_an_answer_that_ends_with_its_connection_arrives_whole(gw: Gateway) -> None:
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "untilclose"))
        answer = await wire.response()
        assert (answer.status, answer.body) == (200, b"until the end")
    finally:
        wire.close()


async def test_a_head_sent_a_byte_at_a_time_is_still_answered(gw: Gateway) -> None:
    wire = await Wire.open(gw.port)
    try:
        for byte in request(gw, "GET", gw.prefix() + "echo/slow"):
            await wire.send(bytes([byte]))
        answer = await wire.response()
        assert (answer.status, answer.body) == (200, (gw.prefix() + "echo/slow").encode())
    finally:
        wire.close()


async def test_an_http_1_0_client_gets_no_interim_answer(gw: Gateway) -> None:
    """HTTP/1.0 has no 100 Continue (RFC 9110 §15.2): the lab is not asked for one."""
    body = b"x" * 1000
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "POST", gw.prefix() + "upload",
                                {"Expect": "100-continue"}, body, version="HTTP/1.0"))
        first = await wire.message()
        assert first.status == 200 and first.json()["size"] == len(body)
        assert "expect" not in {name.lower() for name in gw.upstream.seen[-1].headers}
    finally:
        wire.close()


async def test_an_unexpected_failure_while_admitting_answers_503(
        gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = gw.app[PROXY].fast

    async def broken(*args: object) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(fast, "admit_cached", lambda *args: None)
    monkeypatch.setattr(fast, "admit", broken)
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "echo/x"))
        answer = await wire.response()
        assert answer.status == 503
    finally:
        wire.close()


async def test_a_connection_with_unsent_bytes_is_not_pooled() -> None:
    """A lab that answered without reading the whole request: what is still queued for it
    would be read as the start of the next request."""
    loop = asyncio.get_running_loop()
    mine, theirs = socket.socketpair()
    try:
        _, connection = await loop.create_connection(UpstreamConnection, sock=mine)
        assert connection.transport is not None
        connection.send(b"x" * (16 * MIB))  # more than the socket takes: queued
        assert connection.transport.get_write_buffer_size() > 0
        identity = LabIdentity("token", "/labs/0123456789abcdef/", 8888)
        pool = UpstreamPool()
        pool.release(identity, "127.0.0.1", 8888, connection)
        assert connection.closed
        assert pool.take(identity, "127.0.0.1", 8888) is None
    finally:
        theirs.close()
