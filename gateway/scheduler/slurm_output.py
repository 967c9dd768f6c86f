"""Parsers for what Slurm's CLI prints: squeue (also incrementally and as JSON), sacct, sinfo.

Everything here is untrusted input (design.md §4). Slurm prints user-set fields (a job's comment
or name) raw, newlines included, so a field a user controls could print whole extra lines. The
rules, therefore:

- The text formats the gateway parses hold no user-set field: ``SQUEUE_FORMAT`` is id, state,
  reason, node, user and start time, all written by Slurm. The tag lookup, which needs the
  comment, reads ``squeue --json``, where a comment is one JSON string whatever it holds.
- A line is parsed strictly: the number of fields, a numeric id, a known state word, a user and
  a node that look like names. A line that fails is skipped and logged, never an error for the
  whole cycle. An id that appears on more than one line is skipped (it cannot be told which
  line is Slurm's own): ``sacct -c`` reads the jobcomp text file, where another user's job name
  can print a whole forged record.
- Whose job a line is about is the caller's check (``SchedulerStatus.user`` against the job's
  unix user): a backend reports what Slurm says, the poller decides whether to believe it.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from typing import Any

from .. import untrusted
from ..errors import SchedulerError
from ..timestamps import format_timestamp
from .base import SchedulerState, SchedulerStatus

log = logging.getLogger(__name__)

TAG_PREFIX = "hpcgw:"
FIELD_SEP = "|"
SQUEUE_FORMAT = "%i|%T|%r|%N|%u|%S"
# squeue runs with SLURM_TIME_FORMAT=%s: %S (a pending job's expected start, a running job's
# start) is then seconds since the epoch, whatever the cluster's time zone.
SQUEUE_ENV = "SLURM_TIME_FORMAT=%s"
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,User"
SINFO_FORMAT = "%R|%a|%l|%D|%G|%c|%m|%T"
MAX_JSON_BYTES = 256 * 1024 * 1024  # squeue --json for ~50,000 jobs

_JOB_ID = re.compile(r"^[0-9]{1,12}\Z")
# A single node name as Slurm's NodeName allows (no list brackets: gateway jobs use one node).
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# Slurm's reason: usually one word (Priority, Resources), sometimes a phrase ("Nodes required for
# job are DOWN, DRAINED or reserved for jobs in higher priority partitions"). Slurm sets it, no
# user does; printable text of bounded length.
_REASON = re.compile(r"^[^\x00-\x1f\x7f|]{1,200}\Z")
# sacct -c prints "alice(1001)".
_EPOCH = re.compile(r"^[0-9]{1,10}\Z")
_NO_TIME = frozenset({"N/A", "Unknown", "None", "0"})
_USER_WITH_UID = re.compile(r"^([a-z_][a-z0-9_-]{0,31})(?:\([0-9]+\))?\Z")

_STATE_MAP: dict[str, SchedulerState] = {
    "PENDING": SchedulerState.PENDING,
    "REQUEUED": SchedulerState.PENDING,
    "REQUEUE_FED": SchedulerState.PENDING,
    "REQUEUE_HOLD": SchedulerState.PENDING,
    "RESV_DEL_HOLD": SchedulerState.PENDING,
    "CONFIGURING": SchedulerState.RUNNING,
    "RUNNING": SchedulerState.RUNNING,
    "COMPLETING": SchedulerState.RUNNING,
    "SIGNALING": SchedulerState.RUNNING,
    "STAGE_OUT": SchedulerState.RUNNING,
    "SUSPENDED": SchedulerState.RUNNING,
    "STOPPED": SchedulerState.RUNNING,
    "RESIZING": SchedulerState.RUNNING,
    "COMPLETED": SchedulerState.COMPLETED,
    "FAILED": SchedulerState.FAILED,
    "CANCELLED": SchedulerState.CANCELLED,
    "REVOKED": SchedulerState.CANCELLED,
    "TIMEOUT": SchedulerState.TIMEOUT,
    "DEADLINE": SchedulerState.TIMEOUT,
    "OUT_OF_MEMORY": SchedulerState.OUT_OF_MEMORY,
    "NODE_FAIL": SchedulerState.NODE_FAIL,
    "PREEMPTED": SchedulerState.PREEMPTED,
    "BOOT_FAIL": SchedulerState.LAUNCH_FAILED,
    "LAUNCH_FAILED": SchedulerState.LAUNCH_FAILED,
}


@functools.cache
def map_state(raw: str) -> SchedulerState:
    """Slurm's state word (``CANCELLED by 1001`` included) as a neutral state."""
    word = raw.split()[0].rstrip("+") if raw.strip() else ""
    try:
        return _STATE_MAP[word]
    except KeyError:
        raise SchedulerError(f"unknown Slurm job state {raw[:60]!r}") from None


