"""``[gateway] body_timeout`` on the lab proxy's fast path: a client that begins a request body
and stops sending (a slow-body attack, or a client that hung) gets 408 and loses the
connection, as nginx's ``client_body_timeout`` does, instead of holding a lab connection and
its share of ``max_lab_connections`` for as long as it likes. The timeout is for a stall: a
slow but steady upload goes through, and time the lab takes to read does not count."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.test_fast_path import wait_until
from tests.unit.test_lab_connections import hand_to_aiohttp, held
from tests.unit.test_lab_proxy_hostile import hostile as hostile  # the fixture
from tests.unit.test_lab_proxy_hostile import open_on
from tests.unit.test_relay import BLOCK, MIB, PROBLEM, Gateway, bearer
from tests.unit.test_relay import gw as gw  # the fixture
from tests.unit.test_relay_wire import Wire, deadline, request, upload_answer

BODY_TIMEOUT = 0.5


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    return {"body_timeout": BODY_TIMEOUT}


async def assert_timed_out(gw: Gateway, wire: Wire) -> None:
    """``wire`` got the 408 problem and then its end; the lab saw the upload cut short, and
    alice holds no lab connection any more."""
    answer = await wire.response()
    assert (answer.status, answer.content_type) == (408, PROBLEM)
    assert answer.json()["type"].endswith("/request-timeout")
    assert answer.headers["Connection"] == "close"
    assert await deadline(wire.eof()) == b""
    await deadline(gw.upstream.upload_aborted.wait())
    assert held(gw) == 0


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_an_upload_that_stops_gets_408_and_the_lab_connection_ends(
        gw: Gateway, framing: str) -> None:
    wire = await Wire.open(gw.port)
    try:
        if framing == "length":
            await wire.send(request(gw, "PUT", gw.prefix() + "upload",
                                    {"Content-Length": "1000"}) + b"x" * 100)
        else:
            await wire.send(request(gw, "PUT", gw.prefix() + "upload",
                                    {"Transfer-Encoding": "chunked"}) + b"64\r\n" + b"x" * 50)
        await deadline(gw.upstream.first_bytes.wait())  # the lab is reading it
        await assert_timed_out(gw, wire)  # and then nothing more is sent
    finally:
        wire.close()
    response = await gw.http.get(gw.url(gw.prefix() + "lab"), headers=bearer(gw.alice))
    assert (response.status, await response.text()) == (200, "ok")


@pytest.mark.parametrize("expect", [
    [("Expect", "100-continue")],
    [("Expect", "100-Continue")],  # the same expectation (RFC 9110: case-insensitive)
    [("Expect", "100-continue"), ("expect", "100-continue")],
], ids=["plain", "capitals", "twice"])
async def test_a_client_given_the_go_ahead_that_sends_nothing_gets_408(
        gw: Gateway, expect: list[tuple[str, str]]) -> None:
    """``Expect: 100-continue`` however it is written: the lab is asked in the one form its
    server knows (JupyterLab's sends no 100 otherwise, and the body would be owed by nobody),
    and a client that sends nothing after the go-ahead times out like any other."""
    wire = await Wire.open(gw.port)
    try:
        head = request(gw, "PUT", gw.prefix() + "upload", {"Content-Length": "1000"})
        extra = "".join(f"{name}: {value}\r\n" for name, value in expect).encode()
        await wire.send(head[:-2] + extra + b"\r\n")
        assert (await wire.message()).status == 100
        await assert_timed_out(gw, wire)
    finally:
        wire.close()


async def test_a_lab_sending_interim_answers_does_not_keep_a_stalled_body_alive(
        gw: Gateway) -> None:
    """A lab of the user's own that sends ``102`` every half timeout and never reads: only
    the client's bytes restart the clock."""
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "PUT", gw.prefix() + f"processing?every={BODY_TIMEOUT / 2}",
                                {"Content-Length": "1000"}) + b"x" * 10)
        answer = await deadline(wire.response())  # not an endless run of 102s
        assert (answer.status, answer.content_type) == (408, PROBLEM)
        assert set(wire.interim) == {102}
        await wait_until(lambda: held(gw) == 0, "the hold given back")
    finally:
        gw.upstream.silent_release.set()
        wire.close()


async def test_a_slow_but_steady_upload_is_not_cut(gw: Gateway) -> None:
    """Twelve pieces, each well within the timeout of the one before, five timeouts in all."""
    body = BLOCK[:12 * 1024]
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "PUT", gw.prefix() + "upload",
                                {"Content-Length": str(len(body))}))
        for start in range(0, len(body), 1024):
            await asyncio.sleep(BODY_TIMEOUT * 0.4)  # the client's own pace, not a wait on us
            await wire.send(body[start:start + 1024])
        answer = await wire.response()
        assert answer.status == 200, answer.body
        assert answer.json() == upload_answer(body)
    finally:
        wire.close()


async def test_time_the_lab_takes_to_read_does_not_count(gw: Gateway) -> None:
    """The lab reads nothing until the test opens its gate: the gateway stops reading from
    the client (its buffers, the sockets' and the lab's all full, the client's send blocks),
    and that wait is the lab's, not a stall of the client's."""
    body = BLOCK * 32
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "PUT", gw.prefix() + "upload?gate=1",
                                {"Content-Length": str(len(body))}))
        sending = asyncio.create_task(wire.send(body))
        done, _ = await asyncio.wait({sending}, timeout=BODY_TIMEOUT * 4)
        assert not done, "the whole body was taken in: the lab's reading never held it up"
        gw.upstream.gate.set()
        await deadline(sending)
        answer = await wire.response()
        assert answer.status == 200, answer.body
        assert answer.json() == upload_answer(body)
        assert len(body) == 32 * MIB
    finally:
        wire.close()


