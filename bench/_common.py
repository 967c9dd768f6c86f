"""Shared helpers of the benchmarks: the dev cluster's config, a temp config copy, a served
gateway, OpenSSH options for the dev login sshd, statistics."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/x.py` from anywhere
    sys.path.insert(0, str(REPO))

DEV_CONFIG = Path(os.environ.get("HPCGW_DEV_CONFIG", "/var/lib/hpcgw-dev/gateway.toml"))
DEV_SSH_CONFIG = DEV_CONFIG.with_name("gateway-ssh.toml")  # the same cluster, transport ssh
DEV_DIR = Path(os.environ.get("HPCGW_DEV_DIR", "/var/lib/hpcgw-dev"))
DEV_SSH_PORT = "2222"
HPCGW = str(REPO / ".venv" / "bin" / "hpcgw")


def dev_ssh_options(user: str = "alice", cipher: str | None = None) -> list[str]:
    """OpenSSH client options (for ssh and scp alike) that log in to the dev cluster's login
    sshd as ``user`` with the key and pinned host key that scripts/dev-cluster made, never
    asking anything; the port is left to the caller (``-p`` for ssh, ``-P`` for scp)."""
    ssh = DEV_DIR / "ssh"
    return [*(["-c", cipher] if cipher else []), "-i", str(ssh / "keys" / f"{user}_ed25519"),
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={ssh / 'known_hosts'}",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-F", "/dev/null"]


def dev_config_text(source: Path = DEV_CONFIG) -> str:
    if not source.exists():
        sys.exit(f"no dev cluster config at {source}: run `scripts/dev-cluster up` first")
    return source.read_text()


def config_copy(target: Path, data_dir: Path, source: Path = DEV_CONFIG) -> Path:
    """A copy of the dev cluster's gateway config (``source``: DEV_CONFIG or DEV_SSH_CONFIG)
    whose data directory is ``data_dir``."""
    text = re.sub(r'(?m)^data_dir = ".*"$', f'data_dir = "{data_dir}"', dev_config_text(source))
    tomllib.loads(text)
    target.write_text(text)
    return target


def load_config_with_data_dir(data_dir: Path, source: Path = DEV_CONFIG) -> Any:
    from gateway.config import parse_config

    raw = tomllib.loads(dev_config_text(source))
    raw["gateway"]["data_dir"] = str(data_dir)
    return parse_config(raw)


@dataclass(frozen=True)
class ServedGateway:
    url: str
    token: str  # of the gateway user bench-<unix user>
    pid: int
    log_path: Path


@contextlib.contextmanager
def served_gateway(home: Path, source: Path = DEV_CONFIG,
                   unix_user: str = "alice") -> Iterator[ServedGateway]:
    """``hpcgw serve --port 0`` on a copy of ``source`` with its data under ``home``, and one
    gateway user ``bench-<unix_user>``; yields once it listens. On exit it is stopped (SIGTERM,
    killed after 30 s) and the number of ERROR lines in its log, if any, is printed."""
    config = config_copy(home / "gateway.toml", home / "data", source)
    added = subprocess.run([HPCGW, "--config", str(config), "user", "add", f"bench-{unix_user}",
                            "--unix-user", unix_user], capture_output=True, text=True, check=True)
    log_path = home / "gateway.log"
    with log_path.open("w") as log_file:
        server = subprocess.Popen([HPCGW, "--config", str(config), "serve", "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=REPO)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r"serving on (http://\S+)", line)
        if not match:
            raise SystemExit(f"hpcgw serve did not start: {line!r}\n"
                             f"{log_path.read_text()[-2000:]}")
        yield ServedGateway(match[1], added.stdout.strip().splitlines()[-1], server.pid,
                            log_path)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        errors = [ln for ln in log_path.read_text().splitlines() if " ERROR " in ln]
        if errors:
            print(f"gateway log: {len(errors)} ERROR lines, first: {errors[0][:300]}")


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
