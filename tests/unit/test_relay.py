"""The lab proxy end to end over loopback: the real gateway app (fake cluster) in front of a
stand-in lab server (an in-process aiohttp app on port 0 that records what it receives).

A lab is made ``ready`` through the Store (the allowed transitions, as the poller and the lab
watcher would make them) with ``lab_port`` = the stand-in's port and ``lab_host = 127.0.0.1``.
Tests assert what a user or an administrator would check from outside: what reaches the lab,
what the browser gets back, and that nothing reaches any other host, port or lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import random
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.api.keys import CONFIG, PROXY, SERVICE
from gateway.api.sessions import make_session
from gateway.config import parse_config
from gateway.jobs.labs import lab_route
from gateway.scheduler import SchedulerState
from gateway.server import STORE, FrontSite, listening_socket, make_app
from gateway.states import State
from gateway.store import Store, User
from gateway.timestamps import utcnow
from gateway.tokens import lab_proof, lab_token
from tests.factories import add_job

if TYPE_CHECKING:
    from conftest import FakeBackend, FakeClusters

SECRET = "s" * 40  # the unit tests' cookie_secret (tests/unit/conftest.py)
ClientFactory = Callable[[TestServer], Awaitable[TestClient[Any, Any]]]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
PROBLEM = "application/problem+json"
LAB_ACTION = re.compile(r"^/labs/[0-9a-f]{16}/([^/?]*)")
KERNEL_PROTOCOL = "v1.kernel.websocket.jupyter.org"
MIB = 1024 * 1024
BLOCK = random.Random(7).randbytes(MIB)  # 1 MiB of incompressible bytes
WAIT = 10.0  # seconds: the longest any single step may take


# -- the stand-in lab server ---------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream received it (the raw path, with its query)."""

    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]


async def _tornado_expect(request: web.Request) -> None:
    """As JupyterLab's server (tornado) answers ``Expect``: a 100 only when the header's value
    (repeated headers joined with ",") is exactly ``100-continue``; otherwise it just reads."""
    if ",".join(request.headers.getall("Expect", [])) == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 (Continue)\r\n\r\n")


