"""The lab proxy ``/labs/<id>/...`` on the wire: a client on a raw TCP socket writes exact bytes
to the gateway (the real app, in front of the stand-in labs of test_relay.py) and reads exact
bytes back.

These tests hold the proxy to HTTP/1.1 (RFC 9110/9112) and to what a user notices, not to one
server library's choices: a relayed body may come chunked or with a Content-Length, an
oversized head may be refused with 400 or 431, header order and case are free, and
``Connection`` is only looked at where the behaviour depends on it. Every wait has a deadline
(WAIT); nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.server import STORE
from tests.unit import test_relay as relay
from tests.unit.test_relay import BLOCK, BOTH_SERVERS, GZIPPED, MIB, PROBLEM, WAIT, FakeLab, Gateway

gw = relay.gw  # the fixture (a module attribute, so that pytest finds it here too)
ServerFactory = Callable[..., Awaitable[TestServer]]
T = TypeVar("T")
KIB = 1024


# -- a raw HTTP/1.1 client ------------------------------------------------------------------


@dataclass
class Message:
    """One response as it came off the wire. ``framing`` says how its body was delimited:
    ``chunked``, ``length`` (Content-Length), ``close`` (the connection's end) or ``none``
    (a 1xx, 204 or 304 status, or the answer to a HEAD)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    framing: str
    trailers: CIMultiDict[str]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()


async def deadline(step: Awaitable[T]) -> T:
    return await asyncio.wait_for(step, WAIT)


class Wire:
    """One TCP connection to the gateway; reads responses one after another, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.interim: list[int] = []  # the 1xx statuses :meth:`response` skipped

    @classmethod
    async def open(cls, port: int) -> Wire:
        reader, writer = await deadline(asyncio.open_connection("127.0.0.1", port))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await deadline(self.writer.drain())

    def close(self) -> None:
        self.writer.close()

    async def eof(self) -> bytes:
        """Whatever still comes until the peer closes the connection."""
        return await deadline(self.reader.read())

    async def message(self, *, head: bool = False) -> Message:
        """The next response, an interim (1xx) one included; ``head``: it answers a HEAD."""
        raw = await deadline(self.reader.readuntil(b"\r\n\r\n"))
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status_text, *_ = status_line.split(" ", 2)
        assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
        status = int(status_text)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            assert line[:1] not in (" ", "\t"), f"obsolete line folding: {line!r}"
            name, colon, value = line.partition(":")
            assert colon and name == name.strip() and name, f"not a header line: {line!r}"
            headers.add(name, value.strip())
        trailers: CIMultiDict[str] = CIMultiDict()
        codings = [c.strip().lower() for v in headers.getall("Transfer-Encoding", [])
                   for c in v.split(",")]
        if head or status < 200 or status in (204, 304):
            return Message(status, headers, b"", "none", trailers)
        if codings:
            assert codings[-1] == "chunked", codings  # else not delimitable (RFC 9112 6.3)
            assert "Content-Length" not in headers, "Content-Length with Transfer-Encoding"
            body = await self._chunked(trailers)
            return Message(status, headers, body, "chunked", trailers)
        if "Content-Length" in headers:
            lengths = {v.strip() for v in headers.getall("Content-Length")}
            assert len(lengths) == 1, lengths
            body = await deadline(self.reader.readexactly(int(lengths.pop())))
            return Message(status, headers, body, "length", trailers)
        return Message(status, headers, await self.eof(), "close", trailers)

    async def response(self, *, head: bool = False) -> Message:
        """The next final response; the 1xx ones before it go to :attr:`interim`."""
        while (message := await self.message(head=head)).status < 200:
            self.interim.append(message.status)
        return message

    async def _chunked(self, trailers: CIMultiDict[str]) -> bytes:
        body = bytearray()
        while True:
            size_line = await deadline(self.reader.readuntil(b"\r\n"))
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            body += await deadline(self.reader.readexactly(size))
            assert await deadline(self.reader.readexactly(2)) == b"\r\n", "chunk without CRLF"
        while line := (await deadline(self.reader.readuntil(b"\r\n")))[:-2]:
            name, _, value = line.decode("latin-1").partition(":")
            trailers.add(name.strip(), value.strip())
        return bytes(body)


def request(gw: Gateway, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"", *, token: str | None = "", version: str = "HTTP/1.1") -> bytes:
    """The exact bytes of one request: Host, ``Authorization: Bearer`` (alice's token unless
    ``token`` says otherwise; None: none), ``headers``, a Content-Length when there is a body
    and ``headers`` name no framing, then ``body`` as it is."""
    lines = [f"{method} {path} {version}", f"Host: 127.0.0.1:{gw.port}"]
    token = gw.alice if token == "" else token
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    headers = dict(headers or {})
    if body and not {"content-length", "transfer-encoding"} & {h.lower() for h in headers}:
        headers["Content-Length"] = str(len(body))
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def upload_answer(data: bytes) -> dict[str, Any]:
    """What the stand-in lab's ``upload`` answers for ``data``."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def lab_answers(gw: Gateway, name: str = "fresh") -> None:
    """A new connection's request to alice's lab is answered, completely, in time."""
    wire = await Wire.open(gw.port)
    try:
        path = gw.prefix() + f"echo/{name}"
        await wire.send(request(gw, "GET", path))
        answer = await wire.response()
        assert (answer.status, answer.body) == (200, path.encode())
    finally:
        wire.close()


# -- pipelining -----------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    """If this fails, a client that pipelines (or a load balancer that does) gets answers
    swapped, cut short or never: page resources arrive as each other's bodies."""
    paths = [gw.prefix() + f"echo/{name}" for name in ("a", "b", "c")]
    wire = await Wire.open(gw.port)
    await wire.send(b"".join(request(gw, "GET", path) for path in paths))
    for path in paths:
        answer = await wire.response()
        assert (answer.status, answer.body) == (200, path.encode())
    wire.close()
    assert [seen.raw_path for seen in gw.upstream.seen] == paths


async def test_pipelined_lab_and_gateway_requests_are_answered_in_order(gw: Gateway) -> None:
    """If this fails, a pipelined request for the gateway's own API between two lab requests
    gets a lab's answer (or the lab gets the API's), or the answers come back out of order."""
    first, last = gw.prefix() + "echo/first", gw.prefix() + "echo/last"
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "GET", first) + request(gw, "GET", "/api/v1/health")
                    + request(gw, "GET", last))
    answer = await wire.response()
    assert (answer.status, answer.body) == (200, first.encode())
    health = await wire.response()
    assert health.status == 200
    assert health.content_type == "application/json"
    assert "clusters" in health.json()
    answer = await wire.response()
    assert (answer.status, answer.body) == (200, last.encode())
    wire.close()
    assert [seen.raw_path for seen in gw.upstream.seen] == [first, last]


