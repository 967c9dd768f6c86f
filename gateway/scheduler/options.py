"""What a job asks of its scheduler, as typed and checked data (never text in the script).

:class:`SubmitOptions` carries every scheduler option of one submission. It is built from a
job's resolved spec (``gateway.jobs.scripts.submit_options``) and refuses, at construction, any
value that is not safe to hand to a scheduler as it is: each backend may then put the values into
its own form (sbatch argv, a slurmrestd JSON document) without quoting or escaping anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..config import IDENTIFIER, UNIX_USER
from ..errors import GatewayError

# sbatch --job-name: what gateway.jobs.scripts.slurm_job_name makes of a free-text name.
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# The gateway job id, attached to the scheduler's job so that it can be found again.
TAG = re.compile(r"^[0-9a-f]{8,32}\Z")
# Absolute paths: no '%' (Slurm expands %j, %u, ... in --output), no '\' (it turns that off),
# no whitespace, quotes or shell characters.
PATH = re.compile(r"^/[A-Za-z0-9._/+-]*\Z")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")
# Environment values travel as ``--export=ALL,NAME=value,...``: no ',' (the separator), no
# quotes (sbatch strips them), nothing that is not plain printable ASCII.
ENV_VALUE = re.compile(r"^[A-Za-z0-9._/:@+=-]*\Z")
# Variables Slurm itself reads inside the job (srun, salloc, sbatch input variables).
RESERVED_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")


class InvalidSubmitOptions(GatewayError, ValueError):
    """Submit options that are unsafe or inconsistent; ``detail`` names every failing field.

    A :class:`GatewayError`, so a job whose options are refused fails (``launch_failed``)
    instead of being retried.
    """

    type_slug = "submit-options"
    title = "Job options refused"


@dataclass(frozen=True, kw_only=True)
class SubmitOptions:
    """Every scheduler option of one job, submitted as unix user ``user``.

    Fields: ``job_name`` (:data:`JOB_NAME`), ``partition``, ``account``, ``qos``,
    ``constraint``, ``reservation`` and ``gpu_type`` (config identifiers), ``cpus`` (per task,
    >= 1; one node, one task), ``memory_mb`` (per node, >= 1, None: the scheduler's default),
    ``gpus`` (>= 0; ``gpu_type`` needs gpus >= 1), ``time_s`` (time limit in seconds, >= 60),
    ``workdir`` (the job's working directory) and ``output`` (its stdout and stderr, appended)
    (absolute :data:`PATH` paths without ``..``), ``tag`` (the gateway job id, :data:`TAG`),
    ``environment`` (added to the submitting environment; names :data:`ENV_NAME`, not
    Slurm's own prefixes, values :data:`ENV_VALUE`). Construction raises
    :class:`InvalidSubmitOptions` naming every failing field.

    The Slurm CLI backend turns these into sbatch argv (``gateway.scheduler.slurm.sbatch_argv``).
    A JSON backend (slurmrestd, ``POST /slurm/v0.0.40/job/submit``) maps them onto its job
    properties, with the script as ``script`` and ``user`` as the token's user:

    - job_name -> ``name``; partition, account, qos, reservation -> the same names
    - constraint -> ``constraints``; cpus -> ``cpus_per_task`` (``tasks``: 1, ``nodes``: "1")
    - memory_mb -> ``memory_per_node`` (MB); gpus, gpu_type -> ``tres_per_node``
      (``gres/gpu:TYPE:N``, the value of :attr:`gres` after ``gres/``)
    - time_s -> ``time_limit`` (minutes, rounded up); workdir -> ``current_working_directory``
    - output -> ``standard_output`` with ``open_mode`` "append"; tag -> ``comment``
      (``hpcgw:TAG``)
    - environment -> ``environment`` (``["NAME=value", ...]``; slurmrestd has no "ALL": the
      backend lists what the job needs, PATH and HOME included)
    """

    user: str
    job_name: str
    partition: str
    time_s: int
    cpus: int = 1
    memory_mb: int | None = None
    gpus: int = 0
    gpu_type: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    reservation: str | None = None
    workdir: str
    output: str
    tag: str
    environment: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # A read-only copy: a caller's later change to its dict can't alter what is submitted.
        object.__setattr__(self, "environment", MappingProxyType(dict(self.environment)))
        problems = _problems(self)
        if problems:
            raise InvalidSubmitOptions("refused submit options: " + "; ".join(problems))

    @property
    def gres(self) -> str | None:
        """The generic resources asked for (``gpu:N`` or ``gpu:TYPE:N``), None without GPUs."""
        if not self.gpus:
            return None
        return f"gpu:{self.gpu_type}:{self.gpus}" if self.gpu_type else f"gpu:{self.gpus}"


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.match(value) is not None


def _count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _problems(options: SubmitOptions) -> list[str]:
    """Every reason ``options`` can't be submitted as they are (empty: they can)."""
    problems: list[str] = []

    def check(name: str, ok: bool, rule: str) -> None:
        if not ok:
            problems.append(f"{name} {getattr(options, name)!r}: {rule}"[:300])

    check("user", _matches(UNIX_USER, options.user), "not a unix user name")
    check("job_name", _matches(JOB_NAME, options.job_name), f"must match {JOB_NAME.pattern}")
    check("partition", _matches(IDENTIFIER, options.partition), "not an identifier")
    for name in ("account", "qos", "constraint", "reservation", "gpu_type"):
        value = getattr(options, name)
        check(name, value is None or _matches(IDENTIFIER, value), "not an identifier")
    check("time_s", _count(options.time_s, 60), "at least 60 seconds")
    check("cpus", _count(options.cpus, 1), "a whole number >= 1")
    check("memory_mb", options.memory_mb is None or _count(options.memory_mb, 1),
          "a whole number of MB >= 1")
    check("gpus", _count(options.gpus, 0), "a whole number >= 0")
    check("gpu_type", options.gpu_type is None or options.gpus != 0, "needs gpus >= 1")
    for name in ("workdir", "output"):
        value = getattr(options, name)
        check(name, _matches(PATH, value) and ".." not in value.split("/"),
              "an absolute path of [A-Za-z0-9._/+-] without '..' components")
    check("tag", _matches(TAG, options.tag), "8-32 lowercase hex digits")
    problems += _environment_problems(options.environment)
    return problems


def _environment_problems(environment: Mapping[str, str]) -> list[str]:
    problems = []
    for name, value in environment.items():
        if not _matches(ENV_NAME, name) or name.startswith(RESERVED_ENV_PREFIXES):
            problems.append(f"environment name {name!r}: must match {ENV_NAME.pattern} and "
                            f"not start with {', '.join(RESERVED_ENV_PREFIXES)}"[:300])
        elif not _matches(ENV_VALUE, value):
            problems.append(f"environment {name}={value!r}: must match {ENV_VALUE.pattern}"[:300])
    return problems
