"""Peers that stop reading what the fast path still has to send them (red-team findings).

A user controls both their client and their own lab's server. Before: an answer that had
reached the gateway whole gave the user's hold back while up to 512 KiB of it still waited
for a client that never reads, and the connection, closed after ``header_timeout``, waited for
that client for ever; an ended WebSocket pipe gave its hold back at once while its closed lab
connection waited, for ever, for a lab that never reads its last bytes. Either way one user
could keep any number of the gateway's sockets, and the memory behind them, uncounted.

Now a connection with unsent bytes still counts against ``max_lab_connections`` until it is
gone, and one whose bytes stop moving for ``body_timeout`` s is cut off (here 1 s). On
aiohttp's path, where a WebSocket message is held whole until its last frame, a user has at
most 4 WebSockets and a message at most 16 MiB.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from typing import Any

import pytest

from gateway.api.keys import PROXY
from tests.unit.test_fast_path import wait_until
from tests.unit.test_lab_connections import hand_to_aiohttp, held, limit_to
from tests.unit.test_lab_pool_and_pipe import RawLab, path_of, publish
from tests.unit.test_relay import Gateway
from tests.unit.test_relay import gw as gw  # the fixture
from tests.unit.test_relay_wire import Wire, request

WS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
MIB = 1024 * 1024
SMALL_WINDOW = 4096  # a receive buffer that fills at once


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    return {"header_timeout": 1.0, "body_timeout": 1.0}


def sockets_to(port: int) -> int:
    """TCP sockets of this process (the gateway runs in it) whose peer is 127.0.0.1:``port``,
    as the kernel lists them: whatever the gateway's own objects think."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as rows:
            for row in rows.read().splitlines()[1:]:
                fields = row.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    count += 1
    return count


class StuckLab(RawLab):
    """A lab server that accepts a WebSocket, then never reads again (a small receive window,
    so the gateway's sends back up at once) and never closes; on :attr:`speak` it does
    :meth:`spoken` (sends the client one small frame)."""

    def __init__(self) -> None:
        async def unused(*_: Any) -> None:
            raise AssertionError("StuckLab serves its connections itself")
        super().__init__(unused)
        self.speak = asyncio.Event()
        self.stop = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = path_of(head)
                if "/hpcgw/proof?nonce=" in target:
                    writer.write(self.proof_answer(writer, target.split("nonce=", 1)[1]))
                    continue
                writer.write(SWITCH)
                await writer.drain()
                await self.speak.wait()
                self.spoken(writer)
                await self.stop.wait()
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    def spoken(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x81\x02hi")  # a text frame to the client

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_WINDOW)  # (accept inherits)
        sock.bind(("127.0.0.1", 0))
        self.server = await asyncio.start_server(self._serve, sock=sock)
        self.port = self.server.sockets[0].getsockname()[1]


def unsent_to_labs(gw: Gateway) -> int:
    """Bytes the open pipes hold in the gateway for their labs (not yet in the kernel)."""
    pipes = [watched.end.__self__ for watched in gw.app[PROXY].websockets._open]  # type: ignore[attr-defined]
    return sum(pipe._upstream.transport.get_write_buffer_size() for pipe in pipes
               if pipe._upstream is not None and pipe._upstream.transport is not None)


def reset(wire: Wire) -> None:
    """The client vanishes: a reset, nothing more read or sent."""
    sock = wire.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wire.writer.transport.abort()


async def pipe_with_bytes_waiting(gw: Gateway, prefix: str) -> Wire:
    """A client's WebSocket to the lab at ``prefix``, after a frame that says it is huge and
    8 MiB of it: more than the lab's window and the gateway's send buffer hold, so some of it
    waits in the gateway for the lab."""
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "GET", prefix + "ws", WS))
    assert (await wire.message()).status == 101
    wire.writer.write(b"\x82\xff" + struct.pack(">Q", 1 << 40) + b"mask" + bytes(8 * MIB))
    await wait_until(lambda: unsent_to_labs(gw) > 0, "bytes waiting in the gateway")
    return wire


