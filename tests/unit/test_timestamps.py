"""The gateway's one time stamp format (gateway/timestamps.py)."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest

from gateway.jobs.retention import cutoff
from gateway.timestamps import format_timestamp, parse_timestamp


def by_datetime(stamp: float) -> str:
    """The stamp as datetime writes it: what format_timestamp must agree with."""
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@pytest.mark.parametrize("stamp", [
    0.0, 1.5, 1_796_000_000.0, 1_796_000_000.9995, 1_796_000_000.9999994,
    1_796_000_000.9999996,  # rounds up to the next second, as datetime does
    1_796_000_059.9999999,  # ... and to the next minute
    -0.5, -1.0000004, -86_400.25,
])
def test_format_timestamp_edges(stamp: float) -> None:
    assert format_timestamp(stamp) == by_datetime(stamp)


def test_format_timestamp_agrees_with_datetime_on_random_times() -> None:
    rng = random.Random(14)
    for _ in range(20_000):
        stamp = rng.uniform(-2e9, 4e9)
        assert format_timestamp(stamp) == by_datetime(stamp), stamp


def test_stamps_have_a_fixed_width_and_read_back() -> None:
    stamp = format_timestamp(1_796_000_000.25)
    assert stamp == "2026-11-30T00:53:20.250Z"
    assert parse_timestamp(stamp) == datetime(2026, 11, 30, 0, 53, 20, 250_000, tzinfo=UTC)


@pytest.mark.parametrize("stamp", [-62135596800.0, -50000000000.25, -32000000000.0])
def test_years_before_1000_have_four_digits(stamp: float) -> None:
    """Store stamps are compared as strings (``ended_at < ?``): a year written with fewer
    than four digits would sort after every real one."""
    assert format_timestamp(stamp) == by_datetime(stamp)
    assert len(format_timestamp(stamp)) == len("2026-12-03T02:00:00.000Z")


def test_pruning_with_a_very_long_retention_keeps_recent_jobs() -> None:
    """``hpcgw prune --older-than 500000`` (about 1,400 years: keep everything) must not take
    the jobs that ended yesterday: the cutoff must sort before their stamps."""
    now = time.time()
    yesterday = format_timestamp(now - 86400)
    assert yesterday > cutoff(500_000, now)
