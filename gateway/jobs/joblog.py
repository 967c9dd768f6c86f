"""A notebook job's own output and progress, as the API shows them while it runs and after.

The log (``job.log`` in the job's directory: Slurm's output, with each cell's stdout and stderr
as the runner passes them on) is read live from the cluster until the job ends; the collector
then keeps its last ``gateway.log_tail_bytes`` in the job's data directory, with
:data:`LOG_BASE` saying where that copy starts in the whole log, so that offsets keep their
meaning. A client that follows a log asks for the bytes from an offset (a window read), and
gets back where they start and where the next read starts: nothing is sent twice.

Each live read starts a process or an SSH channel on the cluster's side, so a user has at most
:data:`MAX_LIVE_READS` of them under way at once (:class:`LiveReads`); past that, 429.

Progress is what the runner keeps in ``progress.json``: ``{"done": N, "total": M}`` code cells.
It is read on demand (at most every :data:`PROGRESS_EVERY` seconds per job) and kept in the
job's row, so lists show the last one seen; the collector reads the final one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import untrusted
from ..errors import GatewayError, TooManyRequests
from ..transport import RemoteFileMissing, RemoteFileRefused, Transport
from .limits import PerUserCount

log = logging.getLogger(__name__)

LOG_NAME = "job.log"
# Beside the collected job.log: {"offset": N}, where its first byte was in the whole log.
LOG_BASE = "job.log.json"
PROGRESS_NAME = "progress.json"
PROGRESS_LIMIT = 4096
PROGRESS_EVERY = 2.0
MAX_LIVE_READS = 8  # per user at once (a follower reads one window at a time)


@dataclass(frozen=True)
class LogChunk:
    """Bytes of a job's log: ``data`` starts at byte ``start`` of the whole log, and a reader
    that follows it asks next from ``next_offset``. ``start`` is None for a tail read (no
    offset asked), whose position is not known."""

    data: bytes
    start: int | None

    @property
    def next_offset(self) -> int | None:
        return None if self.start is None else self.start + len(self.data)


class LiveReads(PerUserCount):
    """How many live log reads each gateway user has under way."""

    def __init__(self, limit: int = MAX_LIVE_READS) -> None:
        super().__init__(limit)

    @contextlib.contextmanager
    def reading(self, user_id: int) -> Iterator[None]:
        """One more read of ``user_id``'s for as long as the block runs; at the limit,
        :class:`TooManyRequests` (429, ``Retry-After: 1``: the user's own reads end soon)."""
        if not self.take(user_id):
            raise TooManyRequests(f"at most {self.limit} live log reads at once per user",
                                  limit="live_log_reads", value=self.limit, retry_after=1)
        try:
            yield
        finally:
            self.give_back(user_id)


async def live_log(transport: Transport, job: dict[str, Any], limit: int,
                   offset: int | None) -> LogChunk:
    """The running job's log on the cluster: its last ``limit`` bytes, or ``limit`` bytes from
    ``offset``; empty before Slurm made it."""
    path = f"{job['workdir']}/{LOG_NAME}"
    try:
        data = await transport.read_file(path, user=job["unix_user"], limit=limit,
                                         tail=offset is None, offset=offset)
    except RemoteFileMissing:
        data = b""
    return LogChunk(data, offset if offset is not None else None)


def collected_log(job_dir: Path, limit: int, offset: int | None) -> LogChunk:
    """The ended job's collected log: the whole copy (its last ``limit`` bytes), or ``limit``
    bytes from ``offset``; an offset before the copy's start gets the copy from its start (the
    chunk's ``start`` says so), one past its end nothing."""
    path = job_dir / LOG_NAME
    if not path.exists():
        return LogChunk(b"", offset if offset is not None else None)
    base = log_base(job_dir)
    with path.open("rb") as copy:
        size = os.fstat(copy.fileno()).st_size
        if offset is None:
            copy.seek(max(0, size - limit))
            return LogChunk(copy.read(limit), None)
        start = max(offset, base)
        if start - base >= size:  # (seeking that far may fail: EINVAL past the largest file)
            return LogChunk(b"", start)
        copy.seek(start - base)
        return LogChunk(copy.read(limit), start)


def log_base(job_dir: Path) -> int:
    """Where the collected copy starts in the whole log (0 when it is all of it)."""
    try:
        offset = json.loads((job_dir / LOG_BASE).read_text())["offset"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return offset if isinstance(offset, int) and offset >= 0 else 0


async def log_size(transport: Transport, job: dict[str, Any]) -> int | None:
    """The size of the job's log on the cluster, or None when it can't be told."""
    try:
        result = await transport.run(["stat", "-L", "-c", "%s", "--",
                                      f"{job['workdir']}/{LOG_NAME}"],
                                     user=job["unix_user"], check=False)
    except GatewayError:  # unreachable, timed out: the log itself was collected
        return None
    text = result.stdout.decode(errors="replace").strip()
    return int(text) if result.returncode == 0 and text.isdigit() and len(text) < 20 else None


def parse_progress(raw: bytes) -> dict[str, int] | None:
    """``{"done": N, "total": M}`` from the runner's file (0 <= N <= M), else None."""
    try:
        value = untrusted.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"done", "total"}:
        return None
    done, total = value["done"], value["total"]
    if not all(type(n) is int for n in (done, total)) or not 0 <= done <= total < 10**6:
        return None
    return {"done": done, "total": total}


async def read_progress(transport: Transport, job: dict[str, Any]) -> dict[str, int] | None:
    """The runner's progress of ``job`` on the cluster; None before it wrote one, or when what
    is there is not a progress record (refused files are logged)."""
    try:
        raw = await transport.read_file(f"{job['workdir']}/{PROGRESS_NAME}",
                                        user=job["unix_user"], limit=PROGRESS_LIMIT)
    except RemoteFileMissing:
        return None
    except RemoteFileRefused as exc:
        log.warning("progress of job %s not read: %s", job["id"], exc.detail)
        return None
    return parse_progress(raw)
