"""Parity of the lab proxy's two paths (a parity audit's findings; each test failed on the
code before its fix).

Lab traffic reaches a lab either on the fast path (gateway/proxy/front.py and friends) or, on a
connection that carried any other request first, through aiohttp (``LabProxy.handle`` ->
gateway/proxy/relay.py). A client chooses the path: it only has to send an API request first.
So every guarantee SECURITY.md gives for the lab proxy must hold on both, and each test here
is parametrized over both (``fast``, ``aiohttp``); where one path already holds it, its case
passes and documents what the other must do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.api.keys import PROXY
from gateway.proxy.wsframes import GOING_AWAY
from tests.unit import test_relay as relay
from tests.unit.test_fast_path import held, wait_until
from tests.unit.test_lab_pool_and_pipe import masked_frame
from tests.unit.test_lab_proxy_hostile import (
    UPGRADE,
    close_code_then_end,
    disable_from_another_process,
    end_the_lab,
    open_on,
    reset,
    revoke,
)
from tests.unit.test_lab_proxy_hostile import hostile as hostile  # the fixture
from tests.unit.test_relay import MIB, WAIT, Gateway
from tests.unit.test_relay_wire import Wire, deadline, request

gw = relay.gw  # the fixture (a module attribute, so that pytest finds it here too)
PATHS = pytest.mark.parametrize("path", ["fast", "aiohttp"])
STATUS_LINE = re.compile(rb"HTTP/1\.1 \d{3} [\t\x20-\x7e\x80-\xff]*")


# -- max_lab_connections: a client that leaves gives its hold back ---------------------------


def leave(wire: Wire, ending: str) -> None:
    """The client goes: ``close`` (close(2): a FIN, as a browser closing a tab) or ``reset``
    (an RST)."""
    if ending == "reset":
        reset(wire.writer)
    else:
        wire.close()


@pytest.mark.parametrize("ending", ["close", "reset"])
@pytest.mark.parametrize("stage", ["before-head", "mid-body"])
@PATHS
async def test_a_client_that_leaves_gives_its_hold_back_whatever_the_lab_does(
        gw: Gateway, hostile: Any, path: str, stage: str, ending: str) -> None:
    """SECURITY.md: "a client that leaves gives its connection back, also while its lab has
    not answered". Here the lab is silent, before its answer's head or after part of its
    body (a quiet event stream, a long poll, a kernel busy before its reply). If this fails,
    leftover holds lock the user out with 429 (``max_lab_connections``) until the lab speaks:

    - fast path, ``close``: a FIN with a request in flight was read as a half-close, and
      nothing written while the lab is silent ever found the socket closed;
    - aiohttp's path, mid-body: only the wait for the head was watched, and aiohttp (run
      without handler cancellation) tells a handler nothing when its client goes."""
    release = asyncio.Event()

    async def answer(_: str, writer: asyncio.StreamWriter) -> None:
        if stage == "mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
            await writer.drain()
        await asyncio.wait_for(release.wait(), WAIT * 3)  # then the lab's side just ends
        writer.close()

    lab, prefix = await hostile(answer)
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", prefix + "events"))
        if stage == "mid-body":
            seen = b""
            while b"first" not in seen:
                seen += await deadline(wire.reader.read(65536))
        else:
            await wait_until(lambda: lab.requests, "the lab has the request")
        assert held(gw) == 1
        leave(wire, ending)
        await wait_until(lambda: held(gw) == 0, f"the hold of a client that left ({ending}, "
                         f"the lab silent {stage}) is given back")
    finally:
        wire.close()
        release.set()


# -- activity for the idle cull: an answer that streams counts while it flows ---------------


@PATHS
async def test_an_answer_that_streams_counts_as_activity_while_it_flows(
        gw: Gateway, path: str) -> None:
    """The idle cull stops a lab with no proxied traffic for ``labs.idle_timeout``. A long
    download (or an event stream) is traffic for as long as it flows: if this fails, the
    fast path counted it once, at its start, and a download longer than the idle timeout
    could see its lab stopped under it."""
    proxy = gw.app[PROXY]
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "download?n=3&gate=1"))
        seen = len(await deadline(wire.reader.readuntil(b"\r\n\r\n")))
        while seen < MIB:  # the first MiB; the lab waits for the gate before the rest
            seen += len(await deadline(wire.reader.read(MIB)))
        started = proxy.last_activity(gw.lab["id"])
        await wait_until(lambda: time.time() > started + 0.05, "the clock moved on")
        gw.upstream.gate.set()
        await wait_until(lambda: proxy.last_activity(gw.lab["id"]) > started,
                         "the rest of the answer counted as activity")
    finally:
        wire.close()


# -- Expect: 100-continue: the lab decides whether the body comes --------------------------


@PATHS
async def test_an_upload_that_expects_100_continue_waits_for_the_labs_word(
        gw: Gateway, hostile: Any, path: str) -> None:
    """A client that sends ``Expect: 100-continue`` sends its body only after a 100, so that
    a lab refusing the upload costs it nothing. If this fails on aiohttp's path, aiohttp sent
    the client its 100 at once, whatever the lab (or the gateway's own checks) would say."""

    async def refuse(_: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        writer.close()

    _, prefix = await hostile(refuse)
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "PUT", prefix + "files/big.bin", {
            "Content-Length": "1000000", "Expect": "100-continue"}))
        line = await deadline(wire.reader.readuntil(b"\r\n"))
    finally:
        wire.close()
    assert line.startswith(b"HTTP/1.1 403 "), line


