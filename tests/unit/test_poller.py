"""The poll cycle against a fake scheduler: transitions and their events, one status query per
cycle, only changed jobs evaluated, the in-memory tracked jobs following other writers, failed
polls and failed cycles; cancels re-sent outside the cycle, bounded per job and per user, with a
backoff."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

import gateway.jobs.poller as poller
import gateway.jobs.tracked as tracked_module
from gateway.config import Config
from gateway.errors import ClusterUnavailable
from gateway.jobs.clusters import RESENDS_PER_USER, ClusterLink
from gateway.jobs.poller import poll_cycle
from gateway.scheduler import SchedulerState, SchedulerStatus
from gateway.states import Reason, State
from gateway.store import Store, User
from tests.factories import add_job, job_context

if TYPE_CHECKING:
    from conftest import FakeBackend, FakeClusters


class Setup:
    """A store, a fake cluster ``dev`` and the workers' context the poller uses."""

    def __init__(self, store: Store, config: Config, fake_clusters: FakeClusters) -> None:
        self.store = store
        self.runtime: ClusterLink = fake_clusters(config.clusters[0])
        self.backend: FakeBackend = fake_clusters.by_name["dev"].backend
        self.ctx = job_context(config, store, {"dev": self.runtime})
        self.user: User = store.users.add_user("alice", "alice")
        self.asked: list[set[str]] = []  # the job ids of each status query
        status_many = self.backend.status_many

        async def recording(job_ids: Iterable[str]) -> dict[str, SchedulerStatus]:
            self.asked.append(set(job_ids))
            return await status_many(self.asked[-1])

        self.backend.status_many = recording  # type: ignore[method-assign]

    def collected(self) -> list[str]:
        """The job ids the poller handed to the collector (not under test here)."""
        queue = self.ctx.collect_queue
        return [queue.get_nowait() for _ in range(queue.qsize())]

    async def job(self, n: int, state: State = State.PENDING,
                  user: User | None = None) -> tuple[str, str]:
        """A gateway job of ``user`` (alice if None) in ``state`` (pending or running) with
        its Slurm job; (id, Slurm id)."""
        job_id, user = f"{n:016x}", user or self.user
        slurm_job_id = self.backend.enqueue(user.unix_user, job_id)
        add_job(self.store, user, job_id, state=state,
                at={State.PENDING: {"slurm_job_id": slurm_job_id}})
        if state is State.RUNNING:
            self.backend.states[slurm_job_id] = SchedulerState.RUNNING
        return job_id, slurm_job_id

    async def cycle(self) -> None:
        await poll_cycle(self.ctx, self.runtime)
        await asyncio.sleep(0.003)  # later writes get later stamps

    def state(self, job_id: str) -> str:
        return str(self.store.get_job(job_id)["state"])


@pytest.fixture
def setup(store: Store, config: Config, fake_clusters: FakeClusters) -> Setup:
    return Setup(store, config, fake_clusters)