async def test_on_a_connection_aiohttp_serves_a_stalled_upload_gets_408_too(gw: Gateway) -> None:
    """A client may route its lab requests through aiohttp (a request for another path first,
    on the same connection): the timeout holds there as well."""
    wire = await Wire.open(gw.port)
    try:
        await hand_to_aiohttp(gw, wire)
        await wire.send(request(gw, "PUT", gw.prefix() + "upload",
                                {"Content-Length": "1000"}) + b"x" * 100)
        await deadline(gw.upstream.first_bytes.wait())
        answer = await wire.response()
        assert (answer.status, answer.content_type) == (408, PROBLEM)
        assert answer.json()["type"].endswith("/request-timeout")
        await deadline(gw.upstream.upload_aborted.wait())  # (aiohttp then lingers, up to 10 s)
        await wait_until(lambda: held(gw) == 0, "the hold given back")
    finally:
        wire.close()


async def test_once_the_lab_reads_again_a_stall_counts_again(gw: Gateway) -> None:
    """The lab reads nothing for 4 timeouts (the clock stopped), then reads on; the client,
    32 MiB into a body of 128 MiB, then stops: 408."""
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "PUT", gw.prefix() + "upload?gate=1",
                                {"Content-Length": str(128 * MIB)}))
        sending = asyncio.create_task(wire.send(BLOCK * 32))
        done, _ = await asyncio.wait({sending}, timeout=BODY_TIMEOUT * 4)
        assert not done, "the lab's reading never held the body up"
        gw.upstream.gate.set()
        await deadline(sending)
        await assert_timed_out(gw, wire)
    finally:
        wire.close()


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_a_pipelined_upload_that_stops_after_a_whole_one_gets_408(
        gw: Gateway, version: str) -> None:
    """Two answers, in order: the whole upload's, then the 408; then the connection ends."""
    first = BLOCK[:5000]
    headers = {"Connection": "keep-alive"} if version == "HTTP/1.0" else {}
    wire = await Wire.open(gw.port)
    try:
        await wire.send(
            request(gw, "PUT", gw.prefix() + "upload", headers, first, version=version)
            + request(gw, "PUT", gw.prefix() + "upload", {**headers, "Content-Length": "1000"},
                      version=version) + b"y" * 10)
        answer = await wire.response()
        assert (answer.status, answer.json()) == (200, upload_answer(first))
        await assert_timed_out(gw, wire)
    finally:
        wire.close()


async def test_a_lab_that_answers_before_reading_gets_no_408_after_its_answer(
        gw: Gateway) -> None:
    """The lab answers at once without reading the body (``echo``), and the client stops
    sending: its answer, then the end of the connection, never a 408 behind it."""
    path = gw.prefix() + "echo/early"
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "PUT", path, {"Content-Length": "100000"}) + b"z" * 10)
        answer = await wire.response()
        assert (answer.status, answer.body) == (200, path.encode())
        assert await deadline(wire.eof()) == b""
        await wait_until(lambda: held(gw) == 0, "the hold given back")
    finally:
        wire.close()


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_on_a_connection_aiohttp_serves_a_whole_upload_arrives_intact(
        gw: Gateway, framing: str) -> None:
    """aiohttp's path reads the body through the timeout: every byte still reaches the lab."""
    body = BLOCK[:300 * 1024]
    wire = await Wire.open(gw.port)
    try:
        await hand_to_aiohttp(gw, wire)
        if framing == "length":
            await wire.send(request(gw, "PUT", gw.prefix() + "upload", body=body))
        else:
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 50000]), body[i:i + 50000])
                              for i in range(0, len(body), 50000))
            await wire.send(request(gw, "PUT", gw.prefix() + "upload",
                                    {"Transfer-Encoding": "chunked"}) + chunks + b"0\r\n\r\n")
        answer = await wire.response()
        assert (answer.status, answer.json()) == (200, upload_answer(body))
    finally:
        wire.close()


@pytest.mark.parametrize("path", ["fast", "aiohttp"])
async def test_a_client_waiting_for_a_100_that_never_comes_gets_408(
        gw: Gateway, hostile: Any, path: str) -> None:
    """A lab's server sends its 100 at once, or answers at once: until one of them comes the
    client sends nothing, and the body clock runs. If this fails on a path, a lab that does
    neither keeps the client's request, its lab connection and its share of
    ``max_lab_connections`` for as long as the client stays."""
    silent = asyncio.Event()

    async def neither(path: str, writer: asyncio.StreamWriter) -> None:
        await silent.wait()  # no 100, no answer

    _, prefix = await hostile(neither)
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "PUT", prefix + "upload",
                                {"Content-Length": "1000", "Expect": "100-continue"}))
        answer = await wire.response()
        assert (answer.status, answer.content_type) == (408, PROBLEM)
        await wait_until(lambda: held(gw) == 0, "the lab connection given back")
    finally:
        wire.close()
        silent.set()