@PATHS
@pytest.mark.parametrize("spelling", ["100-continue", "100-Continue"])
async def test_an_upload_that_expects_100_continue_reaches_the_lab_whole(
        gw: Gateway, path: str, spelling: str) -> None:
    """The lab's 100 reaches the client, then the body reaches the lab, whichever way the
    client spells the expectation. JupyterLab's server (tornado, and the FakeLab) sends a 100
    only for exactly ``100-continue``: if this fails on aiohttp's path, the client's spelling
    went to the lab as it was and the gateway waited for ever on a 100 that never came."""
    body = b"x" * 5000
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "POST", gw.prefix() + "upload", {
            "Content-Length": str(len(body)), "Expect": spelling}))
        assert (await wire.message()).status == 100
        await wire.send(body)
        answer = await wire.response()
    finally:
        wire.close()
    assert answer.status == 200
    assert json.loads(answer.body) == {"size": len(body),
                                       "sha256": hashlib.sha256(body).hexdigest()}


async def test_an_unauthenticated_upload_gets_its_401_without_a_100(gw: Gateway) -> None:
    """aiohttp answers ``Expect`` before any middleware runs: on a lab path it must not invite
    the body of a request the gateway is about to refuse."""
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "POST", gw.prefix() + "upload", {
            "Content-Length": "1000000", "Expect": "100-continue"}, token=None))
        line = await deadline(wire.reader.readuntil(b"\r\n"))
    finally:
        wire.close()
    assert line.startswith(b"HTTP/1.1 401 "), line


# -- a lab's answer: malformed or over the head cap is the lab failing (503) ------------------


BIG_HEAD = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000)
                                                for i in range(80))  # 80 KiB, 80 headers


