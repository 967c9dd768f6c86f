"""The store's side of job webhooks: the state changes to deliver, and the delivery rows.

Delivery attempts are rows of the ``events`` table with ``kind = 'webhook'`` (state changes are
``kind = 'state'``), so that a job's events show them in order with its state changes. Such a
row's ``to_state`` is the state the delivery announces, ``from_state`` and ``reason`` are NULL
and ``message`` says what the attempt came to. Everything that reads state changes (the
poller's :meth:`Store.states_since`, the collector, :meth:`changes_since` here) reads only
``kind = 'state'`` rows: a delivery row never counts as a state change, nor triggers a delivery.
"""

from __future__ import annotations

from typing import NamedTuple

import sqlite_utils

from ..timestamps import utcnow

STATE, WEBHOOK = "state", "webhook"  # the kinds of events rows


class StateChange(NamedTuple):
    """A state change of a job whose spec has a webhook: what its delivery says."""

    event_id: int
    job_id: str
    user_id: int
    at: str
    from_state: str | None
    to_state: str
    reason: str | None
    url: str


class WebhookEvents:
    """Reads the state changes of jobs with a webhook; writes delivery rows."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def changes_since(self, event_id: int, limit: int = 1000) -> tuple[int, list[StateChange]]:
        """``(watermark, changes)``: the state changes after events row ``event_id`` of jobs
        whose spec has a webhook URL, oldest first, at most ``limit``; ``watermark`` is the
        row to ask from next time (past every row looked at, those of other jobs and delivery
        rows included, so none is read twice)."""
        newest = int(self.db.execute(
            "SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
        rows = self.db.execute(
            "SELECT e.id, e.job_id, j.user_id, e.at, e.from_state, e.to_state, e.reason, "
            "json_extract(j.spec, '$.webhook.url') FROM events e JOIN jobs j ON j.id = e.job_id "
            "WHERE e.id > ? AND e.id <= ? AND e.kind = ? "
            "AND json_extract(j.spec, '$.webhook.url') IS NOT NULL ORDER BY e.id LIMIT ?",
            [event_id, newest, STATE, limit]).fetchall()
        changes = [StateChange(*row) for row in rows]
        if len(changes) == limit:
            newest = changes[-1].event_id
        return max(newest, event_id), changes

    def record(self, job_id: str, state: str, message: str) -> None:
        """A delivery row for ``job_id``: an attempt to announce ``state``, told by
        ``message`` (never the secret, the signature, or the URL's path or query)."""
        self.db.execute(
            "INSERT INTO events (job_id, at, from_state, to_state, reason, message, kind) "
            "VALUES (?, ?, NULL, ?, NULL, ?, ?)", [job_id, utcnow(), state, message, WEBHOOK])
