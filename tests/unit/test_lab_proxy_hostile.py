"""A hostile client and a hostile lab against the lab proxy (a red-team's findings, each test
failing on the code it was written against): WebSockets on a connection aiohttp serves are
checked again like the fast path's pipes; a lab answer cut by a reset looks cut; the status
line the client gets is well formed whatever the lab sends. ``HostileLab`` proves it holds its
lab's token, then answers with the bytes a test scripts."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.proxy.wsframes import POLICY_VIOLATION, close_frame
from gateway.server import STORE
from gateway.states import State
from gateway.store import Store
from gateway.tokens import lab_proof, lab_token
from tests.unit import test_relay as relay
from tests.unit.test_lab_connections import hand_to_aiohttp
from tests.unit.test_relay import SECRET, WAIT, Gateway, ready_lab
from tests.unit.test_relay_wire import Wire, deadline, request

gw = relay.gw  # the fixture

UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def open_on(gw: Gateway, path: str) -> Wire:
    """A client connection on the given path of the lab proxy: ``aiohttp`` sends an API
    request first, after which aiohttp serves the connection for good (``fast``: nothing)."""
    wire = await Wire.open(gw.port)
    if path == "aiohttp":
        await hand_to_aiohttp(gw, wire)
    return wire


async def close_code_then_end(wire: Wire) -> int | None:
    """The close code of the first frame the gateway sends (None if that is no close frame),
    answered as a browser does, once the gateway has also ended the connection (within WAIT
    s each)."""
    seen = b""
    while True:
        try:
            data = await deadline(wire.reader.read(65536))
        except ConnectionError:
            break
        if not data:
            break
        if not seen and data[:1] == b"\x88":
            await wire.send(close_frame(masked=True, code=1000))
        seen += data
    if len(seen) < 4 or seen[0] != 0x88:
        return None
    return int.from_bytes(seen[2:4], "big")


def revoke(gw: Gateway, tmp_path: Path) -> None:
    assert gw.app[STORE].users.revoke_token(gw.alice)


def disable_from_another_process(gw: Gateway, tmp_path: Path) -> None:
    cli = Store(tmp_path / "data" / "hpcgw.db")  # the admin CLI's own connection
    try:
        cli.users.set_user("alice", disabled=True)
    finally:
        cli.close()


def end_the_lab(gw: Gateway, tmp_path: Path) -> None:
    gw.app[STORE].transition(gw.lab["id"], State.CANCELLED, reason="user_cancelled")


@pytest.mark.parametrize("ending", [revoke, disable_from_another_process, end_the_lab],
                         ids=["token-revoked", "user-disabled", "lab-ended"])
async def test_a_websocket_on_a_connection_aiohttp_serves_ends_when_no_longer_admitted(
        gw: Gateway, tmp_path: Path, ending: Callable[[Gateway, Path], None]) -> None:
    """SECURITY.md: an open lab WebSocket is checked again every second and closed (1008) once
    its credential or its lab no longer admits it. A connection that first carried any other
    request (here the API's health check) is aiohttp's from then on, and a WebSocket upgraded
    there is relayed by aiohttp (relay_ws.relay_websocket): if this fails, a leaked token that
    was revoked keeps a kernel or a terminal (a shell as its user) open for ever."""
    wire = await open_on(gw, "aiohttp")
    try:
        await wire.send(request(gw, "GET", gw.prefix() + "ws", UPGRADE))
        assert (await wire.message()).status == 101
        ending(gw, tmp_path)
        assert await close_code_then_end(wire) == POLICY_VIOLATION
    finally:
        wire.close()
    await deadline(gw.upstream.ws_done.wait())  # the lab's side is closed too


# -- a hostile lab server: proves it holds its lab's token, then answers as a script says -----


class HostileLab:
    """A raw TCP lab server: answers the gateway's identity challenge like the real launcher,
    then answers each other request with ``answer(path, writer)`` (a coroutine that writes
    raw bytes and may end the connection). Records the request lines it got. A request body
    is read before the answer, unless the request expects a 100 (none is sent)."""

    def __init__(self, answer: Callable[[str, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.answer = answer
        self.job_id = ""
        self.requests: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                path = line.split(" ")[1]
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length and b"\r\nexpect: 100-continue\r\n" not in head.lower():
                    await reader.readexactly(int(length[1]))
                if "/hpcgw/proof?" in path:
                    host, port = writer.get_extra_info("sockname")[:2]
                    address = f"{host}:{port}"
                    nonce = path.split("nonce=", 1)[1]
                    body = json.dumps({"address": address, "proof": lab_proof(
                        lab_token(SECRET, self.job_id), nonce, address)}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                self.requests.append(line)
                await self.answer(path, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def hostile(gw: Gateway, fake_clusters: Any) -> AsyncIterator[Callable[..., Awaitable[
        tuple[HostileLab, str]]]]:
    """Makes a ready lab of alice's served by a :class:`HostileLab`; gives (lab, prefix)."""
    made: list[HostileLab] = []

    async def make(answer: Callable[[str, asyncio.StreamWriter], Awaitable[None]]
                   ) -> tuple[HostileLab, str]:
        lab = HostileLab(answer)
        await lab.start()
        made.append(lab)
        store = gw.app[STORE]
        job = await ready_lab(store, fake_clusters.by_name["dev"].backend,
                              store.users.get_user("alice"), lab.port)
        lab.job_id = job["id"]
        return lab, f"/labs/{job['id']}/"

    yield make
    for lab in made:
        lab.close()


def reset(writer: asyncio.StreamWriter) -> None:
    """End the connection with a reset (RST), not an orderly close."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("path", ["fast", "aiohttp"])
async def test_a_lab_answer_without_a_length_cut_by_a_reset_does_not_look_complete(
        gw: Gateway, hostile: Any, path: str) -> None:
    """A lab answer with neither a length nor chunks ends with its connection; it is complete
    "unless an error was indicated by the underlying connection" (RFC 9112 §8). A reset is
    such an error (the lab's server crashed or was killed mid-answer): the client must see a
    cut answer, no last chunk. If this fails, a truncated download looks whole."""
    go = asyncio.Event()

    async def answer(path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"
                     b"first part of a long file")
        await writer.drain()
        await asyncio.wait_for(go.wait(), WAIT)
        reset(writer)

    _, prefix = await hostile(answer)
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", prefix + "files/big.bin"))
        head = await deadline(wire.reader.readuntil(b"\r\n\r\n"))
        assert head.startswith(b"HTTP/1.1 200"), head
        seen = b""
        while b"first part of a long file" not in seen:
            seen += await deadline(wire.reader.read(65536))
        go.set()
        while not seen.endswith(b"\r\n0\r\n\r\n"):  # the last chunk, or the end: cut
            try:
                more = await deadline(wire.reader.read(65536))
            except ConnectionError:
                break
            if not more:
                break
            seen += more
        assert not seen.endswith(b"\r\n0\r\n\r\n"), \
            f"a reset lab connection was relayed as a complete answer: {seen!r}"
    finally:
        wire.close()


@pytest.mark.parametrize(("status_line", "status"), [
    (b"HTTP/1.1 200 O\x00K", 200),  # NUL in the reason phrase (llhttp lets it through)
    (b"HTTP/1.1 200 O\x1b[2JK", 200),  # an escape sequence
    (b"HTTP/1.1 099 Early", 503),  # llhttp reads 99: no status the gateway may pass on
], ids=["nul", "escape", "two-digit"])
@pytest.mark.parametrize("path", ["fast", "aiohttp"])
async def test_the_client_gets_a_well_formed_status_line_whatever_the_lab_sends(
        gw: Gateway, hostile: Any, status_line: bytes, status: int, path: str) -> None:
    """The gateway trusts nothing of a lab's answers (design §4): the status line it writes
    is well formed (RFC 9112 §4: status-code = 3DIGIT, reason-phrase = HTAB / SP / VCHAR /
    obs-text). A reason phrase with control bytes is left out; a status that is not three
    digits is the lab's server failing (503)."""

    async def answer(path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(status_line + b"\r\nContent-Length: 2\r\n\r\nok")

    _, prefix = await hostile(answer)
    wire = await open_on(gw, path)
    try:
        await wire.send(request(gw, "GET", prefix + "x"))
        line = (await deadline(wire.reader.readuntil(b"\r\n")))[:-2]
    finally:
        wire.close()
    assert re.fullmatch(rb"HTTP/1\.1 %d [\t\x20-\x7e\x80-\xff]*" % status, line), line