def _null(value: str) -> str | None:
    return None if value in ("", "(null)", "None", "n/a") else value


def _checked(value: str | None, pattern: re.Pattern[str], what: str) -> str | None:
    if value is not None and not pattern.match(value):
        raise SchedulerError(f"unexpected {what} {value[:60]!r}")
    return value


def _user(value: str) -> str:
    match = _USER_WITH_UID.match(value)
    if not match:
        raise SchedulerError(f"unexpected user {value[:60]!r}")
    return match[1]


def parse_squeue_line(line: str) -> SchedulerStatus:
    """One line of ``squeue -h -a -t all -o SQUEUE_FORMAT``; SchedulerError if it is not
    exactly what Slurm prints for a job."""
    parts = line.split(FIELD_SEP)
    if len(parts) != 6:
        raise SchedulerError(f"unexpected squeue line {line[:200]!r}")
    job_id, state, reason, node, user, start = parts
    _checked(job_id, _JOB_ID, "job id")
    mapped = map_state(state)
    return SchedulerStatus(
        job_id=job_id,
        state=mapped,
        raw_state=state,
        pending_reason=_checked(_null(reason), _REASON, "reason"),
        node=_checked(_null(node), _NODE, "node"),
        user=_user(user),
        expected_start=_start(start) if mapped is SchedulerState.PENDING else None,
    )


def _start(value: str) -> str | None:
    """``%S`` under ``SLURM_TIME_FORMAT=%s``: epoch seconds as a stamp; None when Slurm does
    not know (``N/A``, ``Unknown``); SchedulerError for anything else."""
    if value in _NO_TIME:
        return None
    if not _EPOCH.match(value):
        raise SchedulerError(f"unexpected start time {value[:40]!r}")
    return format_timestamp(int(value))


def _line_id(line: str) -> str:
    return line[: line.find(FIELD_SEP)]


def _skip(line: str, why: str) -> None:
    log.warning("Slurm output: skipped line %r: %s", line[:200], why)


def parse_squeue(text: str, wanted: set[str] | None = None) -> dict[str, SchedulerStatus]:
    """Parse ``squeue -h -a -t all -o SQUEUE_FORMAT`` output: the jobs listed on exactly one
    good line (with ``wanted``, only those). Bad lines, and ids on several different lines, are
    skipped and logged (an identical line printed twice says nothing new)."""
    lines = [line for line in dict.fromkeys(text.splitlines())
             if line and (wanted is None or _line_id(line) in wanted)]
    repeated = {job_id for job_id, n in Counter(map(_line_id, lines)).items() if n > 1}
    statuses: dict[str, SchedulerStatus] = {}
    for line in lines:
        if _line_id(line) in repeated:
            _skip(line, "its job id is on more than one line")
            continue
        try:
            status = parse_squeue_line(line)
        except SchedulerError as exc:
            _skip(line, exc.detail)
            continue
        statuses[status.job_id] = status
    return statuses


class SqueueCache:
    """``squeue`` output taken in incrementally: only the lines that differ from the previous
    output are parsed, and the statuses of the wanted jobs are kept up to date from those, so
    a poll cycle does no per-line Python work for the (many) jobs that did not change.

    Gives what :func:`parse_squeue` gives with ``wanted``: a bad line is skipped (and logged
    once, when it appears), and a job id on more than one line is skipped while it is.
    """

    def __init__(self) -> None:
        self._lines: set[str] = set()  # the last output's lines
        self._parsed: dict[str, SchedulerStatus | None] = {}  # line -> status (None: bad)
        self._lines_of: dict[str, set[str]] = {}  # job id as printed -> its lines
        self._wanted: set[str] = set()
        self._view: dict[str, SchedulerStatus] = {}  # wanted id -> status

    def update(self, text: str, wanted: set[str]) -> dict[str, SchedulerStatus]:
        """Take in a new ``squeue`` output; the statuses of the ``wanted`` jobs it lists.

        ``wanted`` is kept (not copied) until the next call.
        """
        current = set(text.splitlines())
        current.discard("")
        touched: set[str] = set()
        for line in self._lines - current:
            job_id = _line_id(line)
            self._lines_of[job_id].discard(line)
            if not self._lines_of[job_id]:
                del self._lines_of[job_id]
            del self._parsed[line]
            touched.add(job_id)
        for line in current - self._lines:
            job_id = _line_id(line)
            self._lines_of.setdefault(job_id, set()).add(line)
            self._parsed[line] = self._parse(line, job_id in wanted)
            touched.add(job_id)
        for job_id in touched | (wanted ^ self._wanted):
            self._refresh(job_id, wanted)
        self._lines, self._wanted = current, wanted
        return dict(self._view)

    @staticmethod
    def _parse(line: str, wanted: bool) -> SchedulerStatus | None:
        try:
            return parse_squeue_line(line)
        except SchedulerError as exc:
            if wanted:
                _skip(line, exc.detail)
            return None

    def _refresh(self, job_id: str, wanted: set[str]) -> None:
        lines = self._lines_of.get(job_id, ())
        status = self._parsed[next(iter(lines))] if len(lines) == 1 else None
        if job_id in wanted and status is not None:
            self._view[job_id] = status
            return
        if job_id in wanted and len(lines) > 1:
            log.warning("squeue: job %s is on %d lines; skipped", job_id, len(lines))
        self._view.pop(job_id, None)


