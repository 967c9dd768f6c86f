"""Faults on the real cluster: the gateway killed, Slurm down, a job Slurm forgot, retries."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.states import State
from gateway.store import Store
from tests.factories import add_job

from .conftest import (
    DEV_DIR,
    REPO,
    Api,
    Gateway,
    add_users,
    make_notebook,
    slurm_jobs_tagged,
    squeue_state,
    start_gateway,
    stop_gateway,
    write_config,
)

SHORT = make_notebook("import time\ntime.sleep(4)\nprint('done')")


class Restartable:
    """A gateway of the test's own that can be SIGKILLed and started again on a new port."""

    def __init__(self, dev_config: Path, home: Path) -> None:
        self.config = home / "gateway.toml"
        write_config(dev_config, self.config, home / "data", lost_after=3.0)
        self.tokens = add_users(self.config)
        self.log = home / "gateway.log"
        self.gateway: Gateway | None = None
        self.start()

    def start(self) -> Gateway:
        process, url = start_gateway(self.config, self.log)
        self.gateway = Gateway(url, self.config, self.tokens, process, self.log)
        return self.gateway

    def kill(self) -> None:
        assert self.gateway is not None
        self.gateway.process.send_signal(signal.SIGKILL)
        self.gateway.process.wait()

    def api(self, user: str = "alice") -> Api:
        assert self.gateway is not None
        return Api(self.gateway, user)


@pytest.fixture
def restartable(dev_config: Path, tmp_path: Path) -> Iterator[Restartable]:
    gateway = Restartable(dev_config, tmp_path)
    yield gateway
    assert gateway.gateway is not None
    stop_gateway(gateway.gateway.process)


async def test_killed_while_jobs_run_then_restarted_on_another_port(
        restartable: Restartable) -> None:
    api = restartable.api()
    ids = [(await api.submit(SHORT, {"name": f"k{n}"}))[1]["id"] for n in range(3)]
    slurm_ids = [(await api.wait_for(job_id, lambda j: j["state"] == "running", 60,
                                     "running"))["slurm_job_id"] for job_id in ids]
    old_url = api.base
    restartable.kill()
    deadline = time.monotonic() + 60  # the jobs end while no gateway watches them
    while any(squeue_state(s) != "COMPLETED" for s in slurm_ids):
        assert time.monotonic() < deadline, [squeue_state(s) for s in slurm_ids]
        time.sleep(0.5)
    restartable.start()
    api = restartable.api()
    assert api.base != old_url
    for job_id in ids:
        job = await api.wait_terminal(job_id, 60)
        assert job["state"] == "succeeded", (job["state"], job["reason"], job["message"])
        assert (await api.call("GET", f"/api/v1/jobs/{job_id}/notebook"))[0] == 200
        assert len(slurm_jobs_tagged(job_id)) == 1


async def test_killed_during_submission_submits_each_job_once(restartable: Restartable) -> None:
    api = restartable.api()
    ids = [(await api.submit(SHORT, {"name": f"s{n}"}))[1]["id"] for n in range(12)]
    restartable.kill()  # some are accepted, some staging, some pending: none may be lost or doubled
    store = Store(restartable.config.parent / "data" / "hpcgw.db")
    at_kill = {store.get_job(job_id)["state"] for job_id in ids}
    store.close()
    # The kill landed inside the submission window: jobs not yet handed to Slurm were left.
    assert at_kill & {"accepted", "staging"}, at_kill
    restartable.start()
    api = restartable.api()
    for job_id in ids:
        job = await api.wait_terminal(job_id, 120)
        assert job["state"] == "succeeded", (job["state"], job["reason"], job["message"])
        assert len(slurm_jobs_tagged(job_id)) == 1, job


async def test_idempotency_key_returns_the_same_job(restartable: Restartable) -> None:
    api = restartable.api()
    first = await api.submit(SHORT, {"name": "once"}, headers={"Idempotency-Key": "k-1"})
    again = await api.submit(SHORT, {"name": "once"}, headers={"Idempotency-Key": "k-1"})
    assert first[0] == again[0] == 201
    assert first[1]["id"] == again[1]["id"]
    other_user = await restartable.api("bob").submit(
        SHORT, {"name": "once"}, headers={"Idempotency-Key": "k-1"})
    assert other_user[1]["id"] != first[1]["id"]
    _, listing = await api.call("GET", "/api/v1/jobs")
    assert [j["id"] for j in listing["jobs"]].count(first[1]["id"]) == 1
    await api.wait_terminal(first[1]["id"])
    assert len(slurm_jobs_tagged(first[1]["id"])) == 1


async def test_job_slurm_forgot_ends_lost(restartable: Restartable) -> None:
    assert restartable.gateway is not None
    stop_gateway(restartable.gateway.process)
    store = Store(restartable.config.parent / "data" / "hpcgw.db")
    user = store.users.get_user("alice")
    job_id = "0123456789abcdef"
    add_job(store, user, job_id, state=State.RUNNING, name="forgotten", spec=forgotten_spec(),
            at={State.PENDING: {"slurm_job_id": "987654321"}})
    store.close()
    restartable.start()
    job = await restartable.api().wait_terminal(job_id, 30)
    assert (job["state"], job["reason"]) == ("failed", "lost"), job


def forgotten_spec() -> str:
    from gateway.spec import ResolvedSpec

    return ResolvedSpec(kind="notebook", name="forgotten", cluster="dev", partition="cpu",
                        account=None, qos=None, constraint=None, reservation=None, gpus=0,
                        gpu_type=None, cpus=1, memory_mb=None, time_s=600, image=None,
                        kernel="python3", parameters={}).model_dump_json()


def _slurmctld_pid() -> int:
    return int((DEV_DIR / "run" / "slurmctld.pid").read_text().split()[0])


async def test_slurm_down_keeps_jobs_and_resumes(restartable: Restartable) -> None:
    api = restartable.api()
    _, running = await api.submit(make_notebook("import time\ntime.sleep(20)"), {"name": "r"})
    await api.wait_for(running["id"], lambda j: j["state"] == "running", 60, "running")
    pid = _slurmctld_pid()
    os.kill(pid, signal.SIGTERM)  # started by scripts/dev-cluster up; restarted below
    try:
        _, waiting = await api.submit(SHORT, {"name": "while down"})
        unreachable = await api.wait_for(
            running["id"], lambda j: not j["scheduler_reachable"], 45, "scheduler unreachable")
        assert unreachable["state"] == "running"
        waiting = await api.wait_for(
            waiting["id"], lambda j: not j["scheduler_reachable"], 45, "submission waiting")
        assert waiting["state"] in ("accepted", "staging")
        calm_until = time.monotonic() + 10  # while Slurm stays down, nothing ends
        while time.monotonic() < calm_until:
            for job_id in (running["id"], waiting["id"]):
                assert (await api.job(job_id))["state"] not in ("failed", "succeeded")
            time.sleep(1)
    finally:
        subprocess.run([str(REPO / "scripts" / "dev-cluster"), "up"], check=True,
                       capture_output=True)
    for job_id in (running["id"], waiting["id"]):
        job = await api.wait_terminal(job_id, 120)
        assert job["state"] == "succeeded" and job["scheduler_reachable"], job
