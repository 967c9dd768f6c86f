"""The one format of the gateway's time stamps: UTC, milliseconds, ``Z``
(``2026-12-02T01:49:17.677Z``).

The store writes every time this way, and because the format has a fixed width, comparing two
stamps as strings compares the times (the poller's "changed since" queries rely on it). Slurm's
own durations (``D-HH:MM:SS``) are :mod:`gateway.units`' business, not this module's.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import lru_cache


def format_timestamp(stamp: float) -> str:
    """A POSIX time as a stamp: the milliseconds of ``stamp`` rounded to microseconds first,
    as ``datetime.fromtimestamp`` does (the lab proxy stamps every request: the date and time
    of day are worked out once per second)."""
    fraction, whole = math.modf(stamp)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1, micro + 1_000_000
    return f"{_second(int(whole))}.{micro // 1000:03d}Z"


@lru_cache(maxsize=16)
def _second(whole: int) -> str:
    # isoformat, not strftime: %Y does not pad years before 1000 to four digits on Linux,
    # and a shorter year would sort after every real one.
    return datetime.fromtimestamp(whole, UTC).isoformat(timespec="seconds")[:19]


def parse_timestamp(stamp: str) -> datetime:
    """A stamp as an aware UTC datetime."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def utcnow() -> str:
    """Now, as a stamp."""
    return format_timestamp(datetime.now(UTC).timestamp())
