"""The collector against a fake cluster: capped reads, what is retried (an unreachable cluster, a
timed-out command: until ``collect_deadline`` counted from entering ``collecting``) and what ends
the job at once (a refused file, a failed command), each with a message naming the file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

import gateway.jobs.collector as collector
from gateway.config import Config
from gateway.errors import ClusterUnavailable, CommandFailed, CommandTimeout
from gateway.jobs.collector import EXIT_RECORD_LIMIT, collect
from gateway.states import State
from gateway.store import Store
from gateway.transport import NotARegularFile
from tests.factories import add_job, job_context

if TYPE_CHECKING:
    from conftest import FakeClusters, FakeTransport

WORKDIR = "/home/alice/.hpcgw/jobs/j1"
NOTEBOOK, EXIT, LOG = (f"{WORKDIR}/{name}" for name in ("output.ipynb", "exit.json", "job.log"))


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "FIRST_BACKOFF", 0.01)


class Setup:
    def __init__(self, config: Config, store: Store, fake_clusters: FakeClusters,
                 **cluster: Any) -> None:
        config = config.model_copy(update={
            "gateway": config.gateway.model_copy(update={"max_result_bytes": 2048}),
            "clusters": [config.clusters[0].model_copy(update=cluster)]})
        self.runtime = fake_clusters(config.clusters[0])
        self.transport: FakeTransport = fake_clusters.by_name["dev"].transport
        self.ctx = job_context(config, store, {"dev": self.runtime})
        self.store = store
        add_job(store, store.users.add_user("alice", "alice"), "j1", state=State.COLLECTING,
                workdir=WORKDIR, at={State.PENDING: {"slurm_job_id": "101"},
                                     State.COLLECTING: {"slurm_state": "COMPLETED"}})
        self.transport.files.update({
            LOG: b"hpcgw: job j1 on vm\n",
            EXIT: json.dumps({"status": "ok"}).encode(),
            NOTEBOOK: b'{"cells": []}',
        })

    def job(self) -> dict[str, Any]:
        return self.store.get_job("j1")

    def local(self, name: str) -> Path:
        return self.ctx.job_dir("j1") / name

    def reads_of(self, path: str) -> list[tuple[str, int, bool]]:
        return [read for read in self.transport.reads if read[0] == path]


@pytest.fixture
def setup(config: Config, store: Store, fake_clusters: FakeClusters) -> Setup:
    return Setup(config, store, fake_clusters)


async def test_a_normal_job_brings_back_its_notebook_and_log_within_their_caps(
        setup: Setup) -> None:
    await collect(setup.ctx, "j1")
    job = setup.job()
    assert (job["state"], job["reason"], job["has_notebook"]) == ("succeeded", "completed", 1)
    assert setup.local("output.ipynb").read_bytes() == b'{"cells": []}'
    assert not setup.local("output.ipynb.part").exists()
    assert setup.local("job.log").read_bytes() == b"hpcgw: job j1 on vm\n"
    log_tail = setup.ctx.config.gateway.log_tail_bytes
    assert setup.reads_of(LOG) == [(LOG, log_tail, True)]
    assert setup.reads_of(EXIT) == [(EXIT, EXIT_RECORD_LIMIT, False)]
    assert setup.reads_of(NOTEBOOK) == [(NOTEBOOK, 2048, False)]


async def test_a_notebook_over_max_result_bytes_fails_the_job_at_once_naming_file_and_cap(
        setup: Setup) -> None:
    setup.transport.files[NOTEBOOK] = b"x" * 2049
    await collect(setup.ctx, "j1")
    job = setup.job()
    assert (job["state"], job["reason"], job["has_notebook"]) == ("failed", "job_error", 0)
    assert NOTEBOOK in job["message"] and "2 KiB (2048 bytes)" in job["message"]
    assert "gateway.max_result_bytes" in job["message"]
    assert len(setup.reads_of(NOTEBOOK)) == 1  # not retried
    assert not setup.local("output.ipynb").exists()
    assert not setup.local("output.ipynb.part").exists()
    assert setup.local("job.log").read_bytes() == b"hpcgw: job j1 on vm\n"  # still there to read


async def test_an_exit_record_that_is_not_a_regular_file_fails_the_job_at_once(
        setup: Setup) -> None:
    setup.transport.errors[EXIT] = [NotARegularFile(["sh"], EXIT)]
    await collect(setup.ctx, "j1")
    job = setup.job()
    assert (job["state"], job["reason"]) == ("failed", "job_error")
    assert job["message"].startswith("exit.json not collected: ")
    assert f"{EXIT}: not a regular file" in job["message"]


async def test_a_command_that_fails_is_not_retried(setup: Setup) -> None:
    setup.transport.errors[LOG] = [CommandFailed(["sh"], 1, "sh: Permission denied")] * 5
    await collect(setup.ctx, "j1")
    job = setup.job()
    assert (job["state"], job["reason"]) == ("failed", "job_error")
    assert "Permission denied" in job["message"]
    assert len(setup.reads_of(LOG)) == 1


async def test_an_unreachable_cluster_and_timeouts_are_retried_until_it_answers(
        setup: Setup) -> None:
    setup.transport.errors[EXIT] = [ClusterUnavailable("ssh: connection refused"),
                                    CommandTimeout(["sh"], 30)]
    await collect(setup.ctx, "j1")
    job = setup.job()
    assert (job["state"], job["reason"], job["has_notebook"]) == ("succeeded", "completed", 1)
    assert len(setup.reads_of(EXIT)) == 3


async def test_past_collect_deadline_the_job_fails_with_the_last_error(
        config: Config, store: Store, fake_clusters: FakeClusters) -> None:
    setup = Setup(config, store, fake_clusters, collect_deadline=0.3)
    setup.transport.errors[LOG] = [ClusterUnavailable("ssh: connection refused")] * 1000
    await asyncio.wait_for(collect(setup.ctx, "j1"), 30)  # it gives up, not retries for ever
    job = setup.job()
    assert (job["state"], job["reason"]) == ("failed", "job_error")
    assert "collect_deadline" in job["message"] and "connection refused" in job["message"]
    assert 2 <= len(setup.reads_of(LOG)) < 1000


async def test_the_deadline_counts_from_entering_collecting_not_from_a_restart(
        config: Config, store: Store, fake_clusters: FakeClusters,
        monkeypatch: pytest.MonkeyPatch) -> None:
    setup = Setup(config, store, fake_clusters, collect_deadline=60)
    setup.transport.errors[EXIT] = [CommandTimeout(["sh"], 30)] * 1000
    # The gateway (re)starts collecting 61 s after the job entered collecting.
    monkeypatch.setattr(collector, "time", SimpleNamespace(time=lambda: time.time() + 61))
    await collect(setup.ctx, "j1")
    job = setup.job()
    assert (job["state"], job["reason"]) == ("failed", "job_error")
    assert "timed out after 30s" in job["message"]
    assert len(setup.reads_of(EXIT)) == 1
