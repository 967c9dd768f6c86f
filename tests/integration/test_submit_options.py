"""SubmitOptions against the real Slurm: every option given as an sbatch argument (the script
holds no #SBATCH line) is what slurmctld records for the job, and the job runs as alice in her
own directory; and what the backend reads back of a pending job (its expected start)."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import ClusterConfig, load_config
from gateway.scheduler.options import SubmitOptions
from gateway.scheduler.slurm import SlurmCLIBackend
from gateway.transport import RemoteFileMissing, Transport, load_transport

pytestmark = pytest.mark.integration
SCRIPT = '#!/bin/bash\necho hello\necho "job id $HPCGW_JOB_ID"\n'
DEADLINE_S = 60.0


def scontrol_job(slurm_job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict ({} once Slurm no longer knows the job)."""
    shown = subprocess.run(["scontrol", "show", "job", "-o", slurm_job_id],
                           capture_output=True, text=True, timeout=30)
    if shown.returncode != 0:
        return {}
    return dict(re.findall(r"(?:^|\s)([A-Za-z][\w/:]*)=(\S*)", shown.stdout))


@pytest.fixture
def cluster(dev_config: Path) -> ClusterConfig:
    return load_config(dev_config).clusters[0]


@pytest.fixture
async def alice_dir(cluster: ClusterConfig) -> AsyncIterator[tuple[Transport, str]]:
    """A fresh 0700 directory alice owns, made (and removed) as alice through the transport."""
    transport = load_transport(cluster)
    parent = "/home/alice/.hpcgw/test-submit-options"
    workdir = f"{parent}/{secrets.token_hex(6)}"
    await transport.run(["mkdir", "-p", "-m", "700", "--", workdir], user="alice")
    yield transport, workdir
    await transport.run(["rm", "-rf", "--", workdir], user="alice")
    await transport.run(["rmdir", "--", parent], user="alice", check=False)  # if now empty


async def wait_done(transport: Transport, slurm_job_id: str, output: str) -> tuple[dict[str, str],
                                                                                      bytes]:
    """Slurm's record of the job once it completed, and its output file once that says hello;
    fails with the last record seen at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    record: dict[str, str] = {}
    while time.monotonic() < deadline:
        record = scontrol_job(slurm_job_id)
        if record.get("JobState") not in (None, "PENDING", "RUNNING", "COMPLETING"):
            try:
                text = await transport.read_file(output, user="alice", limit=4096)
            except RemoteFileMissing:
                text = b""
            if b"hello" in text:
                return record, text
        await asyncio.sleep(0.25)
    raise AssertionError(f"Slurm job {slurm_job_id} did not complete with its output within "
                         f"{DEADLINE_S:g}s; last seen {record}")


async def test_slurm_records_every_submit_option(
    cluster: ClusterConfig, alice_dir: tuple[Transport, str]
) -> None:
    transport, workdir = alice_dir
    tag = secrets.token_hex(8)
    options = SubmitOptions(
        user="alice", job_name=f"hpcgw-options-{tag[:6]}", partition="cpu", time_s=300, cpus=2,
        memory_mb=200, workdir=workdir, output=f"{workdir}/job.log", tag=tag,
        environment={"HPCGW_JOB_ID": tag},
    )
    backend = SlurmCLIBackend(cluster, transport)
    slurm_job_id = await backend.submit(SCRIPT, options)
    assert slurm_job_id.isdigit()

    record, output = await wait_done(transport, slurm_job_id, options.output)
    assert record["JobState"] == "COMPLETED", record
    assert record["ExitCode"] == "0:0"
    assert record["UserId"].startswith("alice(")
    assert record["Partition"] == "cpu"
    assert record["NumCPUs"] == "2" and record["CPUs/Task"] == "2"
    assert record["MinMemoryNode"] == "200M"
    assert record["TimeLimit"] == "00:05:00"
    assert record["JobName"] == options.job_name
    assert record["Comment"] == f"hpcgw:{tag}"
    assert record["WorkDir"] == workdir
    assert record["StdOut"] == f"{workdir}/job.log"
    assert output == f"hello\njob id {tag}\n".encode()  # --export reached the job
    found = await backend.find_by_tag(tag, user="alice")
    assert found is not None and found.job_id == slurm_job_id


@pytest.mark.parametrize("transport_name", ["local", "ssh"])
async def test_status_carries_when_slurm_expects_a_pending_job_to_start(
        dev_config: Path, transport_name: str) -> None:
    """squeue's %S, read as epoch seconds whatever the cluster's zone, on both transports: a
    job held with --begin shows that time as its expected start."""
    config = load_config(dev_config if transport_name == "local"
                         else dev_config.with_name("gateway-ssh.toml"))
    cluster = config.clusters[0]
    begin = int(time.time()) + 3600
    held = subprocess.run(
        ["sudo", "-n", "-u", "alice", "--", "sbatch", "--parsable", "-o", "/dev/null",
         f"--begin={time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(begin))}",
         "--wrap", "true"], capture_output=True, text=True, check=True, timeout=30)
    slurm_job_id = held.stdout.strip().split(";")[0]
    transport = load_transport(cluster)
    try:
        status = (await SlurmCLIBackend(cluster, transport).status_many([slurm_job_id]))[
            slurm_job_id]
        assert status.pending_reason == "BeginTime"
        assert status.expected_start == time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                                                      time.gmtime(begin))
    finally:
        subprocess.run(["scancel", slurm_job_id], timeout=30)
        await transport.close()