@pytest.fixture
def evaluated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job ids the poller evaluates a status for, in order."""
    seen: list[str] = []
    apply_status = poller.apply_status

    def spy(cycle: poller.Cycle, job: dict[str, Any], status: SchedulerStatus) -> None:
        seen.append(job["id"])
        apply_status(cycle, job, status)

    monkeypatch.setattr(poller, "apply_status", spy)
    return seen


async def test_a_job_follows_slurm_with_one_query_per_cycle(setup: Setup) -> None:
    job_id, slurm_job_id = await setup.job(1)
    await setup.job(2)
    await setup.cycle()
    assert setup.store.get_job(job_id)["pending_reason"] == "Priority"
    setup.backend.states[slurm_job_id] = SchedulerState.RUNNING
    await setup.cycle()
    assert setup.state(job_id) == "running"
    setup.backend.states[slurm_job_id] = SchedulerState.COMPLETED
    await setup.cycle()
    job = setup.store.get_job(job_id)
    assert (job["state"], job["slurm_state"], job["node"]) == ("collecting", "COMPLETED", "vm")
    assert setup.collected() == [job_id]
    assert [e["to_state"] for e in setup.store.events(job_id)] == [
        "accepted", "staging", "pending", "running", "collecting"]
    await setup.cycle()
    assert len(setup.asked) == setup.backend.status_calls == 4
    assert slurm_job_id not in setup.asked[-1]  # no longer tracked


async def test_only_jobs_whose_status_or_row_changed_are_evaluated(
        setup: Setup, evaluated: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracked_module, "MARGIN", timedelta(0))
    jobs = [await setup.job(n) for n in range(20)]
    await setup.cycle()  # everything is new; every pending reason gets written
    assert len(evaluated) == 20
    await setup.cycle()  # the rows written by the previous cycle are read again
    await setup.cycle()
    evaluated.clear()
    await setup.cycle()
    assert evaluated == []
    setup.backend.states[jobs[3][1]] = SchedulerState.RUNNING
    setup.store.update_job(jobs[7][0], cancel_requested=1)  # another writer
    await setup.cycle()
    assert sorted(evaluated) == sorted([jobs[3][0], jobs[7][0]])
    assert setup.state(jobs[3][0]) == "running"
    assert setup.backend.cancels == [(jobs[7][1], "alice")]
    await setup.cycle()
    assert setup.backend.cancels == [(jobs[7][1], "alice")]  # sent once


async def test_jobs_entering_and_leaving_the_scheduler_are_picked_up(setup: Setup) -> None:
    first, _ = await setup.job(1)
    await setup.cycle()
    second, second_slurm = await setup.job(2)
    setup.store.transition(first, State.CANCELLED, reason=Reason.USER_CANCELLED)  # elsewhere
    await setup.cycle()
    assert setup.asked[-1] == {second_slurm}
    assert set(setup.runtime.tracked.jobs) == {second}
    assert setup.state(first) == "cancelled"


async def test_an_unreachable_scheduler_changes_no_state(setup: Setup) -> None:
    pending, _ = await setup.job(1)
    running, _ = await setup.job(2, State.RUNNING)
    await setup.cycle()
    setup.backend.unreachable = True
    await setup.cycle()
    await setup.cycle()
    for job_id, state in ((pending, "pending"), (running, "running")):
        job = setup.store.get_job(job_id)
        assert (job["state"], job["scheduler_reachable"]) == (state, 0)
    assert setup.runtime.reachable is False
    setup.backend.unreachable = False
    await setup.cycle()
    assert [setup.store.get_job(j)["scheduler_reachable"] for j in (pending, running)] == [1, 1]
    assert setup.runtime.reachable is True


async def test_a_transition_another_writer_overtook_is_dropped(setup: Setup) -> None:
    job_id, slurm_job_id = await setup.job(1)
    await setup.cycle()
    setup.backend.states[slurm_job_id] = SchedulerState.RUNNING
    recording = setup.backend.status_many

    async def cancelled_meanwhile(job_ids: Iterable[str]) -> dict[str, SchedulerStatus]:
        setup.store.transition(job_id, State.CANCELLED, reason=Reason.USER_CANCELLED)
        return await recording(job_ids)

    setup.backend.status_many = cancelled_meanwhile  # type: ignore[method-assign]
    await setup.cycle()
    assert setup.state(job_id) == "cancelled"
    assert [e["to_state"] for e in setup.store.events(job_id)][-2:] == ["pending", "cancelled"]
    assert job_id not in setup.runtime.tracked.jobs


async def test_a_failed_cycle_is_repeated_from_a_full_read(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id, slurm_job_id = await setup.job(1)
    await setup.cycle()
    setup.backend.states[slurm_job_id] = SchedulerState.RUNNING
    transition_many = setup.store.transition_many
    monkeypatch.setattr(setup.store, "transition_many", lambda *a: 1 / 0)
    await setup.cycle()  # logged, nothing written
    assert setup.state(job_id) == "pending"
    monkeypatch.setattr(setup.store, "transition_many", transition_many)
    await setup.cycle()
    assert setup.state(job_id) == "running"


async def test_a_job_slurm_no_longer_lists_goes_to_collecting_after_lost_after(
        setup: Setup) -> None:
    job_id, slurm_job_id = await setup.job(1)
    await setup.cycle()
    del setup.backend.states[slurm_job_id]
    await setup.cycle()
    assert setup.state(job_id) == "pending"  # not yet: lost_after is 0.1 s in the test config
    await asyncio.sleep(0.12)
    await setup.cycle()
    job = setup.store.get_job(job_id)
    assert (job["state"], job["slurm_state"]) == ("collecting", None)
    assert setup.runtime.missing_since == {}


async def test_a_job_entering_the_scheduler_is_found_by_its_event_whatever_the_clock(
        setup: Setup) -> None:
    await setup.job(1)
    await setup.cycle()
    job_id, slurm_job_id = await setup.job(2)
    setup.store.db.execute(  # stamped as by a clock that was set back meanwhile
        "UPDATE jobs SET updated_at = '2000-01-01T00:00:00.000Z' WHERE id = ?", [job_id])
    await setup.cycle()
    assert slurm_job_id in setup.asked[-1] and job_id in setup.runtime.tracked.jobs


async def test_full_reads_when_due_keep_what_was_evaluated(
        setup: Setup, evaluated: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    full_reads: list[bool] = []
    tracked_jobs = setup.store.tracked_jobs

    def spy(cluster: str, *args: Any) -> list[dict[str, Any]]:
        full_reads.append(not args)
        return tracked_jobs(cluster, *args)

    monkeypatch.setattr(setup.store, "tracked_jobs", spy)
    monkeypatch.setattr(tracked_module, "MARGIN", timedelta(0))
    jobs = [await setup.job(n) for n in range(3)]
    for _ in range(3):
        await setup.cycle()
    assert full_reads == [True, False, False]
    evaluated.clear()
    setup.runtime.tracked._since = datetime.now(UTC) + timedelta(hours=1)  # the clock went back
    await setup.cycle()
    assert full_reads[3:] == [True] and evaluated == []  # unchanged rows keep their status
    monkeypatch.setattr(tracked_module, "MAX_ENTERED", 0)  # many jobs entered at once
    setup.store.transition(jobs[0][0], State.CANCELLED, reason=Reason.USER_CANCELLED)
    setup.store.transition(jobs[1][0], State.RUNNING)
    await setup.cycle()
    assert full_reads[4:] == [True] and evaluated == [jobs[1][0]]
    assert set(setup.runtime.tracked.jobs) == {jobs[1][0], jobs[2][0]}


async def test_a_status_reported_for_another_user_is_not_believed(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    job_id, slurm_job_id = await setup.job(1, State.RUNNING)
    setup.backend.users[slurm_job_id] = "bob"  # e.g. a forged accounting record, or a reused id
    setup.backend.states[slurm_job_id] = SchedulerState.TIMEOUT
    await setup.cycle()
    await setup.cycle()
    assert setup.state(job_id) == "running"  # bob's word did not end alice's job
    assert caplog.text.count("listed for user 'bob', not 'alice'") == 1  # logged once
    await asyncio.sleep(0.12)  # past lost_after (0.1 s): handed to the collector as not listed
    await setup.cycle()
    job = setup.store.get_job(job_id)
    assert (job["state"], job["slurm_state"]) == ("collecting", None)
    setup.backend.users.pop(slurm_job_id)


async def test_the_cluster_view_is_refreshed_by_the_poller_not_by_requests(setup: Setup) -> None:
    calls = 0
    original = setup.backend.cluster_info

    async def counting() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return await original()

    setup.backend.cluster_info = counting  # type: ignore[method-assign]
    await poller.refresh_view(setup.runtime, every=60)
    await poller.refresh_view(setup.runtime, every=60)  # fresh enough: no second query
    assert calls == 1 and setup.runtime.view is not None
    assert setup.runtime.view["partitions"]["cpu"]["available"] is True
    assert setup.runtime.reachable is True
    setup.backend.unreachable = True
    await poller.refresh_view(setup.runtime, every=0)
    assert calls == 2 and setup.runtime.reachable is False
    assert setup.runtime.view is not None  # the last good view stays


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Wait for ``condition``, failing with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def polling(setup: Setup) -> AsyncIterator[None]:
    """The cluster's poller, running while in the block (as the job service runs it)."""
    task = asyncio.get_running_loop().create_task(poller.poll_forever(setup.ctx, setup.runtime))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class HangingCancels:
    """The backend's scancel, except that one user's hangs until :meth:`release` of its Slurm
    job id (as their login shell's rc file can make it, until ``command_timeout``)."""

    def __init__(self, backend: FakeBackend, user: str) -> None:
        self.user, self.plain = user, backend.cancel
        self.started: list[str] = []  # Slurm job ids, in the order their scancel began
        self.ended_by_cancel: list[str] = []  # ... that were cancelled while hanging
        self._released: dict[str, asyncio.Event] = {}
        backend.cancel = self.cancel  # type: ignore[method-assign]

    async def cancel(self, slurm_job_id: str, *, user: str) -> None:
        if user == self.user:
            self.started.append(slurm_job_id)
            try:
                await self._released.setdefault(slurm_job_id, asyncio.Event()).wait()
            except asyncio.CancelledError:
                self.ended_by_cancel.append(slurm_job_id)
                raise
        await self.plain(slurm_job_id, user=user)

    def release(self, slurm_job_id: str) -> None:
        self._released.setdefault(slurm_job_id, asyncio.Event()).set()


