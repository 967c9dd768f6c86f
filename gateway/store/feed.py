"""The store's side of the job event stream (``GET /api/v1/jobs/stream``): which jobs changed
state after a given events row, in the order they changed.

Only state changes count (``kind = 'state'``); webhook delivery rows never appear in a feed.
The events row id is the stream's event id, so a client resumes after the last row it saw.
"""

from __future__ import annotations

from typing import NamedTuple

import sqlite_utils

from .webhooks import STATE


class FeedItem(NamedTuple):
    """One state change: its events row, the job it moved and the job's owner (a name)."""

    event_id: int
    job_id: str
    user: str


class JobFeed:
    """Reads state changes of one user's jobs, or of every user's."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def changes_since(self, event_id: int, user_id: int | None,
                      limit: int = 200) -> list[FeedItem]:
        """The state changes after events row ``event_id`` of ``user_id``'s jobs (None: every
        user's), oldest first, at most ``limit``. A job that moved twice is listed twice."""
        if user_id is None:
            rows = self.db.execute(
                "SELECT e.id, e.job_id, u.name FROM events e JOIN jobs j ON j.id = e.job_id "
                "JOIN users u ON u.id = j.user_id WHERE e.id > ? AND e.kind = ? "
                "ORDER BY e.id LIMIT ?", [event_id, STATE, limit]).fetchall()
        else:  # from the user's jobs (index jobs_user) to their events (events_job): never
            # a scan of other users' rows
            rows = self.db.execute(
                "SELECT e.id, e.job_id, u.name FROM users u JOIN jobs j ON j.user_id = u.id "
                "JOIN events e ON e.job_id = j.id WHERE u.id = ? AND e.id > ? AND e.kind = ? "
                "ORDER BY e.id LIMIT ?", [user_id, event_id, STATE, limit]).fetchall()
        return [FeedItem(int(row[0]), str(row[1]), str(row[2])) for row in rows]
