"""Transports: how the gateway runs commands, moves files and reaches ports on a cluster.

One class per way in (``local``: processes on this machine; ``ssh``: a login host over asyncssh),
loaded by name through the ``hpcgw.transports`` entry point group (a cluster's ``transport``
key), so a site can add one without touching the core.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import (
    CommandResult,
    NotARegularFile,
    RemoteFileMissing,
    RemoteFileRefused,
    RemoteFileTooLarge,
    Transport,
)

if TYPE_CHECKING:
    from ..config import ClusterConfig

__all__ = ["CommandResult", "NotARegularFile", "RemoteFileMissing", "RemoteFileRefused",
           "RemoteFileTooLarge", "Transport", "load_transport"]


def load_transport(cluster: ClusterConfig) -> Transport:
    """The transport named by ``cluster.transport``, from the ``hpcgw.transports`` group."""
    for entry in entry_points(group="hpcgw.transports"):
        if entry.name == cluster.transport:
            transport: Transport = entry.load()(cluster)
            return transport
    raise ConfigError(f"cluster {cluster.name}: unknown transport {cluster.transport!r}")
