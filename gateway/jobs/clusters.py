"""What the job service holds per cluster (a ClusterLink): its transport, its scheduler backend,
and poll bookkeeping. Not a container runtime (those are gateway.runtimes)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from ..config import ClusterConfig
from ..errors import ClusterUnavailable, CommandFailed
from ..runtimes import ContainerRuntime, load_runtime
from ..runtimes.none import HostRuntime
from ..scheduler import SchedulerBackend, load_backend
from ..transport import Transport, load_transport
from .tracked import TrackedJobs

log = logging.getLogger(__name__)


@dataclass
class ClusterLink:
    config: ClusterConfig
    transport: Transport
    backend: SchedulerBackend
    # What a job's command runs through on this cluster's nodes, by runtime name: "none" (the
    # host's own environment) and each runtime the cluster's images use.
    runtimes: dict[str, ContainerRuntime] = field(
        default_factory=lambda: {"none": HostRuntime()})
    # Set to poll now (a job was submitted or cancelled); the poller clears it.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # None until the first poll; False while the scheduler can't be reached.
    reachable: bool | None = None
    last_error: str | None = None
    # Gateway job id -> monotonic time since which the scheduler has not listed the job.
    missing_since: dict[str, float] = field(default_factory=dict)
    # Gateway job ids whose scancel went through (not re-sent every cycle).
    cancel_sent: set[str] = field(default_factory=set)
    # The jobs the poller follows, kept between its cycles.
    tracked: TrackedJobs = field(default_factory=TrackedJobs)
    # The cluster as the scheduler last described it (``cluster_info()``, refreshed by the
    # poller every ``poll.old_interval``): what /health and /clusters answer from, so no request
    # starts a process. None until the first refresh; ``view_at`` is its monotonic time.
    view: dict[str, Any] | None = None
    view_at: float = 0.0
    # (Slurm job id, user) pairs whose status was refused because the user did not match.
    refused_users: set[tuple[str, str]] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.config.name

    async def send_cancel(self, job: dict[str, Any]) -> bool:
        """scancel ``job`` as its owner and remember that it went through; False (logged) while
        the scheduler can't be reached, so the poller sends it again later."""
        try:
            await self.backend.cancel(job["slurm_job_id"], user=job["unix_user"])
        except (ClusterUnavailable, CommandFailed) as exc:
            log.warning("scancel of job %s deferred: %s", job["id"], exc.detail)
            return False
        self.cancel_sent.add(job["id"])
        return True


def make_cluster_link(cluster: ClusterConfig) -> ClusterLink:
    """A cluster's transport, scheduler backend and container runtimes (none, and those of its
    images), each loaded by name through its entry point group; ConfigError (the cluster is
    disabled) for an unknown name."""
    transport = load_transport(cluster)
    names = dict.fromkeys(["none", *(image.runtime for image in cluster.images.values())])
    runtimes = {name: load_runtime(name, cluster=cluster.name) for name in names}
    return ClusterLink(cluster, transport, load_backend(cluster, transport), runtimes)
