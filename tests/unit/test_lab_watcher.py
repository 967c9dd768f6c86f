"""The lab watcher's pace: ready labs are looked at every ``labs.check_interval`` s even while
another lab starts; a starting lab is looked at as soon as it starts running or its owner asks
for it, but never twice within ``WOKEN_GAP`` s however often it is asked for; another user's
asking wakes nothing; one user's slow look holds back no other lab. Against the fake cluster's
transport (``lab.json``) and a probe that answers for the labs a test says are up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import gateway.jobs.lab_watcher as lab_watcher
from gateway.config import parse_config
from gateway.errors import LabUnavailable, NotFound
from gateway.jobs.context import JobContext
from gateway.jobs.lab_watcher import LabWatcher
from gateway.jobs.labs import WOKEN_GAP, LabRoute, open_lab
from gateway.states import State
from gateway.store import Store, User
from tests.factories import add_job, job_context

if TYPE_CHECKING:
    from conftest import FakeClusters, FakeTransport

LAB_PORT = 41234


class Probe:
    """A :class:`gateway.jobs.labs.LabProbe` whose labs in :attr:`up` answer; every GET is
    recorded as ``(job id, path)``."""

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.asked: list[tuple[str, str]] = []

    async def get(self, route: LabRoute, path: str) -> Any:
        self.asked.append((route.job_id, path))
        if route.job_id not in self.up:
            raise ConnectionRefusedError("not listening yet")
        return [] if path == "api/kernels" else {"started": "now"}

    def last_activity(self, job_id: str) -> float:
        return time.time()

    def touch(self, job_id: str) -> None:
        return None

    def retain(self, live: set[str]) -> None:
        return None

    def times(self, job_id: str, path: str) -> int:
        return self.asked.count((job_id, path))


class Setup:
    def __init__(self, ctx: JobContext, transport: FakeTransport, probe: Probe,
                 alice: User, bob: User) -> None:
        self.ctx, self.transport, self.probe = ctx, transport, probe
        self.alice, self.bob = alice, bob

    def lab(self, job_id: str, state: State, user: User | None = None) -> dict[str, Any]:
        """A lab of ``user`` (alice if None) in ``state``; a ready one has its port (read from
        ``lab.json``)."""
        return add_job(self.ctx.store, user or self.alice, job_id, kind="lab", state=state,
                       at={State.RUNNING: {"node": "n1"}, State.READY: {"lab_port": LAB_PORT}})

    def publish(self, job: dict[str, Any]) -> None:
        """The lab's server listens and has written ``lab.json``."""
        self.transport.files[f"{job['workdir']}/lab.json"] = json.dumps(
            {"port": LAB_PORT}).encode()
        self.probe.up.add(job["id"])

    def reads(self, job: dict[str, Any]) -> int:
        path = f"{job['workdir']}/lab.json"
        return sum(1 for read in self.transport.reads if read[0] == path)

    def state(self, job_id: str) -> State:
        return State(self.ctx.store.get_job(job_id)["state"])


