"""``max_lab_connections`` against a hostile user and careless clients: no way to hold more
lab connections than the limit, none that leaks a hold (a leak locks the user out for good),
and answers a client can read. Written from a red-team of the feature; each test here failed
on some version of it, or checks an ending that could have leaked."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from gateway.proxy import identity
from gateway.proxy.front import MAX_BUFFERED
from gateway.server import STORE
from tests.unit.test_fast_path import wait_until
from tests.unit.test_lab_connections import at_the_limit, hand_to_aiohttp, held, limit_to
from tests.unit.test_lab_pool_and_pipe import RawLab, path_of, publish, raw_lab
from tests.unit.test_relay import PROBLEM, Gateway, bearer
from tests.unit.test_relay import gw as gw  # the fixture
from tests.unit.test_relay_wire import Wire, deadline, request

WS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def reset(wire: Wire) -> None:
    """Leave with a TCP RST (SO_LINGER 0), as a crashed client or a dropped NAT entry does."""
    sock = wire.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wire.writer.transport.abort()


async def rst_delivered() -> None:
    """The RST crosses loopback at once; a few loop turns for the kernel to mark the socket."""
    await asyncio.sleep(0.1)


# -- the client gone before the gateway knows ----------------------------------------------------


def _slow_then(answer: asyncio.Event, slow_answer: bytes) -> Any:
    async def handler(lab: RawLab, index: int, head: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        path = path_of(head)
        if path.endswith("/slow"):
            await answer.wait()
            writer.write(slow_answer)  # head and body in one write
        elif path.endswith("/ws"):
            writer.write(SWITCH)
            await writer.drain()
            await reader.read()  # the pipe stays open until the gateway ends it
            return
        else:
            writer.write(OK)
        await writer.drain()
    return handler


async def _pipelined_after_reset(gw: Gateway, fake_clusters: Any, slow_answer: bytes,
                                 second: dict[str, str] | None, second_path: str
                                 ) -> RawLab:
    """Request 1 waits at the lab; request 2 is pipelined behind it with enough bytes after
    it (> MAX_BUFFERED) that the gateway stops reading the client; the client then resets.
    The gateway only learns of the reset when request 1's answer fails to go out."""
    limit_to(gw, 1)
    answer = asyncio.Event()
    async with raw_lab(gw, fake_clusters, _slow_then(answer, slow_answer)) as (
            lab, prefix, wire):
        await wire.send(request(gw, "GET", prefix + "slow")
                        + request(gw, "GET", prefix + second_path, second)
                        + b"x" * (MAX_BUFFERED + 64 * 1024))
        await wait_until(lambda: len(lab.heads) == 1 and held(gw) == 1,
                         "request 1 at the lab, held")
        reset(wire)
        await rst_delivered()
        answer.set()  # request 1's answer: the gateway's write to the client fails now
        await wait_until(lambda: held(gw) == 0, "every hold given back once the client is gone")
        return lab


async def test_a_pipelined_upgrade_is_not_begun_once_the_client_is_gone(
        gw: Gateway, fake_clusters: Any) -> None:
    """The gateway learns of the client's reset only when request 1's answer fails to go
    out; the WebSocket upgrade pipelined behind it must not begin then (it used to, and the
    lab's 101 found no client: the hold was never given back, and with a limit of 1 alice
    was locked out)."""
    await _pipelined_after_reset(gw, fake_clusters, OK, WS, "ws")


async def test_a_pipelined_request_is_not_begun_once_the_client_is_gone(
        gw: Gateway, fake_clusters: Any) -> None:
    """Same with a plain GET that needs a new lab connection (request 1's was
    ``Connection: close``)."""
    await _pipelined_after_reset(
        gw, fake_clusters,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", None, "next")


class GatedProofLab(RawLab):
    """A RawLab (the user's own lab server: it holds the lab token) that answers the
    gateway's identity proof only once :attr:`gate` opens."""

    def __init__(self) -> None:
        async def never(*_: Any) -> None:
            raise AssertionError("no request gets past the proof here")
        super().__init__(never)
        self.gate = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.connections)
        self.connections.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            nonce = path_of(head).split("nonce=", 1)[1]
            if not await self.gate_opens(reader):
                return  # the gateway gave up on this connection
            writer.write(self.proof_answer(writer, nonce))
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.append(index)
            writer.close()

    async def gate_opens(self, reader: asyncio.StreamReader) -> bool:
        """Wait for :attr:`gate`; False if the connection ended first (not noticed here)."""
        await self.gate.wait()
        return True

    def open_count(self) -> int:
        return len(self.connections) - len(self.closed)


