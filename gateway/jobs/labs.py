"""The lab lifecycle: where a lab is reached, when it is ready, and when it is stopped.

:class:`LabWatcher` looks at each lab in ``running`` or ``ready`` every cycle:

- ``running``: read the port the server reported (``lab.json`` in the job's directory, written
  by jupyter_server once it listens, at most 4 KiB, a regular file) and ask the server's
  ``api/status`` through the :class:`LabProbe` (the lab proxy, over a connection on which the
  server first proved it holds the lab's token); an answer makes the lab ``ready``. A server
  that fails the proof gets nothing, and the port is read again from ``lab.json`` next time.
  No answer within ``labs.start_timeout`` of the job's start: the job is cancelled and ends
  ``failed`` (``launch_failed``, saying whether a server failed the proof, with the log's tail).
- ``ready``: a busy kernel counts as activity; with no proxied traffic and no busy kernel for
  ``labs.idle_timeout`` the job is cancelled and ends ``cancelled`` with reason ``idle``.
  Activity is saved in the store, so idle time survives a gateway restart.

Starting labs are looked at every :data:`STARTING_INTERVAL` s (readiness is what a user
waits for), and at once when one starts running or its owner asks for it (a request through
the proxy, the lab's page reloading itself), at most every :data:`WOKEN_GAP` s; the ready labs
only every ``labs.check_interval`` s, however many labs are starting. The proxy offers the
probe and the activity clock; it imports nothing from here but :class:`LabRoute`, and this
module imports nothing from the proxy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from .. import untrusted
from ..errors import LabUnavailable, NotFound
from ..states import State
from ..timestamps import parse_timestamp
from ..tokens import lab_token
from ..transport import RemoteFileMissing
from .clusters import ClusterLink
from .context import JobContext

log = logging.getLogger(__name__)
STARTING_INTERVAL = 0.25
WOKEN_GAP = 0.1  # seconds between two looks at the starting labs, however often woken
ACTIVITY_SAVE_GAP = 10.0  # seconds of new activity before the stamp is written again
STARTING_STATES = (State.ACCEPTED, State.STAGING, State.PENDING, State.RUNNING)


@dataclass(frozen=True)
class LabRoute:
    """How the gateway reaches one lab's server, and what that server must prove.

    ``host:port`` is where the gateway connects: the node itself, or the local end of a port
    forward (``Transport.forward``). ``node_host:node_port`` is the server as its cluster's side
    sees it. ``token`` is the lab's server token (never stored: derived, :mod:`gateway.tokens`).
    """

    job_id: str
    host: str
    port: int
    node_host: str
    node_port: int
    token: str

    @property
    def prefix(self) -> str:
        """The lab's base URL path, the same on the gateway and on the lab's server."""
        return f"/labs/{self.job_id}/"

    @property
    def forwarded(self) -> bool:
        return (self.host, self.port) != (self.node_host, self.node_port)


class LabProbe(Protocol):
    """What the lifecycle needs from the lab proxy: a probe and the activity clock."""

    async def get(self, route: LabRoute, path: str) -> Any:
        """GET ``path`` (under the lab's prefix) from the lab's REST API as JSON, over a
        proven connection, not counted as activity. Raises :class:`LabUnproven` when the server
        failed the identity proof; :class:`LabUnavailable`, OSError, TimeoutError or an HTTP
        error when it does not answer (yet)."""
        ...

    def last_activity(self, job_id: str) -> float:
        """Wall-clock time of the lab's last proxied request or frame; 0.0 if none seen."""
        ...

    def touch(self, job_id: str) -> None:
        """Count activity for the lab now."""
        ...

    def retain(self, live: set[str]) -> None:
        """Forget the connections and the activity of every lab not in ``live``."""
        ...


def forward_key(ctx: JobContext, job: dict[str, Any]) -> tuple[str, str, str, int] | None:
    """``(cluster, unix user, host, port)`` of a lab's server as its cluster's side reaches it
    (``cluster.lab_host`` with the job's node); None before its port is known."""
    link = ctx.clusters.get(job["cluster"])
    if link is None or not job["lab_port"]:
        return None
    host = link.config.lab_host.replace("{node}", job["node"] or "")
    return (link.name, job["unix_user"], host, int(job["lab_port"]))


async def lab_route(ctx: JobContext, job: dict[str, Any]) -> LabRoute:
    """The route to ``job``'s server (opening the transport's forward as the lab's owner);
    :class:`LabUnavailable` while its address is not known."""
    key = forward_key(ctx, job)
    if key is None:
        raise LabUnavailable("the lab's server address is not known yet")
    name, user, node_host, node_port = key
    host, port = await ctx.clusters[name].transport.forward(node_host, node_port, user=user)
    token = lab_token(ctx.config.gateway.cookie_secret, job["id"])
    return LabRoute(job["id"], host, port, node_host, node_port, token)


async def open_lab(ctx: JobContext, user_id: int, job_id: str) -> LabRoute:
    """The route to a ready lab of ``user_id``. Another user's lab, a job that is no lab, or a
    lab that ended: :class:`NotFound`; a lab still starting: :class:`LabUnavailable`."""
    job = ctx.store.get_job(job_id, user_id)
    if job["kind"] != "lab":
        raise NotFound(f"no job {job['id']}")
    state = State(job["state"])
    if state is State.RUNNING:  # its server may be up: the lab watcher looks now
        ctx.lab_wanted.set()
    if state in STARTING_STATES:
        raise LabUnavailable(f"the lab is starting (state {state}); try again shortly",
                             state=str(state))
    if state is not State.READY:
        raise NotFound(f"the lab has ended (state {state})")
    return await lab_route(ctx, job)


def last_activity(probe: LabProbe, job: dict[str, Any]) -> float:
    """The latest of: proxied traffic seen by this process, the stored activity stamp, the
    moment the lab started (so a restarted gateway keeps counting idle time)."""
    stamps = [probe.last_activity(job["id"])]
    for column in ("last_activity", "started_at"):
        if job.get(column):
            stamps.append(parse_timestamp(job[column]).timestamp())
    return max(stamps)


async def read_lab_port(link: ClusterLink, job: dict[str, Any]) -> int | None:
    """The port the lab's server reported in ``lab.json``, or None before it listens."""
    try:
        raw = await link.transport.read_file(f"{job['workdir']}/lab.json",
                                             user=job["unix_user"], limit=4096)
    except RemoteFileMissing:
        return None
    port = untrusted.loads(raw).get("port")
    if not isinstance(port, int) or not 1024 <= port <= 65535:
        raise ValueError(f"lab.json holds no usable port: {port!r}")
    return port
