"""SSH file transfer: hpcgw's SSH transport against OpenSSH scp, same cipher, same run.

design.md §5: staging over SSH >= 80% of scp's MB/s with the same cipher.

Moves one file of MB MiB (default 1024; $HPCGW_BENCH_MB also sets it) to and from the dev
cluster's login sshd (127.0.0.1:2222) as alice, with aes128-gcm@openssh.com on both sides, ROUNDS
times. In each round scp and hpcgw alternate (which goes first flips every round; each transfer
starts after an untimed ``sync``, else the second of a pair pays for writing back the first's
gigabyte and, measured, loses 20-30%):
- upload: ``scp local remote`` vs ``SSHTransport.put_files`` (mkdir, then tar -x fed piece by
  piece over one exec channel), the data already in memory;
- download to a local file: ``scp remote local`` vs ``SSHTransport.fetch_to``;
- download into memory: ``SSHTransport.read_file`` (no scp counterpart; its ratio is against
  scp's download to a file).
Ratios: of the medians, and the median of each round's own ratio (the two ran back to back,
so that one moves less with the load of other work on the machine). Also printed: how much the
benchmark's peak RSS grew during the first fetch_to (streaming keeps it flat) and, with
``--sftp``, asyncssh's SFTP client on the same connection (put/get at the server's largest
block, 16 requests in flight), the alternative the transport did not take.
The transport's pooled connection is opened before the timing (as in the gateway, where it
stays open); scp pays its login in every run: printed, the wall time of ``ssh … true``.
Needs `scripts/dev-cluster up`. Takes ~3 minutes at 1 GiB with 4 rounds.

Run: .venv/bin/python bench/ssh_transfer.py [--mb 1024] [--rounds 4] [--sftp]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import tempfile
import time
import tomllib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncssh
from _common import DEV_DIR, DEV_SSH_PORT, dev_ssh_options, table

from gateway.config import parse_config
from gateway.errors import ClusterUnavailable
from gateway.transport.ssh import SSHTransport

CIPHER = "aes128-gcm@openssh.com"
REMOTE_DIR = "/home/alice/.hpcgw/bench-transfer"
TARGET = 0.8
SFTP_REQUESTS = 16  # the fastest of 16/32/64/128 here


def scp_argv() -> list[str]:
    return ["scp", "-q", "-P", DEV_SSH_PORT, *dev_ssh_options("alice", CIPHER)]


def ssh_login_ms(runs: int = 5) -> float:
    """Median wall time of a login that runs nothing (``ssh … true``), the part of each scp
    run that the transport's pooled connection does not pay."""
    ssh = ["ssh", "-q", "-p", DEV_SSH_PORT, *dev_ssh_options("alice", CIPHER),
           "alice@127.0.0.1", "true"]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(ssh, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def make_transport() -> SSHTransport:
    raw = tomllib.loads((DEV_DIR / "gateway-ssh.toml").read_text())
    raw["clusters"][0]["ssh"]["ciphers"] = [CIPHER]
    return SSHTransport(parse_config(raw).clusters[0])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def timed(name: str, action: Callable[[], Awaitable[object]]) -> float:
    """Seconds ``action`` took; retried (twice at most) when the SSH link is cut under it, as
    other test suites on the shared dev sshd do on purpose (the gateway's callers retry too)."""
    for attempt in range(3):
        started = time.perf_counter()
        try:
            await action()
            return time.perf_counter() - started
        except (ClusterUnavailable, subprocess.CalledProcessError, asyncssh.Error) as exc:
            if attempt == 2:
                raise
            print(f"  {name}: {exc}; measuring it again")
    raise AssertionError("unreachable")


async def scp(*argv: str) -> None:
    await asyncio.to_thread(subprocess.run, [*scp_argv(), *argv], check=True)


def actions(transport: SSHTransport, payload: bytes, scratch: Path,
            sftp: bool) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each measured transfer by name; pairs are (``scp …``, ``hpcgw …``) of one direction."""
    local, remote = scratch / "payload.bin", f"alice@127.0.0.1:{REMOTE_DIR}"
    local.write_bytes(payload)
    named: dict[str, Callable[[], Awaitable[object]]] = {
        "scp upload": lambda: scp(str(local), f"{remote}/scp.bin"),
        "hpcgw upload": lambda: transport.put_files(
            REMOTE_DIR, {"hpcgw.bin": payload}, user="alice"),
        "scp download": lambda: scp(f"{remote}/scp.bin", str(scratch / "scp-back.bin")),
        "hpcgw download": lambda: transport.fetch_to(
            f"{REMOTE_DIR}/hpcgw.bin", scratch / "hpcgw-back.bin", user="alice",
            limit=len(payload)),
        "hpcgw read_file": lambda: transport.read_file(
            f"{REMOTE_DIR}/hpcgw.bin", user="alice", limit=len(payload)),
    }
    if sftp:
        named["sftp upload"] = lambda: sftp_copy(transport, local, f"{REMOTE_DIR}/sftp.bin")
        named["sftp download"] = lambda: sftp_copy(
            transport, f"{REMOTE_DIR}/sftp.bin", scratch / "sftp-back.bin", get=True)
    return named


async def sftp_copy(transport: SSHTransport, source: str | Path, target: str | Path,
                    get: bool = False) -> None:
    """asyncssh SFTP put/get (block size: the server's limit) on the transport's connection."""
    connection = await transport.connection("alice")
    async with connection.start_sftp_client() as client:
        copy = client.get if get else client.put
        await copy(str(source), str(target), max_requests=SFTP_REQUESTS)


async def measure(mb: int, rounds: int, sftp: bool) -> tuple[dict[str, list[float]], float]:
    """MB/s per transfer name over ``rounds`` rounds, and the peak RSS growth (MiB) during the
    first fetch_to."""
    payload = os.urandom(mb * 1024 * 1024)
    transport = make_transport()
    await transport.run(["mkdir", "-p", "-m", "700", REMOTE_DIR], user="alice")
    rates: dict[str, list[float]] = defaultdict(list)
    rss_growth = float("nan")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            named = actions(transport, payload, Path(scratch), sftp)
            for round_no in range(rounds):
                for direction in ("upload", "download", "read_file"):
                    pair = [n for n in named if n.endswith(direction)]
                    for name in pair if round_no % 2 == 0 else reversed(pair):
                        await asyncio.to_thread(os.sync)  # no dirty pages from the previous one
                        before = peak_rss_mib()
                        rates[name].append(mb / await timed(name, named[name]))
                        if name == "hpcgw download" and round_no == 0:
                            rss_growth = peak_rss_mib() - before
    finally:
        await transport.run(["rm", "-rf", REMOTE_DIR], user="alice")
        await transport.close()
    return rates, rss_growth


def report(mb: int, rounds: int, rates: dict[str, list[float]], rss_growth: float) -> None:
    med = {name: statistics.median(values) for name, values in rates.items()}
    rows = []
    for direction, ours in (("upload", "hpcgw upload"), ("download", "hpcgw download"),
                            ("download", "hpcgw read_file"), ("upload", "sftp upload"),
                            ("download", "sftp download")):
        if ours in med:
            reference = f"scp {direction}"
            ratio = med[ours] / med[reference]
            paired = statistics.median(
                o / r for o, r in zip(rates[ours], rates[reference], strict=True))
            scored = ours in ("hpcgw upload", "hpcgw download")  # the others: for comparison
            verdict = ("met" if ratio >= TARGET else "MISSED") if scored else "-"
            rows.append([f"{reference} (reference)", f"{med[reference]:.0f}", ours,
                         f"{med[ours]:.0f}", f"{ratio:.2f}", f"{paired:.2f}", verdict])
    print(f"SSH transfer of {mb} MiB, cipher {CIPHER}, {rounds} rounds alternating (median MB/s)")
    print(table(["reference", "MB/s", "path", "MB/s", "ratio", "per-round ratio (median)",
                 f">= {TARGET}"], rows))
    for name, values in rates.items():
        print(f"  {name:16} per round: {', '.join(f'{v:.0f}' for v in values)}")
    print(f"peak RSS growth during the first fetch_to of {mb} MiB: {rss_growth:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=int(os.environ.get("HPCGW_BENCH_MB", "1024")))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--sftp", action="store_true", help="also asyncssh SFTP put/get")
    args = parser.parse_args()
    rates, rss_growth = asyncio.run(measure(args.mb, args.rounds, args.sftp))
    report(args.mb, args.rounds, rates, rss_growth)
    print(f"an OpenSSH login that runs nothing (ssh ... true, part of every scp run): "
          f"{ssh_login_ms():.0f} ms")


if __name__ == "__main__":
    main()
