"""Submission without the HTTP layer: adoption instead of resubmission (also of a Slurm job that
already left the queue), disabled clusters, cancels before submission, and the Slurm job name."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from gateway.config import Config
from gateway.jobs.collector import collect
from gateway.jobs.context import JobContext
from gateway.jobs.scripts import slurm_job_name
from gateway.jobs.submitter import _entered_scheduler, submit_job
from gateway.scheduler import SchedulerState
from gateway.spec import parse_spec, resolve_spec
from gateway.states import State
from gateway.store import Store, User
from tests.factories import add_job, job_context

if TYPE_CHECKING:
    from conftest import FakeCluster, FakeClusters

JOB = "00112233aabbccdd"


def insert(store: Store, config: Config, user: User, **fields: Any) -> dict[str, Any]:
    spec = resolve_spec(parse_spec({"name": "nb"}), config, default_name="nb")
    return add_job(store, user, JOB, spec=spec.model_dump_json(), **fields)


def queued(queue: asyncio.Queue[str]) -> list[str]:
    """Everything on ``queue`` now, taken off it."""
    return [queue.get_nowait() for _ in range(queue.qsize())]


async def test_a_disabled_cluster_fails_the_job(store: Store, config: Config) -> None:
    insert(store, config, store.users.add_user("alice", "alice"))
    await submit_job(job_context(config, store, {}), JOB)
    job = store.get_job(JOB)
    assert (job["state"], job["reason"]) == ("failed", "launch_failed")
    assert "dev" in job["message"]


async def test_cancel_before_submission_sends_nothing(
    store: Store, config: Config, fake_clusters: FakeClusters
) -> None:
    runtime = fake_clusters(config.clusters[0])
    insert(store, config, store.users.add_user("alice", "alice"), cancel_requested=1)
    await submit_job(job_context(config, store, {"dev": runtime}), JOB)
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
    slurm_job_id = backend.enqueue("alice", JOB)
    backend.states[slurm_job_id] = SchedulerState.RUNNING
    insert(store, config, store.users.add_user("alice", "alice"), submit_attempts=1)
    store.transition(JOB, State.STAGING)
    await submit_job(job_context(config, store, {"dev": runtime}), JOB)
    job = store.get_job(JOB)
    assert (job["state"], job["slurm_job_id"]) == ("pending", slurm_job_id)
    assert len(backend.submissions) == 1  # nothing new went to Slurm
    assert runtime.wake.is_set()  # the poller looks at it now


async def attempted_job_gone_from_the_queue(
    store: Store, config: Config, fake_clusters: FakeClusters, traces: dict[str, bytes],
    **fields: Any,
) -> tuple[JobContext, FakeCluster]:
    """A job whose earlier sbatch answer was lost; Slurm no longer lists anything with its tag
    (the job ended and aged out, or never got there); ``traces`` are in its work directory."""
    runtime = fake_clusters(config.clusters[0])
    fake = fake_clusters.by_name["dev"]
    job = insert(store, config, store.users.add_user("alice", "alice"), submit_attempts=1, **fields)
    store.transition(JOB, State.STAGING)
    fake.transport.files.update({f"{job['workdir']}/{name}": data for name, data in traces.items()})
    ctx = job_context(config, store, {"dev": runtime})
    ctx.job_dir(JOB).mkdir(parents=True)
    (ctx.job_dir(JOB) / "input.ipynb").write_bytes(b"{}")  # only staged, never read
    await submit_job(ctx, JOB)
    return ctx, fake


@pytest.mark.parametrize("traces", [
    {"job.log": b"hpcgw: job on vm\n", "exit.json": b'{"status": "ok"}'},
    {"job.log": b""},  # started, then killed before the runner wrote its record
    {"exit.json": b'{"status": "ok"}'},
])
async def test_an_attempted_job_that_already_ran_is_collected_not_submitted_again(
    store: Store, config: Config, fake_clusters: FakeClusters, traces: dict[str, bytes]
) -> None:
    ctx, fake = await attempted_job_gone_from_the_queue(store, config, fake_clusters, traces)
    assert store.get_job(JOB)["state"] == "collecting"
    assert fake.backend.submissions == [] and fake.transport.puts == []
    assert queued(ctx.collect_queue) == [JOB]  # handed to the collector, which decides
    await collect(ctx, JOB)  # from what the job left
    job = store.get_job(JOB)
    # Without an exit record nor a word from Slurm, the collector can only say ``lost``.
    expected = ("succeeded", "completed") if "exit.json" in traces else ("failed", "lost")
    assert (job["state"], job["reason"]) == expected
    assert [e["to_state"] for e in store.events(JOB)][-3:] == ["staging", "collecting",
                                                              job["state"]]


async def test_a_cancel_meanwhile_ends_an_attempted_job_that_already_ran_cancelled(
    store: Store, config: Config, fake_clusters: FakeClusters
) -> None:
    ctx, fake = await attempted_job_gone_from_the_queue(
        store, config, fake_clusters, {"job.log": b"x"}, cancel_requested=1)
    job = store.get_job(JOB)
    assert (job["state"], job["reason"]) == ("cancelled", "user_cancelled")
    assert fake.backend.submissions == [] and queued(ctx.collect_queue) == []


async def test_an_attempted_job_without_traces_is_submitted_again(
    store: Store, config: Config, fake_clusters: FakeClusters
) -> None:
    _, fake = await attempted_job_gone_from_the_queue(store, config, fake_clusters, {})
    assert [s.tag for s in fake.backend.submissions] == [JOB]
    assert store.get_job(JOB)["state"] == "pending"
    assert store.get_job(JOB)["submit_attempts"] == 2


async def test_an_attempted_job_without_traces_and_a_cancel_is_not_submitted_again(
    store: Store, config: Config, fake_clusters: FakeClusters
) -> None:
    _, fake = await attempted_job_gone_from_the_queue(
        store, config, fake_clusters, {}, cancel_requested=1)
    assert fake.backend.submissions == []
    job = store.get_job(JOB)
    assert (job["state"], job["reason"]) == ("cancelled", "user_cancelled")


def test_entering_the_scheduler_clears_an_unreachable_message(
    store: Store, config: Config
) -> None:
    insert(store, config, store.users.add_user("alice", "alice"))
    store.transition(JOB, State.STAGING)
    store.update_job(JOB, scheduler_reachable=0,
                     message="sbatch: Unable to contact slurm controller")
    runtime = SimpleNamespace(wake=asyncio.Event())
    _entered_scheduler(job_context(config, store), runtime, JOB, "42")  # type: ignore[arg-type]
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
