"""Long answers with a Content-Length, moved from the lab's socket to the client's in the
kernel (gateway/proxy/splice.py): what a user sees of them, and what the gateway keeps of them.

Each test asks for an answer long enough to be spliced, and shows it was (a spy on
:class:`BodySplice`), so that none of them passes on the user-space path by accident. The lab
is a raw server (tests/unit/test_lab_pool_and_pipe.py) that answers ``GET .../sized?n=N`` with
N bytes and, on request, stops early (``stop=K``), waits (``gate``: after 2 MiB, until the test
opens it) or sends bytes past its answer (``extra``: a forged second answer).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from gateway.api.keys import PROXY
from gateway.proxy import splice, upstream
from tests.unit.test_fast_path import held, wait_until
from tests.unit.test_lab_connections import limit_to
from tests.unit.test_lab_connections_unread import SMALL_WINDOW, sockets_to
from tests.unit.test_lab_pool_and_pipe import RawLab, path_of, publish
from tests.unit.test_lab_proxy_hostile import reset, revoke
from tests.unit.test_relay import MIB, WAIT, Gateway
from tests.unit.test_relay import gw as gw  # the fixture
from tests.unit.test_relay_wire import Wire, deadline, request

FORGED = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"


def body_of(size: int) -> bytes:
    """The lab's body of ``size`` bytes: random, so that a byte lost, doubled or moved shows."""
    return random.Random(size).randbytes(size)


class SizedLab(RawLab):
    """Answers ``GET .../sized?n=N[&stop=K][&gate][&extra]`` (see the module's docstring)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

        async def handler(lab: RawLab, index: int, head: bytes,
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            query = {k: v[0] for k, v in parse_qs(path_of(head).split("?", 1)[1],
                                                   keep_blank_values=True).items()}
            body = body_of(int(query["n"]))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            if "stop" in query:
                writer.write(body[:int(query["stop"])])
                await writer.drain()
                raise ConnectionError("the lab stops mid-body")  # (RawLab closes it)
            if "gate" in query:
                writer.write(body[:2 * MIB])
                await writer.drain()
                await asyncio.wait_for(self.gate.wait(), WAIT * 3)
                body = body[2 * MIB:]
            writer.write(body + (FORGED if "extra" in query else b""))
            await writer.drain()
        super().__init__(handler)


@pytest.fixture
def spliced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The lengths every splice was started with, in order."""
    started: list[int] = []

    class Counted(splice.BodySplice):
        def __init__(self, source: socket.socket, sink: socket.socket, length: int,
                     *args: Any) -> None:
            started.append(length)
            super().__init__(source, sink, length, *args)

    monkeypatch.setattr(upstream, "BodySplice", Counted)
    yield started


@pytest.fixture
async def sized(gw: Gateway, fake_clusters: Any) -> Any:
    lab = SizedLab()
    prefix = await publish(gw, fake_clusters, lab)
    yield lab, prefix
    lab.gate.set()
    lab.close()