async def test_a_users_hanging_scancels_hold_up_no_one_and_are_bounded(setup: Setup) -> None:
    """If this fails, bob holds up the poller of the whole cluster: one cancel of his that
    never goes through (his shell sleeps in scancel) is re-sent inside every cycle, and
    everyone's jobs are seen to start and end up to ``command_timeout`` late."""
    bob = setup.store.users.add_user("bob", "bob")
    alices, alices_slurm = await setup.job(1)
    bobs = [await setup.job(n, user=bob) for n in (2, 3, 4)]
    for job_id, _ in bobs:  # his cancel requests, whose scancel did not go through
        setup.store.update_job(job_id, cancel_requested=1)
    hanging = HangingCancels(setup.backend, "bob")
    first, second, third = (slurm_job_id for _, slurm_job_id in bobs)
    async with polling(setup):
        await until(lambda: bool(hanging.started), 5.0, "bob's scancel re-sent")
        setup.backend.states[alices_slurm] = SchedulerState.RUNNING
        await until(lambda: setup.state(alices) == "running", 5.0,
                    "alice's job seen running while bob's scancel hangs")
        await until(lambda: len(hanging.started) == RESENDS_PER_USER == 2, 5.0,
                    "two of bob's scancels re-sent at once")
        calls = setup.backend.status_calls
        await until(lambda: setup.backend.status_calls >= calls + 3, 5.0, "three more cycles")
        assert hanging.started == [first, second]  # neither sent again, the third waits
        hanging.release(first)
        await until(lambda: setup.state(bobs[0][0]) == "collecting", 5.0,
                    "bob's first job ended once his scancel went through")
        await until(lambda: hanging.started == [first, second, third], 5.0,
                    "his third scancel sent once a re-send of his ended")
    assert setup.store.get_job(bobs[0][0])["slurm_state"] == "CANCELLED"
    # The re-sends still hanging ended with the poller that started them.
    assert sorted(hanging.ended_by_cancel) == [second, third]
    assert len(setup.runtime.resends) == 0 and not setup.runtime.cancelling


