"""Submission without the HTTP layer: adoption instead of resubmission, disabled clusters,
cancels before submission, and the Slurm job name."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from gateway.config import Config
from gateway.jobs.submitter import _entered_scheduler, slurm_job_name, submit_job
from gateway.scheduler import SchedulerState
from gateway.spec import parse_spec, resolve_spec
from gateway.states import State
from gateway.store import Store, User

if TYPE_CHECKING:
    from conftest import FakeClusters

JOB = "00112233aabbccdd"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "hpcgw.db")
    yield store
    store.close()


def insert(store: Store, config: Config, user: User, **fields: Any) -> dict[str, Any]:
    spec = resolve_spec(parse_spec({"name": "nb"}), config, default_name="nb")
    job = store.insert_job({
        "id": JOB, "user_id": user.id, "unix_user": user.unix_user, "kind": "notebook",
        "name": "nb", "cluster": "dev", "spec": spec.model_dump_json(),
        "workdir": f"/home/{user.unix_user}/.hpcgw/jobs/{JOB}", "idempotency_key": None,
    })
    if fields:
        store.update_job(JOB, **fields)
    return job


def service(store: Store, config: Config, clusters: dict[str, Any]) -> Any:
    return SimpleNamespace(store=store, config=config, clusters=clusters)


async def test_a_disabled_cluster_fails_the_job(store: Store, config: Config) -> None:
    insert(store, config, store.add_user("alice", "alice"))
    await submit_job(service(store, config, {}), JOB)
    job = store.get_job(JOB)
    assert (job["state"], job["reason"]) == ("failed", "launch_failed")
    assert "dev" in job["message"]


async def test_cancel_before_submission_sends_nothing(
    store: Store, config: Config, fake_clusters: FakeClusters
) -> None:
    runtime = fake_clusters(config.clusters[0])
    insert(store, config, store.add_user("alice", "alice"), cancel_requested=1)
    await submit_job(service(store, config, {"dev": runtime}), JOB)
    job = store.get_job(JOB)
    assert (job["state"], job["reason"]) == ("cancelled", "user_cancelled")
    fake = fake_clusters.by_name["dev"]
    assert fake.backend.submissions == [] and fake.transport.puts == []


async def test_an_attempted_job_is_adopted_not_submitted_again(
    store: Store, config: Config, fake_clusters: FakeClusters
) -> None:
    runtime = fake_clusters(config.clusters[0])
    backend = fake_clusters.by_name["dev"].backend
    # A previous gateway process ran sbatch, then died before it could store the answer.
    slurm_job_id = await backend.submit("#!/bin/bash\n", user="alice", tag=JOB)
    backend.states[slurm_job_id] = SchedulerState.RUNNING
    insert(store, config, store.add_user("alice", "alice"), submit_attempts=1)
    store.transition(JOB, State.STAGING)
    await submit_job(service(store, config, {"dev": runtime}), JOB)
    job = store.get_job(JOB)
    assert (job["state"], job["slurm_job_id"]) == ("pending", slurm_job_id)
    assert len(backend.submissions) == 1  # nothing new went to Slurm
    assert runtime.wake.is_set()  # the poller looks at it now


def test_entering_the_scheduler_clears_an_unreachable_message(
    store: Store, config: Config
) -> None:
    insert(store, config, store.add_user("alice", "alice"))
    store.transition(JOB, State.STAGING)
    store.update_job(JOB, scheduler_reachable=0,
                     message="sbatch: Unable to contact slurm controller")
    runtime = SimpleNamespace(wake=asyncio.Event())
    _entered_scheduler(service(store, config, {}), runtime, JOB, "42")  # type: ignore[arg-type]
    job = store.get_job(JOB)
    assert (job["state"], job["scheduler_reachable"]) == ("pending", 1)
    assert job["message"] is None


@pytest.mark.parametrize(("name", "expected"), [
    ("analysis", "hpcgw-analysis"),
    ("train-1.v2_final", "hpcgw-train-1.v2_final"),
    ("my run", "hpcgw-my_run"),
    ("$(id)", "hpcgw-__id_"),
    ("x\n#SBATCH --output=/tmp/y", "hpcgw-x__SBATCH_--output__tmp_y"),
    ("naïve", "hpcgw-na_ve"),
    ("\u0661\u0662\u0663", "hpcgw-___"),  # Arabic-Indic digits are not safe for Slurm either
    ("", "hpcgw-"),
])
def test_slurm_job_name(name: str, expected: str) -> None:
    assert slurm_job_name(name) == expected


def test_slurm_job_name_is_bounded() -> None:
    name = slurm_job_name("x" * 500)
    assert len(name) == 64 and re.fullmatch(r"hpcgw-x+", name)