class ProofLabNoticingCloses(GatedProofLab):
    """A GatedProofLab that notices the gateway closing a connection during the proof."""

    async def gate_opens(self, reader: asyncio.StreamReader) -> bool:
        gate, eof = asyncio.ensure_future(self.gate.wait()), asyncio.ensure_future(reader.read())
        await asyncio.wait({gate, eof}, return_when=asyncio.FIRST_COMPLETED)
        if not gate.done():
            gate.cancel()
            return False
        eof.cancel()
        return True


async def test_a_client_gone_during_the_labs_proof_leaves_no_connection_behind(
        gw: Gateway, fake_clusters: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sending a request and resetting at once, again and again, to a lab that is slow to
    answer the identity proof: each new lab connection ends with its client, so the user
    never has more of them open than the limit allows while the gateway counts none."""
    monkeypatch.setattr(identity, "PROOF_TIMEOUT", 60.0)  # a proof for nobody: not its end
    limit_to(gw, 1)
    lab = ProofLabNoticingCloses()
    prefix = await publish(gw, fake_clusters, lab)
    try:
        for attempt in range(1, 5):
            wire = await Wire.open(gw.port)
            await wire.send(request(gw, "GET", prefix + "x"))
            await wait_until(lambda n=attempt: held(gw) == 1 and len(lab.connections) == n
                             and lab.open_count() == 1, f"request {attempt} in its proof")
            reset(wire)
            await wait_until(lambda: held(gw) == 0 and lab.open_count() == 0,
                             "the client's hold and its lab connection both gone")
    finally:
        lab.gate.set()
        lab.close()


class GatedAfterFirstLab(GatedProofLab):
    """Proves the first connection at once and answers its one request with
    ``Connection: close`` (so the next request needs a new connection); later connections are
    a GatedProofLab's (proven when :attr:`gate` opens, never answered)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections:
            return await super()._serve(reader, writer)
        self.connections.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(self.proof_answer(writer, path_of(head).split("nonce=", 1)[1]))
            self.heads.append((0, await reader.readuntil(b"\r\n\r\n")))
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        finally:
            self.closed.append(0)
            writer.close()


async def test_a_half_close_while_a_second_requests_lab_connection_is_proven_ends_it(
        gw: Gateway, fake_clusters: Any) -> None:
    """Request 2 on a kept-alive connection, a POST with half its body sent; the client shuts
    its side (SHUT_WR) while the gateway proves a new lab connection. The body can no longer
    arrive, so the request ends and its hold is given back, as on a connection's first
    request (before, request 1's state said the body had been sent, and the half body went
    to the lab, held for as long as the client kept its half-open socket)."""
    limit_to(gw, 1)
    lab = GatedAfterFirstLab()
    prefix = await publish(gw, fake_clusters, lab)
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", prefix + "first"))
        assert (await wire.response()).body == b"ok"
        await wire.send(request(gw, "POST", prefix + "second", {"Content-Length": "10"})
                        + b"12345")
        await wait_until(lambda: lab.open_count() == 1 and len(lab.connections) == 2,
                         "request 2's lab connection in its proof")
        wire.writer.write_eof()
        await rst_delivered()  # (the FIN, likewise)
        lab.gate.set()
        await wait_until(lambda: held(gw) == 0,
                         "a request whose body can no longer come is ended, its hold given back")
    finally:
        wire.close()
        lab.gate.set()
        lab.close()


# -- answers -----------------------------------------------------------------------------------


async def test_a_429_to_an_upload_is_read_by_the_client_not_reset(
        gw: Gateway) -> None:
    """A client at the limit uploading (a notebook save, 2 MiB) reads the 429 and its
    Retry-After: the gateway does not read the body, but lingers until the client has sent
    it (a close at once makes the kernel answer the unread bytes with a reset, which destroys
    the answer in the client's receive buffer)."""
    async with at_the_limit(gw) as wire:
        body = b"n" * (2 * 1024 * 1024)
        wire.writer.write(request(gw, "POST", gw.prefix() + "upload", body=body))
        try:
            await deadline(wire.writer.drain())
            answer = await wire.response()
        except ConnectionError as exc:
            pytest.fail(f"the client never saw the 429: {exc!r}")
        assert (answer.status, answer.headers.get("Retry-After")) == (429, "1")


async def test_a_429_to_head_has_no_body(gw: Gateway) -> None:
    """RFC 9110 9.3.2: no content in an answer to HEAD, the gateway's own answers included."""
    async with at_the_limit(gw) as wire:
        await wire.send(request(gw, "HEAD", gw.prefix() + "gzip"))
        answer = await wire.response(head=True)
        assert answer.status == 429
        assert await wire.eof() == b"", "bytes after the head of an answer to HEAD"


async def test_the_fast_paths_429_says_the_limit_and_closes(gw: Gateway) -> None:
    async with at_the_limit(gw) as wire:
        await wire.send(request(gw, "GET", gw.prefix() + "echo/a"))
        answer = await wire.response()
        assert (answer.status, answer.content_type) == (429, PROBLEM)
        assert answer.headers["Retry-After"] == "1"
        assert answer.headers["Connection"].lower() == "close"
        assert answer.json()["limit"] == "max_lab_connections"
        assert await wire.eof() == b""
        assert held(gw) == 1
    await wait_until(lambda: held(gw) == 0, "given back")


async def test_aiohttp_paths_429_skips_the_body(gw: Gateway) -> None:
    """On a connection aiohttp serves, a 429 to a POST with a body: the body is skipped and
    the next request on the same connection is read correctly."""
    async with at_the_limit(gw) as wire:
        await hand_to_aiohttp(gw, wire)
        await wire.send(request(gw, "POST", gw.prefix() + "upload", body=b"GET / HTTP/1.1\r\n"
                                b"Host: x\r\n\r\n" + b"z" * 4096)
                        + request(gw, "GET", "/api/v1/health"))
        answer = await wire.response()
        assert (answer.status, answer.headers.get("Retry-After")) == (429, "1")
        try:
            after = await wire.response()
            assert after.status == 200
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # closed instead: fine too
    await wait_until(lambda: held(gw) == 0, "given back")


async def test_every_framing_and_ending_gives_the_hold_back(gw: Gateway) -> None:
    """Limit 1, fast path: HEAD, HTTP/1.0, chunked upload, Expect 100-continue (answered; and
    abandoned after the 100), pipelined requests, half-close mid-body, a WebSocket the lab
    refuses (403). (A half-close while the lab answers: test_fast_path and
    test_proxy_parity.)"""
    limit_to(gw, 1)
    p = gw.prefix()

    async def one(data: bytes, *, head: bool = False) -> int:
        wire = await Wire.open(gw.port)
        try:
            await wire.send(data)
            return (await wire.response(head=head)).status
        finally:
            wire.close()
            await wait_until(lambda: held(gw) == 0, f"given back after {data[:40]!r}")

    assert await one(request(gw, "HEAD", p + "gzip"), head=True) == 200
    assert await one(request(gw, "GET", p + "echo/x", version="HTTP/1.0")) == 200
    assert await one(request(gw, "POST", p + "upload", {"Transfer-Encoding": "chunked"},
                             b"3\r\nabc\r\n0\r\n\r\n")) == 200
    assert await one(request(gw, "GET", p + "nows", WS)) == 403
    wire = await Wire.open(gw.port)
    await wire.send(b"".join(request(gw, "GET", p + f"echo/{n}") for n in range(5)))
    assert [(await wire.response()).status for _ in range(5)] == [200] * 5
    wire.close()
    await wait_until(lambda: held(gw) == 0, "pipelined given back")
    for send_body in (True, False):
        wire = await Wire.open(gw.port)
        await wire.send(request(gw, "POST", p + "upload",
                                {"Content-Length": "3", "Expect": "100-continue"}))
        assert (await wire.message()).status == 100
        if send_body:
            await wire.send(b"abc")
            assert (await wire.response()).status == 200
        wire.close()
        await wait_until(lambda: held(gw) == 0, f"100-continue (body sent: {send_body})")
    wire = await Wire.open(gw.port)  # half-close mid-body
    await wire.send(request(gw, "POST", p + "upload", {"Content-Length": "100"}) + b"abc")
    await wait_until(lambda: held(gw) == 1, "held")
    wire.writer.write_eof()
    await wait_until(lambda: held(gw) == 0, "half-close mid-body given back")
    wire.close()


async def test_a_lab_101_to_a_plain_request_or_dropped_after_it_gives_back(
        gw: Gateway, fake_clusters: Any) -> None:
    limit_to(gw, 1)

    async def handler(lab: RawLab, index: int, head: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        writer.write(SWITCH)
        await writer.drain()
        if path_of(head).endswith("/drop"):
            writer.transport.abort()
        else:
            await reader.read()

    async with raw_lab(gw, fake_clusters, handler) as (_, prefix, wire):
        await wire.send(request(gw, "GET", prefix + "plain"))  # 101 to a non-upgrade
        await wire.eof()  # the gateway cuts the connection (no answer)
        await wait_until(lambda: held(gw) == 0, "101 to a plain GET given back")
        wire2 = await Wire.open(gw.port)
        await wire2.send(request(gw, "GET", prefix + "drop", WS))
        assert (await wire2.message()).status == 101
        await wait_until(lambda: held(gw) == 0, "101 then drop given back")
        wire2.close()


async def test_a_revoked_tokens_pipe_gives_its_hold_back(gw: Gateway) -> None:
    limit_to(gw, 1)
    ws = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
    assert held(gw) == 1
    assert gw.app[STORE].users.revoke_token(gw.alice)
    await ws.receive(timeout=10)
    await wait_until(lambda: held(gw) == 0, "revoked pipe given back")
    await ws.close()


async def test_a_retry_on_a_fresh_lab_connection_keeps_one_hold(
        gw: Gateway, fake_clusters: Any) -> None:
    limit_to(gw, 1)

    async def handler(lab: RawLab, index: int, head: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if index == 0 and path_of(head).endswith("/two"):
            writer.transport.abort()  # the pooled connection was closed
            return
        writer.write(OK)
        await writer.drain()

    async with raw_lab(gw, fake_clusters, handler) as (_, prefix, wire):
        for name in ("one", "two"):
            await wire.send(request(gw, "GET", prefix + name))
            assert (await wire.response()).body == b"ok"
        await wait_until(lambda: held(gw) == 0, "retried request given back")


async def test_both_paths_share_one_count(gw: Gateway) -> None:
    """A WebSocket on aiohttp's path plus one on the fast path: limit 2 reached, both paths
    refuse the third; aiohttp's WebSocket gives back when its client leaves."""
    limit_to(gw, 2)
    fast = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
    wire = await Wire.open(gw.port)
    try:
        await hand_to_aiohttp(gw, wire)
        await wire.send(request(gw, "GET", gw.prefix() + "ws", WS))
        assert (await wire.message()).status == 101
        await wait_until(lambda: held(gw) == 2, "both counted")
        refused = await gw.http.get(gw.url(gw.prefix() + "x"), headers=bearer(gw.alice))
        assert refused.status == 429
        reset(wire)
        await wait_until(lambda: held(gw) == 1, "aiohttp's WebSocket gave back")
    finally:
        wire.close()
        await fast.close()
    await wait_until(lambda: held(gw) == 0, "all given back")


async def test_stopping_the_gateway_gives_every_hold_back(gw: Gateway) -> None:
    limit_to(gw, 2)
    ws = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
    response = await gw.http.get(gw.url(gw.prefix() + "download?n=4&gate=1"),
                                 headers=bearer(gw.alice))
    await response.content.readexactly(1024)
    assert held(gw) == 2
    runner = gw.client.server.runner
    assert runner is not None
    for site in list(runner.sites):
        await site.stop()
    await wait_until(lambda: held(gw) == 0, "stopping gives every hold back")
    gw.upstream.gate.set()
    response.close()
    await ws.close()


