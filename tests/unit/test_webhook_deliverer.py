"""The webhook deliverer against real local receivers (127.0.0.1, so ``allow_private`` is on
unless a test is about the policy): each state change of a job with a webhook is POSTed once
delivered, signed with its owner's secret, retried with backoff, in the job's order; a job's
retries hold back no other job; every attempt is a ``webhook`` row of the job's events, logged
and counted, and none of them names the secret, the signature or the URL's path; one user's
silent receiver holds back no other user's deliveries."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver

from gateway.config import Config, parse_config
from gateway.jobs.webhooks import MAX_IN_FLIGHT, PER_USER, WebhookDeliverer
from gateway.logs import JSONFormatter
from gateway.states import Reason, State
from gateway.store import Store, User
from gateway.webhooks.signing import webhook_secret
from tests.factories import add_job, job_context
from tests.unit.conftest import COOKIE_SECRET, raw_config
from tests.unit.test_webhook_addresses import FixedResolver
from tests.webhook_receiver import Receiver, receiving

FAST = {"allow_private": True, "backoff_s": 0.05, "max_backoff_s": 0.2, "max_attempts": 3}


def webhooks_config(tmp_path: Path, **webhooks: Any) -> Config:
    raw = raw_config(tmp_path / "data")
    raw["webhooks"] = {**FAST, **webhooks}
    return parse_config(raw)


@pytest.fixture
def alice(store: Store) -> User:
    return store.users.add_user("alice", "alice")


class Running:
    """A deliverer running in the background of a test, on ``store``."""

    def __init__(self, config: Config, store: Store,
                 resolver: AbstractResolver | None = None) -> None:
        self.ctx = job_context(config, store)
        self.deliverer = WebhookDeliverer(self.ctx, resolver=resolver, poll_interval=0.01)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.deliverer.run())
        await asyncio.sleep(0)  # it takes the events table's newest row as its start

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    def counted(self, outcome: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(
            "hpcgw_webhook_attempts_total", {"outcome": outcome})
        return value or 0.0


@pytest.fixture
async def start(store: Store) -> AsyncIterator[Callable[..., Any]]:
    started: list[Running] = []

    async def starting(config: Config, resolver: AbstractResolver | None = None) -> Running:
        running = Running(config, store, resolver)
        await running.start()
        started.append(running)
        return running

    yield starting
    for running in started:
        await running.stop()


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait (checking every 10 ms) until ``condition()``; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.01)


def hooked(url: str) -> str:
    return json.dumps({"webhook": {"url": url}})


def delivery_rows(store: Store, job_id: str) -> list[dict[str, Any]]:
    return [e for e in store.events(job_id, deliveries=True) if e["kind"] == "webhook"]


@pytest.fixture
def receiver_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="gateway.jobs.webhooks")
    yield caplog


async def test_state_changes_are_delivered_in_order_signed_and_retried(
    tmp_path: Path, store: Store, alice: User, start: Callable[..., Any],
    receiver_log: pytest.LogCaptureFixture,
) -> None:
    async with receiving(Receiver(statuses=[503])) as receiver:
        before = add_job(store, alice, "0" * 16, spec=hooked(receiver.url))  # before the start
        running = await start(webhooks_config(tmp_path))
        job_id = add_job(store, alice, "a" * 16, spec=hooked(receiver.url))["id"]
        for state in (State.STAGING, State.PENDING, State.RUNNING, State.COLLECTING):
            store.transition(job_id, state)
        store.transition(job_id, State.SUCCEEDED, reason=Reason.COMPLETED)
        got = await receiver.wait_for(7)
    states = [d.data["state"] for d in got]
    assert states == ["accepted", "accepted", "staging", "pending", "running", "collecting",
                      "succeeded"]  # the first one answered 503, then again
    assert {d.data["job_id"] for d in got} == {job_id}  # not the job from before the start
    assert before["id"] not in {d.data["job_id"] for d in got}
    changes = [e for e in store.events(job_id)]
    last = got[-1].data
    assert last == {"event_id": last["event_id"], "job_id": job_id, "state": "succeeded",
                    "previous_state": "collecting", "reason": "completed",
                    "time": changes[-1]["at"]}
    assert got[0].body == got[1].body  # a retry sends the same event (event_id and all)
    alice_secret = webhook_secret(COOKIE_SECRET, alice.id)
    bob_secret = webhook_secret(COOKIE_SECRET, alice.id + 1)
    assert all(d.signed_by(alice_secret) and not d.signed_by(bob_secret) for d in got)
    await until(lambda: len(delivery_rows(store, job_id)) == 7, "7 delivery rows")
    rows = delivery_rows(store, job_id)
    port = receiver.url.split(":")[2].split("/")[0]
    assert rows[0]["message"] == (f"webhook delivery 1/3 of accepted to http://127.0.0.1:{port}: "
                                  "HTTP 503, retrying in 0.05 s")
    assert rows[1]["message"] == (f"webhook delivery 2/3 of accepted to http://127.0.0.1:{port}: "
                                  "HTTP 204")
    assert [(r["to_state"], r["from_state"], r["reason"]) for r in rows[1:3]] == [
        ("accepted", None, None), ("staging", None, None)]
    assert [e["to_state"] for e in store.events(job_id)] == states[1:]  # no new state change
    assert (running.counted("delivered"), running.counted("retrying")) == (6, 1)
    logged = [JSONFormatter().format(r) for r in receiver_log.records]
    assert any('"attempt": 1, "outcome": "retrying"' in line for line in logged), logged
    for text in [*logged, *(r["message"] for r in rows)]:
        assert alice_secret not in text and "/hook" not in text
        assert all(d.headers["Hpcgw-Signature"] not in text for d in got)


async def test_a_job_being_retried_holds_back_no_other_job(
    tmp_path: Path, store: Store, alice: User, start: Callable[..., Any]
) -> None:
    async with receiving(Receiver(hold=asyncio.Event())) as stuck, receiving() as fine:
        await start(webhooks_config(tmp_path))
        slow = add_job(store, alice, "a" * 16, spec=hooked(stuck.url))["id"]
        quick = add_job(store, alice, "b" * 16, spec=hooked(fine.url))["id"]
        store.transition(slow, State.STAGING)
        store.transition(quick, State.STAGING)
        await stuck.wait_for(1)
        got = await fine.wait_for(2)
        assert [(d.data["job_id"], d.data["state"]) for d in got] == [
            (quick, "accepted"), (quick, "staging")]
        assert len(stuck.deliveries) == 1  # its staging waits for its accepted



async def test_a_users_silent_receiver_holds_back_no_other_users_deliveries(
    tmp_path: Path, store: Store, alice: User, start: Callable[..., Any]
) -> None:
    """Found by a red-team: the deliverer's slots were one first-come pool, so bob's jobs,
    aimed at a receiver that takes the connection and never answers, held every slot for
    ``timeout_s`` per attempt and everyone else's deliveries waited behind his. Now at most
    PER_USER of his are under way while more than all the slots' worth wait; alice's goes
    meanwhile, and his all go once his receiver answers."""
    bob = store.users.add_user("bob", "bob")
    silent = asyncio.Event()  # bob's receiver answers nothing until the test sets it
    async with receiving(Receiver(hold=silent)) as bobs, receiving() as alices:
        await start(webhooks_config(tmp_path, timeout_s=60))  # no attempt times out here
        his = [add_job(store, bob, f"{number:016x}", spec=hooked(bobs.url))["id"]
               for number in range(MAX_IN_FLIGHT + PER_USER)]
        await bobs.wait_for(PER_USER)
        hers = add_job(store, alice, "a" * 16, spec=hooked(alices.url))["id"]
        [got] = await alices.wait_for(1)
        assert (got.data["job_id"], got.data["state"]) == (hers, "accepted")
        assert len(bobs.deliveries) == PER_USER  # the rest of his wait their turn
        silent.set()
        delivered = await bobs.wait_for(len(his))
    assert sorted(d.data["job_id"] for d in delivered) == sorted(his)  # each once
    await until(lambda: all(len(delivery_rows(store, job)) == 1 for job in his),
                "a delivery row for each of bob's jobs")
    assert all(delivery_rows(store, job)[0]["message"].endswith("HTTP 204") for job in his)

async def test_after_max_attempts_a_delivery_is_given_up_and_the_next_one_goes(
    tmp_path: Path, store: Store, alice: User, start: Callable[..., Any]
) -> None:
    async with receiving(Receiver(default=500)) as receiver:
        running = await start(webhooks_config(tmp_path))
        job_id = add_job(store, alice, "a" * 16, spec=hooked(receiver.url))["id"]
        store.transition(job_id, State.STAGING)
        got = await receiver.wait_for(6)
        assert [d.data["state"] for d in got] == ["accepted"] * 3 + ["staging"] * 3
        await until(lambda: len(delivery_rows(store, job_id)) == 6, "6 delivery rows")
    messages = [row["message"] for row in delivery_rows(store, job_id)]
    assert messages[1].endswith("HTTP 500, retrying in 0.1 s")
    assert messages[2].endswith("HTTP 500; giving up")
    assert (running.counted("retrying"), running.counted("failed")) == (4, 2)


@pytest.mark.parametrize("named", [False, True])
async def test_without_allow_private_an_internal_receiver_gets_nothing(
    tmp_path: Path, store: Store, alice: User, start: Callable[..., Any], named: bool
) -> None:
    """A loopback URL stored before the policy applied (or a config change), or a name whose
    DNS answer is loopback: refused at delivery, recorded once, never retried."""
    async with receiving() as receiver:
        url = receiver.url.replace("127.0.0.1", "hooks.example.org") if named else receiver.url
        running = await start(webhooks_config(tmp_path, allow_private=False),
                              resolver=FixedResolver("127.0.0.1"))
        job_id = add_job(store, alice, "a" * 16, spec=hooked(url))["id"]
        await until(lambda: len(delivery_rows(store, job_id)) == 1, "a delivery row")
        assert receiver.deliveries == []
    [row] = delivery_rows(store, job_id)
    if named:  # what the name resolves to stays in the gateway's log, out of the user's events
        assert "not a public one); not retried" in row["message"]
        assert "127.0.0.1" not in row["message"]
    else:  # the user wrote the literal address
        assert "127.0.0.1 is a loopback address; not retried" in row["message"]
    assert row["message"].startswith("webhook delivery 1/3 of accepted")
    assert running.counted("refused") == 1
