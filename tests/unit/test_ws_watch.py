"""The watch over open lab WebSockets (gateway/proxy/watch.py), alone: who is ended, with
which code, when, and what is counted. Both paths through it: test_proxy_parity.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry, Gauge

from gateway.proxy.watch import OpenWebSockets, Watched
from gateway.proxy.wsframes import GOING_AWAY, POLICY_VIOLATION

EVERY = 0.02


def gauge() -> Gauge:
    return Gauge("open", "open WebSockets", registry=CollectorRegistry())


class Socket:
    """A stand-in WebSocket: its check's answers, and what happened to it, in order."""

    def __init__(self, *answers: bool | Exception) -> None:
        self.answers = list(answers)
        self.events: list[str] = []
        self.asked = 0

    async def admitted(self) -> bool:
        self.asked += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def end(self, code: int) -> None:
        self.events.append(f"end {code}")

    def on_gone(self) -> None:
        self.events.append("gone")


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(EVERY / 2)


def open_one(watch: OpenWebSockets, socket: Socket) -> Watched:
    check: Callable[[], Awaitable[bool]] = socket.admitted
    return watch.watch(check, socket.end, socket.on_gone)


async def test_one_no_longer_admitted_is_ended_with_1008_and_the_rest_stay() -> None:
    open_now = gauge()
    watch = OpenWebSockets(open_now, EVERY)
    revoked, kept = Socket(True, False), Socket(True)
    handle = open_one(watch, revoked)
    open_one(watch, kept)
    assert open_now._value.get() == 2
    await until(lambda: revoked.events, "the revoked one ended")
    assert revoked.events == [f"end {POLICY_VIOLATION}"]
    asked, revoked_asked = kept.asked, revoked.asked
    await until(lambda: kept.asked > asked + 1, "the other still checked")
    # Ended, not asked or ended again, and counted until its owner says it is gone (its
    # connections may take a while to close).
    assert revoked.asked == revoked_asked and revoked.events == [f"end {POLICY_VIOLATION}"]
    assert len(watch) == 2 and open_now._value.get() == 2
    watch.gone(handle)
    assert revoked.events == [f"end {POLICY_VIOLATION}", "gone"]
    assert kept.events == [] and len(watch) == 1 and open_now._value.get() == 1
    watch.going_away()


async def test_a_check_that_fails_is_asked_again_not_taken_as_an_answer(
        caplog: pytest.LogCaptureFixture) -> None:
    watch = OpenWebSockets(gauge(), EVERY)
    flaky = Socket(RuntimeError("database is locked"), True, False)
    open_one(watch, flaky)
    await until(lambda: flaky.events, "ended once the check answers False")
    assert flaky.asked == 3 and flaky.events == [f"end {POLICY_VIOLATION}"]
    assert "could not check an open lab WebSocket again" in caplog.text


async def test_a_websocket_that_closes_itself_is_never_ended_and_counted_once() -> None:
    open_now = gauge()
    watch = OpenWebSockets(open_now, EVERY)
    closing = Socket(False)
    handle = open_one(watch, closing)
    watch.gone(handle)
    watch.gone(handle)
    await asyncio.sleep(EVERY * 3)
    assert closing.events == ["gone"] and closing.asked == 0
    assert open_now._value.get() == 0


async def test_going_away_ends_every_one_with_1001_and_each_opened_later() -> None:
    watch = OpenWebSockets(gauge(), 60)
    first, second, late = Socket(True), Socket(True), Socket(True)
    handles = [open_one(watch, first), open_one(watch, second)]
    watch.going_away()
    watch.going_away()  # (ended once only)
    assert first.events == second.events == [f"end {GOING_AWAY}"]
    handles.append(open_one(watch, late))
    await until(lambda: late.events, "one opened while the gateway stops is ended")
    assert late.events == [f"end {GOING_AWAY}"] and len(watch) == 3
    for handle in handles:
        watch.gone(handle)
    assert len(watch) == 0 and late.events == [f"end {GOING_AWAY}", "gone"]