@dataclass
class FakeLab:
    """A JupyterLab stand-in. It answers by the first path segment after ``/labs/<id>/``:
    ``hop``, ``gzip``, ``redirect?to=``, ``cookies``, ``download?n=&gate=``, ``upload?gate=``,
    ``ws``, ``nows``, ``echo`` (its raw path as the body), ``truncated`` (promises 1 MiB, sends
    64 KiB, drops the connection), ``hangup`` (drops the connection before answering),
    ``silent`` (never answers: sets :attr:`silent_waiting`, and :attr:`silent_ended` when the
    gateway gives up on it); anything else is ``200 ok``. ``api/...`` (the gateway's own probes) is
    answered but not recorded; ``hpcgw/proof`` answers the gateway's identity challenge like
    the real launcher (counted in :attr:`proofs`)."""

    seen: list[Seen] = field(default_factory=list)
    ws_closes: list[tuple[int | None, str]] = field(default_factory=list)
    ws_done: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # streaming tests' handshake
    first_bytes: asyncio.Event = field(default_factory=asyncio.Event)
    download_aborted: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    proofs: int = 0
    job_id: str = ""  # the lab it serves: it holds that lab's token only
    huge_api: bool = False  # api/... answers an endless body
    endless_ended: asyncio.Event = field(default_factory=asyncio.Event)
    upload_aborted: asyncio.Event = field(default_factory=asyncio.Event)  # body failed or short
    silent_waiting: asyncio.Event = field(default_factory=asyncio.Event)
    silent_ended: asyncio.Event = field(default_factory=asyncio.Event)
    silent_release: asyncio.Event = field(default_factory=asyncio.Event)  # the test is done
    events_ended: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle, expect_handler=_tornado_expect)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        match = LAB_ACTION.match(request.raw_path)
        action = match.group(1) if match else ""
        if action == "api" and self.huge_api:
            return await self.endless(request)
        if action == "api":
            return web.json_response([])
        if action == "hpcgw":
            return self.proof(request)
        self.seen.append(Seen(request.method, request.raw_path, request.headers))
        handlers: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "hop": self.hop, "gzip": self.gzip, "redirect": self.redirect,
            "cookies": self.cookies, "download": self.download, "upload": self.upload,
            "ws": self.websocket, "nows": self.no_websocket, "sw": self.service_worker,
            "echo": self.echo, "truncated": self.truncated, "hangup": self.hangup,
            "endlesshead": self.endless_head, "untilclose": self.until_close,
            "silent": self.silent, "processing": self.processing, "events": self.events,
        }
        if action in handlers:
            return await handlers[action](request)
        return web.Response(text="ok")

    async def endless(self, request: web.Request) -> web.StreamResponse:
        """A JSON answer that never ends (a hostile lab's api/status), until the peer leaves."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b"[")
        try:
            while True:
                await response.write(b'"x",' * 16384)
        except ConnectionError:
            return response
        finally:
            self.endless_ended.set()

    async def events(self, request: web.Request) -> web.StreamResponse:
        """An event stream: ``data: N`` every 50 ms for up to WAIT s, until the peer leaves
        (then :attr:`events_ended`)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for number in range(int(WAIT / 0.05)):
                await response.write(b"data: %d\n\n" % number)
                await asyncio.sleep(0.05)
            await response.write_eof()
        except ConnectionError:
            pass
        finally:
            self.events_ended.set()
        return response

    def proof(self, request: web.Request) -> web.Response:
        self.proofs += 1
        assert request.transport is not None
        host, port = request.transport.get_extra_info("sockname")[:2]
        address = f"{host}:{port}"
        return web.json_response({"address": address, "proof": lab_proof(
            lab_token(SECRET, self.job_id), request.query["nonce"], address)})

    async def hop(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="hop", headers={
            "Connection": "keep-alive, X-Up-Hop", "X-Up-Hop": "secret", "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic", "Trailer": "X-Trail", "Upgrade": "h2c",
            "X-Up-End": "kept"})

    async def service_worker(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="self.addEventListener('fetch', () => {})",
                            content_type="application/javascript",
                            headers={"Service-Worker-Allowed": "/", "X-Up-End": "kept"})

    async def gzip(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip",
                                                   "Content-Type": "text/plain"})

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def cookies(self, request: web.Request) -> web.StreamResponse:
        prefix = request.raw_path.split("cookies")[0]
        response = web.Response(text="cookies")
        for value in ("a=1; Domain=example.org; Path=/; HttpOnly", f"b=2; Path={prefix}sub",
                      "c=3", "d=4; domain=.evil.example; Path=/labs/"):
            response.headers.add("Set-Cookie", value)
        return response

    async def download(self, request: web.Request) -> web.StreamResponse:
        """``n`` MiB of BLOCKs, chunked; with ``gate`` it stops after the first MiB until the
        test opens :attr:`gate` (so a proxy that buffers the whole body deadlocks)."""
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        finished = False
        try:
            for index in range(int(request.query["n"])):
                await response.write(BLOCK)
                if index == 0 and "gate" in request.query:
                    await asyncio.wait_for(self.gate.wait(), WAIT)
            await response.write_eof()
            finished = True
        except ConnectionResetError:
            pass
        finally:  # the write failed, or the server cancelled the handler: the peer left
            if not finished:
                self.download_aborted.set()
        return response

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """Hash the body as it streams in; :attr:`first_bytes` is set on the first chunk;
        with ``gate`` nothing is read before the test opens :attr:`gate`."""
        if "gate" in request.query:
            await asyncio.wait_for(self.gate.wait(), WAIT * 3)
        digest, size = hashlib.sha256(), 0
        whole = False
        try:
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
                self.first_bytes.set()
            whole = request.content_length is None or size == request.content_length
        finally:  # the read failed, the handler was cancelled, or the body came short
            if not whole:
                self.upload_aborted.set()
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def echo(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=request.raw_path)

    async def truncated(self, request: web.Request) -> web.StreamResponse:
        """Headers promising 1 MiB, 64 KiB of it, then the connection just ends."""
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = MIB
        await response.prepare(request)
        await response.write(BLOCK[: 64 * 1024])
        assert request.transport is not None
        request.transport.abort()
        return response

    async def endless_head(self, request: web.Request) -> web.StreamResponse:
        """A hostile lab: one response header that never ends, until the peer leaves."""
        assert request.transport is not None
        transport = request.transport
        transport.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        try:
            while not transport.is_closing():
                transport.write(b"a" * 65536)
                await asyncio.sleep(0)
        finally:
            self.endless_ended.set()
        return web.Response(text="never sent")

    async def until_close(self, request: web.Request) -> web.StreamResponse:
        """An answer with neither a length nor chunks: its body ends with the connection."""
        assert request.transport is not None
        request.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                                b"until the end")
        request.transport.close()
        return web.Response(text="never sent")

    async def silent(self, request: web.Request) -> web.StreamResponse:
        """No answer: this handler ends when cancelled (its server cancels a handler whose
        peer left), or when the test sets :attr:`silent_release` (so that a failing test
        does not hang its server's shutdown)."""
        self.silent_waiting.set()
        try:
            await asyncio.wait_for(self.silent_release.wait(), WAIT * 3)
        finally:
            self.silent_ended.set()
        return web.Response(text="released")

    async def processing(self, request: web.Request) -> web.StreamResponse:
        """A hostile lab: ``102 Processing`` every ``every`` s, never reading the body, until
        the test sets :attr:`silent_release`."""
        assert request.transport is not None
        every = float(request.query["every"])
        while not self.silent_release.is_set():
            request.transport.write(b"HTTP/1.1 102 Processing\r\n\r\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.silent_release.wait(), every)
        return web.Response(text="released")

    async def hangup(self, request: web.Request) -> web.StreamResponse:
        """The connection ends before a single byte of an answer."""
        assert request.transport is not None
        request.transport.abort()
        return web.Response(text="never sent")

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """Echo frames; ``close <code> <reason>`` makes it close, ``drop`` drops the connection;
        records how it was closed."""
        ws = web.WebSocketResponse(protocols=(KERNEL_PROTOCOL,), max_msg_size=64 * MIB)
        await ws.prepare(request)
        reason = ""
        while True:
            message = await ws.receive()
            if message.type is WSMsgType.TEXT and message.data == "drop":
                assert request.transport is not None
                request.transport.abort()  # no close frame: the connection just ends
                break
            if message.type is WSMsgType.TEXT and message.data.startswith("close "):
                _, code, reason = message.data.split(" ", 2)
                await ws.close(code=int(code), message=reason.encode())
                break
            if message.type is WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data)
            else:
                reason = message.extra or "" if message.type is WSMsgType.CLOSE else ""
                break
        self.ws_closes.append((ws.close_code, reason))
        self.ws_done.set()
        return ws

    async def no_websocket(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=403, text="no such kernel")