# -- request and response bodies ------------------------------------------------------------


async def test_chunked_upload_with_extension_and_trailer_arrives_whole(gw: Gateway) -> None:
    """If this fails, uploads from clients that stream (chunked, as browsers' fetch with a
    stream body and many HTTP libraries send) arrive corrupted or hang the connection."""
    pieces = [BLOCK[:1000], BLOCK[1000:70000], BLOCK[70000:70001], BLOCK[70001:300000]]
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "POST", gw.prefix() + "upload",
                            {"Transfer-Encoding": "chunked", "Trailer": "X-Checksum"}))
    for index, piece in enumerate(pieces):
        extension = b";name=value" if index == 1 else b""
        await wire.send(f"{len(piece):x}".encode() + extension + b"\r\n" + piece + b"\r\n")
    await wire.send(b"0\r\nX-Checksum: whatever\r\n\r\n")
    answer = await wire.response()
    assert answer.status == 200, answer.body
    assert answer.json() == upload_answer(b"".join(pieces))
    after = gw.prefix() + "echo/after"
    await wire.send(request(gw, "GET", after))
    answer = await wire.response()
    assert (answer.status, answer.body) == (200, after.encode())
    wire.close()


async def test_chunked_download_arrives_whole(gw: Gateway) -> None:
    """If this fails, a file the lab streams (a download, a generated export) reaches the
    browser corrupted or cut short."""
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "GET", gw.prefix() + "download?n=3"))
    answer = await wire.response()
    assert answer.status == 200
    assert answer.framing in ("chunked", "length", "close")
    assert answer.body == BLOCK * 3
    if answer.framing != "close":  # the connection is still good for another request
        await wire.send(request(gw, "GET", gw.prefix() + "echo/next"))
        assert (await wire.response()).body == (gw.prefix() + "echo/next").encode()
    wire.close()


