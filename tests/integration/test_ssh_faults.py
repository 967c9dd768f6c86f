"""SSH transport faults against the dev cluster's real sshd: host keys, dropped connections."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    DEV_DIR,
    Api,
    Gateway,
    add_users,
    make_notebook,
    slurm_jobs_tagged,
    start_gateway,
    stop_gateway,
    write_config,
)


def sshd_sessions() -> list[int]:
    """Pids of the per-connection processes of the dev sshd (children of the pid it recorded)."""
    master = int((DEV_DIR / "run" / "sshd.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                children.append(int(entry.name))
    return children


def ssh_gateway(dev_config: Path, home: Path, **ssh: str) -> Gateway:
    config = home / "gateway.toml"
    write_config(dev_config.with_name("gateway-ssh.toml"), config, home / "data")
    text = config.read_text()
    for key, value in ssh.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    config.write_text(text)
    tokens = add_users(config)
    process, url = start_gateway(config, home / "gateway.log")
    return Gateway(url, config, tokens, process, home / "gateway.log")


@pytest.fixture
def fresh_ssh_gateway(dev_config: Path, tmp_path: Path) -> Iterator[Gateway]:
    gateway = ssh_gateway(dev_config, tmp_path)
    yield gateway
    stop_gateway(gateway.process)


async def test_changed_host_key_is_refused_with_a_clear_problem(
        dev_config: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    real = (DEV_DIR / "ssh" / "known_hosts").read_text().split()
    # A valid ed25519 key that is not the server's: the pinned key "changed".
    other = (DEV_DIR / "ssh" / "keys" / "alice_ed25519.pub").read_text().split()
    wrong.write_text(f"{real[0]} {other[0]} {other[1]}\n")
    gateway = ssh_gateway(dev_config, tmp_path, known_hosts=f'"{wrong}"')
    try:
        api = Api(gateway, "alice")
        status, health = await api.call("GET", "/api/v1/health")
        assert status == 200
        cluster = health["clusters"]["dev"]
        assert cluster["reachable"] is False
        assert "host key" in cluster["error"] and "refusing" in cluster["error"]
        _, job = await api.submit(make_notebook("print(1)"), {})
        job = await api.wait_for(job["id"], lambda j: not j["scheduler_reachable"], 30,
                                 "refused connection")
        assert job["state"] in ("accepted", "staging") and "host key" in (job["message"] or "")
        assert not slurm_jobs_tagged(job["id"])
    finally:
        stop_gateway(gateway.process)


async def test_dropped_ssh_connections_are_reestablished(fresh_ssh_gateway: Gateway) -> None:
    api = Api(fresh_ssh_gateway, "alice")
    big_output = "import time\nprint('x' * 2_000_000)\ntime.sleep(3)\nprint('end')"
    _, job = await api.submit(make_notebook(big_output), {"name": "through cuts"})
    cuts, cut_in = 0, set()  # the job's states when connections were cut
    while (current := await api.job(job["id"]))["state"] not in (
            "succeeded", "failed", "cancelled", "timed_out"):
        for pid in sshd_sessions():  # children of the sshd that dev-cluster started
            os.kill(pid, signal.SIGKILL)
            cuts += 1
            cut_in.add(current["state"])
        await asyncio.sleep(0.7)
        assert cuts < 400, current
    # The cuts landed while the gateway followed the job through the cluster, not only before.
    assert cut_in & {"running", "collecting"}, cut_in
    assert current["state"] == "succeeded", current
    status, notebook = await api.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
    assert status == 200 and len(notebook) > 2_000_000
    assert len(slurm_jobs_tagged(job["id"])) == 1