GZIPPED = gzip.compress(b"hello, compressed world\n" * 1000)


# -- the gateway in front of it ------------------------------------------------------------


async def ready_lab(store: Store, backend: FakeBackend, user: User, port: int,
                    state: State = State.READY) -> dict[str, Any]:
    """A lab job of ``user`` moved to ``state`` along the allowed transitions, its server on
    127.0.0.1:``port``; the fake Slurm lists it as RUNNING so the poller leaves it alone."""
    job_id = secrets.token_hex(8)
    slurm = backend.enqueue(user.unix_user, job_id)
    backend.states[slurm] = SchedulerState.RUNNING
    return add_job(store, user, job_id, state=state, kind="lab", name="lab", at={
        State.PENDING: {"slurm_job_id": slurm}, State.RUNNING: {"node": "vm"},
        State.READY: {"lab_port": port, "last_activity": utcnow()}})


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    app: web.Application
    http: aiohttp.ClientSession  # no cookie jar, no decompression: what is sent is explicit
    alice: str  # tokens
    bob: str
    lab: dict[str, Any]  # alice's ready lab, served by `upstream`
    upstream: FakeLab
    bob_lab: dict[str, Any]  # bob's ready lab, served by `bob_upstream`
    bob_upstream: FakeLab
    bystander: FakeLab  # a server no lab points at: must never see anything

    @property
    def port(self) -> int:
        port = self.client.server.port
        assert port is not None
        return port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.origin}{path}"

    def prefix(self, lab: dict[str, Any] | None = None) -> str:
        return f"/labs/{(lab or self.lab)['id']}/"

    async def post_login(self, token: str, next_path: str = "/") -> aiohttp.ClientResponse:
        """Post the login form as a browser on the gateway's page does: its Origin, and the
        form token from ``GET /login`` as both the hidden field and the cookie."""
        page = await self.http.get(self.url("/login"))
        field = re.search(r'name="xsrf" value="([^"]*)"', await page.text())
        assert field, "the login page has no form token"
        return await self.http.post(
            self.url("/login"), data={"token": token, "next": next_path, "xsrf": field[1]},
            headers={"Origin": self.origin,
                     "Cookie": f"hpcgw_form={page.cookies['hpcgw_form'].value}"},
            allow_redirects=False)

    async def login(self, token: str) -> dict[str, str]:
        """The cookies the login form sets for ``token``."""
        response = await self.post_login(token)
        assert response.status == 303, await response.text()
        return {name: morsel.value for name, morsel in response.cookies.items()
                if name != "hpcgw_form"}

    def all_upstreams_quiet(self) -> bool:
        return not (self.upstream.seen or self.bob_upstream.seen or self.bystander.seen)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


class GatewayServer(TestServer):
    """The gateway app on 127.0.0.1:0. ``handler_cancellation=False`` is how ``hpcgw serve``
    runs it (aiohttp's default); TestServer alone always turns cancellation on."""

    def __init__(self, app: web.Application, *, handler_cancellation: bool) -> None:
        super().__init__(app, host="127.0.0.1")
        self.handler_cancellation = handler_cancellation

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return await super()._make_runner(**{**kwargs,
                                             "handler_cancellation": self.handler_cancellation})

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None,
                           **kwargs: Any) -> None:
        """As ``hpcgw serve`` listens: the lab fast path in front of aiohttp (FrontSite)."""
        if self.runner:
            return
        self._loop = loop
        self.runner = await self._make_runner(**kwargs)
        await self.runner.setup()
        sock = listening_socket("127.0.0.1", 0)
        assert isinstance(self.runner, web.AppRunner)
        await FrontSite(self.runner, sock).start()
        self.port, self.scheme = sock.getsockname()[1], "http"
        self._root = URL(f"http://127.0.0.1:{self.port}")


BOTH_SERVERS = pytest.mark.parametrize("gw", [False, True], indirect=True,
                                       ids=["serve", "handler_cancellation"])


@pytest.fixture
async def gw(
    request: pytest.FixtureRequest, tmp_path: Path, aiohttp_client: ClientFactory,
    aiohttp_server: ServerFactory, fake_clusters: FakeClusters,
    make_raw_config: Callable[..., dict[str, Any]], gateway_settings: dict[str, Any],
) -> AsyncIterator[Gateway]:
    """Alice's and Bob's ready labs, each on its own FakeLab, plus a bystander FakeLab; the
    gateway runs without handler cancellation unless the test is parametrized (BOTH_SERVERS).
    """
    labs = FakeLab(), FakeLab(), FakeLab()
    for fake in labs:
        fake.port = int((await aiohttp_server(fake.app())).port or 0)
    raw = make_raw_config(tmp_path / "data")
    raw["clusters"][0]["lab_host"] = "127.0.0.1"
    raw["labs"] = {"check_interval": 3600}  # the watcher's probes stay out of the way
    raw["gateway"].update(gateway_settings)
    app = make_app(parse_config(raw), cluster_factory=fake_clusters)
    server = GatewayServer(app, handler_cancellation=getattr(request, "param", False))
    client = await aiohttp_client(server)
    store, backend = app[STORE], fake_clusters.by_name["dev"].backend
    alice, bob = store.users.add_user("alice", "alice"), store.users.add_user("bob", "bob")
    tokens = store.users.issue_token(alice), store.users.issue_token(bob)
    lab = await ready_lab(store, backend, alice, labs[0].port)
    bob_lab = await ready_lab(store, backend, bob, labs[1].port)
    labs[0].job_id, labs[1].job_id = lab["id"], bob_lab["id"]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     auto_decompress=False) as http:
        yield Gateway(client, app, http, *tokens, lab, labs[0], bob_lab, labs[1], labs[2])


