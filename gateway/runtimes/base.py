"""The container runtime contract: the hook between a job script and the command it runs.

A job template builds its command's argv (``[python, "-I", "runner.py", ...]``) and hands it to
the job's runtime through the ``in_runtime`` filter (:mod:`gateway.templates`); the runtime
returns the argv the script actually executes (for a container runtime: its launcher, its own
options and the image, then the command), which the template renders quoted word by word.
Runtimes load through the ``hpcgw.runtimes`` entry point group, so a site can add one; the
built-in ``none`` is :class:`gateway.runtimes.none.HostRuntime`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..plugins import load_plugin
from ..templates import Word


class ContainerRuntime(Protocol):
    """Turns a job's command into the argv its script executes."""

    @property
    def name(self) -> str:
        """The runtime's entry point name (``none``, ``apptainer``, ...)."""
        ...

    def exec_argv(self, argv: Sequence[Word]) -> list[Word]:
        """The argv that runs ``argv`` in this runtime; at least one word.

        Words are text, or :class:`gateway.templates.ShellVariable` references the script
        expands when it runs; a runtime passes the command's words through as they are (it may
        add its own, which are quoted like every other word). It must not raise for any
        command: what a job may run was decided before the script was rendered.
        """
        ...


def load_runtime(name: str, *, cluster: str) -> ContainerRuntime:
    """An instance of the runtime entry point ``name`` of ``hpcgw.runtimes`` names (built with
    no arguments); :class:`gateway.errors.ConfigError` naming ``cluster`` if none is installed."""
    runtime: ContainerRuntime = load_plugin("hpcgw.runtimes", name, "container runtime",
                                            cluster)()
    return runtime