# -- Expect: 100-continue -------------------------------------------------------------------


async def test_expect_100_continue_gets_a_go_ahead_then_the_answer(gw: Gateway) -> None:
    """If this fails, clients that ask before sending a large body (curl does above 1 MiB)
    stall on every upload, or their body is lost."""
    body = BLOCK[: 256 * KIB]
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "POST", gw.prefix() + "upload", {
        "Content-Length": str(len(body)), "Expect": "100-continue"}))
    interim = await wire.message()
    assert interim.status == 100
    await wire.send(body)
    answer = await wire.response()
    assert answer.status == 200, answer.body
    assert answer.json() == upload_answer(body)
    wire.close()
    assert [seen.method for seen in gw.upstream.seen] == ["POST"]


@pytest.mark.parametrize(("who", "status"), [("nobody", 401), ("bob", 404)])
async def test_expect_100_continue_refusal_comes_without_the_body(
    gw: Gateway, who: str, status: int
) -> None:
    """If this fails, a client that may not use the lab has to upload its whole body before
    it learns so (or waits forever), and the lab hears of a request it must never see."""
    token = None if who == "nobody" else gw.bob
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "POST", gw.prefix() + "upload", {
        "Content-Length": str(MIB), "Expect": "100-continue"}, token=token))
    answer = await wire.response()  # the body is never sent
    assert answer.status == status
    assert answer.content_type == PROBLEM
    assert set(wire.interim) <= {100}
    wire.close()
    assert gw.all_upstreams_quiet()


# -- either side going away -----------------------------------------------------------------


@BOTH_SERVERS
async def test_client_leaving_mid_upload_ends_the_labs_upload(gw: Gateway) -> None:
    """If this fails, every upload a user abandons (a closed tab, a lost network) leaves a
    request hanging in the lab and a relay in the gateway, until both run out of resources."""
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "POST", gw.prefix() + "upload",
                            {"Content-Length": str(4 * MIB)}) + BLOCK)
    await deadline(gw.upstream.first_bytes.wait())
    wire.close()
    await deadline(gw.upstream.upload_aborted.wait())
    await lab_answers(gw)


@BOTH_SERVERS
async def test_lab_dropping_mid_body_never_looks_complete(gw: Gateway) -> None:
    """If this fails, a download the lab broke off (a crash, a killed kernel) is saved by the
    browser as if it were the whole file: silently truncated data."""
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "GET", gw.prefix() + "truncated"))
    try:
        answer = await wire.response()
    except (asyncio.IncompleteReadError, ConnectionResetError):
        pass  # the connection ended before the response did: the client knows it is cut
    else:  # a whole response may only be one that says the lab failed
        assert answer.status >= 500, (answer.status, answer.framing, len(answer.body))
    finally:
        wire.close()
    await lab_answers(gw)