# -- a raw HTTP/1.1 client, for requests no well-behaved client would send ------------------


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes


async def raw_http(port: int, head: str, body: bytes = b"") -> RawResponse:
    """Send ``head`` (request line and headers, ``\\n``-separated, no blank line) and ``body``
    as they are; read one response (Content-Length, chunked, or to EOF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.strip().replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body)
        await writer.drain()
        raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = raw_head.decode("latin-1").split("\r\n")
        headers: CIMultiDict[str] = CIMultiDict()
        for line in filter(None, lines[1:]):
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
        return RawResponse(int(lines[0].split()[1]), headers, await _raw_body(reader, headers))
    finally:
        writer.close()


async def _raw_body(reader: asyncio.StreamReader, headers: CIMultiDict[str]) -> bytes:
    if "Content-Length" in headers:
        return await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), WAIT)
    if headers.get("Transfer-Encoding", "").lower() != "chunked":
        return await asyncio.wait_for(reader.read(), WAIT)
    body = b""
    while size := int((await asyncio.wait_for(reader.readline(), WAIT)).split(b";")[0], 16):
        body += await reader.readexactly(size + 2)
        body = body[:-2]
    return body


# -- credentials: what the lab sees of them -------------------------------------------------


async def test_upstream_sees_the_lab_token_never_the_gateways_credentials(gw: Gateway) -> None:
    cookies = await gw.login(gw.alice)
    cookie = cookie_header({**cookies, "_xsrf": "x1", "theme": "dark"})
    for headers in (bearer(gw.alice) | {"Cookie": cookie}, {"Cookie": cookie}):
        response = await gw.http.get(gw.url(gw.prefix() + "lab?x=1"), headers=headers)
        assert response.status == 200, await response.text()
        seen = gw.upstream.seen[-1]
        assert seen.raw_path == gw.prefix() + "lab?x=1"
        assert seen.headers.getall("Authorization") == [f"token {lab_token(SECRET, gw.lab['id'])}"]
        assert seen.headers.getall("Cookie") == ["_xsrf=x1; theme=dark"]
        assert gw.alice not in str(seen.headers)
        assert cookies["hpcgw_session"] not in str(seen.headers)
        assert seen.headers["Host"] == f"127.0.0.1:{gw.upstream.port}"


async def test_only_gateway_cookies_present_sends_no_cookie_header(gw: Gateway) -> None:
    cookies = await gw.login(gw.alice)
    response = await gw.http.get(gw.url(gw.prefix() + "lab"),
                                 headers={"Cookie": cookie_header(cookies)})
    assert response.status == 200
    assert "Cookie" not in gw.upstream.seen[-1].headers


# -- hop-by-hop headers ----------------------------------------------------------------------


async def test_hop_by_hop_request_headers_are_dropped(gw: Gateway) -> None:
    body = b"4\r\nabcd\r\n0\r\n\r\n"
    response = await raw_http(gw.port, f"""
