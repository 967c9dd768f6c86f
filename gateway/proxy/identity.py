"""Connections to a lab's server that the server has proved are its own.

Every new TCP connection to a lab starts with a challenge, before the lab's token or any of the
user's bytes go over it (see :mod:`gateway.tokens`): the gateway asks
``GET <prefix>hpcgw/proof?nonce=N`` on the bare connection, and only if the answer is
``HMAC(token, N | address)`` for the address the gateway expects does the connection go to the
HTTP client that relays the user's traffic with the token. A server that fails gets nothing,
whoever it is: another user's listener on a port a job reported, a listener on another address
of the node, a relay in front of the real lab (its answer names the lab's address, not its own).

The check runs inside an aiohttp connector (:class:`ProvenLabConnector`, one per lab), so it
covers every way the gateway talks to a lab: relayed requests, WebSocket upgrades and the lab
watcher's own probes. Proven connections are pooled and reused like any keep-alive connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from .. import untrusted
from ..tokens import PROOF_PATH, lab_proof

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

PROOF_TIMEOUT = 5.0
MAX_PROOF_ANSWER = 8 * 1024  # headers and body of the proof's answer together


class LabNotProven(aiohttp.ClientConnectionError):
    """The server at a lab's address did not prove it holds the lab's token."""


@dataclass(frozen=True)
class LabIdentity:
    """What a lab's server must prove, and where.

    ``port`` is the lab's own port on its node. ``ip`` is the node address the server must
    report: None means the peer address of the gateway's own socket (a direct connection);
    for a connection through an SSH tunnel, the peer is the tunnel, so ``ip`` is the configured
    lab host when that is an address, or ``"*"`` (only the port is compared) when it is a name
    the login side resolves.
    """

    token: str
    prefix: str
    port: int
    ip: str | None = None


def _same_ip(reported: str, expected: str) -> bool:
    try:
        left, right = ipaddress.ip_address(reported), ipaddress.ip_address(expected)
    except ValueError:
        return False
    if isinstance(left, ipaddress.IPv6Address) and left.ipv4_mapped:
        left = left.ipv4_mapped
    if isinstance(right, ipaddress.IPv6Address) and right.ipv4_mapped:
        right = right.ipv4_mapped
    return left == right


def check_answer(identity: LabIdentity, nonce: str, answer: Any, peer_ip: str) -> None:
    """Raise :class:`LabNotProven` unless ``answer`` (the proof's JSON) proves ``identity``
    for ``nonce`` on a connection whose peer is ``peer_ip``."""
    if not isinstance(answer, dict) or not isinstance(answer.get("address"), str) \
            or not isinstance(answer.get("proof"), str):
        raise LabNotProven("the server's answer to the identity challenge is malformed")
    address: str = answer["address"]
    ip, _, port = address.rpartition(":")
    expected_ip = peer_ip if identity.ip is None else identity.ip
    if port != str(identity.port) or (expected_ip != "*" and not _same_ip(ip, expected_ip)):
        raise LabNotProven(f"the server answered for {address[:80]!r}, not for the lab's "
                           f"address ({expected_ip}:{identity.port})")
    expected = lab_proof(identity.token, nonce, address)
    if not secrets.compare_digest(expected.encode(), answer["proof"].encode()):
        raise LabNotProven("the server does not hold the lab's token")


def _challenge(identity: LabIdentity, host: str, port: int, nonce: str) -> bytes:
    return (f"GET {identity.prefix}{PROOF_PATH}?nonce={nonce} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nAccept: application/json\r\n\r\n").encode()


async def _read_answer(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Any:
    """The JSON body of one HTTP/1.1 answer with a Content-Length, read without reading past
    it (the connection is used afterwards); LabNotProven for anything else."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await loop.sock_recv(sock, MAX_PROOF_ANSWER - len(data))
        if not chunk or len(data) + len(chunk) >= MAX_PROOF_ANSWER:
            raise LabNotProven("no complete answer to the identity challenge")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if lines[0].split(" ")[1:2] != ["200"]:
        raise LabNotProven(f"the identity challenge was answered {lines[0][:80]!r}")
    lengths = [line.split(":", 1)[1].strip() for line in lines[1:]
               if line.lower().startswith("content-length:")]
    if len(lengths) != 1 or not lengths[0].isdigit() or int(lengths[0]) > MAX_PROOF_ANSWER:
        raise LabNotProven("the answer to the identity challenge has no usable length")
    while len(body) < int(lengths[0]):
        chunk = await loop.sock_recv(sock, int(lengths[0]) - len(body))
        if not chunk:
            raise LabNotProven("the answer to the identity challenge was cut short")
        body += chunk
    if len(body) != int(lengths[0]):
        raise LabNotProven("the server sent more than it answered")
    try:
        return untrusted.loads(body)
    except ValueError:
        raise LabNotProven("the answer to the identity challenge is not JSON") from None


async def open_proven(identity: LabIdentity, host: str, port: int) -> socket.socket:
    """A connected socket to ``host:port`` whose server has proved ``identity``.

    Raises LabNotProven (the server failed), OSError (no connection) or TimeoutError.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(PROOF_TIMEOUT):
        sock = await _connect(loop, host, port)
        try:
            nonce = secrets.token_urlsafe(24)
            await loop.sock_sendall(sock, _challenge(identity, host, port, nonce))
            answer = await _read_answer(loop, sock)
            check_answer(identity, nonce, answer, sock.getpeername()[0])
        except BaseException:
            sock.close()
            raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A non-blocking socket connected to the first of ``host``'s addresses that accepts."""
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, address in await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:  # cancelled (the proof's timeout)
            sock.close()
            raise
        return sock
    raise error


class ProvenLabConnector(aiohttp.BaseConnector):
    """An aiohttp connector for one lab: each new connection is proven first
    (:func:`open_proven`); requests to any other host or port than the lab's are refused."""

    def __init__(self, identity: LabIdentity, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.identity, self.host, self.port = identity, host, port

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        if (req.url.host, req.url.port) != (self.host, self.port):
            raise LabNotProven(f"this connector only reaches {self.host}:{self.port}")
        sock = await open_proven(self.identity, self.host, self.port)
        try:
            _, protocol = await self._loop.create_connection(self._factory, sock=sock)
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        return protocol


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class UpgradeRedirected(Exception):
    """The lab answered a WebSocket upgrade with a redirect (not followed: the client gets it,
    its ``Location`` kept under the lab's prefix)."""

    def __init__(self, status: int, location: str | None) -> None:
        super().__init__(f"the lab redirected a WebSocket upgrade ({status})")
        self.status, self.location = status, location


async def upgrade_not_followed(request: aiohttp.ClientRequest,
                               handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
    """A lab session's middleware: a redirect answering a WebSocket upgrade ends the request
    (:class:`UpgradeRedirected`), since ``ws_connect`` would follow it, with the lab's token,
    anywhere on the lab's server. (Other requests are sent with ``allow_redirects=False``.)"""
    response = await handler(request)
    if response.status in _REDIRECTS and "Upgrade" in request.headers:
        location = response.headers.get("Location")
        response.release()
        raise UpgradeRedirected(response.status, location)
    return response


class LabSessions:
    """One HTTP client session per lab, over a :class:`ProvenLabConnector` for that lab's
    current address; replaced when the address (or what must be proven) changes, closed when
    the lab is no longer live. Sessions never share connections or cookies between labs, and
    never follow a lab's redirect (:func:`upgrade_not_followed`)."""

    def __init__(self, connect_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._sessions: dict[str, tuple[tuple[Any, ...], aiohttp.ClientSession]] = {}

    def get(self, job_id: str, identity: LabIdentity, host: str, port: int
            ) -> aiohttp.ClientSession:
        key = (identity, host, port)
        entry = self._sessions.get(job_id)
        if entry is not None and entry[0] == key:
            return entry[1]
        if entry is not None:
            _close_later(entry[1])
        session = aiohttp.ClientSession(
            connector=ProvenLabConnector(identity, host, port, limit=0, limit_per_host=0,
                                         keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout,
                                          sock_read=None),
            auto_decompress=False,  # bodies pass through as the upstream encoded them
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep one user's cookies for another
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            middlewares=(upgrade_not_followed,),
        )
        self._sessions[job_id] = (key, session)
        return session

    def retain(self, job_ids: set[str]) -> None:
        """Close the sessions of labs not in ``job_ids``."""
        for job_id in [j for j in self._sessions if j not in job_ids]:
            _close_later(self._sessions.pop(job_id)[1])

    async def close(self) -> None:
        sessions = [session for _, session in self._sessions.values()]
        self._sessions.clear()
        await asyncio.gather(*(session.close() for session in sessions))


_CLOSING: set[asyncio.Task[None]] = set()  # strong references until each close has run


def _close_later(session: aiohttp.ClientSession) -> None:
    task = asyncio.get_running_loop().create_task(session.close())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)
