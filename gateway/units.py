"""Slurm's time and memory notations, parsed once and rendered once."""

from __future__ import annotations

import re

_TIME = re.compile(
    r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$",
    re.ASCII,
)
_MEMORY = re.compile(r"^(?P<n>\d+)(?P<unit>[KMGT]?)B?$", re.IGNORECASE | re.ASCII)
_MEMORY_FACTOR_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_slurm_time(text: str) -> int:
    """Seconds in a Slurm time limit.

    Accepts Slurm's forms: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.
    Raises ValueError for anything else, including ``UNLIMITED`` (callers map that explicitly).
    """
    match = _TIME.match(text.strip())
    if not match:
        raise ValueError(f"not a Slurm time: {text!r}")
    g = match.groupdict()
    if g["days"] is not None:
        return (
            int(g["days"]) * 86400
            + int(g["dh"]) * 3600
            + int(g["dm"] or 0) * 60
            + int(g["ds"] or 0)
        )
    parts = [int(p) for p in (g["a"], g["b"], g["c"]) if p is not None]
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def format_slurm_time(seconds: int) -> str:
    """``D-HH:MM:SS`` for sbatch's ``--time`` (always unambiguous)."""
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def parse_memory_mb(text: str) -> int:
    """Megabytes in a Slurm memory size (``4G``, ``512M``, ``1024`` = MB, ``1T``); at least 1."""
    match = _MEMORY.match(text.strip())
    if not match:
        raise ValueError(f"not a memory size: {text!r}")
    megabytes = int(match["n"]) * _MEMORY_FACTOR_MB[match["unit"].upper()]
    if megabytes < 1:
        raise ValueError(f"memory size below 1M: {text!r}")
    return int(megabytes)
