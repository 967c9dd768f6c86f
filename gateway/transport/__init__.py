"""Transports: how the gateway runs commands and moves files on a cluster (local or SSH)."""

from .base import (
    CommandResult,
    NotARegularFile,
    RemoteFileMissing,
    RemoteFileRefused,
    RemoteFileTooLarge,
    Transport,
)

__all__ = ["CommandResult", "NotARegularFile", "RemoteFileMissing", "RemoteFileRefused",
           "RemoteFileTooLarge", "Transport"]