async def test_lab_hanging_up_before_answering_is_a_problem_response(gw: Gateway) -> None:
    """If this fails, a lab that crashes on a request leaves the user with a dropped
    connection or a hung page instead of an error that says the lab did not answer."""
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "GET", gw.prefix() + "hangup"))
    answer = await wire.response()
    wire.close()
    assert answer.status in (502, 503), answer.body
    assert answer.content_type == PROBLEM
    assert answer.json()["status"] == answer.status
    await lab_answers(gw)


# -- heads ----------------------------------------------------------------------------------


async def test_a_16_kib_header_reaches_the_lab(gw: Gateway, aiohttp_server: ServerFactory
                                               ) -> None:
    """If this fails, users whose browsers carry large headers (many or big cookies on the
    gateway's domain, long tokens) cannot use their lab at all."""
    lab = FakeLab(job_id=gw.lab["id"])  # takes 64 KiB header fields, as JupyterLab does
    lab.port = int((await aiohttp_server(lab.app(), max_field_size=64 * KIB)).port or 0)
    gw.app[STORE].update_job(gw.lab["id"], lab_port=lab.port)
    value = BLOCK[: 8 * KIB].hex()  # 16 KiB
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "GET", gw.prefix() + "echo/long", {"X-Long": value}))
    answer = await wire.response()
    wire.close()
    assert answer.status == 200, answer.body
    assert lab.seen[-1].headers.getall("X-Long") == [value]


@pytest.mark.parametrize("shape", ["one-value", "many-headers"])
async def test_an_oversized_head_is_refused_before_the_lab(gw: Gateway, shape: str) -> None:
    """If this fails, anyone can make the gateway buffer and relay heads of any size (memory
    per connection without bound) and the lab receives what no browser sends."""
    if shape == "one-value":
        headers = {"X-Huge": "x" * (200 * KIB)}
    else:
        headers = {f"X-Many-{index}": "y" * 1000 for index in range(200)}
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "GET", gw.prefix() + "echo/huge", headers))
    answer = await wire.response()
    wire.close()
    assert answer.status in (400, 431), answer.status
    assert gw.all_upstreams_quiet()


async def test_head_answer_has_headers_and_no_body(gw: Gateway) -> None:
    """If this fails, a HEAD (link checkers, download managers) leaves body bytes on the
    connection: the next answer on it is garbage, or the client hangs waiting for it."""
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "HEAD", gw.prefix() + "gzip"))
    answer = await wire.response(head=True)
    assert answer.status == 200
    if "Content-Length" in answer.headers:
        assert int(answer.headers["Content-Length"]) == len(GZIPPED)
    after = gw.prefix() + "echo/after-head"
    await wire.send(request(gw, "GET", after))
    answer = await wire.response()
    assert (answer.status, answer.body) == (200, after.encode())
    wire.close()


# -- connections ----------------------------------------------------------------------------


async def test_keep_alive_connection_carries_sequential_requests(gw: Gateway) -> None:
    """If this fails, every request costs the browser a new connection (slow pages), or its
    second request on a connection is lost."""
    wire = await Wire.open(gw.port)
    for name in ("one", "two"):
        path = gw.prefix() + f"echo/{name}"
        await wire.send(request(gw, "GET", path))
        answer = await wire.response()
        assert (answer.status, answer.body) == (200, path.encode())
    wire.close()
    assert len(gw.upstream.seen) == 2


async def test_http_1_0_client_gets_its_answer_then_the_connection_closes(gw: Gateway) -> None:
    """If this fails, an HTTP/1.0 client (old tools, some monitoring probes) gets a chunked
    body it cannot read, or waits for an end of response that never comes."""
    wire = await Wire.open(gw.port)
    await wire.send(request(gw, "GET", gw.prefix() + "download?n=1", version="HTTP/1.0"))
    answer = await wire.response()
    assert answer.status == 200
    assert "Transfer-Encoding" not in answer.headers  # RFC 9112 6.1: not to an HTTP/1.0 client
    assert answer.body == BLOCK
    assert await wire.eof() == b""  # the gateway closed the connection
    wire.close()
