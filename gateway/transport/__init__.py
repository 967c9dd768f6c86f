"""Transports: how the gateway runs commands and moves files on a cluster (local or SSH)."""

from .base import CommandResult, RemoteFileMissing, Transport

__all__ = ["CommandResult", "RemoteFileMissing", "Transport"]
