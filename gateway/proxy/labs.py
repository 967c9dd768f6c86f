"""The lab proxy: ``/labs/{job_id}/...`` of a ready lab, for its owner only.

Every request and WebSocket upgrade is checked: the job must exist, belong to the caller (another
user's lab answers exactly like a missing one) and be ``ready``. The upstream address is the
job's own (its node and the port its server reported), reached through the cluster's transport
(``Transport.forward``: directly, or through an SSH port forward as the lab's owner); nothing
in the URL can change it, and every new connection there is proven to reach the lab's own server
before the lab's token goes over it (:mod:`.identity`). Cookie-authenticated WebSocket upgrades
must come from the gateway's own origin. Each relayed request or frame counts as activity for the
idle cull.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from ..errors import Forbidden, LabUnavailable, NotFound
from ..jobs.service import JobService
from ..pageheaders import SECURITY_HEADERS
from ..states import State
from ..timestamps import parse_timestamp
from ..tokens import lab_token
from .identity import LabIdentity, LabSessions
from .relay import Upstream, relay_http, relay_websocket

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0
MAX_PROBE_ANSWER = 64 * 1024  # a lab API answer the gateway reads for itself


def lab_prefix(job_id: str) -> str:
    return f"/labs/{job_id}/"


class LabProxy:
    """Owns the per-lab HTTP client sessions and the per-lab activity clock."""

    def __init__(self, service: JobService, gateway_cookies: frozenset[str],
                 public_origin: str | None = None) -> None:
        self.service = service
        self.sessions = LabSessions(CONNECT_TIMEOUT)
        self.gateway_cookies = gateway_cookies
        self.public_origin = public_origin
        # job id -> wall-clock time of the last proxied request or WebSocket frame
        self.activity: dict[str, float] = {}
        # job id -> why the server at the lab's reported address failed the identity proof
        self.unproven: dict[str, str] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.sessions.close()

    def touch(self, job_id: str) -> None:
        self.activity[job_id] = time.time()

    def last_activity(self, job: dict[str, Any]) -> float:
        """The latest of: proxied traffic seen by this process, the stored activity stamp, the
        moment the lab became ready (so a restarted gateway keeps counting idle time)."""
        stamps = [self.activity.get(job["id"], 0.0)]
        for column in ("last_activity", "started_at"):
            if job.get(column):
                stamps.append(parse_timestamp(job[column]).timestamp())
        return max(stamps)

    def forward_key(self, job: dict[str, Any]) -> tuple[str, str, str, int] | None:
        """``(cluster, unix user, host, port)`` of a lab's server as its cluster's side reaches
        it (see ``Transport.forward``); None before its port is known."""
        runtime = self.service.clusters.get(job["cluster"])
        if runtime is None or not job["lab_port"]:
            return None
        host = runtime.config.lab_host.replace("{node}", job["node"] or "")
        return (runtime.name, job["unix_user"], host, int(job["lab_port"]))

    async def upstream(self, job: dict[str, Any]) -> tuple[Upstream, aiohttp.ClientSession]:
        """The lab server of ``job`` (which must have reported its port), as reached from here,
        and the client session whose connections are proven to reach it."""
        runtime = self.service.clusters.get(job["cluster"])
        key = self.forward_key(job)
        if runtime is None or key is None:
            raise LabUnavailable("the lab's server address is not known yet")
        _, user, node_host, node_port = key
        host, port = await runtime.transport.forward(node_host, node_port, user=user)
        token = lab_token(self.service.config.gateway.cookie_secret, job["id"])
        upstream = Upstream(host, port, token, lab_prefix(job["id"]))
        identity = LabIdentity(token, upstream.prefix, node_port,
                               None if (host, port) == (node_host, node_port)
                               else _literal_ip(node_host))
        return upstream, self.sessions.get(job["id"], identity, host, port)

    async def get(self, job: dict[str, Any], path: str) -> Any:
        """GET ``path`` (under the lab's prefix) from the lab's REST API as JSON, bypassing the
        activity clock (the gateway's own checks never keep a lab alive). An answer over
        MAX_PROBE_ANSWER bytes raises ValueError after reading no more than that."""
        upstream, session = await self.upstream(job)
        async with session.get(
            upstream.url(upstream.prefix + path, ""),
            headers={"Authorization": f"token {upstream.token}"},
            timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT), allow_redirects=False,
        ) as answer:
            answer.raise_for_status()
            body = await answer.content.read(MAX_PROBE_ANSWER + 1)
            if len(body) > MAX_PROBE_ANSWER:
                raise ValueError(f"the lab's {path} answer is over {MAX_PROBE_ANSWER} bytes")
            return json.loads(body)

    # -- the route ------------------------------------------------------------------------

    def _ready_lab(self, request: web.Request) -> dict[str, Any]:
        from ..api.keys import current_user  # the api package imports this module

        job = self.service.store.get_job(request.match_info["job_id"], current_user(request).id)
        if job["kind"] != "lab":
            raise NotFound(f"no job {job['id']}")
        state = State(job["state"])
        if state is State.READY:
            return job
        if state in (State.ACCEPTED, State.STAGING, State.PENDING, State.RUNNING):
            raise LabUnavailable(f"the lab is starting (state {state}); try again shortly",
                                 state=str(state))
        raise NotFound(f"the lab has ended (state {state})")

    def _check_origin(self, request: web.Request) -> None:
        own = self.public_origin or f"{request.scheme}://{request.host}"
        if request.headers.get("Origin") != own:
            raise Forbidden("a WebSocket with a session cookie must come from the gateway's "
                            "own pages (Origin mismatch)")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        from ..api.keys import VIA_COOKIE

        try:
            job = self._ready_lab(request)
        except LabUnavailable as exc:
            if "text/html" in request.headers.get("Accept", "") and request.method == "GET":
                return _starting_page(exc.detail)
            raise
        if not request.rel_url.raw_path.startswith(lab_prefix(job["id"])):
            raise NotFound("no such path in this lab")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        if websocket and request[VIA_COOKIE]:
            self._check_origin(request)
        upstream, session = await self.upstream(job)
        job_id = job["id"]
        self.touch(job_id)
        try:
            if websocket:
                return await relay_websocket(request, upstream, session,
                                             self.gateway_cookies, lambda: self.touch(job_id))
            return await relay_http(request, upstream, session, self.gateway_cookies,
                                    lambda: self.touch(job_id))
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            log.warning("lab %s: upstream %s:%s failed: %r", job_id, upstream.host,
                        upstream.port, exc)
            raise LabUnavailable("the lab's server did not answer") from None


def _literal_ip(host: str) -> str:
    """``host`` if it is an IP address, else ``"*"``: a name is resolved on the login side of
    an SSH tunnel, so only the lab's port can be compared there."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "*"


def _starting_page(detail: str) -> web.Response:
    return web.Response(
        status=503, content_type="text/html", headers={**SECURITY_HEADERS, "Retry-After": "2"},
        text=f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="2"><title>hpcgw: lab starting</title></head>
<body><main><h1>Your lab is not ready yet</h1><p>{html.escape(detail)}</p>
<p>This page reloads by itself.</p></main></body></html>
""")
