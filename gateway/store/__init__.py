"""The gateway's state: SQLite through sqlite-utils, WAL mode, schema versioned by user_version.

Jobs and their state history (``events``); users and tokens are :mod:`.users`', storage
servers :mod:`.storage`'s (``store.users``, ``store.storage``). Artifacts
(notebooks, logs) live in the data directory, not here. Every state change goes through
:meth:`Store.transition` (or, batched, :meth:`Store.transition_many`), which checks the transition
table and writes the event row in the same transaction; terminal states are therefore sticky by
construction.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

from ..errors import Conflict, NotFound
from ..listing import JobQuery
from ..states import IN_SCHEDULER, TERMINAL, TRANSITIONS, State, check_transition
from ..timestamps import parse_timestamp, utcnow
from ..users import User
from .feed import JobFeed
from .files import loose_modes, private_database, private_dir
from .schema import LAB_TOKENS_DROPPED, MIGRATIONS
from .stamped import MAX_ENTRIES, ChangeStamp, StampedCache
from .storage import StorageTable
from .users import TOKEN_PREFIX, UserTable, hash_token
from .webhooks import STATE, WebhookEvents

__all__ = ["LAB_TOKENS_DROPPED", "MIGRATIONS", "TOKEN_PREFIX", "Move", "Store", "User",
           "hash_token", "loose_modes", "private_dir"]

log = logging.getLogger(__name__)

TRACKED_COLUMNS = ("id", "state", "slurm_job_id", "pending_reason", "expected_start",
                   "scheduler_reachable", "cancel_requested", "unix_user", "created_at")


class Move(NamedTuple):
    """One transition of a batch (:meth:`Store.transition_many`)."""

    job_id: str
    new: State
    fields: dict[str, Any]
    reason: str | None = None
    message: str | None = None


def _transition_update(
    old: State, new: State, reason: str | None, message: str | None, fields: dict[str, Any],
    now: str,
) -> dict[str, Any]:
    """The columns a move ``old -> new`` writes besides ``fields`` (one rule for every path)."""
    update = {**fields, "state": new.value, "updated_at": now}
    if reason is not None:
        update["reason"] = reason
    if message is not None:
        update["message"] = message
    if new in TERMINAL:
        update["ended_at"] = now
    if new is State.RUNNING:
        update.setdefault("started_at", now)
    if new is not State.PENDING:
        update["pending_reason"] = None
    return update


def _log_move(job_id: str, old: str | None, new: str, reason: str | None,
              slurm_job_id: str | None = None) -> None:
    """One event per state change, with its fields (gateway.logs), once it is written."""
    log.info("job %s: %s -> %s%s", job_id, old or "(new)", new, f" ({reason})" if reason else "",
             extra={"job_id": job_id, "from_state": old, "to_state": new, "reason": reason,
                    "slurm_job_id": slurm_job_id})


class Store:
    """All reads and writes of the gateway's database. One instance per process.

    Whichever command opens the store first creates it private: the directory 0700, the
    database 0600 (SQLite gives its ``-wal`` and ``-shm`` files the database's mode); looser
    modes found on an existing store are tightened (``hpcgw check-config`` reports them).
    """

    def __init__(self, path: Path) -> None:
        connection = sqlite3.connect(private_database(path), isolation_level=None,
                                     check_same_thread=False)
        self.db = sqlite_utils.Database(connection)
        self.db.enable_wal()
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA busy_timeout = 5000")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA cache_size = -65536")  # 64 MiB: the poll reads every tracked row
        self._migrate()
        self.change_stamp = ChangeStamp(connection)
        self.storage = StorageTable(self.db)
        self.users = UserTable(self.db, self.change_stamp)
        self.webhooks = WebhookEvents(self.db)
        self.feed = JobFeed(self.db)

    def stamped_cache(self, max_entries: int = MAX_ENTRIES) -> StampedCache[Any, Any]:
        """A cache of this store's answers, emptied at its next change (:mod:`.stamped`)."""
        return StampedCache(self.change_stamp, max_entries)

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._transaction():
                for statement in filter(str.strip, script.split(";")):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")
        if 0 < version < LAB_TOKENS_DROPPED:
            self._erase_freed_pages()

    def _erase_freed_pages(self) -> None:
        """Rewrite the database so that values dropped by a migration (lab tokens) are not
        left behind in free pages or in the WAL."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _table(self, name: str) -> sqlite_utils.db.Table:
        return self.db.table(name)

    def close(self) -> None:
        self.db.conn.close()

    # -- jobs -------------------------------------------------------------------------------

    def job_counts(self) -> list[tuple[str, str, str, str, str, int]]:
        """Jobs grouped by (state, kind, cluster, partition, reason or ""), with their count."""
        return [tuple(row) for row in self.db.execute(
            "SELECT state, kind, cluster, COALESCE(json_extract(spec, '$.partition'), ''), "
            "COALESCE(reason, ''), COUNT(*) FROM jobs GROUP BY 1, 2, 3, 4, 5").fetchall()]

    def insert_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """Store a new job in state ``accepted`` with its first event (which carries the
        job's ``warning`` as its message, if it has one).

        Raises :class:`Conflict` if (user, idempotency_key) already has a job.
        """
        now = utcnow()
        row = {**job, "state": State.ACCEPTED.value, "created_at": now, "updated_at": now}
        try:
            with self._transaction():
                self._table("jobs").insert(row)
                self._event(job["id"], None, State.ACCEPTED, None, job.get("warning"), now)
        except sqlite3.IntegrityError as exc:
            raise Conflict("a job with this idempotency key exists") from exc
        _log_move(job["id"], None, State.ACCEPTED.value, None)
        return self.get_job(job["id"])

    def _event(
        self, job_id: str, old: State | None, new: State, reason: str | None,
        message: str | None, at: str,
    ) -> None:
        self._table("events").insert({
            "job_id": job_id, "at": at, "from_state": old, "to_state": new,
            "reason": reason, "message": message,
        })

    def get_job(self, job_id: str, user_id: int | None = None) -> dict[str, Any]:
        """The job, if it exists and (when ``user_id`` is given) belongs to that user.

        Another user's job raises the same :class:`NotFound` as a missing one.
        """
        rows = list(self._table("jobs").rows_where("id = ?", [job_id]))
        if not rows or (user_id is not None and rows[0]["user_id"] != user_id):
            raise NotFound(f"no job {job_id}")
        return rows[0]

    def job_by_idempotency_key(self, user_id: int, key: str) -> dict[str, Any] | None:
        rows = list(self._table("jobs").rows_where(
            "user_id = ? AND idempotency_key = ?", [user_id, key]))
        return rows[0] if rows else None

    def list_jobs(self, user_id: int, limit: int = 500) -> list[dict[str, Any]]:
        return self.query_jobs(user_id, JobQuery(limit=limit))

    def query_jobs(self, user_id: int | None, query: JobQuery) -> list[dict[str, Any]]:
        """``user_id``'s jobs (None: every user's) that match ``query``, newest first (by
        creation time, then id), at most ``query.limit``; with ``query.before`` only those
        after that one in this order (the next page)."""
        where: list[str] = ["1"] if user_id is None else ["user_id = ?"]
        values: list[Any] = [] if user_id is None else [user_id]
        for column, allowed in (("state", query.states), ("kind", query.kinds)):
            if allowed:
                where.append(f"{column} IN ({','.join('?' for _ in allowed)})")
                values += list(allowed)
        for column, value in (("name", query.name), ("slurm_job_id", query.slurm_job_id)):
            if value is not None:
                where.append(f"{column} = ?")
                values.append(value)
        if query.since is not None:
            where.append("created_at >= ?")
            values.append(query.since)
        if query.before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            values += [query.before[0], query.before[0], query.before[1]]
        return list(self._table("jobs").rows_where(
            " AND ".join(where), values, order_by="created_at DESC, id DESC", limit=query.limit))

    def jobs_in(self, states: frozenset[State] | set[State]) -> list[dict[str, Any]]:
        marks = ",".join("?" for _ in states)
        return list(self._table("jobs").rows_where(
            f"state IN ({marks})", [s.value for s in states], order_by="created_at"))

    def tracked_jobs(
        self, cluster: str, changed_since: str | None = None, also: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """The jobs the poller follows on ``cluster`` (in the scheduler), oldest first; with
        ``changed_since`` (a time stamp) only those written at or after it, and those
        among the job ids ``also`` (at most a few hundred).

        Only the columns a poll cycle needs (:data:`TRACKED_COLUMNS`).
        """
        marks = ",".join("?" for _ in IN_SCHEDULER)
        where = f"state IN ({marks}) AND cluster = ?"
        args = [*(state.value for state in IN_SCHEDULER), cluster]
        if changed_since is not None:
            where += f" AND (updated_at >= ? OR id IN ({','.join('?' * len(also))}))"
            args += [changed_since, *also]
        cursor = self.db.execute(
            f"SELECT {', '.join(TRACKED_COLUMNS)} FROM jobs "  # noqa: S608 - constant names
            f"WHERE {where} ORDER BY created_at", args)
        return [dict(zip(TRACKED_COLUMNS, row, strict=True)) for row in cursor.fetchall()]

    def last_event_id(self) -> int:
        """The id of the newest events row (0 if none): a watermark for :meth:`states_since`."""
        return int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def states_since(self, event_id: int) -> tuple[int, dict[str, str]]:
        """The jobs whose state changed after events row ``event_id``:
        ``(the newest state change's event id, {job id: the state it moved to last})``. Only
        state changes count (``kind = 'state'``), never webhook delivery rows."""
        rows = self.db.execute(
            "SELECT id, job_id, to_state FROM events WHERE id > ? AND kind = ? ORDER BY id",
            [event_id, STATE]).fetchall()
        return (rows[-1][0] if rows else event_id), {job: state for _, job, state in rows}

    def request_stop(self, user_id: int, kind: str, stop_reason: str) -> list[str]:
        """Ask the gateway to stop ``user_id``'s unended jobs of ``kind``: mark them
        ``cancel_requested`` with ``stop_reason`` (the running gateway's submitter and poller
        act on the mark, see :mod:`gateway.jobs.oversight`); their ids."""
        marks = ",".join("?" for _ in TERMINAL)
        with self._transaction():
            ids = [row[0] for row in self.db.execute(
                f"SELECT id FROM jobs WHERE user_id = ? AND kind = ? "  # noqa: S608 - marks
                f"AND state NOT IN ({marks})", [user_id, kind, *TERMINAL]).fetchall()]
            self._update_rows({job_id: {"cancel_requested": 1, "stop_reason": stop_reason}
                               for job_id in ids}, utcnow())
        return ids

    def live_labs(self) -> list[dict[str, Any]]:
        """Labs whose server may be up (``running`` or ``ready``), oldest first."""
        return list(self._table("jobs").rows_where(
            "kind = 'lab' AND state IN (?, ?)", [State.RUNNING.value, State.READY.value],
            order_by="created_at"))

    def events(self, job_id: str, *, deliveries: bool = False) -> list[dict[str, Any]]:
        """The job's state changes (``kind`` ``state``), oldest first; with ``deliveries``
        its webhook delivery rows too, in their place (:mod:`.webhooks`)."""
        where = "" if deliveries else f" AND kind = '{STATE}'"
        return list(self.db.query(
            "SELECT at, kind, from_state, to_state, reason, message FROM events "  # noqa: S608
            f"WHERE job_id = ?{where} ORDER BY id", [job_id]))

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Change fields other than ``state`` (use :meth:`transition` for that)."""
        assert "state" not in fields
        fields["updated_at"] = utcnow()
        self._table("jobs").update(job_id, fields)

    def update_many(self, changes: dict[str, dict[str, Any]]) -> None:
        """Apply several field updates (never ``state``) in one transaction."""
        if changes:
            with self._transaction():
                self._update_rows(changes, utcnow())

    def _update_rows(self, changes: dict[str, dict[str, Any]], now: str) -> None:
        groups: dict[tuple[str, ...], list[list[Any]]] = {}  # one statement per set of columns
        for job_id, fields in changes.items():
            assert "state" not in fields
            groups.setdefault((*fields, "updated_at"), []).append([*fields.values(), now, job_id])
        for names, rows in groups.items():
            columns = ", ".join(f"{name} = ?" for name in names)
            self.db.conn.executemany(
                f"UPDATE jobs SET {columns} WHERE id = ?", rows)  # noqa: S608

    def transition_many(
        self, moves: Sequence[Move], updates: dict[str, dict[str, Any]] | None = None
    ) -> set[str]:
        """Several :meth:`transition` calls, and ``updates`` as by :meth:`update_many`, in one
        transaction (a poll cycle's write).

        Each move is checked against the table and recorded as an events row exactly like a
        single one. A move the table does not allow from the job's current state (another writer
        got there first) is skipped, not raised: the returned set holds the ids of those jobs.
        """
        refused: set[str] = set()
        events: list[tuple[Any, ...]] = []
        now = utcnow()
        with self._transaction():
            states = self._states_of([move.job_id for move in moves])
            for job_id, new, fields, reason, message in moves:
                old = states.get(job_id)
                if old is None or new not in TRANSITIONS[old]:
                    refused.add(job_id)
                    continue
                states[job_id] = new  # a second move of the same job starts from here
                update = _transition_update(old, new, reason, message, fields, now)
                self.db.execute(
                    f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in update)} "  # noqa: S608
                    "WHERE id = ?", [*update.values(), job_id])
                events.append((job_id, now, old.value, new.value, reason, message))
            self.db.conn.executemany(
                "INSERT INTO events (job_id, at, from_state, to_state, reason, message) "
                "VALUES (?, ?, ?, ?, ?, ?)", events)
            self._update_rows(updates or {}, now)
        for job_id, _, old_state, new_state, reason, _ in events:
            _log_move(job_id, old_state, new_state, reason)
        return refused

    def _states_of(self, job_ids: list[str]) -> dict[str, State]:
        """The current state of each of ``job_ids`` that exists."""
        states: dict[str, State] = {}
        for start in range(0, len(job_ids), 500):  # well below SQLite's bound-parameter limit
            chunk = job_ids[start:start + 500]
            states.update((job_id, State(state)) for job_id, state in self.db.execute(
                f"SELECT id, state FROM jobs WHERE id IN ({','.join('?' * len(chunk))})",  # noqa: S608
                chunk))
        return states

    def transition(
        self, job_id: str, new: State, *, reason: str | None = None,
        message: str | None = None, **fields: Any,
    ) -> dict[str, Any]:
        """Move a job to ``new`` (checked against the table), record the event, set ``fields``.

        Entering a terminal state sets ``ended_at``; entering ``running`` sets ``started_at``.
        Raises :class:`gateway.states.IllegalTransition` for a move the table does not allow.
        """
        now = utcnow()
        with self._transaction():
            old = State(self.get_job(job_id)["state"])
            check_transition(old, new)
            update = _transition_update(old, new, reason, message, fields, now)
            self._table("jobs").update(job_id, update)
            self._event(job_id, old, new, reason, message, now)
        job = self.get_job(job_id)
        _log_move(job_id, old.value, new.value, reason, job["slurm_job_id"])
        return job

    # -- per-user limits and artifact retention (gateway.jobs.limits, gateway.jobs.retention) --

    def count_active_jobs(self, user_id: int, kind: str) -> int:
        """How many of the user's jobs of ``kind`` are not yet terminal (accepted included)."""
        marks = ",".join("?" for _ in TERMINAL)
        return int(self.db.execute(
            f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND kind = ? "  # noqa: S608
            f"AND state NOT IN ({marks})", [user_id, kind, *(s.value for s in TERMINAL)],
        ).fetchone()[0])

    def submission_times_since(self, user_id: int, since: str) -> list[float]:
        """When the user's jobs created after ``since`` (a time stamp) were
        created, as POSIX seconds, oldest first. Every stored job counts, whatever its state;
        refused requests and idempotent replays store nothing, so they never count."""
        rows = self.db.execute(
            "SELECT created_at FROM jobs WHERE user_id = ? AND created_at > ? "
            "ORDER BY created_at", [user_id, since]).fetchall()
        return [parse_timestamp(row[0]).timestamp() for row in rows]

    def jobs_to_prune(self, ended_before: str) -> list[str]:
        """Ids of the terminal jobs that ended before ``ended_before`` (a time stamp) and
        whose artifacts have not been removed yet, oldest ending first."""
        marks = ",".join("?" for _ in TERMINAL)
        return [row[0] for row in self.db.execute(
            f"SELECT id FROM jobs WHERE ended_at IS NOT NULL AND ended_at < ? "  # noqa: S608
            f"AND artifacts_removed_at IS NULL AND state IN ({marks}) ORDER BY ended_at, id",
            [ended_before, *(s.value for s in TERMINAL)])]

    def mark_artifacts_removed(self, job_ids: Sequence[str]) -> None:
        """Record, in one transaction, that the artifacts of ``job_ids`` are gone: sets
        ``artifacts_removed_at`` and ``has_notebook = 0``; ``state`` and the events are never
        touched (the jobs stay listed as they ended)."""
        now = utcnow()
        self.update_many({job_id: {"artifacts_removed_at": now, "has_notebook": 0}
                          for job_id in job_ids})

