"""The lab proxy's checks for the fast path (:mod:`.front`), its access records and open pipes.

:meth:`LabFastPath.admit` lets a request through only when every check of the lab proxy
passes: a credential that names a user now (bearer token, or session cookie with the lab's XSRF
pair for a state change: ``Caller``), that user's own lab, ``ready`` (the job service's
``open_lab``), a path under the lab's prefix, and for a WebSocket a valid handshake and, with a
cookie, the gateway's own Origin. Anything else is not admitted, and aiohttp answers it (401,
login, 403, 404, the lab's "starting" page) exactly as before. Both lookups are cached until
the store changes (:mod:`gateway.store.stamped`), so a revoked token or an ended lab stops the
very next request.

Access records and the proxy's counters are kept in memory and written every
:data:`FLUSH_INTERVAL` s (or :data:`FLUSH_RECORDS` records) as one ``hpcgw.access`` event whose
``requests`` field lists them: one record per request, none dropped. Open WebSocket pipes are
checked again while they last (:mod:`.watch`, with :func:`still_admitted`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any, Protocol

from ..errors import GatewayError, LabUnavailable, RequestTimeout
from ..logs import masked_path
from ..metrics import GatewayMetrics
from ..pageheaders import SECURITY_HEADERS
from ..timestamps import format_timestamp
from ..users import User
from .admission import Admission
from .heads import response_head, upstream_head
from .http1 import RequestHead
from .identity import LabIdentity
from .pool import UpstreamPool
from .quota import LabConnections
from .rules import Upstream
from .upstream import UpstreamConnection
from .watch import End, OpenWebSockets, Watched

access_log = logging.getLogger("hpcgw.access")
FLUSH_INTERVAL = 1.0
FLUSH_RECORDS = 1024
MAX_ROUTES = 1024
LAB_PATH = re.compile(r"^/labs/([0-9a-f]{16})/")

# (request head) -> (user, authenticated by a session cookie) or None when not clearly good.
Caller = Callable[[RequestHead], tuple[User, bool] | None]


class LabRoutes(Protocol):
    """The job service's side: the route to a caller's ready lab (raises GatewayError), and
    word that a route did not answer."""

    def open_lab(self, user: User, job_id: str) -> Awaitable[Any]: ...

    def cached_lab(self, user: User, job_id: str) -> Any | None: ...

    def lab_unreachable(self, user: User, job_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RouteParts:
    """A lab route's upstream and the pool's and head builder's calls bound to it."""

    route: Any
    upstream: Upstream
    acquire: Callable[[], Awaitable[tuple[UpstreamConnection, bool]]]
    take_idle: Callable[[], UpstreamConnection | None]
    release: Callable[[UpstreamConnection], None]
    response_head: Callable[..., tuple[bytes, str]]


def header(head: RequestHead, name: str) -> str | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in head.headers:
        if key.lower() == name:
            return value
    return None


def valid_upgrade(head: RequestHead) -> bool:
    """A WebSocket handshake aiohttp would accept (else it answers 400, never the lab)."""
    return (head.method == "GET" and "upgrade" in head.connection
            and header(head, "sec-websocket-version") == "13"
            and len(header(head, "sec-websocket-key") or "") == 24)