POST {gw.prefix()}upload HTTP/1.1
Host: 127.0.0.1:{gw.port}
Authorization: Bearer {gw.alice}
Connection: keep-alive, X-Hop
X-Hop: secret
Keep-Alive: timeout=5
TE: trailers
Upgrade: h2c
Proxy-Authorization: Basic c2VjcmV0
Proxy-Connection: keep-alive
Transfer-Encoding: chunked
X-End: kept
""", body)
    assert response.status == 200, response.body
    assert json.loads(response.body)["size"] == 4
    seen = gw.upstream.seen[-1].headers
    for name in ("X-Hop", "Keep-Alive", "TE", "Upgrade", "Proxy-Authorization",
                 "Proxy-Connection"):
        assert name not in seen, name
    assert "x-hop" not in seen.get("Connection", "").lower()
    assert seen.getall("X-End") == ["kept"]


async def test_hop_by_hop_response_headers_are_dropped(gw: Gateway) -> None:
    direct = await raw_http(gw.upstream.port, f"GET {gw.prefix()}hop HTTP/1.1\nHost: x")
    assert direct.headers["X-Up-Hop"] == "secret"  # the stand-in really sends them
    assert "x-up-hop" in direct.headers["Connection"].lower()
    response = await gw.http.get(gw.url(gw.prefix() + "hop"), headers=bearer(gw.alice))
    assert response.status == 200
    for name in ("X-Up-Hop", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
        assert name not in response.headers, name
    assert "x-up-hop" not in response.headers.get("Connection", "").lower()
    assert response.headers["X-Up-End"] == "kept"
    assert await response.text() == "hop"


# -- bodies: untouched encodings, streaming ---------------------------------------------------


async def test_gzip_passes_through_byte_for_byte(gw: Gateway) -> None:
    response = await gw.http.get(gw.url(gw.prefix() + "gzip"),
                                 headers=bearer(gw.alice) | {"Accept-Encoding": "gzip"})
    assert response.status == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert await response.read() == GZIPPED
    assert gw.upstream.seen[-1].headers["Accept-Encoding"] == "gzip"


async def test_large_download_streams_intact(gw: Gateway) -> None:
    """50 MiB relayed intact; the client gets the first MiB while the upstream is still held
    back (a proxy that buffered whole bodies would time out here)."""
    digest, size = hashlib.sha256(), 0
    async with gw.http.get(gw.url(gw.prefix() + "download?n=50&gate=1"),
                           headers=bearer(gw.alice)) as response:
        assert response.status == 200
        first = await asyncio.wait_for(response.content.readexactly(MIB), WAIT)
        gw.upstream.gate.set()
        digest.update(first)
        size += len(first)
        async for chunk in response.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
    assert size == 50 * MIB
    assert digest.hexdigest() == hashlib.sha256(BLOCK * 50).hexdigest()


@BOTH_SERVERS
async def test_client_leaving_mid_download_releases_the_upstream(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that goes away mid-body ends the relay and the upstream connection, quietly
    (no "upstream failed" warning: the lab did nothing wrong), and the gateway carries on."""
    async with gw.http.get(gw.url(gw.prefix() + "download?n=50&gate=1"),
                           headers=bearer(gw.alice)) as response:
        await asyncio.wait_for(response.content.readexactly(MIB), WAIT)
        response.close()
    gw.upstream.gate.set()
    await asyncio.wait_for(gw.upstream.download_aborted.wait(), WAIT)
    response = await gw.http.get(gw.url(gw.prefix() + "lab"), headers=bearer(gw.alice))
    assert response.status == 200
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


async def test_large_upload_streams_intact(gw: Gateway) -> None:
    """50 MiB uploaded intact; the upstream sees the first bytes before the client has sent
    the rest."""

    async def body() -> AsyncIterator[bytes]:
        yield BLOCK
        await asyncio.wait_for(gw.upstream.first_bytes.wait(), WAIT)
        for _ in range(49):
            yield BLOCK

    response = await gw.http.post(gw.url(gw.prefix() + "upload"), data=body(),
                                  headers=bearer(gw.alice))
    assert response.status == 200, await response.text()
    assert await response.json() == {"size": 50 * MIB,
                                     "sha256": hashlib.sha256(BLOCK * 50).hexdigest()}


# -- redirects and cookies stay under the lab's prefix -----------------------------------------


