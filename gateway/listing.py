"""Listing a user's jobs: the filters and pages of ``GET /api/v1/jobs`` (a leaf module: the
API parses a query into a :class:`JobQuery`, the job service passes it on, the store runs it).

Pages are newest first (creation time, then id). A page's ``next`` cursor is opaque to clients:
the (created_at, id) of its last job, base64url-encoded, so the next page starts right after it
whatever was created meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from .errors import FieldError, ValidationFailed
from .states import State
from .timestamps import format_timestamp

DEFAULT_LIMIT, MAX_LIMIT = 100, 500
KINDS = ("notebook", "lab")
_JOB_ID = re.compile(r"^[0-9a-f]{16}\Z")
SLURM_ID = re.compile(r"^[0-9]{1,12}\Z")
# ``since``: an RFC 3339 time with its zone (the OpenAPI document gives clients this pattern).
SINCE_PATTERN = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                 r"(Z|[+-][0-9]{2}:[0-9]{2})$")


@dataclass(frozen=True)
class JobQuery:
    """Which of a user's jobs to list (all when empty): states and kinds (any of), an exact
    name or Slurm job id, created at or after ``since`` (a stamp); ``before``: the (created_at,
    id) of the last job of the previous page; at most ``limit``."""

    states: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    name: str | None = None
    slurm_job_id: str | None = None
    since: str | None = None
    before: tuple[str, str] | None = None
    limit: int = DEFAULT_LIMIT
    user: str | None = None  # the owner's name: only the admin listing takes it


def cursor_after(job: Mapping[str, object]) -> str:
    """The cursor of the page that starts after ``job``."""
    raw = json.dumps([job["created_at"], job["id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_query(params: Mapping[str, str], *, admin: bool = False) -> JobQuery:
    """A :class:`JobQuery` from query parameters (``limit``, ``cursor``, ``state``, ``kind``,
    ``name``, ``slurm_job_id``, ``since``, and with ``admin`` the owner's name ``user``; lists
    comma-separated); 422 naming every bad one."""
    errors: list[FieldError] = []
    query = JobQuery()
    known = {"limit", "cursor", "state", "kind", "name", "slurm_job_id", "since"}
    unknown = sorted(set(params) - known - ({"user"} if admin else set()))
    errors += [FieldError(name, "not a filter of this list") for name in unknown]
    if admin and "user" in params:
        query = replace(query, user=params["user"])
    if "limit" in params:
        limit = params["limit"]
        if limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT:
            query = replace(query, limit=int(limit))
        else:
            errors.append(FieldError("limit", f"a whole number from 1 to {MAX_LIMIT}"))
    states, bad = _listed(params.get("state"), [s.value for s in State])
    query = replace(query, states=states)
    if bad is not None:
        shown = ", ".join(s.value for s in State)
        errors.append(FieldError("state", f"not a job state: {bad!r} (states: {shown})"))
    kinds, bad = _listed(params.get("kind"), list(KINDS))
    query = replace(query, kinds=kinds)
    if bad is not None:
        errors.append(FieldError("kind", "notebook or lab"))
    if "name" in params:
        query = replace(query, name=params["name"])
    if "slurm_job_id" in params:
        if SLURM_ID.match(params["slurm_job_id"]):
            query = replace(query, slurm_job_id=params["slurm_job_id"])
        else:
            errors.append(FieldError("slurm_job_id", "a Slurm job id: digits"))
    query = _with_since(query, params.get("since"), errors)
    query = _with_cursor(query, params.get("cursor"), errors)
    if errors:
        raise ValidationFailed(errors)
    return query


def _listed(raw: str | None, allowed: list[str]) -> tuple[tuple[str, ...], str | None]:
    """The comma-separated values of ``raw``, and the first one not in ``allowed``."""
    if raw is None:
        return (), None
    values = tuple(dict.fromkeys(v.strip() for v in raw.split(",") if v.strip()))
    bad = next((v for v in values if v not in allowed), None if values else raw)
    return values, bad


def _with_since(query: JobQuery, raw: str | None, errors: list[FieldError]) -> JobQuery:
    if raw is None:
        return query
    try:
        moment = (datetime.fromisoformat(raw.replace("Z", "+00:00"))
                  if re.fullmatch(SINCE_PATTERN[1:-1], raw, re.ASCII) else None)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        errors.append(FieldError("since", "a time with its zone, e.g. 2026-12-01T08:00:00Z"))
        return query
    return replace(query, since=format_timestamp(moment.astimezone(UTC).timestamp()))


def _with_cursor(query: JobQuery, raw: str | None, errors: list[FieldError]) -> JobQuery:
    if raw is None:
        return query
    try:
        decoded = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        decoded = None
    if (isinstance(decoded, list) and len(decoded) == 2 and all(isinstance(v, str)
                                                                 for v in decoded)
            and _JOB_ID.match(decoded[1])):
        return replace(query, before=(decoded[0], decoded[1]))
    errors.append(FieldError("cursor", "not a cursor of this list (take `next` from a page)"))
    return query
