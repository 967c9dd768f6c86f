"""Per-user limits on new jobs (``[limits]``, design.md §4): active notebook runs, active labs,
and submissions per rolling minute; and :class:`PerUserCount`, the in-memory count of what
each user has under way, for the limits on things that last a while (live log reads, the lab
proxy's connections).

Everything is counted from the store, per gateway user (two gateway users mapped to one unix
user have separate limits), so the counts survive a restart and need no state of their own.
Only stored jobs count: a request refused by validation or by a limit, and an idempotent
replay, adds nothing. The job service calls :func:`check_limits` synchronously right before it
stores the job; with no ``await`` between the check and the insert, two requests served by one
gateway process cannot both slip under a limit.
"""

from __future__ import annotations

import math
import time

from ..config import LimitsConfig
from ..errors import TooManyRequests
from ..store import Store, User
from ..timestamps import format_timestamp

RATE_WINDOW_S = 60.0


def check_limits(store: Store, limits: LimitsConfig, user: User, kind: str,
                 now: float | None = None) -> None:
    """Raise :class:`TooManyRequests` (429) if ``user`` may not add a job of ``kind`` now.

    The active-job limit of the kind (``max_active_jobs`` for ``notebook``, ``max_active_labs``
    for ``lab``) is checked first, then ``max_submissions_per_minute``; the error names the
    first limit hit (``limit``, ``value``). Only the rate limit carries ``retry_after``: the
    whole seconds, rounded up and at least 1, until enough of the window's submissions have
    aged out to allow one more. ``now`` (POSIX seconds) is for tests.
    """
    if kind == "lab":
        _check_active(store, user, "lab", "max_active_labs", limits.max_active_labs)
    else:
        _check_active(store, user, "notebook", "max_active_jobs", limits.max_active_jobs)
    _check_rate(store, user, limits.max_submissions_per_minute,
                time.time() if now is None else now)


def _check_active(store: Store, user: User, kind: str, limit: str, value: int) -> None:
    active = store.count_active_jobs(user.id, kind)
    if active < value:
        return
    what = "notebook runs" if kind == "notebook" else "labs"
    if value == 0:
        detail = f"{what} are disabled on this gateway ({limit} = 0)"
    else:
        detail = (f"you have {active} {what} not yet ended, the most allowed ({limit} = "
                  f"{value}); cancel one or wait until one ends")
    raise TooManyRequests(detail, limit=limit, value=value)


def _check_rate(store: Store, user: User, value: int, now: float) -> None:
    recent = store.submission_times_since(user.id, format_timestamp(now - RATE_WINDOW_S))
    if len(recent) < value:
        return
    # One more is allowed once only value - 1 remain: when recent[len - value] ages out.
    frees_at = recent[len(recent) - value] + RATE_WINDOW_S
    retry_after = max(1, math.ceil(frees_at - now))
    raise TooManyRequests(
        f"you submitted {len(recent)} jobs in the last {RATE_WINDOW_S:g} s, the most allowed "
        f"(max_submissions_per_minute = {value}); retry in {retry_after} s",
        limit="max_submissions_per_minute", value=value, retry_after=retry_after)


class PerUserCount:
    """How many of something each gateway user has under way now, against ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[int, int] = {}  # user id -> under way now (absent: none)

    def take(self, user_id: int) -> bool:
        """Count one more for ``user_id``; False (nothing counted) at the limit."""
        held = self._held.get(user_id, 0)
        if held >= self.limit:
            return False
        self._held[user_id] = held + 1
        return True

    def give_back(self, user_id: int) -> None:
        """One of ``user_id``'s ended: call once per successful :meth:`take`."""
        held = self._held.get(user_id, 0) - 1
        if held > 0:
            self._held[user_id] = held
        else:
            self._held.pop(user_id, None)

    def held(self, user_id: int) -> int:
        return self._held.get(user_id, 0)
