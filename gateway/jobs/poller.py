"""Polling: one scheduler query per cycle per cluster for all tracked jobs (like submitit).

Each cycle asks the backend about every job the gateway has in ``pending``, ``running`` or
``ready`` on that cluster. The tracked jobs live in memory (:mod:`.tracked`: only rows changed
since the previous cycle are read again) together with the status last evaluated for each, so a
cycle evaluates only the jobs whose scheduler status or row changed. All writes of a cycle go
into one transaction (each transition checked and recorded as an event). A failed query changes
no state: jobs keep their last state with ``scheduler_reachable: false``. A job the scheduler no
longer lists is handed to the collector after ``lost_after`` seconds (the collector decides
between its exit record and ``lost``). The cycle is fast while young jobs exist and backs off
when all jobs are old.

A cancel that could not reach the scheduler is re-sent until Slurm says the job ended, but never
inside the cycle: scancel runs as the job's user, who decides how long it takes (up to
``command_timeout``), so the cycle only starts re-sends, in tasks the poller owns
(``ClusterLink.resends``): one at a time per job (none while any scancel of it is under way),
:data:`~.clusters.RESENDS_PER_USER` per unix user, and after a failed one not again for a wait
that doubles from :data:`RESEND_FIRST_WAIT` up to :data:`RESEND_LONGEST_WAIT` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import PollConfig
from ..errors import ClusterUnavailable, CommandFailed, GatewayError, SchedulerError
from ..scheduler import SchedulerState, SchedulerStatus
from ..states import State
from ..store import Move
from ..timestamps import parse_timestamp
from .clusters import ClusterLink
from .context import JobContext

log = logging.getLogger(__name__)
MIN_GAP = 0.2  # seconds between two cycles, however often the poller is woken
RESEND_FIRST_WAIT = 2.0  # seconds before a scancel that failed is re-sent, doubling each time
RESEND_LONGEST_WAIT = 60.0  # ... up to this


async def poll_forever(ctx: JobContext, link: ClusterLink) -> None:
    """Poll ``link``'s cluster until cancelled; the re-sends of scancel it started are
    cancelled with it."""
    try:
        while True:
            interval = await poll_cycle(ctx, link)
            await refresh_view(link, ctx.config.poll.old_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.wake.wait(), interval)
            link.wake.clear()
            await asyncio.sleep(MIN_GAP)
    finally:
        await link.resends.close()


async def poll_cycle(ctx: JobContext, link: ClusterLink) -> float:
    """One cycle for ``link``'s cluster; the seconds to wait before the next one.

    A cycle that fails is logged, and the next one starts from a full read of the store.
    """
    tracked = link.tracked
    started = time.monotonic()
    try:
        tracked.refresh(ctx.store, link.name)
        if tracked.jobs:
            await poll_once(ctx, link)
    except Exception:
        log.exception("poll cycle on %s failed", link.name)
        tracked.invalidate()
    ctx.metrics.poll_seconds.labels(link.name).observe(time.monotonic() - started)
    return next_interval(tracked.newest_created_at(), ctx.config.poll)


async def refresh_view(link: ClusterLink, every: float) -> None:
    """Refresh ``link.view`` (and ``reachable``) if it is older than ``every`` seconds.

    A failure keeps the old view and marks the cluster unreachable; it is logged, not raised.
    """
    if link.view is not None and time.monotonic() - link.view_at < every:
        return
    link.view_at = time.monotonic()
    try:
        link.view = await link.backend.cluster_info()
    except GatewayError as exc:
        link.reachable, link.last_error = False, exc.detail
        log.warning("cluster %s: no cluster view: %s", link.name, exc.detail)
        return
    except Exception as exc:
        link.reachable, link.last_error = False, f"cluster view failed: {exc!r}"[:300]
        log.exception("cluster %s: cluster view failed", link.name)
        return
    link.reachable, link.last_error = True, None


def next_interval(newest_created_at: str | None, poll: PollConfig) -> float:
    """Fast while the newest tracked job is young, slower once every job is old."""
    newest = parse_timestamp(newest_created_at).timestamp() if newest_created_at else None
    if newest is not None and time.time() - newest < poll.young_age:
        return poll.young_interval
    return poll.old_interval


@dataclass
class Cycle:
    """What one cycle writes (in one transaction): transitions and plain field changes."""

    moves: list[Move] = field(default_factory=list)
    updates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def update(self, job_id: str, **fields: Any) -> None:
        self.updates.setdefault(job_id, {}).update(fields)

    def to_collecting(self, job_id: str, status: SchedulerStatus | None) -> None:
        fields: dict[str, Any] = {"slurm_state": status.state.value if status else None}
        if status is not None:
            fields["exit_code"] = status.exit_code
            if status.node:
                fields["node"] = status.node
        self.moves.append(Move(job_id, State.COLLECTING, fields))


async def poll_once(ctx: JobContext, link: ClusterLink) -> None:
    """One ``status_many`` call for every tracked job of ``link.tracked`` (refreshed by the
    caller), then only the jobs whose status changed evaluated and the changes written."""
    tracked = link.tracked
    try:
        statuses = await link.backend.status_many(tracked.by_slurm.keys())
    except (ClusterUnavailable, CommandFailed, SchedulerError) as exc:
        link.reachable, link.last_error = False, exc.detail
        log.warning("cluster %s unreachable: %s", link.name, exc.detail)
        ctx.store.update_many({job_id: {"scheduler_reachable": 0} for job_id in
                                   tracked.jobs.keys() - tracked.unreachable})
        return
    link.reachable, link.last_error = True, None
    cycle = Cycle()
    changed = {slurm_job_id: status for slurm_job_id, status in statuses.items()
               if tracked.evaluated.get(slurm_job_id) != status}
    refused = _unbelievable(link, changed)
    if refused:  # those count as not listed
        statuses = {slurm_job_id: status for slurm_job_id, status in statuses.items()
                    if slurm_job_id not in refused}
        for slurm_job_id in refused:
            del changed[slurm_job_id]
    for slurm_job_id, status in changed.items():
        apply_status(cycle, tracked.jobs[tracked.by_slurm[slurm_job_id]], status)
    _check_missing(ctx.config.poll, link, statuses, cycle)
    for job_id in tracked.unreachable:
        cycle.update(job_id, scheduler_reachable=1)
    _write(ctx, link, cycle)
    tracked.evaluated.update(changed)
    _resend_cancels(link)


def _unbelievable(link: ClusterLink, changed: dict[str, SchedulerStatus]) -> set[str]:
    """The Slurm ids among ``changed`` statuses not to believe: jobs not tracked (a backend may
    answer for more than it was asked), and tracked jobs whose scheduler-reported user is not
    the job's unix user (a reused id, a forged accounting record; logged once).

    Only changed statuses need the check: an unchanged one equals a status already believed.
    """
    tracked, refused = link.tracked, set()
    for slurm_job_id, status in changed.items():
        job_id = tracked.by_slurm.get(slurm_job_id)
        if job_id is None:
            refused.add(slurm_job_id)
            continue
        unix_user = tracked.jobs[job_id]["unix_user"]
        if status.user == unix_user:
            continue
        refused.add(slurm_job_id)
        if (slurm_job_id, str(status.user)) not in link.refused_users:
            link.refused_users.add((slurm_job_id, str(status.user)))
            log.warning("job %s: Slurm job %s is listed for user %r, not %r; ignored", job_id,
                        slurm_job_id, status.user, unix_user)
    return refused


def apply_status(cycle: Cycle, job: dict[str, Any], status: SchedulerStatus) -> None:
    """Add to ``cycle`` what ``status`` means for ``job`` (a tracked row), if anything."""
    job_id, state = job["id"], job["state"]
    if status.state is SchedulerState.PENDING:
        if state == State.PENDING and (status.pending_reason != job["pending_reason"]
                                       or status.expected_start != job["expected_start"]):
            cycle.update(job_id, pending_reason=status.pending_reason,
                         expected_start=status.expected_start)
    elif status.state is SchedulerState.RUNNING:
        if state == State.PENDING:
            cycle.moves.append(Move(job_id, State.RUNNING, {"node": status.node}))
    else:
        cycle.to_collecting(job_id, status)


def _check_missing(
    poll: PollConfig, link: ClusterLink, statuses: dict[str, SchedulerStatus],
    cycle: Cycle,
) -> None:
    """Jobs the scheduler did not answer for: to the collector once missing for ``lost_after``."""
    tracked, now = link.tracked, time.monotonic()
    missing = {tracked.by_slurm[slurm_job_id]
               for slurm_job_id in tracked.by_slurm.keys() - statuses.keys()}
    missing |= tracked.unlinked
    for job_id in link.missing_since.keys() - missing:
        del link.missing_since[job_id]  # listed again, or no longer tracked
    for job_id in missing:
        if now - link.missing_since.setdefault(job_id, now) >= poll.lost_after:
            cycle.to_collecting(job_id, None)


def _write(ctx: JobContext, link: ClusterLink, cycle: Cycle) -> None:
    """Write ``cycle`` to the store, then bring the tracked jobs and the collectors in line."""
    store, tracked = ctx.store, link.tracked
    refused = store.transition_many(cycle.moves, cycle.updates)
    for move in cycle.moves:
        job_id = move.job_id
        if job_id in refused:  # e.g. a cancel raced us to a terminal state
            log.info("job %s: not moved to %s, its state changed meanwhile", job_id, move.new)
            tracked.forget(job_id)  # read again by the next refresh if still tracked
        elif move.new is State.COLLECTING:
            tracked.forget(job_id)
            link.missing_since.pop(job_id, None)
            link.cancel_sent.discard(job_id)
            ctx.collect_later(job_id)
        else:
            tracked.jobs[job_id]["state"] = move.new.value
            if move.new is State.RUNNING:
                ctx.job_started(job_id)


def _resend_cancels(link: ClusterLink) -> None:
    """Start re-sending scancel for the tracked jobs whose cancel has not gone through, in
    ``link.resends``; nothing here waits for one.

    A job is passed over (and looked at again next cycle) while a scancel of it is under way,
    whoever sent it, until its wait after a failed re-send is over, and while its unix user
    has ``RESENDS_PER_USER`` re-sends under way. The waits of jobs no longer tracked are
    dropped.
    """
    tracked, now = link.tracked, time.monotonic()
    for job_id in link.resend_after.keys() - tracked.cancels:
        del link.resend_after[job_id]
    for job_id in sorted(tracked.cancels - link.cancel_sent):
        job = tracked.jobs.get(job_id)
        if (job is None or not job["slurm_job_id"] or job_id in link.cancelling
                or link.resend_after.get(job_id, (0.0, 0.0))[0] > now):
            continue
        link.resends.start(job_id, job["unix_user"], functools.partial(_resend, link, job))


async def _resend(link: ClusterLink, job: dict[str, Any]) -> None:
    """scancel ``job`` once more: gone through, the poller looks at once (its next status
    ends the job); failed, not again for twice the previous wait (RESEND_FIRST_WAIT at first,
    at most RESEND_LONGEST_WAIT)."""
    job_id = job["id"]
    try:
        sent = await link.send_cancel(job)
    except Exception:
        log.exception("scancel of job %s failed", job_id)
        sent = False
    if sent:
        link.resend_after.pop(job_id, None)
        if job_id not in link.tracked.jobs:  # it ended meanwhile: nothing to remember
            link.cancel_sent.discard(job_id)
        link.wake.set()
        return
    last = link.resend_after.get(job_id, (0.0, RESEND_FIRST_WAIT / 2))[1]
    wait = min(RESEND_LONGEST_WAIT, 2 * last)
    link.resend_after[job_id] = (time.monotonic() + wait, wait)