@pytest.mark.parametrize(("answer_bytes", "pieces"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk", 1),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"2\r\nok\r\n0\r\n\r\n", 1),
    (BIG_HEAD + b"Content-Length: 2\r\n\r\nok", 10),
    (BIG_HEAD + b"Content-Length: 2\r\n\r\nok", 1),
], ids=["two-lengths", "length-and-chunked", "head-over-64-kib", "head-over-64-kib-in-one-write"])
@PATHS
async def test_a_malformed_or_oversized_lab_answer_is_a_503(
        gw: Gateway, hostile: Any, path: str, answer_bytes: bytes, pieces: int) -> None:
    """The gateway trusts nothing a lab answers: an answer that cannot be read one way only,
    or whose head is over 64 KiB (upstream.MAX_RESPONSE_HEAD), is the lab's server failing:
    503 (the API's LabUnavailable; a browser gets the lab's "starting" page). If this fails:
    on aiohttp's path a parser error of its HTTP client (a ClientResponseError) became a 500
    logged as the gateway's bug, and aiohttp's client caps a head only at 128 headers of
    8 KiB; on the fast path a head over 64 KiB that arrived in one read (up to 256 KiB) was
    relayed before the cap was looked at."""

    async def answer(_: str, writer: asyncio.StreamWriter) -> None:
        step = -(-len(answer_bytes) // pieces)
        for start in range(0, len(answer_bytes), step):
            writer.write(answer_bytes[start:start + step])
            await writer.drain()
            if pieces > 1:
                await asyncio.sleep(0.02)  # (pacing: each piece its own read at the gateway)
        writer.close()

    _, prefix = await hostile(answer)
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", prefix + "x"))
        line = await deadline(wire.reader.readuntil(b"\r\n"))
        rest = b""
        while len(rest) < 300 and not rest.endswith(b"}"):  # a problem's JSON, if one came
            more = await deadline(wire.reader.read(65536))
            if not more:
                break
            rest += more
    finally:
        wire.close()
    assert line.startswith(b"HTTP/1.1 503 "), (line, rest[-200:])


# -- interim answers: the status line the client gets is well formed -------------------------


@PATHS
async def test_an_interim_answers_status_line_is_well_formed_whatever_the_lab_sends(
        gw: Gateway, hostile: Any, path: str) -> None:
    """SECURITY.md: "its status line is well formed (a reason phrase with control bytes is
    left out ...)" holds for interim answers (102, 103) too, which only the fast path relays:
    if this fails, NUL and escape sequences from a lab reach the client's terminal or log
    viewer."""

    async def answer(_: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 102 Pro\x00ce\x1b[2Jssing\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    _, prefix = await hostile(answer)
    wire = await open_on(gw, path)
    lines: list[bytes] = []
    try:
        await wire.send(request(gw, "GET", prefix + "x"))
        while True:
            head = await deadline(wire.reader.readuntil(b"\r\n\r\n"))
            lines.append(head.split(b"\r\n", 1)[0])
            if not head.startswith(b"HTTP/1.1 1"):
                break
    finally:
        wire.close()
    assert lines[-1].startswith(b"HTTP/1.1 200"), lines
    bad = [line for line in lines if not STATUS_LINE.fullmatch(line)]
    assert not bad, f"status lines with control bytes reached the client: {bad!r}"


# -- no redirect is followed, also for a WebSocket upgrade -------------------------------------


@PATHS
async def test_a_websocket_upgrade_the_lab_redirects_is_not_followed(
        gw: Gateway, hostile: Any, path: str) -> None:
    """The relay never follows a lab's redirect, also of a WebSocket upgrade: the client gets
    the redirect, its Location kept under the lab's prefix. If this fails on aiohttp's path,
    ``ws_connect`` (which follows 3xx, up to 10 hops) made the gateway itself request any
    path of the lab's server, outside the lab's prefix too, with the lab's token."""

    async def answer(target: str, writer: asyncio.StreamWriter) -> None:
        if target.endswith("/ws"):
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n"
                         b"Content-Length: 0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    lab, prefix = await hostile(answer)
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", prefix + "ws", UPGRADE))
        response = await wire.message()
    finally:
        wire.close()
    assert lab.requests == [f"GET {prefix}ws HTTP/1.1"], lab.requests
    assert response.status == 302, response.status
    assert response.headers.get("Location") == prefix.rstrip("/") + "/elsewhere"


@PATHS
async def test_an_http_1_0_websocket_handshake_is_relayed_alike_on_both_paths(
        gw: Gateway, path: str) -> None:
    """An HTTP/1.0 client's WebSocket handshake: aiohttp accepts one (RFC 9110 would ignore
    Upgrade in HTTP/1.0; no browser sends it), so the fast path does too, rather than relay it
    to the lab as a plain GET on one path and a WebSocket on the other. Both echo a message."""
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "ws", UPGRADE, version="HTTP/1.0"))
        assert (await wire.message()).status == 101
        await wire.send(masked_frame(b"over 1.0"))
        assert await deadline(wire.reader.readexactly(10)) == b"\x82\x08over 1.0"
    finally:
        wire.close()


async def _read_events(wire: Wire, until: float) -> tuple[bytes, bool]:
    """What an event stream sends for ``until`` s (from now), and whether it ended (the
    connection closed or was reset) by then."""
    seen = b""
    try:
        async with asyncio.timeout(until):
            while data := await wire.reader.read(65536):
                seen += data
    except TimeoutError:
        return seen, False
    except ConnectionError:
        pass
    return seen, True


@pytest.mark.parametrize("ending", [revoke, disable_from_another_process, end_the_lab],
                         ids=["token-revoked", "user-disabled", "lab-ended"])
@PATHS
async def test_an_answer_still_streaming_is_cut_once_no_longer_admitted(
        gw: Gateway, tmp_path: Path, path: str, ending: Callable[[Gateway, Path], None]) -> None:
    """An event stream (or a long download) is checked again while it streams, as a
    WebSocket is: it flows for as long as it is admitted (here past its first check), then
    stops within about a second of its credential revoked, its user disabled or its lab ended,
    cut (no last chunk) on both sides. If this fails, a leaked token that was revoked keeps
    reading a lab's event stream for as long as the lab sends."""
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "events"))
        head = await deadline(wire.reader.readuntil(b"\r\n\r\n"))
        assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" in head.lower()
        admitted, ended = await _read_events(wire, 2.5)  # past CHECKED_AFTER and a check
        assert not ended and b"data: 10" in admitted
        ending(gw, tmp_path)
        after, ended = await _read_events(wire, WAIT / 2)
    finally:
        wire.close()
    assert ended, "the stream was not cut"
    assert not after.endswith(b"0\r\n\r\n")  # cut, never complete
    await deadline(gw.upstream.events_ended.wait())


