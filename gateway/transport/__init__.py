"""Transports: how the gateway runs commands, moves files and reaches ports on a cluster.

One class per way in (``local``: processes on this machine; ``ssh``: a login host over asyncssh),
loaded by name through the ``hpcgw.transports`` entry point group (a cluster's ``transport``
key), so a site can add one without touching the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..plugins import load_plugin
from .base import (
    CommandOutputTooLarge,
    CommandResult,
    NotARegularFile,
    RemoteFileMissing,
    RemoteFileRefused,
    RemoteFileTooLarge,
    Transport,
)

if TYPE_CHECKING:
    from ..config import ClusterConfig

__all__ = ["CommandOutputTooLarge", "CommandResult", "NotARegularFile", "RemoteFileMissing",
           "RemoteFileRefused", "RemoteFileTooLarge", "Transport", "load_transport"]


def load_transport(cluster: ClusterConfig) -> Transport:
    """The transport named by ``cluster.transport``, from the ``hpcgw.transports`` group."""
    transport: Transport = load_plugin(
        "hpcgw.transports", cluster.transport, "transport", cluster.name)(cluster)
    return transport
