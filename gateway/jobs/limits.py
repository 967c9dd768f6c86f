"""Per-user limits on new jobs (``[limits]``, design.md §4): active notebook runs, active labs,
and submissions per rolling minute.

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