async def test_an_ended_pipe_to_a_lab_that_stops_reading_counts_until_cut_off(
        gw: Gateway, fake_clusters: Any) -> None:
    limit_to(gw, 1)
    lab = StuckLab()
    prefix = await publish(gw, fake_clusters, lab)
    try:
        wire = await pipe_with_bytes_waiting(gw, prefix)
        reset(wire)
        lab.speak.set()  # the gateway's write to the gone client fails: the pipe ends
        second = await Wire.open(gw.port)
        await second.send(request(gw, "GET", prefix + "ws", WS))
        assert (await second.message()).status == 429  # the unread lab connection counts
        await wait_until(lambda: sockets_to(lab.port) == 0, "the stalled lab connection cut")
        assert held(gw) == 0
        second.close()
    finally:
        lab.stop.set()
        lab.close()


class BigAnswerLab(RawLab):
    """Answers ``GET .../big?n=N`` with N bytes in one chunk. (Chunked, since the rest of a
    long answer with a Content-Length is spliced, in the kernel, and is never whole at the
    gateway before it has left: tests/unit/test_splice.py.)"""

    def __init__(self) -> None:
        async def handler(lab: RawLab, index: int, head: bytes,
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = int(path_of(head).split("n=", 1)[1])
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"%x\r\n" % size)
            writer.write(bytes(size) + b"\r\n0\r\n\r\n")
            await writer.drain()
        super().__init__(handler)


def idle_lab_connections(gw: Gateway) -> int:
    """The lab connections in the proxy's pool: one goes back there once an answer is whole."""
    return sum(len(idle) for idle in gw.app[PROXY].fast.pool._idle.values())


