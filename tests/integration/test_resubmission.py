"""Resubmission after a long outage on the real cluster: an attempted job whose Slurm job already
ended and aged out of ``squeue`` (MinJobAge) is recognised by its work directory, not run twice."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from gateway.states import State
from gateway.store import Store
from tests.factories import add_job

from .conftest import (
    Api,
    Gateway,
    add_users,
    make_notebook,
    slurm_jobs_tagged,
    start_gateway,
    stop_gateway,
    write_config,
)

JOB_ID = secrets.token_hex(8)  # fresh per run: squeue keeps ended jobs for MinJobAge


def write_as(user: str, path: str, data: bytes) -> None:
    """Write ``path`` as unix user ``user`` (as a job of that user would), mode 0600."""
    subprocess.run(["sudo", "-n", "-u", user, "--", "sh", "-c",
                    'umask 077 && mkdir -p -- "$(dirname -- "$1")" && cat > "$1"', "sh", path],
                   input=data, check=True)


@pytest.fixture
def home(dev_config: Path, tmp_path: Path) -> Iterator[Path]:
    config = tmp_path / "gateway.toml"
    write_config(dev_config, config, tmp_path / "data")
    yield tmp_path
    subprocess.run(["sudo", "-n", "-u", "alice", "--", "rm", "-rf", "--",
                    f"/home/alice/.hpcgw/jobs/{JOB_ID}"], check=False)


def small_spec() -> str:
    from gateway.spec import ResolvedSpec

    return ResolvedSpec(kind="notebook", name="outage", cluster="dev", partition="cpu",
                        account=None, qos=None, constraint=None, reservation=None, gpus=0,
                        gpu_type=None, cpus=1, memory_mb=None, time_s=600, image=None,
                        kernel="python3", parameters={}).model_dump_json()


def store_attempted_job(home: Path, spec: str) -> str:
    """A job left in ``staging`` by a gateway that ran sbatch and died before the answer."""
    store = Store(home / "data" / "hpcgw.db")
    user = store.users.get_user("alice")
    workdir = f"/home/alice/.hpcgw/jobs/{JOB_ID}"
    add_job(store, user, JOB_ID, state=State.STAGING, name="outage", spec=spec,
            workdir=workdir, submit_attempts=1)
    store.close()
    local = home / "data" / "jobs" / JOB_ID  # what a resubmission would stage
    local.mkdir(parents=True)
    (local / "input.ipynb").write_bytes(make_notebook("print('once')"))
    return workdir


async def test_attempted_job_that_ran_and_left_the_queue_is_collected_not_resubmitted(
        home: Path) -> None:
    config = home / "gateway.toml"
    tokens = add_users(config)
    workdir = store_attempted_job(home, small_spec())
    executed = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('once')")])
    write_as("alice", f"{workdir}/job.log", b"hpcgw: job ran while the gateway was away\n")
    write_as("alice", f"{workdir}/output.ipynb", nbformat.writes(executed).encode())
    write_as("alice", f"{workdir}/exit.json", json.dumps({"status": "ok"}).encode())
    process, url = start_gateway(config, home / "gateway.log")
    try:
        api = Api(Gateway(url, config, tokens, process, home / "gateway.log"), "alice")
        job = await api.wait_terminal(JOB_ID, 60)
        assert (job["state"], job["reason"]) == ("succeeded", "completed"), job
        assert job["notebook_available"], job
        _, events = await api.call("GET", f"/api/v1/jobs/{JOB_ID}/events")
        assert [e["to_state"] for e in events["events"]][-2:] == ["collecting", "succeeded"]
    finally:
        stop_gateway(process)
    assert slurm_jobs_tagged(JOB_ID) == []  # nothing went to Slurm a second time
