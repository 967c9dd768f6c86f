"""What the job service holds per cluster (a ClusterLink): its transport, its scheduler backend,
and poll bookkeeping. Not a container runtime (those are gateway.runtimes)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..config import ClusterConfig
from ..errors import ClusterUnavailable, CommandFailed, GatewayError
from ..runtimes import ContainerRuntime, load_runtime
from ..runtimes.none import HostRuntime
from ..scheduler import SchedulerBackend, load_backend
from ..transport import Transport, load_transport
from .keyedtasks import KeyedTasks
from .tracked import TrackedJobs

log = logging.getLogger(__name__)
UID = re.compile(rb"^([0-9]{1,10})\n?\Z")
ACCOUNT_QUERY_TIMEOUT = 10.0
RESENDS_PER_USER = 2  # scancels the poller re-sends at once for one unix user


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
    # Gateway job id -> scancels of it under way, whoever sent them (the poller sends no more).
    cancelling: Counter[str] = field(default_factory=Counter)
    # The poller's re-sends of scancel under way: one per job, a few per unix user; the poller
    # owns them (cancelled when it ends). And job id -> (monotonic time before which a cancel
    # that failed is not re-sent, the wait that was), for the backoff.
    resends: KeyedTasks = field(
        default_factory=lambda: KeyedTasks("resend-cancel", RESENDS_PER_USER))
    resend_after: dict[str, tuple[float, float]] = field(default_factory=dict)
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
        the scheduler can't be reached or the command failed or timed out, so the poller sends
        it again later. While it runs the job counts in ``cancelling``."""
        job_id = job["id"]
        self.cancelling[job_id] += 1
        try:
            await self.backend.cancel(job["slurm_job_id"], user=job["unix_user"])
        except (ClusterUnavailable, CommandFailed) as exc:
            log.warning("scancel of job %s deferred: %s", job_id, exc.detail)
            return False
        finally:
            self.cancelling[job_id] -= 1
            if self.cancelling[job_id] <= 0:
                del self.cancelling[job_id]
        self.cancel_sent.add(job_id)
        return True

    async def person_account(self, unix_user: str, uids: range) -> bool:
        """Whether ``unix_user`` exists on this cluster with a uid in ``uids`` (a person's
        account, not a system one such as ``slurm`` or ``daemon``) and is not the account the
        gateway itself runs commands as here. A cluster that cannot tell counts as no."""
        own, theirs = await self._uid(None), await self._uid(unix_user)
        return own is not None and theirs is not None and theirs in uids and theirs != own

    async def _uid(self, unix_user: str | None) -> int | None:
        """The uid of ``unix_user`` (None: the gateway's own) as the cluster's ``id`` says it;
        None when it cannot be had."""
        argv = ["id", "-u"] if unix_user is None else ["id", "-u", "--", unix_user]
        try:
            result = await self.transport.run(argv, user=None, timeout=ACCOUNT_QUERY_TIMEOUT,
                                              check=False)
        except GatewayError as exc:  # unreachable, timed out
            log.warning("no uid for %s on %s: %s", unix_user or "the gateway", self.name,
                        exc.detail)
            return None
        found = UID.match(result.stdout) if result.returncode == 0 else None
        return int(found.group(1)) if found else None


def make_cluster_link(cluster: ClusterConfig) -> ClusterLink:
    """A cluster's transport, scheduler backend and container runtimes (none, and those of its
    images), each loaded by name through its entry point group; ConfigError (the cluster is
    disabled) for an unknown name."""
    transport = load_transport(cluster)
    names = dict.fromkeys(["none", *(image.runtime for image in cluster.images.values())])
    runtimes = {name: load_runtime(name, cluster=cluster.name) for name in names}
    return ClusterLink(cluster, transport, load_backend(cluster, transport), runtimes)
