"""The ``apptainer`` runtime (the production default): ``apptainer exec`` runs the command in a
SIF image, a sandbox directory, or an image pulled from a registry (``docker://...``) on the
node into the user's own cache (``~/.apptainer/cache``).

The argv is ``env -i HOME USER PATH <APPTAINERENV_ variables> apptainer exec --cleanenv [--nv]
--bind=WORKDIR ... --pwd=WORKDIR IMAGE cmd``. ``exec``, never ``instance start``: nothing
outlives the job. ``--cleanenv`` keeps the host's environment out; the job's variables go in as
``APPTAINERENV_NAME`` (not ``--env``, which splits a value such as ``CUDA_VISIBLE_DEVICES=0,1``
at its comma), except ``HOME`` and ``USER``, which Apptainer sets itself (and refuses from the
environment) to the user's home, bound in by default. The unprefixed ``HOME``, ``USER`` and
``PATH`` are for ``apptainer`` itself (its cache, its helpers). Binds are made at the same
path; Apptainer creates their mount points. ``--nv`` passes NVIDIA GPUs through when the job
has any.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..templates import ShellVariable, Word
from .base import JOB_ENVIRONMENT, ContainerJob, assignment

PREFIX = "APPTAINERENV_"
# Set inside by Apptainer itself; it refuses them as APPTAINERENV_ variables.
SET_BY_APPTAINER = frozenset({"HOME", "USER"})


class ApptainerRuntime:
    """``apptainer exec --cleanenv`` with the job's variables, binds and GPUs."""

    name = "apptainer"
    program = "apptainer"
    environment_prefix = PREFIX

    def exec_argv(self, job: ContainerJob, argv: Sequence[Word]) -> list[Word]:
        own = [assignment("", name, ShellVariable(name)) for name in ("HOME", "USER", "PATH")]
        environment = [assignment(PREFIX, name, value) for name, value in job.env
                       if name not in SET_BY_APPTAINER]
        options: list[Word] = ["--cleanenv", *(["--nv"] if job.gpus else [])]
        options += [f"--bind={path}" for path in dict.fromkeys([job.workdir, *job.binds])]
        return ["env", "-i", *own, JOB_ENVIRONMENT, *environment, "apptainer", "exec",
                *options, f"--pwd={job.workdir}", job.image, *argv]