async def small_window_client(port: int) -> Wire:
    """A connection to the gateway whose receive buffer fills at once (a client that does not
    read)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_WINDOW)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return Wire(*await asyncio.open_connection(sock=sock))


async def answer_left_unsent(gw: Gateway, prefix: str) -> Wire:
    """A client connection (small window, not reading) whose answer is whole at the gateway
    while part of it still waits there: the answer's size is stepped up until one is (smaller
    ones fit in the kernel's buffers; bigger ones never complete, and stay counted anyway)."""
    loop = asyncio.get_running_loop()
    for size in range(MIB // 2, 6 * MIB, MIB // 4):
        wire = await small_window_client(gw.port)
        wire.writer.write(request(gw, "GET", prefix + f"big?n={size}"))
        end = loop.time() + 2.0
        while not idle_lab_connections(gw) and loop.time() < end:
            await asyncio.sleep(0.02)
        if idle_lab_connections(gw) and held(gw) == 1:
            return wire  # whole at the gateway, still counted: what the tests are after
        wire.writer.transport.abort()  # (too small: nothing left unsent; too big: incomplete)
        await wait_until(lambda: held(gw) == 0, "a dropped client's hold")
        gw.app[PROXY].fast.pool.close()
    raise AssertionError("no answer size was whole at the gateway and still counted while "
                         "part of it waited unsent")


async def test_an_answer_its_client_does_not_read_counts_until_cut_off(
        gw: Gateway, fake_clusters: Any) -> None:
    limit_to(gw, 1)
    lab = BigAnswerLab()
    prefix = await publish(gw, fake_clusters, lab)
    try:
        unread = await answer_left_unsent(gw, prefix)
        other = await Wire.open(gw.port)
        await other.send(request(gw, "GET", prefix + "big?n=1"))
        assert (await other.response()).status == 429
        other.close()
        client_port = unread.writer.get_extra_info("sockname")[1]
        await wait_until(lambda: sockets_to(client_port) == 0, "the unread client cut off")
        assert held(gw) == 0
        unread.writer.transport.abort()
    finally:
        lab.close()


async def test_an_answer_read_late_then_a_request_for_aiohttp_gives_its_hold_back(
        gw: Gateway, fake_clusters: Any) -> None:
    """A browser reads a big answer at its pace, then asks the gateway's API on the same
    connection (aiohttp's from then on): the answer's hold is given back, not kept for ever
    (reviewer's find: a user's connections would only ever add up)."""
    limit_to(gw, 1)
    lab = BigAnswerLab()
    prefix = await publish(gw, fake_clusters, lab)
    try:
        wire = await answer_left_unsent(gw, prefix)
        assert (await wire.response()).status == 200  # read in full, late
        await wire.send(request(gw, "GET", "/api/v1/health"))
        assert (await wire.response()).status == 200
        await wait_until(lambda: held(gw) == 0, "the answer's hold given back")
        wire.close()
    finally:
        lab.close()


class HalfClosingLab(StuckLab):
    """Accepts a WebSocket, then on :attr:`speak` shuts its sending side (no close frame),
    and never reads again."""

    def spoken(self, writer: asyncio.StreamWriter) -> None:
        writer.write_eof()


async def test_a_lab_that_shuts_its_side_and_stops_reading_ends_its_pipe(
        gw: Gateway, fake_clusters: Any) -> None:
    """The client's connection ends (a close frame, 1011: the lab went without one), and the lab's
    connection, with bytes the lab never reads, is cut off and given back (reviewer's find:
    asyncio closed it on the lab's end of file without telling the pipe, and waited for
    ever)."""
    limit_to(gw, 1)
    lab = HalfClosingLab()
    prefix = await publish(gw, fake_clusters, lab)
    try:
        wire = await pipe_with_bytes_waiting(gw, prefix)
        lab.speak.set()
        try:  # the client's connection ends: a close frame saying 1011, unless a reset beat it
            rest = await wire.eof()  # (the gateway leaves unread what the client still sent)
        except ConnectionResetError:
            rest = b""
        assert not rest or b"\x88\x02" + struct.pack(">H", 1011) in rest
        await wait_until(lambda: sockets_to(lab.port) == 0, "the lab's connection cut off")
        await wait_until(lambda: held(gw) == 0, "the pipe's hold given back")
        assert len(gw.app[PROXY].websockets) == 0
        wire.writer.transport.abort()
    finally:
        lab.stop.set()
        lab.close()


# -- aiohttp's path: WebSockets relayed as whole messages ----------------------------------------


def unfinished_frame(size: int, *, first: bool) -> bytes:
    """A binary message's frame that is not its last (FIN clear), masked with a zero key."""
    return bytes([0x2 if first else 0x0, 0x80 | 127]) + struct.pack(">Q", size) + bytes(4)


async def test_on_aiohttps_path_a_user_has_four_websockets_and_no_message_over_16_mib(
        gw: Gateway) -> None:
    """A connection that carried another request first is aiohttp's, which holds each
    message whole until its last frame: a fifth WebSocket of one user's there gets 429, and
    a message that grows past 16 MiB ends its WebSocket (1009, too big) instead of growing
    in the gateway's memory."""
    wires = []
    try:
        for _ in range(4):
            wire = await Wire.open(gw.port)
            wires.append(wire)
            await hand_to_aiohttp(gw, wire)
            await wire.send(request(gw, "GET", gw.prefix() + "ws", WS))
            assert (await wire.message()).status == 101
        fifth = await Wire.open(gw.port)
        await hand_to_aiohttp(gw, fifth)
        await fifth.send(request(gw, "GET", gw.prefix() + "ws", WS))
        refused = await fifth.response()
        problem = json.loads(refused.body)
        assert (refused.status, problem["limit"], problem["value"]) == (
            429, "websockets_after_other_requests", 4)
        fifth.close()
        for index in range(17):  # 17 MiB of one message that never ends
            await wires[0].send(unfinished_frame(MIB, first=index == 0) + bytes(MIB))
        try:  # the WebSocket ends: with a close frame saying 1009, unless a reset beat it
            rest = await wires[0].eof()
        except ConnectionResetError:
            rest = b""
        assert not rest or b"\x88\x02" + struct.pack(">H", 1009) in rest
        await wait_until(lambda: held(gw) == 3, "the ended WebSocket given back")
    finally:
        for wire in wires:
            wire.close()
    await wait_until(lambda: held(gw) == 0, "every WebSocket given back")
    again = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers={
        "Authorization": f"Bearer {gw.alice}"})
    await again.close()
