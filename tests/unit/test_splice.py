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
from tests.unit.test_lab_connections_unread import small_window_client, sockets_to
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


async def gated_lab(gw: Gateway, fake_clusters: Any, lab: Any) -> Any:
    """``lab`` (with a ``gate``) serving a new ready lab of alice's, and its prefix; at the
    end its gate opens and it closes."""
    prefix = await publish(gw, fake_clusters, lab)
    yield lab, prefix
    lab.gate.set()
    lab.close()


@pytest.fixture
async def sized(gw: Gateway, fake_clusters: Any) -> Any:
    async for served in gated_lab(gw, fake_clusters, SizedLab()):
        yield served


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
    assert gw.app[PROXY].fast.pool.splices.used == 0


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
    unread = await small_window_client(gw.port)
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


# -- review: hostile labs and clients against the splice ------------------------------------------


@pytest.fixture
def splices(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every splice started, and how often each was woken to read (``readable``)."""
    started: list[Any] = []

    class Seen(splice.BodySplice):
        readable = 0

        def __init__(self, *args: Any) -> None:
            started.append(self)
            super().__init__(*args)

        def _readable(self) -> None:
            self.readable += 1
            super()._readable()

    monkeypatch.setattr(upstream, "BodySplice", Seen)
    yield started


class HostileLab(RawLab):
    """Answers ``.../early`` (any method) at once with a long answer whose body it never
    finishes: 16 MiB of 64, then, once :attr:`gate` opens, a reset (it does not read the
    request's body); ``.../huge``: a Content-Length of 2**64 - 2 and 2 MiB of body, then it closes;
    ``.../urgent``: 4 MiB with one byte of TCP urgent data (MSG_OOB) after the first 2."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

        async def handler(lab: RawLab, index: int, head: bytes,
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            path = path_of(head)
            sock = writer.get_extra_info("socket")
            if path.endswith("early"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 * MIB))
                writer.write(body_of(16 * MIB))
                await asyncio.wait_for(self.gate.wait(), WAIT * 3)
                reset(writer)
                raise ConnectionError("the lab resets")
            if path.endswith("huge"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2**64 - 2))
                writer.write(body_of(2 * MIB))
                await writer.drain()
                await asyncio.sleep(0.5)
                raise ConnectionError("the lab stops")
            if path.endswith("small"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n" + body_of(7))
                return
            if path.endswith("urgentextra"):  # the whole answer, one urgent byte, a forgery
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * MIB))
                writer.write(body_of(2 * MIB))
                while writer.transport.get_write_buffer_size():
                    await asyncio.sleep(0.01)
                sock._sock.send(b"!", socket.MSG_OOB)
                writer.write(FORGED)
                return
            if path.endswith("urgent"):
                body = body_of(4 * MIB)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                writer.write(body[:2 * MIB])
                while writer.transport.get_write_buffer_size():
                    await asyncio.sleep(0.01)
                sock._sock.send(b"!", socket.MSG_OOB)
                writer.write(body[2 * MIB:])
                await writer.drain()
                await asyncio.wait_for(self.gate.wait(), WAIT * 3)
        super().__init__(handler)


@pytest.fixture
async def hostile_lab(gw: Gateway, fake_clusters: Any) -> Any:
    async for served in gated_lab(gw, fake_clusters, HostileLab()):
        yield served


async def test_a_lab_reset_seen_by_the_upload_leaves_no_splice_behind(
        gw: Gateway, hostile_lab: Any, splices: list[Any]) -> None:
    """A user's own lab answers an upload at once with a long body; the user's client reads
    nothing (the pipe fills, the splice waits for the client only), the lab resets, the client
    sends more of its body. Forwarding it fails on the lab's connection, whose transport ends
    (connection_lost) while the splice still runs. If this fails, the splice outlives both
    transports: its pipe and its copies of the two sockets stay open (the client's TCP
    connection too, though the gateway aborted it) and registered with the event loop, with
    the user's hold already given back, so one user can leak descriptors without a limit."""
    lab, prefix = hostile_lab
    before = pipes()
    client = await small_window_client(gw.port)
    try:
        client.writer.write(request(gw, "POST", prefix + "early",
                                    {"Content-Length": str(8 * MIB)}) + b"x" * 1024)
        await wait_until(lambda: splices and not splices[0]._reading
                         and splices[0]._writing, "the pipe full, the client not reading")
        lab.gate.set()
        await wait_until(lambda: lab.closed, "the lab reset")
        await asyncio.sleep(0.2)
        client.writer.write(b"x" * 1024)  # more of the upload, to the lab that reset
        await wait_until(lambda: held(gw) == 0, "the hold given back")
        await wait_until(lambda: pipes() == before, "the splice's pipe closed")
        assert splices[0]._closed
    finally:
        client.close()


