"""The container runtime contract: the hook between a job script and the command it runs.

A job template builds its command's argv (``[python, "-I", "runner.py", ...]``) and hands it to
the job's runtime through the ``in_runtime`` filter (:mod:`gateway.templates`), with the
:class:`ContainerJob` it runs for; the runtime returns the argv the script actually executes
(for a container runtime: a clean environment, its launcher, its own options and the image,
then the command), which the template renders quoted word by word. Runtimes load through the
``hpcgw.runtimes`` entry point group, so a site can add one; the built-in ones are ``none``
(:class:`gateway.runtimes.none.HostRuntime`), ``apptainer`` and ``charliecloud``.

A container starts from an empty environment. It gets the job's own variables
(:attr:`ContainerJob.env`) and, from the batch script's environment, the names
:data:`PASSED_VARIABLES` matches (Slurm's variables and the GPU selection): the script collects
those into the bash array ``hpcgw_env`` (:data:`JOB_ENVIRONMENT`), each element
``<environment_prefix>NAME=value``, and the runtime puts that array where its launcher reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..plugins import load_plugin
from ..templates import ShellArray, ShellVariable, Word

# Variables of the batch script's environment a container also gets, as bash `case` patterns.
PASSED_VARIABLES = ("SLURM_*", "SLURMD_NODENAME", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
                    "ROCR_VISIBLE_DEVICES")
# The word that stands for those variables in a runtime's argv.
JOB_ENVIRONMENT = ShellArray("hpcgw_env")
# PATH inside a container: the image's Python's directory first (its jupyter, pip), then the
# usual ones.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ContainerJob:
    """What a runtime needs to know about the job whose command it runs.

    ``image`` is where the image is (a file, a directory, or a registry reference such as
    ``docker://...``), empty for the host's environment. ``workdir`` is the job's directory: the
    command starts there, and it (with the inputs and mounts inside it) is at the same path in
    the container; ``binds`` are further host directories that must be at the same path (the
    image's config). ``gpus`` is how many GPUs the job has. ``env`` holds the variables the
    command gets, name and value (text, or a variable of the script), in order.
    """

    image: str
    workdir: str
    binds: tuple[str, ...] = ()
    gpus: int = 0
    env: tuple[tuple[str, Word], ...] = ()


class ContainerRuntime(Protocol):
    """Turns a job's command into the argv its script executes."""

    @property
    def name(self) -> str:
        """The runtime's entry point name (``none``, ``apptainer``, ...)."""
        ...

    @property
    def program(self) -> str | None:
        """The program the node must have for this runtime (checked by the script before it
        runs the command, which fails ``launch_failed`` saying so); None for none."""
        ...

    @property
    def environment_prefix(self) -> str | None:
        """What the script puts before each ``NAME=value`` it passes from its own environment
        (:data:`PASSED_VARIABLES`) into :data:`JOB_ENVIRONMENT`; None: the command keeps the
        script's whole environment and the array is not filled."""
        ...

    def exec_argv(self, job: ContainerJob, argv: Sequence[Word]) -> list[Word]:
        """The argv that runs ``argv`` for ``job`` in this runtime; at least one word.

        Words are text, or :class:`gateway.templates.ShellVariable` references the script
        expands when it runs (or :data:`JOB_ENVIRONMENT`); a runtime passes the command's words
        through as they are (it may add its own, which are quoted like every other word). It
        must not raise for any command: what a job may run was decided before the script was
        rendered.
        """
        ...


def assignment(prefix: str, name: str, value: Word) -> Word:
    """One ``PREFIXNAME=value`` word (for ``env`` or a runtime's option), keeping a variable
    of the script a variable: ``("", "HOME", $HOME)`` is the word ``HOME="$HOME"``."""
    if isinstance(value, ShellVariable):
        return ShellVariable(value.name, f"{prefix}{name}={value.prefix}")
    if isinstance(value, ShellArray):
        raise ValueError(f"{name}: an array is not one value")
    return f"{prefix}{name}={value}"


def load_runtime(name: str, *, cluster: str) -> ContainerRuntime:
    """An instance of the runtime entry point ``name`` of ``hpcgw.runtimes`` names (built with
    no arguments); :class:`gateway.errors.ConfigError` naming ``cluster`` if none is installed."""
    runtime: ContainerRuntime = load_plugin("hpcgw.runtimes", name, "container runtime",
                                            cluster)()
    return runtime
