"""The lab proxy: ``/labs/{job_id}/...`` of a ready lab, for its owner only.

Most lab traffic takes the fast path: the gateway's listening socket (:mod:`.front`) relays
the requests :class:`.fastpath.LabFastPath` admits, as bytes. What it does not admit, and every
request on a connection aiohttp already serves, comes here through the API, which hands each
request over with its authenticated caller. Every request and WebSocket
upgrade is checked by the job service's ``open_lab`` (:func:`gateway.jobs.labs.open_lab`): the
job must exist, belong to the caller (another user's lab answers exactly like a missing one)
and be ``ready``. The upstream address is the job's own (its node and the port its server
reported, through the cluster's transport); nothing in the URL can change it, and every new
connection there is proven to reach the lab's own server before the lab's token goes over it
(:mod:`.identity`). Cookie-authenticated WebSocket upgrades must come from the gateway's own
origin. Each relayed request or frame counts as activity for the idle cull: the proxy is the
lifecycle's :class:`gateway.jobs.labs.LabProbe` (a probe and the activity clock).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from .. import untrusted
from ..bodies import read_at_most
from ..errors import (
    Forbidden,
    GatewayError,
    LabUnavailable,
    LabUnproven,
    NotFound,
    TooManyRequests,
)
from ..jobs.labs import LabRoute
from ..jobs.limits import PerUserCount
from ..metrics import GatewayMetrics
from ..users import User
from .fastpath import Caller, LabFastPath, LabRoutes, still_admitted
from .identity import LabIdentity, LabNotProven, LabSessions
from .quota import RETRY_AFTER, LabConnections
from .relay import ClientLeft, LabAnswerRefused, relay_http
from .relay_ws import MAX_MESSAGE_RELAYS, relay_websocket
from .rules import CLIENT_CLOSED, Upstream
from .watch import End, OpenWebSockets

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0
MAX_PROBE_ANSWER = 64 * 1024  # a lab API answer the gateway reads for itself


class LabProxy:
    """Relays lab traffic; owns the per-lab HTTP client sessions and the activity clock."""

    def __init__(self, routes: LabRoutes, caller: Caller, gateway_cookies: frozenset[str],
                 public_origin: str | None = None,
                 metrics: GatewayMetrics | None = None, *, max_connections: int,
                 body_timeout: float) -> None:
        """``max_connections``: lab connections one user may hold at once, on either path
        (:mod:`.quota`); ``body_timeout``: seconds a request body may stall on aiohttp's path
        (the fast path's is :class:`.front.FrontProtocol`'s)."""
        self.routes = routes
        self.body_timeout = body_timeout
        self.connections = LabConnections(max_connections)
        self.message_relays = PerUserCount(MAX_MESSAGE_RELAYS)  # WebSockets on this path
        self.metrics = metrics or GatewayMetrics()
        self.sessions = LabSessions(CONNECT_TIMEOUT)
        self.gateway_cookies = gateway_cookies
        self.public_origin = public_origin
        # job id -> wall-clock time of the last proxied request or WebSocket frame
        self.activity: dict[str, float] = {}
        self.websockets = OpenWebSockets(self.metrics.proxy_websockets)  # on either path
        self.fast = LabFastPath(routes, caller, route_upstream, gateway_cookies, public_origin,
                                self.metrics, self.touch, self.connections, self.websockets)

    def going_away(self) -> None:
        """The gateway stops: every open WebSocket ends, on either path, 1001 to both sides."""
        self.websockets.going_away()

    async def stop(self) -> None:
        self.going_away()
        self.fast.close()
        await self.sessions.close()

    # -- the lifecycle's LabProbe ----------------------------------------------------------

    def touch(self, job_id: str) -> None:
        self.activity[job_id] = time.time()

    def last_activity(self, job_id: str) -> float:
        return self.activity.get(job_id, 0.0)

    def retain(self, live: set[str]) -> None:
        for job_id in self.activity.keys() - live:
            del self.activity[job_id]
        self.sessions.retain(live)
        self.fast.pool.retain({f"/labs/{job_id}/" for job_id in live})

    async def get(self, route: LabRoute, path: str) -> Any:
        """GET ``path`` (under the lab's prefix) from the lab's REST API as JSON, bypassing the
        activity clock (the gateway's own checks never keep a lab alive). A server that fails
        the identity proof raises :class:`LabUnproven`; an answer over MAX_PROBE_ANSWER bytes
        raises ValueError after reading no more than that."""
        upstream, session = self.upstream(route)
        try:
            async with session.get(
                upstream.url(upstream.prefix + path, ""),
                headers={"Authorization": f"token {upstream.token}"},
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT), allow_redirects=False,
            ) as answer:
                answer.raise_for_status()
                body = await read_at_most(answer.content, MAX_PROBE_ANSWER)
        except LabNotProven as exc:
            raise LabUnproven(str(exc), job_id=route.job_id) from None
        if len(body) > MAX_PROBE_ANSWER:
            raise ValueError(f"the lab's {path} answer is over {MAX_PROBE_ANSWER} bytes")
        return untrusted.loads(body)

    # -- the route ------------------------------------------------------------------------

    def upstream(self, route: LabRoute) -> tuple[Upstream, aiohttp.ClientSession]:
        """The lab's server as reached from here, and the client session whose connections
        are proven to reach it."""
        upstream, identity = route_upstream(route)
        return upstream, self.sessions.get(route.job_id, identity, route.host, route.port)

    def _check_origin(self, request: web.Request) -> None:
        own = self.public_origin or f"{request.scheme}://{request.host}"
        if request.headers.get("Origin") != own:
            raise Forbidden("a WebSocket with a session cookie must come from the gateway's "
                            "own pages (Origin mismatch)")

    async def handle(self, request: web.Request, caller: User, via_cookie: bool,
                     credential: Callable[[], User | None]) -> web.StreamResponse:
        """Relay ``request`` to ``caller``'s lab named in the path; ``via_cookie``: the caller
        was authenticated by a browser session cookie (WebSocket upgrades must then carry the
        gateway's own Origin); ``credential()``: whom the request's credential names now (an
        open WebSocket is closed once that is not ``caller``, or the lab is not ready)."""
        job_id = request.match_info["job_id"]
        route = await self.routes.open_lab(caller, job_id)  # LabUnavailable: the API says it
        if not request.rel_url.raw_path.startswith(route.prefix):
            raise NotFound("no such path in this lab")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        if websocket and via_cookie:
            self._check_origin(request)
        upstream, session = self.upstream(route)
        kind, status = ("websocket" if websocket else "http"), 500
        refusal = self._hold(caller, websocket)
        if refusal is not None:
            self.metrics.proxy_requests.labels(kind, "4xx").inc()
            raise refusal
        self.touch(job_id)

        def watch(end: End) -> Callable[[], None]:
            watched = self.websockets.watch(
                lambda: still_admitted(self.routes, caller, credential(), job_id), end,
                websocket=websocket)
            return lambda: self.websockets.gone(watched)

        try:
            if websocket:
                response: web.StreamResponse = await relay_websocket(
                    request, upstream, session, self.gateway_cookies,
                    lambda: self.touch(job_id), watch)
            else:
                response = await relay_http(request, upstream, session, self.gateway_cookies,
                                            lambda: self.touch(job_id), self.body_timeout,
                                            watch)
                self._count_bytes(request, response)
            status = response.status
            return response
        except ClientLeft:
            status = CLIENT_CLOSED
            return web.Response(status=CLIENT_CLOSED)  # for the access record: nobody reads it
        except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, LabAnswerRefused,
                TimeoutError) as exc:
            # (a ClientResponseError: an answer aiohttp's parser refused, two lengths say)
            log.warning("lab %s: upstream %s:%s failed: %r", job_id, upstream.host,
                        upstream.port, exc)
            self.routes.lab_unreachable(caller, job_id)
            status = LabUnavailable.status
            raise LabUnavailable("the lab's server did not answer") from None
        except GatewayError as exc:
            status = exc.status
            raise
        finally:
            self.connections.give_back(caller.id)
            if websocket:
                self.message_relays.give_back(caller.id)
            self.metrics.proxy_requests.labels(kind, f"{status // 100}xx").inc()

    def _hold(self, caller: User, websocket: bool) -> TooManyRequests | None:
        """Count the request against ``caller``'s lab connections and, for a WebSocket, its
        message relays (:data:`.relay_ws.MAX_MESSAGE_RELAYS`); the refusal at a limit."""
        if websocket and not self.message_relays.take(caller.id):
            return TooManyRequests(
                f"at most {MAX_MESSAGE_RELAYS} lab WebSockets at once per user on a connection "
                "that carried other requests first; open each on a new connection (browsers "
                "do)", limit="websockets_after_other_requests", value=MAX_MESSAGE_RELAYS,
                retry_after=RETRY_AFTER)
        if not self.connections.take(caller.id):
            if websocket:
                self.message_relays.give_back(caller.id)
            return self.connections.refusal()
        return None

    def _count_bytes(self, request: web.Request, response: web.StreamResponse) -> None:
        """An HTTP relay's body bytes: what the client sent up, what went back down."""
        self.metrics.proxy_bytes.labels("up").inc(request.content_length or 0)
        self.metrics.proxy_bytes.labels("down").inc(response.body_length)


def route_upstream(route: LabRoute) -> tuple[Upstream, LabIdentity]:
    """The lab's server as reached from here, and what it must prove on each connection."""
    upstream = Upstream(route.host, route.port, route.token, route.prefix)
    identity = LabIdentity(route.token, route.prefix, route.node_port,
                           _literal_ip(route.node_host) if route.forwarded else None)
    return upstream, identity


def _literal_ip(host: str) -> str:
    """``host`` if it is an IP address, else ``"*"``: a name is resolved on the login side of
    an SSH tunnel, so only the lab's port can be compared there."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "*"

