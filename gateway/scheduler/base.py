"""The scheduler backend contract (like Open OnDemand's adapters).

A backend turns four questions into its scheduler's commands, always through the cluster's
transport: ``submit``, ``status_many``, ``cancel``, ``cluster_info`` (plus ``find_by_tag`` so a
submission whose answer was lost can be adopted instead of repeated). What a job asks of the
scheduler arrives as typed, already checked :class:`~gateway.scheduler.options.SubmitOptions`;
the script itself carries none of it. Backends report states in the scheduler-neutral
:class:`SchedulerState`; the job service maps those onto gateway states.
Backends load through the ``hpcgw.schedulers`` entry point group, so a site can add one.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from ..config import ClusterConfig
from ..plugins import load_plugin
from ..transport import Transport
from .options import SubmitOptions


class SchedulerState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    LAUNCH_FAILED = "LAUNCH_FAILED"

    @property
    def ended(self) -> bool:
        return self not in (SchedulerState.PENDING, SchedulerState.RUNNING)


class SchedulerStatus(NamedTuple):
    """What the scheduler says about one job right now (a NamedTuple: 10,000 are built per
    poll cycle, several times faster than a frozen dataclass)."""

    job_id: str
    state: SchedulerState
    raw_state: str
    pending_reason: str | None = None
    node: str | None = None
    exit_code: int | None = None
    tag: str | None = None
    user: str | None = None
    # While pending: when Slurm expects the job to start (a stamp), if it knows.
    expected_start: str | None = None


class SchedulerBackend(Protocol):
    async def submit(self, script: str, options: SubmitOptions) -> str:
        """Submit ``script`` as unix user ``options.user`` with ``options``; the scheduler's
        job id.

        The backend passes every option in its scheduler's own structured form (sbatch
        arguments, a JSON job description), never by editing ``script``, and runs the script
        unchanged. ``options.tag`` (the gateway job id) is attached to the scheduler's job so
        that :meth:`find_by_tag` can find it again after a lost answer or a gateway crash.
        Raises :class:`gateway.errors.ClusterUnavailable` when the scheduler can't be reached
        and :class:`gateway.errors.SchedulerError` when it refuses or answers nonsense.
        """
        ...

    async def status_many(self, job_ids: Iterable[str]) -> dict[str, SchedulerStatus]:
        """The status of each job the scheduler still knows; unknown ids are omitted.

        One queue query for all ids, plus at most one accounting query for ids that already left
        the queue. Raises :class:`gateway.errors.CommandFailed` when the scheduler can't be reached.
        """
        ...

    async def find_by_tag(self, tag: str, *, user: str) -> SchedulerStatus | None:
        """The job ``user`` submitted with this gateway tag, if the scheduler still lists one.

        Only ``user``'s jobs count: anyone can put a tag in a comment.
        """
        ...

    async def cancel(self, job_id: str, *, user: str) -> None:
        """Cancel ``job_id`` as ``user``; a job that already ended is not an error."""
        ...

    async def cluster_info(self) -> dict[str, Any]:
        """Partitions as the scheduler sees them: ``{"partitions": {name: {...}}}``."""
        ...


def load_backend(cluster: ClusterConfig, transport: Transport) -> SchedulerBackend:
    """Instantiate the backend named by ``cluster.scheduler`` from the entry point group."""
    backend: SchedulerBackend = load_plugin(
        "hpcgw.schedulers", cluster.scheduler, "scheduler", cluster.name)(cluster, transport)
    return backend
