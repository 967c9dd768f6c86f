"""A lab connection kept for the next request, and a WebSocket pipe taking over a connection,
against a hostile lab and a hasty client. The hostile lab here is a raw asyncio server that
passes the identity proof and then answers with exactly the bytes a test scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gateway.proxy.identity import LabIdentity
from gateway.proxy.pool import UpstreamPool
from gateway.proxy.upstream import UpstreamConnection
from gateway.server import STORE
from gateway.tokens import lab_proof, lab_token
from tests.unit import test_relay as relay
from tests.unit.test_fast_path import wait_until
from tests.unit.test_relay import SECRET, Gateway, ready_lab
from tests.unit.test_relay_wire import Wire, deadline, request

gw = relay.gw  # the fixture


Handler = Callable[["RawLab", int, bytes, asyncio.StreamReader, asyncio.StreamWriter],
                   Awaitable[None]]


class RawLab:
    """A lab server that proves its identity like the real launcher, then hands every other
    request head (with the index of its connection) to ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.job_id = ""
        self.port = 0
        self.connections: list[asyncio.StreamWriter] = []
        self.heads: list[tuple[int, bytes]] = []  # (connection, head) of each request
        self.server: asyncio.Server | None = None
        self.closed: list[int] = []  # connections the gateway ended

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.connections)
        self.connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode("latin-1")
                if "/hpcgw/proof?nonce=" in target:
                    writer.write(self.proof_answer(writer, target.split("nonce=", 1)[1]))
                    continue
                self.heads.append((index, head))
                await self.handler(self, index, head, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.append(index)
            writer.close()

    def proof_answer(self, writer: asyncio.StreamWriter, nonce: str) -> bytes:
        """The launcher's answer to the gateway's identity challenge ``nonce`` on this
        connection."""
        host, port = writer.get_extra_info("sockname")[:2]
        address = f"{host}:{port}"
        body = json.dumps({"address": address, "proof": lab_proof(
            lab_token(SECRET, self.job_id), nonce, address)}).encode()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.connections:
            writer.transport.abort()


async def publish(gw: Gateway, fake_clusters: Any, lab: RawLab) -> str:
    """Start ``lab`` as the server of a new ready lab of alice's; that lab's prefix."""
    await lab.start()
    store = gw.app[STORE]
    job = await ready_lab(store, fake_clusters.by_name["dev"].backend,
                          store.users.get_user("alice"), lab.port)
    lab.job_id = job["id"]
    return f"/labs/{job['id']}/"


@contextlib.asynccontextmanager
async def raw_lab(gw: Gateway, fake_clusters: Any, handler: Handler
                  ) -> AsyncIterator[tuple[RawLab, str, Wire]]:
    """A RawLab serving a new ready lab of alice's, that lab's prefix, and a client
    connection to the gateway; both closed at the end."""
    lab = RawLab(handler)
    prefix = await publish(gw, fake_clusters, lab)
    wire = await Wire.open(gw.port)
    try:
        yield lab, prefix, wire
    finally:
        wire.close()
        lab.close()


def path_of(head: bytes) -> str:
    return head.split(b" ", 2)[1].decode("latin-1")


# -- one parser per lab connection -----------------------------------------------------------


async def test_bytes_sent_past_an_answer_never_become_part_of_the_next_one(
        gw: Gateway, fake_clusters: Any) -> None:
    """The lab ends its answer to the first request and, in the same write, starts another
    (a status line and a header) before any second request exists. If the connection goes
    back to the pool with llhttp part-way through that head, the answer to the next request
    on it begins with bytes sent before that request: here, a header the lab sent with the
    first answer shows up in the second (the idle connection that talks is supposed to be
    closed, never trusted again)."""
    async def handler(lab: RawLab, index: int, head: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if path_of(head).endswith("/first"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
                         b"HTTP/1.1 200 OK\r\nX-Sent-Early: with-the-first\r\n")
        elif index == lab.heads[0][0]:  # the same connection: the head goes on
            writer.write(b"Content-Length: 6\r\n\r\nsecond")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
        await writer.drain()

    async with raw_lab(gw, fake_clusters, handler) as (_, prefix, wire):
        await wire.send(request(gw, "GET", prefix + "first"))
        first = await wire.response()
        assert (first.status, first.body) == (200, b"first")
        await asyncio.sleep(0.05)  # the early bytes are in before the next request goes
        await wire.send(request(gw, "GET", prefix + "second"))
        second = await wire.response()
        assert "X-Sent-Early" not in second.headers, (
            "bytes the lab sent with the first answer became the second answer's head")


SIZED = bytes(range(256)) * 4096  # 1 MiB


async def test_a_body_with_a_length_arriving_in_pieces_then_the_next_answer(
        gw: Gateway, fake_clusters: Any) -> None:
    """The rest of a body with a Content-Length is counted, not parsed: it must arrive whole
    and exact, and the lab's connection serve the next request as usual."""
    async def handler(lab: RawLab, index: int, head: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if path_of(head).endswith("/big"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SIZED))
            for start in range(0, len(SIZED), 100_000):
                await writer.drain()
                await asyncio.sleep(0)
                writer.write(SIZED[start:start + 100_000])
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall")
        await writer.drain()

    async with raw_lab(gw, fake_clusters, handler) as (lab, prefix, wire):
        for _ in range(2):
            await wire.send(request(gw, "GET", prefix + "big"))
            big = await wire.response()
            assert (big.status, big.body == SIZED) == (200, True)
            await wire.send(request(gw, "GET", prefix + "small"))
            assert (await wire.response()).body == b"small"
    assert {index for index, _ in lab.heads} == {0}, "one lab connection served them all"


async def test_bytes_past_a_counted_body_are_not_relayed_and_end_that_connection(
        gw: Gateway, fake_clusters: Any) -> None:
    """A lab that sends more than its Content-Length said, after the first read: the client
    gets the body it was promised, nothing more, and that lab connection is not kept."""
    async def handler(lab: RawLab, index: int, head: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if index == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"promisedHTTP/1.1 200 OK\r\nX-Smuggled: yes\r\n"
                         b"Content-Length: 3\r\n\r\nbad")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
        await writer.drain()

    async with raw_lab(gw, fake_clusters, handler) as (lab, prefix, wire):
        await wire.send(request(gw, "GET", prefix + "one"))
        assert (await wire.response()).body == b"promised"
        await wire.send(request(gw, "GET", prefix + "two"))
        answer = await wire.response()
        assert (answer.body, "X-Smuggled" in answer.headers) == (b"next", False)
    assert [index for index, _ in lab.heads] == [0, 1], "the second on a new lab connection"


async def test_a_counted_body_cut_short_looks_cut(gw: Gateway, fake_clusters: Any) -> None:
    """The lab promises 1 MiB and closes after part of it: the client's connection ends
    before the answer is whole, never with an answer that looks complete."""
    async def handler(lab: RawLab, index: int, head: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SIZED))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(SIZED[:300_000])
        await writer.drain()
        writer.transport.abort()

    async with raw_lab(gw, fake_clusters, handler) as (_, prefix, wire):
        await wire.send(request(gw, "GET", prefix + "cut"))
        head = await deadline(wire.reader.readuntil(b"\r\n\r\n"))
        assert f"Content-Length: {len(SIZED)}".encode() in head
        rest = await wire.eof()
        assert 0 < len(rest) < len(SIZED)


async def test_a_coding_that_only_ends_in_chunked_is_read_to_the_close(
        gw: Gateway, fake_clusters: Any) -> None:
    """``Transfer-Encoding: xchunked`` is not chunked: llhttp reads such a body until the lab
    closes. If the gateway took it for chunked, the answer would look cut at that close."""
    async def handler(lab: RawLab, index: int, head: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async with raw_lab(gw, fake_clusters, handler) as (_, prefix, wire):
        await wire.send(request(gw, "GET", prefix + "x"))
        answer = await wire.response()
        assert (answer.status, answer.body) == (200, b"all of it")


# -- the pool over all labs --------------------------------------------------------------------


async def test_idle_connections_over_all_labs_are_capped_the_oldest_closed_first() -> None:
    """Many labs, each with a few idle connections, must not hold the gateway's descriptors
    without bound: past the pool's total, the connection idle the longest goes, whichever
    lab's it is, and the newer ones are still there to be taken."""
    loop = asyncio.get_running_loop()
    pool = UpstreamPool(max_idle_total=2)
    labs = [LabIdentity("token", f"/labs/{n:016x}/", 8888) for n in range(3)]
    pairs = [socket.socketpair() for _ in labs]
    try:
        connections = []
        for identity, (mine, _) in zip(labs, pairs, strict=True):
            _, connection = await loop.create_connection(UpstreamConnection, sock=mine)
            connections.append(connection)
            pool.release(identity, "127.0.0.1", 8888, connection)
        assert [c.closed for c in connections] == [True, False, False]
        assert pool.take(labs[0], "127.0.0.1", 8888) is None
        assert pool.take(labs[2], "127.0.0.1", 8888) is connections[2]
        pool.release(labs[2], "127.0.0.1", 8888, connections[2])  # room for it again
        assert [c.closed for c in connections] == [True, False, False]
    finally:
        pool.close()
        for _, theirs in pairs:
            theirs.close()


# -- WebSocketPipe ---------------------------------------------------------------------------


def ws_handshake(gw: Gateway, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
            f"Authorization: Bearer {gw.alice}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode()


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    mask = b"\x01\x02\x03\x04"
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", size)
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_client_bytes_past_the_read_limit_before_the_101_still_flow(gw: Gateway) -> None:
    """Frames sent with the handshake, more than the front buffers (reading paused), go
    through once the pipe takes over: the client's reading must not stay paused."""
    payload = bytes(range(256)) * 4096  # 1 MiB: well past MAX_BUFFERED
    websockets = gw.app[relay.PROXY].websockets
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(ws_handshake(gw, gw.prefix() + "ws") + masked_frame(payload))
        head = await deadline(reader.readuntil(b"\r\n\r\n"))
        assert head.split()[1] == b"101"
        await deadline(writer.drain())
        first = await deadline(reader.readexactly(10))
        assert first[:2] == bytes([0x82, 127])
        assert struct.unpack(">Q", first[2:])[0] == len(payload)
        assert await deadline(reader.readexactly(len(payload))) == payload
        assert len(websockets) == 1, "the open pipe is watched"
        writer.transport.abort()
        await deadline(gw.upstream.ws_done.wait())
        await wait_until(lambda: not websockets, "the pipe is no longer watched")
    finally:
        writer.transport.abort()