def pipes() -> int:
    """Pipes open in this process (the gateway runs in it): each splice has one."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            continue
    return count


async def test_a_long_answer_arrives_whole_and_is_counted_in_its_record(
        gw: Gateway, sized: Any, spliced: list[int], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hpcgw.access")
    _, prefix = sized
    size = 8 * MIB + 123
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", prefix + f"sized?n={size}"))
        answer = await wire.response()
    finally:
        wire.close()
    assert answer.status == 200 and answer.body == body_of(size)
    assert len(spliced) == 1 and size - spliced[0] < 1 * MIB  # most of it spliced
    gw.app[PROXY].fast.flush()
    records = [entry for record in caplog.records if record.name == "hpcgw.access"
               for entry in getattr(record, "requests", [])]
    assert [(entry["status"], entry["bytes"]) for entry in records] == [(200, size)]


async def test_pipelined_long_answers_come_in_order_over_one_lab_connection(
        gw: Gateway, sized: Any, spliced: list[int]) -> None:
    lab, prefix = sized
    sizes = [3 * MIB, 10, 2 * MIB + 5]
    wire = await Wire.open(gw.port)
    try:
        await wire.send(b"".join(request(gw, "GET", prefix + f"sized?n={n}") for n in sizes))
        bodies = [(await wire.response()).body for _ in sizes]
    finally:
        wire.close()
    assert bodies == [body_of(n) for n in sizes]
    assert len(spliced) == 2
    assert [index for index, _ in lab.heads] == [0, 0, 0]  # the lab connection was kept


async def test_bytes_a_lab_sends_past_a_long_answer_never_answer_the_next_request(
        gw: Gateway, sized: Any, spliced: list[int]) -> None:
    """A lab that sends a forged answer right after its long one, while the next request is
    already waiting (pipelined): the next request gets its own answer from a new lab
    connection. If this fails, the forged bytes answered it (the lab connection, reused,
    still held them)."""
    lab, prefix = sized
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", prefix + f"sized?n={2 * MIB}&extra")
                        + request(gw, "GET", prefix + "sized?n=7"))
        first, second = await wire.response(), await wire.response()
    finally:
        wire.close()
    assert first.body == body_of(2 * MIB) and len(spliced) == 1
    assert second.body == body_of(7)
    assert [index for index, _ in lab.heads] == [0, 1]


async def test_a_lab_that_stops_mid_body_leaves_the_answer_cut_and_nothing_behind(
        gw: Gateway, sized: Any, spliced: list[int]) -> None:
    _, prefix = sized
    before = pipes()
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", prefix + f"sized?n={4 * MIB}&stop={3 * MIB}"))
        head = await deadline(wire.reader.readuntil(b"\r\n\r\n"))
        rest = await deadline(wire.reader.read())  # until the gateway closes the connection
    finally:
        wire.close()
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 4194304" in head
    assert rest == body_of(4 * MIB)[:3 * MIB]  # all the lab sent, and the answer looks cut
    assert spliced
    await wait_until(lambda: held(gw) == 0, "the cut answer's hold given back")
    await wait_until(lambda: pipes() == before, "the splice's pipe closed")


async def test_a_client_that_leaves_mid_body_frees_the_lab_connection_and_the_pipe(
        gw: Gateway, sized: Any, spliced: list[int]) -> None:
    """The lab is silent after 2 MiB (a slow disk), the client resets. If this fails, the
    splice's copies of the two sockets kept them open (the lab's connection outlives its
    transport) or its pipe stayed."""
    lab, prefix = sized
    before = pipes()
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", prefix + f"sized?n={8 * MIB}&gate"))
        await deadline(wire.reader.readexactly(2 * MIB))
        assert spliced and held(gw) == 1 and pipes() == before + 2
        reset(wire.writer)
    finally:
        wire.close()
    await wait_until(lambda: held(gw) == 0, "the hold of the client that left")
    await wait_until(lambda: sockets_to(lab.port) == 0, "the lab connection closed")
    await wait_until(lambda: pipes() == before, "the splice's pipe closed")


async def read_paced(wire: Wire, seconds: float) -> tuple[int, bool]:
    """Read at about 5 MiB/s for ``seconds``: the bytes read, and whether the connection
    ended (closed or reset) by then."""
    loop = asyncio.get_running_loop()
    got, until = 0, loop.time() + seconds
    try:
        while loop.time() < until:
            data = await deadline(wire.reader.read(256 * 1024))
            if not data:
                return got, True
            got += len(data)
            await asyncio.sleep(0.05)
    except ConnectionResetError:
        return got, True
    return got, False


async def test_a_long_answer_is_cut_once_its_token_is_revoked(
        gw: Gateway, sized: Any, spliced: list[int], tmp_path: Any) -> None:
    """Read slowly past its first check (a second), the answer flows; once the token is
    revoked it stops within about a second, short of its length. If this fails, a revoked
    token keeps downloading for as long as the file lasts."""
    _, prefix = sized
    size = 64 * MIB  # (more than the reads below take in, kernel buffers included)
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", prefix + f"sized?n={size}"))
        await deadline(wire.reader.readuntil(b"\r\n\r\n"))
        before, ended = await read_paced(wire, 1.5)
        assert not ended and spliced
        revoke(gw, tmp_path)
        after, ended = await read_paced(wire, 3.0)
    finally:
        wire.close()
    assert ended, "the answer was not cut"
    assert before + after < size
    await wait_until(lambda: held(gw) == 0, "the cut answer's hold given back")


async def test_an_unread_long_answer_counts_until_its_client_goes(
        gw: Gateway, sized: Any, spliced: list[int]) -> None:
    limit_to(gw, 1)
    _, prefix = sized
    before = pipes()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_WINDOW)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
    unread = Wire(*await asyncio.open_connection(sock=sock))
    try:
        unread.writer.write(request(gw, "GET", prefix + f"sized?n={64 * MIB}"))
        await wait_until(lambda: spliced, "the answer spliced")
        other = await Wire.open(gw.port)
        await other.send(request(gw, "GET", prefix + "sized?n=1"))
        assert (await other.response()).status == 429
        other.close()
        reset(unread.writer)
    finally:
        unread.close()
    await wait_until(lambda: held(gw) == 0, "the unread answer's hold given back")
    await wait_until(lambda: pipes() == before, "the splice's pipe closed")


async def test_out_of_descriptors_a_long_answer_still_arrives_whole(
        gw: Gateway, sized: Any, spliced: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The splice cannot have its pipe (the gateway at its limit of open files): the answer
    goes through Python instead, whole, and the copies of the sockets made before the pipe
    failed are closed again."""
    lab, prefix = sized
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", prefix + "sized?n=10"))  # both connections open
        assert (await wire.response()).body == body_of(10)
        before = len(os.listdir("/proc/self/fd"))

        def no_more_files(flags: int) -> tuple[int, int]:
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(os, "pipe2", no_more_files)
        await wire.send(request(gw, "GET", prefix + f"sized?n={4 * MIB}"))
        assert (await wire.response()).body == body_of(4 * MIB)
        monkeypatch.undo()
        assert spliced  # it was tried
        assert len(os.listdir("/proc/self/fd")) == before
        assert [index for index, _ in lab.heads] == [0, 0]
    finally:
        wire.close()
