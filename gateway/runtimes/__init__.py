"""Container runtimes: how a job's command is run on its node (the host's own environment, or
inside an image), loaded by name through the ``hpcgw.runtimes`` entry point group."""

from .base import ContainerRuntime, load_runtime

__all__ = ["ContainerRuntime", "load_runtime"]
