"""The ``charliecloud`` runtime: ``ch-run`` runs the command in a directory image (or a
SquashFS file) as the job's own user, in a user namespace, with no daemon and no setuid helper.

The argv is ``env -i <the job's variables> ch-run --bind=DIR ... --cd=WORKDIR IMAGE -- cmd``:
``env -i`` gives ``ch-run`` (which passes its environment on) nothing of the host's but what the
job needs; ``$USER`` is among it, which ch-run itself requires. A bind target must already exist
in a read-only image (ch-run 0.31, Debian 12's, cannot create one), so each path that must be at
the same path inside is reached by binding its top-level directory (``/home`` for
``/home/alice/.hpcgw/jobs/ID``): an image needs that directory, which every Debian-based image
has for ``/home`` and the standard recipe adds for ``/srv`` and ``/scratch``. Paths under
``/tmp`` need no bind: ch-run shares the host's ``/tmp``. GPUs need nothing per job (devices
are not hidden); an image that uses them carries the driver's libraries (``ch-fromhost --nvidia``
when it is built).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..templates import Word
from .base import JOB_ENVIRONMENT, ContainerJob, assignment

# Shared with the host by ch-run itself; binding it (or below it) again fails.
HOST_TMP = "/tmp"  # noqa: S108 - the container's view of the host's /tmp, not a file we write


def top_directories(paths: Sequence[str]) -> list[str]:
    """The distinct top-level directories of ``paths`` (absolute), in order, without ``/tmp``:
    ``["/home/a/x", "/scratch/y", "/home/b"]`` gives ``["/home", "/scratch"]``."""
    tops: list[str] = []
    for path in paths:
        top = "/" + path.strip("/").split("/", 1)[0]
        if top != HOST_TMP and top != "/" and top not in tops:
            tops.append(top)
    return tops


class CharliecloudRuntime:
    """``ch-run`` with a clean environment, the job's directories bound, started in its
    work directory."""

    name = "charliecloud"
    program = "ch-run"
    environment_prefix = ""

    def exec_argv(self, job: ContainerJob, argv: Sequence[Word]) -> list[Word]:
        environment = [assignment("", name, value) for name, value in job.env]
        binds = [f"--bind={top}" for top in top_directories([job.workdir, *job.binds])]
        return ["env", "-i", JOB_ENVIRONMENT, *environment, "ch-run", *binds,
                f"--cd={job.workdir}", job.image, "--", *argv]
