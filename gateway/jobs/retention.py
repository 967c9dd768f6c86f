"""Artifact retention: remove the gateway's copies of old jobs' files, keep the jobs.

A job's artifacts are its directory ``data_dir/jobs/<id>`` (the uploaded notebook, the executed
notebook, the log). Once a job has been terminal for longer than
``gateway.artifact_retention_days`` that directory is removed; the store records
``artifacts_removed_at`` and clears ``has_notebook``, and never touches ``state``, so the job
stays listed as it ended and ``GET …/notebook`` answers 410 Gone. ``hpcgw artifacts prune`` does
it on demand (:func:`prune`); the server does it once a day (:func:`prune_daily`).

Only a real directory that is a direct child of ``data_dir/jobs`` is ever removed: the path is
checked with ``resolve()`` + ``is_relative_to()``, a symlink (or any non-directory) in its place
is refused and left alone, and the removal itself (:func:`shutil.rmtree`, which on Linux works
on file descriptors) never follows a symlink inside it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..store import Store
from ..timestamps import format_timestamp
from .context import JobContext

log = logging.getLogger(__name__)

DAY_S = 86400.0
FIRST_RUN_DELAY_S = 60.0  # the server's first pass, once startup work has settled
BATCH = 200  # jobs removed (in a thread) and then recorded (in one transaction) at a time


@dataclass
class PruneReport:
    """What one pass removed: the jobs whose artifacts are gone now (a job whose directory
    was already missing counts, with 0 bytes), the bytes of the regular files removed, and the
    jobs refused (``"id: why"``), which stay unrecorded so that an admin can look."""

    jobs: list[str] = field(default_factory=list)
    bytes: int = 0
    refused: list[str] = field(default_factory=list)

    def add(self, other: PruneReport) -> None:
        self.jobs += other.jobs
        self.bytes += other.bytes
        self.refused += other.refused


def cutoff(older_than_days: float, now: float | None = None) -> str:
    """The store stamp before which a job must have ended to be pruned."""
    return format_timestamp((time.time() if now is None else now) - older_than_days * DAY_S)


def _tree_bytes(directory: Path) -> int:
    """The size of the regular files under ``directory`` (symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(directory, followlinks=False):
        for name in files:
            with_stat = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(with_stat.st_mode):
                total += with_stat.st_size
    return total


def remove_job_dirs(data_dir: Path, job_ids: Sequence[str]) -> PruneReport:
    """Remove ``data_dir/jobs/<id>`` for each id (filesystem only, no store access, so it
    may run in a thread). A missing directory counts as removed; anything that is not a real
    directory directly under ``data_dir/jobs`` is refused and left as it is."""
    report = PruneReport()
    root = (data_dir / "jobs").resolve()
    for job_id in job_ids:
        path = root / job_id
        if path.parent != root or not path.resolve().is_relative_to(root):
            report.refused.append(f"{job_id}: not a directory under {root}")
            continue
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            report.jobs.append(job_id)
            continue
        if not stat.S_ISDIR(mode):  # a symlink, or a file: never followed nor removed
            report.refused.append(f"{job_id}: {path} is not a directory (left alone)")
            continue
        try:
            size = _tree_bytes(path)
            shutil.rmtree(path)
        except OSError as exc:
            if os.path.lexists(path):  # else another pass removed it meanwhile: done
                report.refused.append(f"{job_id}: {exc}")
                continue
            size = 0
        report.jobs.append(job_id)
        report.bytes += size
    return report


def _record(store: Store, report: PruneReport) -> PruneReport:
    store.mark_artifacts_removed(report.jobs)
    for refused in report.refused:
        log.warning("artifacts not removed: %s", refused)
    return report


def prune(store: Store, data_dir: Path, older_than_days: float,
          now: float | None = None) -> PruneReport:
    """Remove the artifacts of every job that ended more than ``older_than_days`` ago (0:
    every ended job) and record it in the store. Files are removed before the store says so:
    a crash in between leaves jobs that the next pass records with 0 bytes, never files that
    no pass would look at again."""
    report = PruneReport()
    job_ids = store.jobs_to_prune(cutoff(older_than_days, now))
    for start in range(0, len(job_ids), BATCH):
        report.add(_record(store, remove_job_dirs(data_dir, job_ids[start:start + BATCH])))
    return report


async def prune_in_background(store: Store, data_dir: Path,
                              older_than_days: float) -> PruneReport:
    """:func:`prune` for the server: the removals run in a thread, the store is used only
    from the event loop's thread."""
    report = PruneReport()
    job_ids = store.jobs_to_prune(cutoff(older_than_days))
    for start in range(0, len(job_ids), BATCH):
        removed = await asyncio.to_thread(remove_job_dirs, data_dir,
                                          job_ids[start:start + BATCH])
        report.add(_record(store, removed))
    return report


async def prune_daily(ctx: JobContext, first_delay: float = FIRST_RUN_DELAY_S) -> None:
    """The server's retention task: a pass ``first_delay`` seconds after start, then one a
    day. Nothing is pruned while ``artifact_retention_days`` is 0 (keep for ever). A failed
    pass is logged and the next one runs a day later; the task ends only when cancelled."""
    await asyncio.sleep(first_delay)
    while True:
        days = ctx.config.gateway.artifact_retention_days
        if days > 0:
            try:
                report = await prune_in_background(ctx.store, ctx.data_dir, days)
            except Exception:
                log.exception("artifact retention pass failed")
            else:
                if report.jobs or report.refused:
                    log.info("artifact retention: removed the artifacts of %d job(s), %d "
                             "bytes; %d refused", len(report.jobs), report.bytes,
                             len(report.refused))
        await asyncio.sleep(DAY_S)