@pytest.mark.parametrize(("location", "expected"), [
    ("http://127.0.0.1:{port}{prefix}tree?a=1", "{prefix}tree?a=1"),
    ("/lab/tree", "{prefix}lab/tree"),
    ("{prefix}lab", "{prefix}lab"),
    ("{root}?x=1", "{root}?x=1"),
    ("/", "{prefix}"),
    ("relative/path", "relative/path"),
])
async def test_redirects_are_not_followed_and_stay_under_the_prefix(
    gw: Gateway, location: str, expected: str
) -> None:
    values = {"port": gw.upstream.port, "prefix": gw.prefix(), "root": gw.prefix()[:-1]}
    target = location.format(**values)
    response = await gw.http.get(gw.url(gw.prefix() + "redirect?to=" + quote(target, safe="")),
                                 headers=bearer(gw.alice), allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == expected.format(**values)
    assert len(gw.upstream.seen) == 1  # the gateway did not follow it


async def test_set_cookie_is_scoped_to_the_lab(gw: Gateway) -> None:
    response = await gw.http.get(gw.url(gw.prefix() + "cookies"), headers=bearer(gw.alice))
    assert response.status == 200
    parsed: dict[str, Any] = {}
    for value in response.headers.getall("Set-Cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(value)
        parsed.update(jar)
    assert set(parsed) == {"a", "b", "c", "d"}
    assert parsed["a"]["path"] == gw.prefix() and parsed["a"]["httponly"]
    assert parsed["b"]["path"] == gw.prefix() + "sub"
    assert parsed["c"]["path"] == gw.prefix()
    assert parsed["d"]["path"] == gw.prefix()
    assert all(not morsel["domain"] for morsel in parsed.values())


# -- the route: nothing in the URL picks another upstream ---------------------------------------


async def test_url_tricks_never_reach_another_host_port_or_lab(gw: Gateway) -> None:
    own, other, evil = gw.lab["id"], gw.bob_lab["id"], gw.bystander.port
    targets = [
        f"/labs/{own}/@127.0.0.1:{evil}/x",
        f"/labs/{own}/%2e%2e/%2e%2e/labs/{other}/x",
        f"/labs/{own}/../{other}/x",
        f"/labs/{own}%2F..%2F{other}/",
        f"/labs/{own}/%2F%2F127.0.0.1:{evil}/x",
        f"/labs/{own}//127.0.0.1:{evil}/x",
        f"//127.0.0.1:{evil}/labs/{own}/x",
        f"http://127.0.0.1:{evil}/labs/{own}/x",
        f"/labs/{own}/x?next=http://127.0.0.1:{evil}/",
        f"/labs/{own}/\\\\127.0.0.1:{evil}/x",
    ]
    for target in targets:
        response = await raw_http(gw.port, f"GET {target} HTTP/1.1\nHost: 127.0.0.1:{evil}\n"
                                           f"Authorization: Bearer {gw.alice}")
        assert response.status in (200, 400, 404), (target, response.status)
        if response.status == 200:
            seen = gw.upstream.seen[-1]
            assert seen.raw_path.startswith(f"/labs/{own}/"), target
            assert seen.headers["Host"] == f"127.0.0.1:{gw.upstream.port}"
    assert not gw.bystander.seen
    assert not gw.bob_upstream.seen


async def test_another_users_lab_is_indistinguishable_from_a_missing_one(gw: Gateway) -> None:
    missing = "0123456789abcdef"
    answers = []
    for job_id in (gw.lab["id"], missing):
        response = await gw.http.get(gw.url(f"/labs/{job_id}/lab"), headers=bearer(gw.bob))
        assert response.status == 404
        assert response.content_type == PROBLEM
        body = await response.json(content_type=PROBLEM)
        answers.append(body | {"detail": body["detail"].replace(job_id, "ID")})
    assert answers[0] == answers[1]
    for job_id in (gw.lab["id"], missing):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gw.http.ws_connect(gw.url(f"/labs/{job_id}/ws"), headers=bearer(gw.bob))
        assert refused.value.status == 404
    assert not gw.upstream.seen


async def test_lab_of_a_notebook_job_or_ended_lab_is_not_proxied(gw: Gateway) -> None:
    gw.app[STORE].transition(gw.lab["id"], State.CANCELLED)
    response = await gw.http.get(gw.url(gw.prefix() + "lab"), headers=bearer(gw.alice))
    assert response.status == 404
    assert not gw.upstream.seen


# -- WebSockets -----------------------------------------------------------------------------


async def test_websocket_relays_protocol_and_large_frames(gw: Gateway) -> None:
    text = BLOCK.hex()[: 16 * MIB] + "é"  # 16 MiB (+ a non-ASCII character)
    binary = BLOCK * 16
    async with gw.http.ws_connect(
        gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice), max_msg_size=64 * MIB,
        protocols=("other", KERNEL_PROTOCOL),
    ) as ws:
        assert ws.protocol == KERNEL_PROTOCOL
        await ws.send_str(text)
        assert (await ws.receive(WAIT)).data == text
        await ws.send_bytes(binary)
        echoed = await ws.receive(WAIT)
        assert echoed.type is WSMsgType.BINARY and echoed.data == binary
    seen = gw.upstream.seen[-1].headers
    assert [p.strip() for p in seen["Sec-WebSocket-Protocol"].split(",")] == [
        "other", KERNEL_PROTOCOL]
    assert seen["Authorization"] == f"token {lab_token(SECRET, gw.lab['id'])}"


@BOTH_SERVERS
async def test_websocket_client_close_reaches_the_lab(gw: Gateway) -> None:
    ws = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
    await ws.send_str("ping")
    assert (await ws.receive(WAIT)).data == "ping"
    await ws.close(code=4001, message=b"client says bye")
    await asyncio.wait_for(gw.upstream.ws_done.wait(), WAIT)
    assert gw.upstream.ws_closes == [(4001, "client says bye")]


@BOTH_SERVERS
async def test_websocket_lab_close_reaches_the_client(gw: Gateway) -> None:
    ws = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
    await ws.send_str("close 4002 lab says bye")
    message = await ws.receive(WAIT)
    assert message.type is WSMsgType.CLOSE
    assert (message.data, message.extra) == (4002, "lab says bye")
    assert ws.close_code == 4002
    await asyncio.wait_for(gw.upstream.ws_done.wait(), WAIT)
    assert (await ws.receive(WAIT)).type is WSMsgType.CLOSED


@BOTH_SERVERS
async def test_websocket_client_dropping_its_connection_closes_the_labs(gw: Gateway) -> None:
    response = await raw_websocket_upgrade(gw, gw.prefix() + "ws", drop_after=True)
    assert response.status == 101
    await asyncio.wait_for(gw.upstream.ws_done.wait(), WAIT)


@BOTH_SERVERS
async def test_websocket_lab_dropping_its_connection_closes_the_clients(gw: Gateway) -> None:
    ws = await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers=bearer(gw.alice))
    await ws.send_str("drop")
    message = await ws.receive(WAIT)
    assert message.type is WSMsgType.CLOSE
    assert message.data == 1011  # 1006 "abnormal" may not be sent on the wire
    assert (await ws.receive(WAIT)).type is WSMsgType.CLOSED


async def test_malformed_websocket_upgrade_never_reaches_the_lab(gw: Gateway) -> None:
    response = await raw_http(gw.port, f"""
GET {gw.prefix()}ws HTTP/1.1
Host: 127.0.0.1
Authorization: Bearer {gw.alice}
Upgrade: websocket""")
    assert response.status == 400
    assert not gw.upstream.seen