async def test_a_failed_resend_waits_longer_each_time_until_one_goes_through(
        setup: Setup) -> None:
    job_id, slurm_job_id = await setup.job(1)
    setup.store.update_job(job_id, cancel_requested=1)
    plain, failures = setup.backend.cancel, [0]

    async def failing(slurm_job_id: str, *, user: str) -> None:
        if failures[0] < 2:
            failures[0] += 1
            raise ClusterUnavailable("scancel: Unable to contact slurm controller")
        await plain(slurm_job_id, user=user)

    setup.backend.cancel = failing  # type: ignore[method-assign]
    waits: list[float] = []
    for _ in range(3):
        await setup.cycle()  # the re-send runs in its own task, done by the next cycle
        await setup.cycle()  # within its wait: not sent again
        if job_id in setup.runtime.resend_after:
            not_before, wait = setup.runtime.resend_after[job_id]
            waits.append(wait)
            setup.runtime.resend_after[job_id] = (not_before - wait, wait)  # the wait is over
    assert failures == [2] and waits == [poller.RESEND_FIRST_WAIT, 2 * poller.RESEND_FIRST_WAIT]
    assert setup.backend.cancels == [(slurm_job_id, "alice")]
    await setup.cycle()
    job = setup.store.get_job(job_id)
    assert (job["state"], job["slurm_state"]) == ("collecting", "CANCELLED")
    assert setup.runtime.resend_after == {} and setup.runtime.cancel_sent == set()
