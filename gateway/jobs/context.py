"""The narrow interface the lifecycle's workers get instead of the job service.

The submitter, the stager, the pollers, the collector, the lab watcher, artifact retention and
the webhook deliverer each take a :class:`JobContext`: the config, the store, the clusters, the
storage credentials and three hand-off queues. No worker imports another worker or the service,
and none starts another's task: a worker that is done with a job puts its id on the next
worker's queue (``submit_queue``, ``collect_queue``), and the service (:mod:`.service`), which
owns every background task, runs what is queued (``submit_queue``, ``stage_queue``,
``collect_queue``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from ..config import Config
from ..metrics import GatewayMetrics
from ..staging.credentials import StorageCredentials
from ..store import Store
from ..timestamps import parse_timestamp
from .clusters import ClusterLink
from .fairqueue import FairQueue

SUBMITTERS = 4  # tasks that take from ``submit_queue``
# Of which at most this many work for one unix user at once (their commands' pace is theirs).
SUBMITTERS_PER_USER = 2


@dataclass
class JobContext:
    config: Config
    store: Store
    clusters: dict[str, ClusterLink]
    templates: jinja2.Environment
    # Users' storage servers, for staging (None: a gateway without them, as in some tests).
    credentials: StorageCredentials | None = None
    # Job ids to bring into the scheduler (accepted or staging), taken by the submitters in
    # turn by unix user (:mod:`.fairqueue`).
    submit_queue: FairQueue = field(default_factory=lambda: FairQueue(SUBMITTERS_PER_USER))
    # Job ids in ``staging`` whose copy inputs must move first: one staging task for each.
    stage_queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    # Job ids that entered ``collecting``: the service starts one collection for each.
    collect_queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    # Where the workers record what they measure (the application's registry).
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    # Set when a lab starts running and when its owner asks for it while it starts: the lab
    # watcher looks at the starting labs now instead of at its next cycle (at most every
    # ``labs.WOKEN_GAP`` s).
    lab_wanted: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def data_dir(self) -> Path:
        return self.config.gateway.data_dir

    def job_dir(self, job_id: str) -> Path:
        """The gateway-side directory of a job (its upload, its collected artifacts)."""
        return self.data_dir / "jobs" / job_id

    def collect_later(self, job_id: str) -> None:
        """Hand a job that just entered ``collecting`` to the collector."""
        self.collect_queue.put_nowait(job_id)

    def stage_later(self, job_id: str) -> None:
        """Hand a job whose inputs must be copied first to the stager."""
        self.stage_queue.put_nowait(job_id)

    def submit_later(self, job_id: str) -> None:
        """Hand a stored job to the submitters, behind its unix user's earlier ones."""
        self.submit_queue.put_nowait(self.store.get_job(job_id)["unix_user"], job_id)

    def job_started(self, job_id: str) -> None:
        """A job just started on a node: its wait since it was accepted is recorded
        (``hpcgw_queue_wait_seconds``); a lab is looked at by the lab watcher now."""
        job = self.store.get_job(job_id)
        self.metrics.queue_wait.labels(job["cluster"], _partition(job), job["kind"]).observe(
            _age(job))
        if job["kind"] == "lab":
            self.lab_wanted.set()

    def record_ready(self, job: dict[str, Any]) -> None:
        """A lab just answered: its wait since it was accepted (``hpcgw_lab_ready_seconds``)."""
        self.metrics.lab_ready.labels(job["cluster"], _partition(job)).observe(_age(job))


def _partition(job: dict[str, Any]) -> str:
    """The job's partition ("" if its spec names none: never a reason to fail a worker)."""
    try:
        return str(json.loads(job["spec"]).get("partition") or "")
    except (ValueError, TypeError, AttributeError):
        return ""


def _age(job: dict[str, Any]) -> float:
    """Seconds since the job was accepted (never negative: clocks may step)."""
    return max(0.0, time.time() - parse_timestamp(job["created_at"]).timestamp())