async def raw_websocket_upgrade(gw: Gateway, path: str, *, drop_after: bool) -> RawResponse:
    """A WebSocket handshake by hand; with ``drop_after`` the socket is closed right after the
    101, without a close frame."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Bearer {gw.alice}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    if drop_after:
        writer.transport.abort()
    else:
        writer.close()
    return RawResponse(int(head.split()[1]), CIMultiDict(), b"")


async def test_websocket_refused_by_the_lab_is_relayed_not_a_crash(gw: Gateway) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.http.ws_connect(gw.url(gw.prefix() + "nows"), headers=bearer(gw.alice))
    assert refused.value.status == 403


async def test_cookie_websocket_from_a_foreign_origin_is_refused(gw: Gateway) -> None:
    cookie = cookie_header(await gw.login(gw.alice))
    for origin in ("http://evil.example", "null", gw.origin + ".evil.example"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gw.http.ws_connect(gw.url(gw.prefix() + "ws"),
                                     headers={"Cookie": cookie, "Origin": origin})
        assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # no Origin at all
        await gw.http.ws_connect(gw.url(gw.prefix() + "ws"), headers={"Cookie": cookie})
    assert refused.value.status == 403
    assert not gw.upstream.seen
    async with gw.http.ws_connect(gw.url(gw.prefix() + "ws"),
                                  headers={"Cookie": cookie, "Origin": gw.origin}) as ws:
        await ws.send_str("same origin")
        assert (await ws.receive(WAIT)).data == "same origin"
    assert gw.upstream.seen[-1].headers["Origin"] == f"http://127.0.0.1:{gw.upstream.port}"


# -- browsers: login, sessions, XSRF ----------------------------------------------------------


async def test_anonymous_page_goes_to_login_other_requests_get_401(gw: Gateway) -> None:
    path = gw.prefix() + "lab/tree?a=1&b=2"
    response = await gw.http.get(gw.url(path), headers={"Accept": "text/html"},
                                 allow_redirects=False)
    assert response.status == 302
    location = URL(response.headers["Location"])
    assert (location.path, location.query["next"]) == ("/login", path)
    for method, headers in (("GET", {"Accept": "application/json"}), ("POST", {}),
                            ("GET", {"Authorization": f"token {lab_token(SECRET, gw.lab['id'])}"})):
        response = await gw.http.request(method, gw.url(path), headers=headers)
        assert response.status == 401
        assert response.content_type == PROBLEM
    assert not gw.upstream.seen


async def test_cookie_post_needs_the_labs_xsrf_token(gw: Gateway) -> None:
    cookies = await gw.login(gw.alice)
    url = gw.url(gw.prefix() + "api/contents")
    refused = [
        {"Cookie": cookie_header(cookies)},
        {"Cookie": cookie_header(cookies | {"_xsrf": "abc"})},
        {"Cookie": cookie_header(cookies | {"_xsrf": "abc"}), "X-XSRFToken": "abd"},
        {"Cookie": cookie_header(cookies), "X-XSRFToken": cookies["hpcgw_xsrf"]},
    ]
    for headers in refused:
        response = await gw.http.post(url, headers=headers)
        assert response.status == 403, headers
    assert not gw.upstream.seen
    response = await gw.http.post(gw.url(gw.prefix() + "upload"), data=b"x", headers={
        "Cookie": cookie_header(cookies | {"_xsrf": "abc"}), "X-XSRFToken": "abc"})
    assert response.status == 200
    assert gw.upstream.seen[-1].headers["Cookie"] == "_xsrf=abc"


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil.example", "\\\\evil.example",
                                    "https://evil.example/", "/\t/evil.example", "javascript:x"])
async def test_login_never_redirects_off_site(gw: Gateway, target: str) -> None:
    response = await gw.post_login(gw.alice, target)
    assert response.status == 303
    assert response.headers["Location"] == "/"


async def test_login_returns_to_the_lab(gw: Gateway) -> None:
    response = await gw.post_login(gw.alice, gw.prefix() + "lab")
    assert response.headers["Location"] == gw.prefix() + "lab"


async def test_forged_expired_or_revoked_sessions_are_refused(gw: Gateway) -> None:
    cookies = await gw.login(gw.alice)
    session = cookies["hpcgw_session"]
    token_id, _, _ = session.partition(".")
    secret = gw.app[CONFIG].gateway.cookie_secret
    forged = [
        session[:-1] + ("0" if session[-1] != "0" else "1"),
        f"{int(token_id) + 1}.{session.split('.', 1)[1]}",  # another token id, old signature
        make_session("x" * 40, int(token_id), 3600),  # signed with another secret
        make_session(secret, int(token_id), -10),  # expired
        # signed, but naming alice's API token itself: only a session row is a session
        make_session(secret, gw.app[STORE].users.authenticate(gw.alice)[0], 3600),  # type: ignore[index]
        session + "é", "é", "", "...", "1.2", "1.99999999999.zz",
    ]
    for value in forged:
        response = await gw.http.get(gw.url(gw.prefix() + "lab"),
                                     headers={"Cookie": f"hpcgw_session={quote(value)}"})
        assert response.status == 401, value
    response = await gw.http.get(gw.url(gw.prefix() + "lab"),
                                 headers={"Cookie": f"hpcgw_session={session}"})
    assert response.status == 200
    gw.app[STORE].users.revoke_token(gw.alice)
    response = await gw.http.get(gw.url(gw.prefix() + "lab"),
                                 headers={"Cookie": f"hpcgw_session={session}"})
    assert response.status == 401
    assert len(gw.upstream.seen) == 1


async def test_non_ascii_session_cookie_is_refused_not_a_crash(gw: Gateway) -> None:
    response = await raw_http(gw.port, f"""
