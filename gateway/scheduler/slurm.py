"""Slurm through its command-line tools (sbatch, squeue, sacct, scancel, sinfo).

Each poll is one ``squeue`` for every job on the cluster (its cost does not depend on how many jobs
the gateway tracks); jobs that already left the queue get one ``sacct`` for all of them. Without
slurmdbd, ``sacct`` refuses ("accounting storage is disabled") and the backend reads the jobcomp
file with ``sacct -c`` instead, remembering the choice. A submission's options travel as sbatch
arguments (:func:`sbatch_argv`), never as ``#SBATCH`` lines in the script.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..config import ClusterConfig
from ..errors import ClusterUnavailable, CommandFailed, CommandTimeout, SchedulerError
from ..transport import Transport
from ..units import format_slurm_time
from .base import SchedulerStatus
from .options import SubmitOptions
from .slurm_output import (
    SACCT_FIELDS,
    SINFO_FORMAT,
    SQUEUE_ENV,
    SQUEUE_FORMAT,
    TAG_PREFIX,
    SqueueCache,
    find_tagged,
    parse_sacct,
    parse_sinfo,
)

# stderr of Slurm commands that could not reach slurmctld: worth retrying, never a job failure.
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted"
    r"|Connection refused|Communication connection failure|slurm_load_jobs error",
    re.I,
)


_ALREADY_GONE = re.compile(r"already completing or completed|Invalid job id", re.I)


def sbatch_argv(options: SubmitOptions) -> list[str]:
    """The sbatch command line that submits a script (read from stdin) with ``options``.

    Every value is one ``--flag=value`` word of argv: :class:`SubmitOptions` only holds values
    that need no quoting, and nothing here passes through a shell. ``--parsable`` makes sbatch
    answer ``JOBID[;CLUSTER]``.
    """
    argv = [
        "sbatch", "--parsable",
        f"--job-name={options.job_name}",
        f"--partition={options.partition}",
        f"--time={format_slurm_time(options.time_s)}",
        "--nodes=1", "--ntasks=1",
        f"--cpus-per-task={options.cpus}",
    ]
    if options.memory_mb is not None:
        argv.append(f"--mem={options.memory_mb}M")
    if options.gres is not None:
        argv.append(f"--gres={options.gres}")
    for flag in ("account", "qos", "constraint", "reservation"):
        value = getattr(options, flag)
        if value is not None:
            argv.append(f"--{flag}={value}")
    argv += [
        f"--chdir={options.workdir}",
        f"--output={options.output}",
        "--open-mode=append",
        f"--comment={TAG_PREFIX}{options.tag}",
    ]
    if options.environment:
        argv.append("--export=" + ",".join(
            ["ALL", *(f"{name}={value}" for name, value in options.environment.items())]))
    return argv


def _name(argv: list[str]) -> str:
    """The Slurm command ``argv`` runs (past a leading ``env VAR=value``)."""
    return argv[2] if argv[0] == "env" else argv[0]


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
            raise ClusterUnavailable(f"{_name(argv)} timed out after {exc.timeout:g}s") from exc
        except CommandFailed as exc:
            if exc.returncode is None or _UNREACHABLE.search(exc.stderr):
                raise ClusterUnavailable(f"{_name(argv)}: {exc.stderr.strip()[-300:]}") from exc
            raise
        return result.text

    async def _query(self, argv: list[str]) -> str:
        # Queries run as the gateway's own identity: squeue and sacct list every user's jobs.
        return await self._run(argv, user=None)

    async def submit(self, script: str, options: SubmitOptions) -> str:
        answer = await self._run(sbatch_argv(options), user=options.user,
                                 stdin=script.encode())
        job_id = answer.strip().split(";")[0]
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch answered {answer.strip()[:200]!r}, not a job id")
        return job_id

    async def _squeue_text(self) -> str:
        return await self._query(["env", SQUEUE_ENV, "squeue", "-h", "-a", "-t", "all", "-o",
                                  SQUEUE_FORMAT])

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
        """As the contract says; read from ``squeue --json`` (Slurm 22.05 prints every job,
        ignoring filters), where a comment cannot spill into other jobs' records."""
        return find_tagged(await self._query(["squeue", "--json"]), tag, user)

    async def cancel(self, job_id: str, *, user: str) -> None:
        if not job_id.isdigit():
            raise ValueError(f"bad Slurm job id {job_id!r}")
        try:
            await self._run(["scancel", job_id], user=user)
        except CommandFailed as exc:
            if not _ALREADY_GONE.search(exc.stderr):
                raise

    async def cluster_info(self) -> dict[str, Any]:
        text = await self._query(["sinfo", "-h", "-o", SINFO_FORMAT])
        return {"partitions": parse_sinfo(text)}