async def test_a_length_past_what_splice_can_ask_for_is_no_busy_loop(
        gw: Gateway, hostile_lab: Any, splices: list[Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """A lab announces Content-Length: 2**64 - 2 (llhttp takes up to 2**64-1), sends 2 MiB and
    closes. If this fails, os.splice was asked for more than a ssize_t (OverflowError, not an
    OSError) in the event loop's reader callback: asyncio logs it and calls it again at once,
    for ever (the reader stays registered, the lab's socket stays readable), so the gateway
    spins at full CPU and never ends the answer."""
    _, prefix = hostile_lab
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", prefix + "huge"))
        head = await deadline(wire.reader.readuntil(b"\r\n\r\n"))
        assert b"Content-Length: 18446744073709551614" in head
        rest = await asyncio.wait_for(wire.reader.read(), 5.0)  # cut when the lab closes
    finally:
        wire.close()
    assert splices and rest == body_of(2 * MIB)
    assert splices[0].readable < 1000, f"woken {splices[0].readable} times"
    assert not [r for r in caplog.records if "Exception in callback" in r.getMessage()]


async def test_urgent_data_from_a_lab_is_no_busy_loop(
        gw: Gateway, hostile_lab: Any, splices: list[Any]) -> None:
    """A lab sends one byte of TCP urgent data mid-body. splice(2) stops at the urgent mark
    and, non-blocking, says EAGAIN for ever while the socket stays readable (the bytes behind
    the mark). If this fails, the splice kept its reader registered on EAGAIN with an empty
    pipe: the event loop calls it again and again (full CPU) and the answer never ends."""
    _, prefix = hostile_lab
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", prefix + "urgent"))
        await deadline(wire.reader.readuntil(b"\r\n\r\n"))
        got = await deadline(wire.reader.readexactly(2 * MIB))
        await asyncio.sleep(1.0)
        assert splices
        woken = splices[0].readable
        assert woken < 1000, f"the splice was woken {woken} times in a second"
        try:
            rest = await asyncio.wait_for(wire.reader.read(), 5.0)  # the answer ends (cut)
        except ConnectionResetError:
            rest = b""
    finally:
        wire.close()
    assert body_of(4 * MIB).startswith(got + rest) and len(got + rest) < 4 * MIB


async def test_an_urgent_byte_does_not_hide_bytes_past_a_long_answer(
        gw: Gateway, hostile_lab: Any, splices: list[Any]) -> None:
    """As test_bytes_a_lab_sends_past_a_long_answer_never_answer_the_next_request, but the
    lab puts one byte of TCP urgent data between its long answer and the forged one. FIONREAD
    counts only the bytes before the urgent mark (none), so if this fails the connection was
    kept and its forged bytes answered the next pipelined request."""
    lab, prefix = hostile_lab
    wire = await Wire.open(gw.port)
    try:
        await wire.send(request(gw, "GET", prefix + "urgentextra")
                        + request(gw, "GET", prefix + "small"))
        first, second = await wire.response(), await wire.response()
    finally:
        wire.close()
    assert first.body == body_of(2 * MIB) and splices
    assert second.body == body_of(7)
    assert [index for index, _ in lab.heads] == [0, 1]


async def test_past_the_gateways_splice_budget_long_answers_go_through_python(
        gw: Gateway, sized: Any, spliced: list[int]) -> None:
    """Splices at once are few gateway-wide (each holds a pipe of the kernel's memory charged
    to the gateway's unix user): here 1. Two long answers at once both arrive whole, one of
    them spliced; once both are done its place is free for the next."""
    lab, prefix = sized
    budget = gw.app[PROXY].fast.pool.splices
    budget.limit = 1
    first, second = await Wire.open(gw.port), await Wire.open(gw.port)
    try:
        await first.send(request(gw, "GET", prefix + f"sized?n={8 * MIB}&gate"))
        await deadline(first.reader.readuntil(b"\r\n\r\n"))
        await deadline(first.reader.readexactly(2 * MIB))
        assert len(spliced) == 1 and budget.used == 1
        await second.send(request(gw, "GET", prefix + f"sized?n={4 * MIB}"))
        assert (await second.response()).body == body_of(4 * MIB)
        assert len(spliced) == 1  # the second went through Python
        lab.gate.set()
        assert await deadline(first.reader.readexactly(6 * MIB)) == body_of(8 * MIB)[2 * MIB:]
        await wait_until(lambda: budget.used == 0, "the splice's place given back")
        await second.send(request(gw, "GET", prefix + f"sized?n={3 * MIB}"))
        assert (await second.response()).body == body_of(3 * MIB)
        assert len(spliced) == 2
    finally:
        first.close()
        second.close()