@PATHS
async def test_a_quiet_stream_sends_nothing_more_once_its_token_is_revoked(
        gw: Gateway, tmp_path: Path, path: str) -> None:
    """An event stream that sends its first event at once, then is quiet (a long poll, sparse
    events): the token is revoked during the quiet, and the next event never reaches the
    client. From a review: the fast path watched an answer only from a piece arriving a
    second after the request, and wrote that piece before any check."""
    speak = asyncio.Event()

    async def quiet_events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(b"data: first\n\n")
            await asyncio.wait_for(speak.wait(), WAIT)
            await response.write(b"data: AFTER-REVOCATION\n\n")
            for _ in range(int(WAIT / 0.05)):
                await asyncio.sleep(0.05)
                await response.write(b": keep-alive\n\n")
        except ConnectionError:
            pass
        return response

    gw.upstream.events = quiet_events  # type: ignore[method-assign]
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "events"))
        head = await deadline(wire.reader.readuntil(b"\r\n\r\n"))
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"first" in await deadline(wire.reader.read(65536))
        revoke(gw, tmp_path)
        await asyncio.sleep(2.5)  # more than a check's interval after the revocation
        speak.set()
        after, _ = await _read_events(wire, WAIT / 2)
    finally:
        wire.close()
    assert b"AFTER-REVOCATION" not in after, after[:200]


# -- access records and counters: one per request, a client that left is a 499 ---------------


@PATHS
async def test_a_request_whose_client_left_before_the_answer_is_recorded_and_counted(
        gw: Gateway, path: str, caplog: pytest.LogCaptureFixture) -> None:
    """One access record per request, and the proxy's counters with it; a client that left
    before the lab answered is recorded as 499 on both paths. If this fails on the fast path,
    a request that changed a lab's state (an upload, a file deleted with a leaked token) is
    missing from the audit trail whenever its client disconnects right after sending it."""
    caplog.set_level(logging.INFO, "hpcgw.access")
    proxy = gw.app[PROXY]
    proxy.fast.flush()
    counter = proxy.metrics.proxy_requests.labels("http", "4xx")
    before = counter._value.get()
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "silent"))
        await deadline(gw.upstream.silent_waiting.wait())
        leave(wire, "reset")  # (a reset: the fast path notices it at once, see above)
    finally:
        wire.close()
    try:
        await deadline(gw.upstream.silent_ended.wait())  # the gateway gave up on the lab

        def counted() -> bool:
            proxy.fast.flush()
            return bool(counter._value.get() == before + 1)

        await wait_until(counted, "the request of a client that left is counted (4xx)")
        if path == "fast":
            records = [entry for record in caplog.records if record.name == "hpcgw.access"
                       for entry in getattr(record, "requests", [])]
            assert [(r["path"], r["status"]) for r in records] == [
                (gw.prefix() + "silent", 499)]
    finally:
        gw.upstream.silent_release.set()


# -- the gateway stops: open WebSockets are told (1001) -------------------------------------


@PATHS
async def test_open_websockets_get_going_away_when_the_gateway_stops(
        gw: Gateway, path: str) -> None:
    """Stopping the gateway ends every relayed WebSocket with a close frame saying 1001
    (going away: a browser's lab reconnects), on both sides and both paths. If this fails on
    aiohttp's path, such a WebSocket stayed open and relayed after the site stopped, and
    ``hpcgw serve``'s shutdown then waited aiohttp's shutdown_timeout (60 s) for it before
    cutting the connection without a close frame."""
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "ws", UPGRADE))
        assert (await wire.message()).status == 101
        runner = gw.client.server.runner
        assert runner is not None
        for site in list(runner.sites):
            await site.stop()
        try:
            code: int | str | None = await close_code_then_end(wire)
        except TimeoutError:
            code = f"no close frame and no end within {WAIT} s"
    finally:
        wire.close()
    assert code == GOING_AWAY, code
    await deadline(gw.upstream.ws_done.wait())
    assert gw.upstream.ws_closes[-1][0] == GOING_AWAY
