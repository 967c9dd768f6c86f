"""The jobs a poller follows on one cluster, kept in memory between poll cycles.

Re-reading every tracked row each cycle costs more than the whole cycle may (design.md §5: < 50 ms
of gateway CPU for 10,000 tracked jobs), so :meth:`TrackedJobs.refresh` reads only what changed
since the previous refresh:

- the events recorded since the last one seen (ids, so no clock is involved): every job whose
  state changed; it is forgotten if it left the tracked states (to ``collecting`` or a terminal
  state, whoever moved it), else its row is read again;
- the tracked rows written (``updated_at``: every :class:`~gateway.store.Store` write sets it)
  since the previous refresh began, less :data:`MARGIN`: changes other than of the state, by any
  writer (a cancel request, ...). Reading a row twice is harmless.

Everything is read again (and only rows that differ are replaced) on the first refresh, after
:meth:`TrackedJobs.invalidate` (the poller calls it when a cycle failed), when the wall clock went
backwards, and when more than :data:`MAX_ENTERED` jobs entered the tracked states at once.

Next to each job it keeps the scheduler status the poller last evaluated for it
(``evaluated``, by Slurm job id); whenever the job's row is read again that entry is dropped, so
the poller evaluates the job again. Only the poller of one cluster uses an instance, from the event
loop's thread, and never across an ``await`` inside one method.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ..scheduler import SchedulerStatus
from ..states import IN_SCHEDULER
from ..store import Store
from ..timestamps import format_timestamp

MARGIN = timedelta(seconds=1)
MAX_ENTERED = 900  # more jobs than this moved into tracked states: read everything (and stay
# below SQLite's smallest limit on bound parameters)
_TRACKED_STATES = frozenset(state.value for state in IN_SCHEDULER)


def _stamp(moment: datetime) -> str:
    """``moment`` as a store time stamp."""
    return format_timestamp(moment.timestamp())


class TrackedJobs:
    """The tracked rows (:data:`gateway.store.TRACKED_COLUMNS`) of one cluster, and indexes
    over them that let a cycle touch only the jobs that need it."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}  # gateway job id -> tracked row
        self.by_slurm: dict[str, str] = {}  # Slurm job id -> gateway job id
        self.evaluated: dict[str, SchedulerStatus] = {}  # Slurm job id -> last evaluated status
        self.unlinked: set[str] = set()  # job ids without a Slurm job id
        self.unreachable: set[str] = set()  # job ids stored with scheduler_reachable = 0
        self.cancels: set[str] = set()  # job ids with cancel_requested
        self._newest: str | None = None  # the newest created_at (None: compute again)
        self._since: datetime | None = None  # when the previous refresh began
        self._event_id = 0

    def invalidate(self) -> None:
        """Make the next :meth:`refresh` a full read (after a failed cycle, say)."""
        self._since = None

    def refresh(self, store: Store, cluster: str) -> None:
        """Bring the tracked jobs of ``cluster`` up to date with ``store``."""
        started = datetime.now(UTC)
        event_id, moved = (0, {}) if self._since is None else store.states_since(self._event_id)
        entered = [job_id for job_id, state in moved.items() if state in _TRACKED_STATES]
        if self._since is None or started < self._since or len(entered) > MAX_ENTERED:
            self._full_read(store, cluster)
        else:
            for job_id, state in moved.items():
                if state not in _TRACKED_STATES:
                    self.forget(job_id)
            for row in store.tracked_jobs(cluster, _stamp(self._since - MARGIN), entered):
                self.put(row)
            self._event_id = event_id
        self._since = started

    def _full_read(self, store: Store, cluster: str) -> None:
        """Read every tracked row; only rows that differ from the ones held are put (so the
        others keep their evaluated status), and jobs no longer tracked are forgotten."""
        event_id = store.last_event_id()
        listed: set[str] = set()
        for row in store.tracked_jobs(cluster):
            listed.add(row["id"])
            if self.jobs.get(row["id"]) != row:
                self.put(row)
        for job_id in self.jobs.keys() - listed:
            self.forget(job_id)
        self._event_id = event_id

    def put(self, row: dict[str, Any]) -> None:
        """Add or replace the tracked row of one job; its evaluated status is dropped."""
        job_id, slurm_job_id = row["id"], row["slurm_job_id"]
        old = self.jobs.get(job_id)
        if old is not None and old["slurm_job_id"] != slurm_job_id:
            self.forget(job_id)
        self.jobs[job_id] = row
        if slurm_job_id:
            self.by_slurm[slurm_job_id] = job_id
            self.evaluated.pop(slurm_job_id, None)
        _mark(self.unlinked, job_id, not slurm_job_id)
        _mark(self.unreachable, job_id, not row["scheduler_reachable"])
        _mark(self.cancels, job_id, bool(row["cancel_requested"]))
        if self._newest is not None and row["created_at"] > self._newest:
            self._newest = row["created_at"]

    def forget(self, job_id: str) -> None:
        """Stop tracking ``job_id`` (it left the scheduler's states); unknown ids are ignored."""
        row = self.jobs.pop(job_id, None)
        if row is None:
            return
        slurm_job_id = row["slurm_job_id"]
        if slurm_job_id and self.by_slurm.get(slurm_job_id) == job_id:
            del self.by_slurm[slurm_job_id]
            self.evaluated.pop(slurm_job_id, None)
        for index in (self.unlinked, self.unreachable, self.cancels):
            index.discard(job_id)
        if row["created_at"] == self._newest:
            self._newest = None

    def newest_created_at(self) -> str | None:
        """``created_at`` of the youngest tracked job (None if there is none)."""
        if self._newest is None and self.jobs:
            self._newest = max(job["created_at"] for job in self.jobs.values())
        return self._newest


def _mark(index: set[str], job_id: str, member: bool) -> None:
    if member:
        index.add(job_id)
    else:
        index.discard(job_id)
