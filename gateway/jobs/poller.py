"""Polling: one scheduler query per cycle per cluster for all tracked jobs (like submitit).

Each cycle asks the backend about every job the gateway has in ``pending``, ``running`` or
``ready`` on that cluster, applies what changed, and writes only the jobs that changed (in one
transaction). A failed query changes no state: jobs keep their last state with
``scheduler_reachable: false``. A job the scheduler no longer lists is handed to the collector
after ``lost_after`` seconds (the collector decides between its exit record and ``lost``).
The cycle is fast while young jobs exist and backs off when all jobs are old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ..config import PollConfig
from ..errors import ClusterUnavailable, CommandFailed, SchedulerError
from ..scheduler import SchedulerState, SchedulerStatus
from ..states import IllegalTransition, State
from ..store import parse_time
from .collector import collect
from .runtime import ClusterRuntime

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger(__name__)
MIN_GAP = 0.2  # seconds between two cycles, however often the poller is woken


async def poll_forever(service: JobService, runtime: ClusterRuntime) -> None:
    while True:
        interval = await poll_cycle(service, runtime)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.wake.wait(), interval)
        runtime.wake.clear()
        await asyncio.sleep(MIN_GAP)


async def poll_cycle(service: JobService, runtime: ClusterRuntime) -> float:
    """One cycle for ``runtime``'s cluster; the seconds to wait before the next one."""
    jobs = service.store.tracked_jobs(runtime.name)
    if jobs:
        try:
            await poll_once(service, runtime, jobs)
        except Exception:
            log.exception("poll cycle on %s failed", runtime.name)
    return next_interval(jobs, service.config.poll)


def next_interval(jobs: list[dict[str, Any]], poll: PollConfig) -> float:
    """Fast while the newest tracked job is young, slower once every job is old."""
    newest = jobs[-1]["created_at"] if jobs else None  # tracked_jobs is oldest first
    if newest and time.time() - parse_time(newest).timestamp() < poll.young_age:
        return poll.young_interval
    return poll.old_interval


async def poll_once(
    service: JobService, runtime: ClusterRuntime, jobs: list[dict[str, Any]]
) -> None:
    """One cycle: one ``status_many`` call for ``jobs``, then the changes written at once."""
    ids = {job["slurm_job_id"] for job in jobs if job["slurm_job_id"]}
    try:
        statuses = await runtime.backend.status_many(ids)
    except (ClusterUnavailable, CommandFailed, SchedulerError) as exc:
        runtime.reachable, runtime.last_error = False, exc.detail
        log.warning("cluster %s unreachable: %s", runtime.name, exc.detail)
        service.store.update_many(
            {j["id"]: {"scheduler_reachable": 0} for j in jobs if j["scheduler_reachable"]})
        return
    runtime.reachable, runtime.last_error = True, None
    changes: dict[str, dict[str, Any]] = {}
    ended: set[str] = set()
    for job in jobs:
        fields = apply_status(service, runtime, job, statuses.get(job["slurm_job_id"]), ended)
        if not job["scheduler_reachable"]:
            fields["scheduler_reachable"] = 1
        if fields:
            changes[job["id"]] = fields
    service.store.update_many(changes)
    still_in_scheduler = [j for j in jobs if j["id"] not in ended]
    await _send_pending_cancels(service, runtime, still_in_scheduler)


def apply_status(
    service: JobService, runtime: ClusterRuntime, job: dict[str, Any],
    status: SchedulerStatus | None, ended: set[str],
) -> dict[str, Any]:
    """Act on one job's status; returns plain field changes for the bulk write.

    State transitions are written directly (they are rare and each needs its event row);
    jobs handed to the collector are added to ``ended``.
    """
    job_id, state = job["id"], job["state"]
    if status is None:
        first_missing = runtime.missing_since.setdefault(job_id, time.monotonic())
        if time.monotonic() - first_missing >= service.config.poll.lost_after:
            _to_collecting(service, runtime, job_id, None, None)
            ended.add(job_id)
        return {}
    runtime.missing_since.pop(job_id, None)
    if status.state is SchedulerState.PENDING:
        if state == State.PENDING and status.pending_reason != job["pending_reason"]:
            return {"pending_reason": status.pending_reason}
        return {}
    if status.state is SchedulerState.RUNNING:
        if state == State.PENDING:
            _transition(service, job_id, State.RUNNING, node=status.node)
        return {}
    _to_collecting(service, runtime, job_id, status, status.node)
    ended.add(job_id)
    return {}


def _transition(service: JobService, job_id: str, new: State, **fields: Any) -> bool:
    try:
        service.store.transition(job_id, new, **fields)
    except IllegalTransition as exc:  # e.g. a cancel raced us to a terminal state
        log.info("job %s: %s", job_id, exc)
        return False
    return True


def _to_collecting(
    service: JobService, runtime: ClusterRuntime, job_id: str,
    status: SchedulerStatus | None, node: str | None,
) -> None:
    fields: dict[str, Any] = {"slurm_state": status.state.value if status else None}
    if status is not None:
        fields["exit_code"] = status.exit_code
        if node:
            fields["node"] = node
    if _transition(service, job_id, State.COLLECTING, **fields):
        runtime.missing_since.pop(job_id, None)
        runtime.cancel_sent.discard(job_id)
        service.spawn(collect(service, job_id), f"collect-{job_id}")


async def _send_pending_cancels(
    service: JobService, runtime: ClusterRuntime, jobs: list[dict[str, Any]]
) -> None:
    """Re-send scancel for jobs whose cancel could not reach the scheduler before."""
    for job in jobs:
        if (job["cancel_requested"] and job["id"] not in runtime.cancel_sent
                and not await runtime.send_cancel(job)):
            return