def parse_sacct(text: str) -> dict[str, SchedulerStatus]:
    """Parse ``sacct -X -n -P -o SACCT_FIELDS`` (or ``sacct -c``, the forgeable jobcomp file)
    output with the rules above."""
    parts_by_line = [line.split(FIELD_SEP) for line in text.splitlines() if line]
    counts = Counter(parts[0] for parts in parts_by_line)
    statuses: dict[str, SchedulerStatus] = {}
    for parts in parts_by_line:
        line = FIELD_SEP.join(parts)
        if len(parts) != 5 or counts[parts[0]] > 1:
            _skip(line, "not 5 fields, or its job id is on more than one line")
            continue
        job_id, state, exit_code, node, user = parts
        code, _, signal = exit_code.partition(":")
        try:
            statuses[job_id] = SchedulerStatus(
                job_id=_checked(job_id, _JOB_ID, "job id") or "",
                state=map_state(state),
                raw_state=state,
                node=_checked(_null(node), _NODE, "node"),
                exit_code=int(code) if code.isdigit() and signal in ("", "0") else None,
                user=_user(user),
            )
        except SchedulerError as exc:
            _skip(line, exc.detail)
    return statuses


def find_tagged(document: str, tag: str, user: str) -> SchedulerStatus | None:
    """The newest job of ``user`` whose comment is exactly ``hpcgw:<tag>`` in ``squeue --json``
    output (Slurm 22.05: ``{"jobs": [{"job_id", "job_state", "comment", "user_name", ...}]}``).

    Raises SchedulerError if the document is not that shape or is over MAX_JSON_BYTES.
    """
    if len(document) > MAX_JSON_BYTES:
        raise SchedulerError(f"squeue --json printed more than {MAX_JSON_BYTES} bytes")
    try:
        jobs = untrusted.loads(document)["jobs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SchedulerError(f"squeue --json printed no job list: {exc!r}"[:200]) from None
    if not isinstance(jobs, list):
        raise SchedulerError("squeue --json: jobs is not a list")
    found: list[SchedulerStatus] = []
    for job in jobs:
        if not (isinstance(job, dict) and job.get("comment") == TAG_PREFIX + tag
                and job.get("user_name") == user):
            continue
        try:
            found.append(_json_status(job))
        except (SchedulerError, TypeError, ValueError) as exc:
            log.warning("squeue --json: skipped job %r: %s", job.get("job_id"), exc)
    return max(found, key=lambda s: int(s.job_id)) if found else None


def _json_status(job: dict[str, Any]) -> SchedulerStatus:
    job_id = str(int(job["job_id"]))
    state = str(job["job_state"])
    return SchedulerStatus(
        job_id=job_id, state=map_state(state), raw_state=state,
        pending_reason=_checked(_null(str(job.get("state_reason", ""))), _REASON, "reason"),
        node=_checked(_null(str(job.get("nodes", ""))), _NODE, "node"),
        tag=str(job["comment"])[len(TAG_PREFIX):], user=str(job["user_name"]),
    )


_COUNT = re.compile(r"^([0-9]{1,12})\+?\Z")


def _smallest_count(field: str) -> int | None:
    """A per-node count of sinfo (``%c``, ``%m``): ``64``, or ``64+`` when the partition's
    nodes differ (the smallest, then); None for anything else."""
    found = _COUNT.match(field)
    return int(found.group(1)) if found else None


def parse_sinfo(text: str) -> dict[str, dict[str, Any]]:
    """Parse ``sinfo -h -o SINFO_FORMAT`` into partitions (first line per name wins for limits;
    node counts add up). Lines that don't have the format's fields are skipped."""
    partitions: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        parts = line.split(FIELD_SEP)
        if len(parts) != 8:
            continue
        name, avail, timelimit, nodes, gres, cpus, memory, state = parts
        count = int(nodes) if nodes.isdigit() else 0
        entry = partitions.setdefault(
            name,
            {"available": avail == "up", "time_limit": timelimit, "nodes": 0, "gres": gres,
             "cpus_per_node": _smallest_count(cpus),
             "memory_per_node_mb": _smallest_count(memory), "node_states": {}},
        )
        entry["nodes"] += count
        entry["node_states"][state] = entry["node_states"].get(state, 0) + count
    return partitions
