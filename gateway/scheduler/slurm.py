"""Slurm through its command-line tools (sbatch, squeue, sacct, scancel, sinfo).

Each poll is one ``squeue`` for every job on the cluster (its cost does not depend on how many jobs
the gateway tracks); jobs that already left the queue get one ``sacct`` for all of them. Without
slurmdbd, ``sacct`` refuses ("accounting storage is disabled") and the backend reads the jobcomp
file with ``sacct -c`` instead, remembering the choice.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from ..config import ClusterConfig
from ..errors import ClusterUnavailable, CommandFailed, CommandTimeout, SchedulerError
from ..transport import Transport
from .base import SchedulerState, SchedulerStatus

TAG_PREFIX = "hpcgw:"
_TAG = re.compile(r"^[0-9a-f]{8,32}\Z")
_FIELD_SEP = "|"
SQUEUE_FORMAT = "%i|%T|%r|%N|%u|%k"
SACCT_FIELDS = "JobID,State,ExitCode,NodeList"

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


# stderr of Slurm commands that could not reach slurmctld: worth retrying, never a job failure.
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted"
    r"|Connection refused|Communication connection failure|slurm_load_jobs error",
    re.I,
)


_ALREADY_GONE = re.compile(r"already completing or completed|Invalid job id", re.I)


@functools.cache
def map_state(raw: str) -> SchedulerState:
    """Slurm's state word (``CANCELLED by 1001`` included) as a neutral state."""
    word = raw.split()[0].rstrip("+") if raw.strip() else ""
    try:
        return _STATE_MAP[word]
    except KeyError:
        raise SchedulerError(f"unknown Slurm job state {raw!r}") from None


def _null(value: str) -> str | None:
    return None if value in ("", "(null)", "None", "n/a") else value


def parse_squeue_line(line: str) -> SchedulerStatus:
    """One line of ``squeue -h -a -t all -o SQUEUE_FORMAT``; the comment is the last field."""
    parts = line.split(_FIELD_SEP, 5)
    if len(parts) != 6:
        raise SchedulerError(f"unexpected squeue line {line[:200]!r}")
    job_id, state, reason, node, user, comment = parts
    return SchedulerStatus(
        job_id=job_id,
        state=map_state(state),
        raw_state=state,
        pending_reason=_null(reason),
        node=_null(node),
        tag=comment[len(TAG_PREFIX):] if comment.startswith(TAG_PREFIX) else None,
        user=user,
    )


def parse_squeue(text: str, wanted: set[str] | None = None) -> dict[str, SchedulerStatus]:
    """Parse ``squeue -h -a -t all -o SQUEUE_FORMAT`` output.

    With ``wanted``, lines of other jobs are skipped before they are parsed.
    """
    statuses: dict[str, SchedulerStatus] = {}
    for line in text.splitlines():
        if not line or (wanted is not None and line[: line.find(_FIELD_SEP)] not in wanted):
            continue
        status = parse_squeue_line(line)
        statuses[status.job_id] = status
    return statuses


class SqueueCache:
    """``squeue`` output taken in incrementally: only the lines that differ from the previous
    output are parsed, and the statuses of the wanted jobs are kept up to date from those, so
    a poll cycle does no per-line Python work for the (many) jobs that did not change.

    Like :func:`parse_squeue` with ``wanted``, a line that can't be parsed is an error only for a
    wanted job; another job's odd line is skipped (and looked at again next time).
    """

    def __init__(self) -> None:
        self._lines: set[str] = set()  # the parsed lines of the last output
        self._parsed: dict[str, SchedulerStatus] = {}  # line -> its status
        self._by_id: dict[str, SchedulerStatus] = {}  # job id -> status, every listed job
        self._wanted: set[str] = set()
        self._view: dict[str, SchedulerStatus] = {}  # the wanted part of _by_id

    def update(self, text: str, wanted: set[str]) -> dict[str, SchedulerStatus]:
        """Take in a new ``squeue`` output; the statuses of the ``wanted`` jobs it lists.

        ``wanted`` is kept (not copied) until the next call. Raises SchedulerError, keeping the
        previous output, for a bad line of a wanted job.
        """
        current = set(text.splitlines())
        current.discard("")
        changed = current ^ self._lines
        fresh: dict[str, SchedulerStatus] = {}
        for line in changed & current:
            try:
                fresh[line] = parse_squeue_line(line)
            except SchedulerError:
                if line[: line.find(_FIELD_SEP)] in wanted:
                    raise
                current.discard(line)
        for line in changed - current:
            status = self._parsed.pop(line, None)
            if status is not None and self._by_id.get(status.job_id) is status:
                del self._by_id[status.job_id]
                self._view.pop(status.job_id, None)
        for line, status in fresh.items():
            self._parsed[line] = self._by_id[status.job_id] = status
            if status.job_id in wanted:
                self._view[status.job_id] = status
        for job_id in wanted ^ self._wanted:
            if job_id in wanted and job_id in self._by_id:
                self._view[job_id] = self._by_id[job_id]
            else:
                self._view.pop(job_id, None)
        self._lines, self._wanted = current, wanted
        return dict(self._view)


