"""SSH file transfer: hpcgw's SSH transport against OpenSSH scp, same cipher, same run.

Moves one file (default 1 GiB; HPCGW_BENCH_MB to change) to and from the dev cluster's login
sshd as alice, with aes128-gcm@openssh.com on both sides, and prints MB/s and the ratio.
Target (design.md §5): hpcgw >= 80% of scp's MB/s. Needs `scripts/dev-cluster up`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

from gateway.config import parse_config
from gateway.transport.ssh import SSHTransport

DEV_DIR = Path(os.environ.get("HPCGW_DEV_DIR", "/var/lib/hpcgw-dev"))
CIPHER = "aes128-gcm@openssh.com"
SIZE_MB = int(os.environ.get("HPCGW_BENCH_MB", "1024"))
REMOTE_DIR = "/home/alice/.hpcgw/bench"


def scp_argv() -> list[str]:
    ssh = DEV_DIR / "ssh"
    return ["scp", "-q", "-c", CIPHER, "-P", "2222", "-i", str(ssh / "keys" / "alice_ed25519"),
            "-o", f"UserKnownHostsFile={ssh / 'known_hosts'}", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes"]


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - started


async def hpcgw_times(payload: bytes) -> tuple[float, float]:
    raw = tomllib.loads((DEV_DIR / "gateway-ssh.toml").read_text())
    raw["clusters"][0]["ssh"]["ciphers"] = [CIPHER]
    cluster = parse_config(raw).clusters[0]
    transport = SSHTransport(cluster)
    await transport.run(["true"], user="alice")  # connect outside the timing, as scp's is not
    started = time.perf_counter()
    await transport.put_files(REMOTE_DIR, {"hpcgw.bin": payload}, user="alice")
    upload = time.perf_counter() - started
    started = time.perf_counter()
    data = await transport.read_file(f"{REMOTE_DIR}/hpcgw.bin", user="alice")
    download = time.perf_counter() - started
    assert len(data) == len(payload)
    await transport.close()
    return upload, download


def main() -> None:
    payload = os.urandom(SIZE_MB * 1024 * 1024)
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / "payload.bin"
        local.write_bytes(payload)
        subprocess.run(["sudo", "-n", "-u", "alice", "--", "mkdir", "-p", "-m", "700", REMOTE_DIR],
                       check=True)
        scp_up = timed([*scp_argv(), str(local), f"alice@127.0.0.1:{REMOTE_DIR}/scp.bin"])
        scp_down = timed([*scp_argv(), f"alice@127.0.0.1:{REMOTE_DIR}/scp.bin",
                          str(Path(scratch) / "back.bin")])
    hpcgw_up, hpcgw_down = asyncio.run(hpcgw_times(payload))
    subprocess.run(["sudo", "-n", "-u", "alice", "--", "rm", "-rf", REMOTE_DIR], check=True)
    print(f"SSH transfer of {SIZE_MB} MiB, cipher {CIPHER}")
    print(f"{'direction':10} {'scp MB/s':>10} {'hpcgw MB/s':>11} {'ratio':>7}")
    for name, reference, ours in (("upload", scp_up, hpcgw_up), ("download", scp_down, hpcgw_down)):
        ref_rate, our_rate = SIZE_MB / reference, SIZE_MB / ours
        print(f"{name:10} {ref_rate:10.0f} {our_rate:11.0f} {our_rate / ref_rate:7.2f}")


if __name__ == "__main__":
    main()
