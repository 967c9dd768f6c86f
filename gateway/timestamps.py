"""The one format of the gateway's time stamps: UTC, milliseconds, ``Z``
(``2026-12-02T01:49:17.677Z``).

The store writes every time this way, and because the format has a fixed width, comparing two
stamps as strings compares the times (the poller's "changed since" queries rely on it). Slurm's
own durations (``D-HH:MM:SS``) are :mod:`gateway.units`' business, not this module's.
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_timestamp(stamp: float) -> str:
    """A POSIX time as a stamp."""
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def parse_timestamp(stamp: str) -> datetime:
    """A stamp as an aware UTC datetime."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def utcnow() -> str:
    """Now, as a stamp."""
    return format_timestamp(datetime.now(UTC).timestamp())
