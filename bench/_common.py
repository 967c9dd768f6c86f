"""Shared helpers of the benchmarks: the dev cluster's config, a temp config copy, statistics."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/x.py` from anywhere
    sys.path.insert(0, str(REPO))

DEV_CONFIG = Path(os.environ.get("HPCGW_DEV_CONFIG", "/var/lib/hpcgw-dev/gateway.toml"))


def dev_config_text() -> str:
    if not DEV_CONFIG.exists():
        sys.exit(f"no dev cluster config at {DEV_CONFIG}: run `scripts/dev-cluster up` first")
    return DEV_CONFIG.read_text()


def config_copy(target: Path, data_dir: Path) -> Path:
    """A copy of the dev cluster's gateway config whose data directory is ``data_dir``."""
    text = re.sub(r'(?m)^data_dir = ".*"$', f'data_dir = "{data_dir}"', dev_config_text())
    tomllib.loads(text)
    target.write_text(text)
    return target


def load_config_with_data_dir(data_dir: Path) -> Any:
    from gateway.config import parse_config

    raw = tomllib.loads(dev_config_text())
    raw["gateway"]["data_dir"] = str(data_dir)
    return parse_config(raw)


def wall_median_ms(argv: Sequence[str], runs: int) -> tuple[float, list[str]]:
    """Median wall time of ``argv`` over ``runs`` runs (ms) and the stdout of each run."""
    times, outputs = [], []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(list(argv), capture_output=True, text=True, check=True)
        times.append((time.perf_counter() - started) * 1000)
        outputs.append(done.stdout)
    return statistics.median(times), outputs


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
