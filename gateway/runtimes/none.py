"""The ``none`` runtime: the command runs in the host's own environment, as it is."""

from __future__ import annotations

from collections.abc import Sequence

from ..templates import Word
from .base import ContainerJob


class HostRuntime:
    """No container: the argv to execute is the command's own argv, unchanged, in the batch
    script's environment (so the job's variables and binds are already there)."""

    name = "none"
    program = None
    environment_prefix = None

    def exec_argv(self, job: ContainerJob, argv: Sequence[Word]) -> list[Word]:
        """``argv`` as a new list, word for word."""
        return list(argv)
