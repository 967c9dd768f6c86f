"""Slurm time and memory notations (gateway.units)."""

from __future__ import annotations

import pytest

from gateway.units import format_slurm_time, parse_memory_mb, parse_slurm_time


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30 * 60),                           # MM
    ("0", 0),
    ("90", 90 * 60),                           # minutes may exceed 59
    ("5:30", 5 * 60 + 30),                     # MM:SS
    ("01:00:00", 3600),                        # HH:MM:SS
    ("1:02:03", 3723),
    ("48:00:00", 48 * 3600),
    ("2-12", 2 * 86400 + 12 * 3600),           # D-HH
    ("1-02:30", 86400 + 2 * 3600 + 30 * 60),   # D-HH:MM
    ("1-00:00:01", 86401),                     # D-HH:MM:SS
    ("0-00:01:00", 60),
    ("  10:00  ", 600),                        # surrounding blanks are ignored
])
def test_parse_slurm_time_forms(text: str, seconds: int) -> None:
    assert parse_slurm_time(text) == seconds


@pytest.mark.parametrize("text", [
    "", " ", "UNLIMITED", "infinite", "1h", "1:2:3:4", "1-2:3:4:5", "-1", "1-", "-10",
    "1:", ":30", "1::2", "1.5", "1 - 2", "1-2-3", "10:00\n#SBATCH --x", "one",
])
def test_parse_slurm_time_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a Slurm time"):
        parse_slurm_time(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0-00:00:00"),
    (59, "0-00:00:59"),
    (3600, "0-01:00:00"),
    (3723, "0-01:02:03"),
    (86400 + 3600 + 61, "1-01:01:01"),
    (12 * 86400, "12-00:00:00"),
    (-5, "0-00:00:00"),
])
def test_format_slurm_time(seconds: int, text: str) -> None:
    assert format_slurm_time(seconds) == text


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 3599, 3600, 86399, 86400, 200_000])
def test_format_then_parse_round_trips(seconds: int) -> None:
    assert parse_slurm_time(format_slurm_time(seconds)) == seconds


@pytest.mark.parametrize(("text", "megabytes"), [
    ("512M", 512),
    ("512m", 512),
    ("4G", 4096),
    ("4GB", 4096),
    ("1024", 1024),       # no unit: megabytes, as in Slurm
    ("1T", 1024 * 1024),
    ("2048K", 2),
    ("1024K", 1),
    (" 8G ", 8192),
])
def test_parse_memory_mb(text: str, megabytes: int) -> None:
    assert parse_memory_mb(text) == megabytes


@pytest.mark.parametrize("text", [
    "", "G", "4X", "4 G", "-4G", "4.5G", "0", "0G", "1K", "lots", "4G\n#SBATCH", "4GiB",
])
def test_parse_memory_mb_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_memory_mb(text)


@pytest.mark.parametrize("text", ["\u0661\u0660", "\uff11\uff10:\uff10\uff10", "1-\u0660\u0662"])
def test_parse_slurm_time_accepts_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError):
        parse_slurm_time(text)


def test_parse_memory_accepts_ascii_digits_only() -> None:
    with pytest.raises(ValueError):
        parse_memory_mb("\u0664G")  # Arabic-Indic four