def parse_sacct(text: str) -> dict[str, SchedulerStatus]:
    """Parse ``sacct -X -n -P -o SACCT_FIELDS`` (or ``sacct -c``) output."""
    statuses: dict[str, SchedulerStatus] = {}
    for line in text.splitlines():
        parts = line.split(_FIELD_SEP)
        if len(parts) != 4 or not parts[0]:
            continue
        job_id, state, exit_code, node = parts
        code, _, signal = exit_code.partition(":")
        statuses[job_id] = SchedulerStatus(
            job_id=job_id,
            state=map_state(state),
            raw_state=state,
            node=_null(node),
            exit_code=int(code) if code.isdigit() and signal in ("", "0") else None,
        )
    return statuses


def parse_sinfo(text: str) -> dict[str, dict[str, Any]]:
    """Parse ``sinfo -h -o '%R|%a|%l|%D|%G|%c|%m|%T'`` into partitions (first line per name wins
    for limits; node counts add up)."""
    partitions: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        parts = line.split(_FIELD_SEP)
        if len(parts) != 8:
            continue
        name, avail, timelimit, nodes, gres, cpus, memory, state = parts
        entry = partitions.setdefault(
            name,
            {"available": avail == "up", "time_limit": timelimit, "nodes": 0, "gres": gres,
             "cpus_per_node": cpus, "memory_per_node_mb": memory, "node_states": {}},
        )
        entry["nodes"] += int(nodes) if nodes.isdigit() else 0
        entry["node_states"][state] = entry["node_states"].get(state, 0) + int(nodes or 0)
    return partitions


class SlurmCLIBackend:
    """The default scheduler backend: Slurm's CLI, run through the cluster's transport."""

    def __init__(self, cluster: ClusterConfig, transport: Transport) -> None:
        self._transport = transport
        self._timeout = cluster.command_timeout
        self._accounting_disabled = False
        self._squeue = SqueueCache()

    async def _run(self, argv: list[str], *, user: str | None, stdin: bytes | None = None) -> str:
        """Run a Slurm command; an unreachable controller raises ClusterUnavailable."""
        try:
            result = await self._transport.run(
                argv, user=user, stdin=stdin, timeout=self._timeout)
        except CommandTimeout as exc:
            raise ClusterUnavailable(f"{argv[0]} timed out after {exc.timeout:g}s") from exc
        except CommandFailed as exc:
            if exc.returncode is None or _UNREACHABLE.search(exc.stderr):
                raise ClusterUnavailable(f"{argv[0]}: {exc.stderr.strip()[-300:]}") from exc
            raise
        return result.text

    async def _query(self, argv: list[str]) -> str:
        # Queries run as the gateway's own identity: squeue and sacct list every user's jobs.
        return await self._run(argv, user=None)

    async def submit(self, script: str, *, user: str, tag: str) -> str:
        if not _TAG.match(tag):
            raise ValueError(f"bad job tag {tag!r}")
        answer = await self._run(
            ["sbatch", "--parsable", f"--comment={TAG_PREFIX}{tag}"],
            user=user,
            stdin=script.encode(),
        )
        job_id = answer.strip().split(";")[0]
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch answered {answer.strip()[:200]!r}, not a job id")
        return job_id

    async def _squeue_text(self) -> str:
        return await self._query(["squeue", "-h", "-a", "-t", "all", "-o", SQUEUE_FORMAT])

    async def _accounting(self, job_ids: list[str]) -> dict[str, SchedulerStatus]:
        base = ["sacct", "-X", "-n", "-P", "-o", SACCT_FIELDS, "-j", ",".join(job_ids)]
        if not self._accounting_disabled:
            try:
                return parse_sacct(await self._query(base))
            except CommandFailed as exc:
                if "accounting storage is disabled" not in exc.stderr:
                    raise
                self._accounting_disabled = True
        return parse_sacct(await self._query([*base[:1], "-c", *base[1:]]))

    async def status_many(self, job_ids: Iterable[str]) -> dict[str, SchedulerStatus]:
        wanted = set(job_ids)
        found = self._squeue.update(await self._squeue_text(), wanted)
        gone = sorted(wanted - found.keys(), key=int)
        if gone:
            found.update(await self._accounting(gone))
        return found

    async def find_by_tag(self, tag: str, *, user: str) -> SchedulerStatus | None:
        matches = [status for status in parse_squeue(await self._squeue_text()).values()
                   if status.tag == tag and status.user == user]
        return max(matches, key=lambda s: int(s.job_id)) if matches else None

    async def cancel(self, job_id: str, *, user: str) -> None:
        if not job_id.isdigit():
            raise ValueError(f"bad Slurm job id {job_id!r}")
        try:
            await self._run(["scancel", job_id], user=user)
        except CommandFailed as exc:
            if not _ALREADY_GONE.search(exc.stderr):
                raise

    async def cluster_info(self) -> dict[str, Any]:
        text = await self._query(["sinfo", "-h", "-o", "%R|%a|%l|%D|%G|%c|%m|%T"])
        return {"partitions": parse_sinfo(text)}