GET {gw.prefix()}lab HTTP/1.1
Host: 127.0.0.1
Cookie: hpcgw_session=1.99999999999.\xe9\xe9""")
    assert response.status == 401, response.body


# -- pages escape what they echo ----------------------------------------------------------------


async def test_login_page_escapes_next(gw: Gateway) -> None:
    evil = '/x"><script>alert(1)</script>'
    response = await gw.http.get(gw.url("/login?next=" + quote(evil, safe="")))
    page = await response.text()
    assert response.status == 200
    assert "<script>" not in page
    assert "&lt;script&gt;" in page and "&#34;&gt;" in page  # jinja2 escapes " as &#34;
    response = await gw.post_login("wrong", evil)
    page = await response.text()
    assert response.status == 401
    assert "<script>" not in page


async def test_starting_lab_page_escapes_and_only_its_owner_sees_it(
    gw: Gateway, fake_clusters: FakeClusters
) -> None:
    store, backend = gw.app[STORE], fake_clusters.by_name["dev"].backend
    alice = store.users.get_user("alice")
    starting = await ready_lab(store, backend, alice, gw.upstream.port, State.PENDING)
    path = f"/labs/{starting['id']}/lab/<script>alert(1)</script>"
    html_headers = {"Accept": "text/html"}
    response = await gw.http.get(gw.url(quote(path)), headers=html_headers | bearer(gw.alice))
    assert response.status == 503
    assert response.content_type == "text/html"
    page = await response.text()
    assert "pending" in page and "<script>" not in page
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    # Another user's lab is one that does not exist: a page saying so, nothing of the lab.
    response = await gw.http.get(gw.url(quote(path)), headers=html_headers | bearer(gw.bob))
    assert response.status == 404 and response.content_type == "text/html"
    page = await response.text()
    assert "No such lab" in page and "pending" not in page and "<script>" not in page
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]  # the gateway's
    response = await gw.http.get(gw.url(quote(path)), headers=bearer(gw.bob))
    assert response.status == 404 and response.content_type == PROBLEM
    response = await gw.http.get(gw.url(quote(path)), headers=bearer(gw.alice))
    assert response.status == 503
    assert response.content_type == PROBLEM
    assert not gw.upstream.seen


# -- the lab's identity and the browser's origin ----------------------------------------------


async def test_a_lab_cannot_widen_a_service_workers_scope_to_the_gateway(gw: Gateway) -> None:
    response = await gw.http.get(gw.url(gw.prefix() + "sw"), headers=bearer(gw.alice))
    assert response.status == 200
    assert response.headers["X-Up-End"] == "kept"  # other headers still pass
    assert "Service-Worker-Allowed" not in response.headers


async def test_each_new_upstream_connection_is_proven_once(gw: Gateway) -> None:
    for _ in range(5):  # keep-alive: one proven connection carries them all
        response = await gw.http.get(gw.url(gw.prefix() + "x"), headers=bearer(gw.alice))
        assert response.status == 200
    assert gw.upstream.proofs == 1
    assert len(gw.upstream.seen) == 5
    # Two requests at once need a second connection, which is proven before it is used.
    slow, fast = gw.url(gw.prefix() + "download?n=2&gate=1"), gw.url(gw.prefix() + "y")
    download = asyncio.ensure_future(gw.http.get(slow, headers=bearer(gw.alice)))
    await asyncio.wait_for(_until(lambda: len(gw.upstream.seen) == 6), WAIT)
    assert (await gw.http.get(fast, headers=bearer(gw.alice))).status == 200
    assert gw.upstream.proofs == 2
    gw.upstream.gate.set()
    assert len(await (await download).read()) == 2 * MIB


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def test_a_server_that_fails_the_proof_gets_no_request(gw: Gateway) -> None:
    # Alice's lab now points at a server that holds another token (bob's lab's).
    gw.app[STORE].update_job(gw.lab["id"], lab_port=gw.bob_upstream.port)
    response = await gw.http.get(gw.url(gw.prefix() + "x"), headers=bearer(gw.alice))
    assert response.status == 503
    assert gw.bob_upstream.proofs == 1  # it was challenged
    assert not gw.bob_upstream.seen  # and got nothing else, alice's token least of all


async def test_the_gateway_reads_at_most_64_kib_of_a_labs_api_answer(gw: Gateway) -> None:
    gw.upstream.huge_api = True
    proxy = gw.app[PROXY]
    with pytest.raises(ValueError, match="over 65536 bytes"):
        route = await lab_route(gw.app[SERVICE].ctx, gw.lab)
        await asyncio.wait_for(proxy.get(route, "api/status"), WAIT)
    # The gateway hung up rather than reading on: the lab's endless answer was cut off.
    await asyncio.wait_for(gw.upstream.endless_ended.wait(), WAIT)


async def test_lab_connections_have_no_read_or_total_timeout(gw: Gateway) -> None:
    """What the slow 305 s stream test (test_long_streams.py) relies on, checked fast: a lab's
    client session never times out a response or a WebSocket that is merely quiet."""
    proxy = gw.app[PROXY]
    _, session = proxy.upstream(await lab_route(gw.app[SERVICE].ctx, gw.lab))
    assert session.timeout.total is None and session.timeout.sock_read is None
    assert session.timeout.sock_connect is not None  # connecting is bounded