class LabFastPath:
    """What :class:`.front.FrontProtocol` asks of the lab proxy."""

    def __init__(self, routes: LabRoutes, caller: Caller, upstream_of: Callable[..., Any],
                 gateway_cookies: frozenset[str], public_origin: str | None,
                 metrics: GatewayMetrics, touch: Callable[[str], None],
                 connections: LabConnections, websockets: OpenWebSockets) -> None:
        self._routes, self._caller, self._upstream_of = routes, caller, upstream_of
        self._connections = connections
        self._gateway_cookies, self._public_origin = gateway_cookies, public_origin
        self._metrics, self.touch = metrics, touch
        self.pool = UpstreamPool()
        self._parts: dict[int, RouteParts] = {}  # by id(route)
        self._records: list[list[Any]] = []
        self._flusher: asyncio.TimerHandle | None = None
        self._websockets = websockets

    def _checked(self, head: RequestHead) -> tuple[User, str, bool] | None:
        """(caller, job id, WebSocket) when the request passes every check but the lab's
        state; None when it does not."""
        match = LAB_PATH.match(head.target)
        asked = header(head, "upgrade")
        # An upgrade is a valid WebSocket one, or the API's 400; on HTTP/1.0 too, as aiohttp.
        websocket = asked is not None
        if match is None or (websocket and (asked or "").lower() != "websocket") \
                or (websocket and not valid_upgrade(head)):
            return None
        found = self._caller(head)
        if found is None:
            return None
        user, via_cookie = found
        if websocket and via_cookie and header(head, "origin") != self._own_origin(head):
            return None
        return user, match[1], websocket

    def admit_cached(self, head: RequestHead, remote: str | None) -> Admission | None:
        """:meth:`admit` when the lab's route is cached (no wait); None: ask :meth:`admit`."""
        checked = self._checked(head)
        if checked is None:
            return None
        user, job_id, websocket = checked
        route = self._routes.cached_lab(user, job_id)
        if route is None:
            return None
        return self._admission(head, remote, user, route, websocket)

    async def admit(self, head: RequestHead, remote: str | None) -> Admission | None:
        checked = self._checked(head)
        if checked is None:
            return None
        user, job_id, websocket = checked
        try:
            route = await self._routes.open_lab(user, job_id)
        except GatewayError:
            return None
        return self._admission(head, remote, user, route, websocket)

    def _admission(self, head: RequestHead, remote: str | None, user: User, route: Any,
                   websocket: bool) -> Admission:
        parts = self._parts.get(id(route))  # (hashing the route's fields costs more)
        if parts is None or parts.route is not route:
            parts = self._route_parts(route)
        return Admission(
            route.job_id, user,
            upstream_head(head, parts.upstream, self._gateway_cookies, remote, websocket),
            parts.acquire, parts.take_idle, parts.release, parts.response_head, websocket)

    def _route_parts(self, route: Any) -> RouteParts:
        """What every admission to ``route`` shares (kept per route: built once, not per
        request)."""
        upstream: Upstream
        identity: LabIdentity
        upstream, identity = self._upstream_of(route)
        pool, address = self.pool, (identity, upstream.host, upstream.port)
        parts = RouteParts(route, upstream, partial(pool.acquire, *address),
                           partial(pool.take, *address), partial(pool.release, *address),
                           partial(response_head, upstream))
        if len(self._parts) >= MAX_ROUTES:
            self._parts.clear()
        self._parts[id(route)] = parts  # it holds the route: the id is not reused meanwhile
        return parts

    def _own_origin(self, head: RequestHead) -> str:
        return self._public_origin or f"http://{header(head, 'host') or ''}"

    def unreachable(self, admission: Admission) -> None:
        self._routes.lab_unreachable(admission.user, admission.job_id)

    def answer_unavailable(self) -> bytes:
        """A 503 problem, as the API would answer a lab whose server does not answer."""
        return problem_answer(LabUnavailable("the lab's server did not answer"))

    def answer_body_timeout(self) -> bytes:
        """A 408 problem: the client stopped sending its request's body."""
        return problem_answer(RequestTimeout())

    # -- the user's lab connections -------------------------------------------------------------

    def hold(self, admission: Admission) -> bool:
        if not admission.held:
            admission.held = self._connections.take(admission.user.id)
        return admission.held

    def unhold(self, admission: Admission) -> None:
        if admission.held:
            admission.held = False
            self._connections.give_back(admission.user.id)

    def answer_too_many(self) -> bytes:
        """A 429 problem naming the limit, as the API answers it."""
        return problem_answer(self._connections.refusal())

    # -- access records and counters ------------------------------------------------------------

    def record(self, head: RequestHead, admission: Admission, status: int, sent: int,
               seconds: float, remote: str | None) -> None:
        self._records.append([time.time(), head.method, head.target, status, head.length or 0,
                              sent, round(seconds, 6), remote, admission.user.name,
                              admission.websocket])
        if len(self._records) >= FLUSH_RECORDS:
            self.flush()
        elif self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Write the records kept so far: one access event, and the counters."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        records, self._records = self._records, []
        if not records:
            return
        requests: dict[tuple[str, str], int] = {}
        up = down = 0
        for entry in records:
            key = ("websocket" if entry[9] else "http", f"{entry[3] // 100}xx")
            requests[key] = requests.get(key, 0) + 1
            up, down = up + entry[4], down + entry[5]
        for (kind, status_class), count in requests.items():
            self._metrics.proxy_requests.labels(kind, status_class).inc(count)
        self._metrics.proxy_bytes.labels("up").inc(up)
        self._metrics.proxy_bytes.labels("down").inc(down)
        access_log.info("lab proxy: %d requests", len(records), extra={"requests": [
            {"time": format_timestamp(at), "method": method, "path": masked_path(path),
             "status": status, "bytes_up": up, "bytes": down, "seconds": seconds,
             "remote": remote, "user": user}
            for at, method, path, status, up, down, seconds, remote, user, _ in records]})

    # -- open WebSockets and streaming answers --------------------------------------------------

    def pipe_opened(self, admission: Admission, head: RequestHead, end: End) -> Watched:
        """A WebSocket pipe opened; it keeps holding the admission's lab connection until
        :meth:`pipe_closed`, and is ended (``end(code)``) once it is no longer admitted."""
        return self._websockets.watch(partial(self._still_admitted, head, admission), end,
                                      partial(self.unhold, admission))

    def pipe_closed(self, handle: Watched) -> None:
        self._websockets.gone(handle)

    def answer_streaming(self, admission: Admission, head: RequestHead, end: End) -> Watched:
        """An answer that is still streaming is checked again as a WebSocket is, and cut
        (``end``) once it is no longer admitted, until :meth:`answer_ended`."""
        return self._websockets.watch(partial(self._still_admitted, head, admission), end,
                                      websocket=False)

    def answer_ended(self, handle: Watched) -> None:
        self._websockets.gone(handle)

    async def _still_admitted(self, head: RequestHead, admission: Admission) -> bool:
        found = self._caller(head)
        return await still_admitted(self._routes, admission.user, found[0] if found else None,
                                    admission.job_id)

    def close(self) -> None:
        self.flush()
        self.pool.close()


def problem_answer(error: GatewayError) -> bytes:
    """``error`` as a whole HTTP/1.1 answer that closes the connection: the problem+json body
    and headers the API's middleware would send (``Retry-After`` for a limit that passes)."""
    body = json.dumps(error.problem()).encode()
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
             "Content-Type: application/problem+json", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in SECURITY_HEADERS.items()),
             *(f"{name}: {value}" for name, value in error.headers().items()),
             "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def still_admitted(routes: LabRoutes, owner: User, now: User | None, job_id: str) -> bool:
    """Whether a WebSocket ``owner`` opened to the lab ``job_id`` may stay open: its
    credential names ``owner`` still (``now``: whom it names now, None if nobody) and the lab
    is still ``owner``'s ready lab. Both paths ask this of each open WebSocket
    (:mod:`.watch`)."""
    if now is None or now.id != owner.id:
        return False
    try:
        await routes.open_lab(owner, job_id)
    except GatewayError:
        return False
    return True