async def until(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Wait for ``condition`` (seconds waited), failing with ``what`` after ``seconds``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
def starting_interval(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Set the watcher's starting pace (a long one shows what only a wake-up can do)."""
    return lambda seconds: monkeypatch.setattr(lab_watcher, "STARTING_INTERVAL", seconds)


@pytest.fixture
async def setup(tmp_path: Path, store: Store, fake_clusters: FakeClusters,
                make_raw_config: Callable[..., dict[str, Any]]) -> AsyncIterator[Setup]:
    raw = make_raw_config(tmp_path / "data")
    raw["labs"] = {"check_interval": 60.0, "idle_timeout": 3600.0}
    config = parse_config(raw)
    link = fake_clusters(config.clusters[0])
    ctx = job_context(config, store, {"dev": link})
    users = store.users
    yield Setup(ctx, fake_clusters.by_name["dev"].transport, Probe(),
                users.add_user("alice", "alice"), users.add_user("bob", "bob"))


@contextlib.asynccontextmanager
async def watching(setup: Setup) -> AsyncIterator[None]:
    """The watcher's loop, running while in the block."""
    task = asyncio.get_running_loop().create_task(LabWatcher(setup.ctx, setup.probe).run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_ready_labs_keep_their_own_pace_while_another_lab_starts(
        setup: Setup, starting_interval: Callable[[float], None]) -> None:
    starting_interval(0.05)
    ready = setup.lab("00000000000000a1", State.READY)
    setup.publish(ready)
    starting = setup.lab("00000000000000a2", State.RUNNING)
    async with watching(setup):
        await until(lambda: setup.reads(starting) >= 8, 5.0, "the starting lab looked at 8 times")
    # Once at the first full look, not at the starting lab's pace (60 s check_interval).
    assert setup.probe.times(ready["id"], "api/kernels") == 1
    assert setup.state(starting["id"]) is State.RUNNING


async def test_asking_for_a_starting_lab_makes_it_ready_at_once(
        setup: Setup, starting_interval: Callable[[float], None]) -> None:
    starting_interval(60.0)  # only the owner's request can bring the next look
    lab = setup.lab("00000000000000b1", State.RUNNING)
    async with watching(setup):
        await until(lambda: setup.reads(lab) == 1, 5.0, "the first look at the lab")
        setup.publish(lab)
        with pytest.raises(LabUnavailable, match="starting"):
            await open_lab(setup.ctx, setup.alice.id, lab["id"])
        await until(lambda: setup.state(lab["id"]) is State.READY, 5.0, "the lab ready")
        route = await open_lab(setup.ctx, setup.alice.id, lab["id"])
    assert route.port == LAB_PORT


async def test_a_lab_that_starts_running_is_looked_at_at_once(
        setup: Setup, starting_interval: Callable[[float], None]) -> None:
    starting_interval(60.0)
    ready = setup.lab("00000000000000c0", State.READY)
    lab = setup.lab("00000000000000c1", State.PENDING)
    async with watching(setup):
        # The first full look (no lab starting): the next one is check_interval (60 s) away.
        await until(lambda: setup.probe.times(ready["id"], "api/kernels") == 1, 5.0,
                    "the first full look")
        setup.ctx.store.transition(lab["id"], State.RUNNING, node="n1")
        setup.publish(lab)
        setup.ctx.job_started(lab["id"])  # as the poller does when Slurm says running
        await until(lambda: setup.state(lab["id"]) is State.READY, 5.0, "the lab ready")


async def test_asking_often_looks_at_most_once_per_gap_and_a_stranger_wakes_nothing(
        setup: Setup, starting_interval: Callable[[float], None]) -> None:
    starting_interval(60.0)
    lab = setup.lab("00000000000000d1", State.RUNNING)
    async with watching(setup):
        await until(lambda: setup.reads(lab) == 1, 5.0, "the first look at the lab")
        for _ in range(20):  # bob asks for alice's starting lab: no such lab, for him
            with pytest.raises(NotFound):
                await open_lab(setup.ctx, setup.bob.id, lab["id"])
        assert not setup.ctx.lab_wanted.is_set()
        started = time.monotonic()
        asked = 0
        while time.monotonic() - started < 10 * WOKEN_GAP:  # alice asks every 5 ms
            with pytest.raises(LabUnavailable):
                await open_lab(setup.ctx, setup.alice.id, lab["id"])
            asked += 1
            await asyncio.sleep(0.005)
        looked = setup.reads(lab) - 1
        elapsed = time.monotonic() - started
    # Woken (a 60 s pace would give none), but at most once per WOKEN_GAP, not per request.
    assert 2 <= looked <= elapsed / WOKEN_GAP + 1 < asked, (looked, elapsed, asked)


async def test_a_failed_look_does_not_stop_the_watcher(
        setup: Setup, starting_interval: Callable[[float], None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If this fails, one error reading the store (the database busy) ends the watcher's task
    for good: no lab would become ready, and none would be stopped for idling."""
    starting_interval(0.05)
    lab = setup.lab("00000000000000e1", State.RUNNING)
    live_labs = setup.ctx.store.live_labs
    failures: list[int] = []

    def busy_once() -> list[dict[str, Any]]:
        if not failures:
            failures.append(1)
            raise sqlite3.OperationalError("database is locked")
        return live_labs()

    monkeypatch.setattr(setup.ctx.store, "live_labs", busy_once)
    async with watching(setup):
        await until(lambda: bool(failures), 5.0, "the failed look")
        setup.publish(lab)
        setup.ctx.lab_wanted.set()
        await until(lambda: setup.state(lab["id"]) is State.READY, 5.0, "the lab ready")


class HangingReads:
    """The transport's ``read_file``, except that one user's reads hang until :meth:`release`
    of their path (as their login shell's rc file or a slow mount of theirs can make them,
    until ``command_timeout``)."""

    def __init__(self, transport: FakeTransport, user: str) -> None:
        self.user, self.plain = user, transport.read_file
        self.started: list[str] = []  # paths, in the order their read began
        self.ended_by_cancel: list[str] = []  # ... that were cancelled while hanging
        self._released: dict[str, asyncio.Event] = {}
        transport.read_file = self.read_file  # type: ignore[method-assign]

    async def read_file(self, path: str, *, user: str, limit: int, tail: bool = False,
                        offset: int | None = None) -> bytes:
        if user == self.user:
            self.started.append(path)
            try:
                await self._released.setdefault(path, asyncio.Event()).wait()
            except asyncio.CancelledError:
                self.ended_by_cancel.append(path)
                raise
        return await self.plain(path, user=user, limit=limit, tail=tail, offset=offset)

    def release(self, path: str) -> None:
        self._released.setdefault(path, asyncio.Event()).set()


async def test_a_users_slow_lab_holds_back_no_other_lab(
        setup: Setup, starting_interval: Callable[[float], None]) -> None:
    """If this fails, each cycle waits for the slowest look: bob's lab, whose ``lab.json`` he
    makes slow to read, holds every other user's starting lab back for ``command_timeout``
    per look, for as long as he keeps a lab starting."""
    starting_interval(0.05)
    slow, stuck = (setup.lab(f"00000000000000f{n}", State.RUNNING, setup.bob) for n in (1, 2))
    alices = setup.lab("00000000000000f3", State.RUNNING)
    hanging = HangingReads(setup.transport, "bob")
    slow_file, stuck_file = (f"{lab['workdir']}/lab.json" for lab in (slow, stuck))
    async with watching(setup):
        await until(lambda: setup.reads(alices) >= 5, 5.0,
                    "alice's starting lab looked at 5 times while bob's looks hang")
        assert sorted(hanging.started) == [slow_file, stuck_file]  # each looked at once
        setup.publish(alices)
        await until(lambda: setup.state(alices["id"]) is State.READY, 5.0,
                    "alice's lab ready while bob's looks hang")
        setup.publish(slow)
        hanging.release(slow_file)
        await until(lambda: setup.state(slow["id"]) is State.READY, 5.0,
                    "bob's lab ready once its look is released")
    assert setup.state(stuck["id"]) is State.RUNNING
    # The look still hanging ended with the watcher that started it.
    assert hanging.ended_by_cancel == [stuck_file]
