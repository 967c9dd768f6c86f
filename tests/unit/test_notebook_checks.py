"""Uploaded notebooks are checked off the event loop, in turn (gateway/jobs/uploads.py).

Found by a red-team: checking a notebook of many small cells against its schema cost about a
second per MiB inside the request handler, on the one event loop that serves every user (the
API, the portal, the lab proxy, the poller). One upload of 16 MiB, refused afterwards for a bad
partition (so that no row counted it against any limit), stopped the gateway for everyone for
about 16 s, as often as its user liked.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.keys import SERVICE
from gateway.config import parse_config
from gateway.jobs import uploads
from gateway.jobs.uploads import MAX_CHECKS_PER_USER
from gateway.server import STORE, make_app
from tests.loopwatch import loop_watch

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
WAIT = 10.0


def many_cells(mib: int) -> bytes:
    """A valid v4 notebook of about ``mib`` MiB of empty markdown cells: the most schema
    checking per byte."""
    cell = {"cell_type": "markdown", "id": "a", "metadata": {}, "source": ""}
    return json.dumps({"cells": [cell] * (mib * 1024 * 1024 // 70), "metadata": {},
                       "nbformat": 4, "nbformat_minor": 5}).encode()


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    tokens: dict[str, str]
    notebook: bytes

    async def submit(self, user: str, notebook: bytes | None = None,
                     spec: dict[str, Any] | None = None,
                     key: str | None = None) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field("notebook", self.notebook if notebook is None else notebook,
                       filename="in.ipynb", content_type="application/x-ipynb+json")
        form.add_field("spec", json.dumps(spec or {}), content_type="application/json")
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.client.post("/api/v1/jobs", data=form, headers=headers)


@pytest.fixture
async def gw(tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: Any,
             make_raw_config: Callable[..., dict[str, Any]],
             make_notebook: Callable[..., bytes]) -> Gateway:
    raw = make_raw_config(tmp_path / "data")
    raw["limits"] = {"max_active_jobs": 1}
    app = make_app(parse_config(raw), cluster_factory=fake_clusters)
    client = await aiohttp_client(app)
    users = app[STORE].users
    tokens = {name: users.issue_token(users.add_user(name, name)) for name in ("alice", "bob")}
    return Gateway(client, tokens, make_notebook())


async def test_the_event_loop_keeps_turning_while_a_big_notebook_is_checked(
        gw: Gateway) -> None:
    """Everyone else's work (a task that asks for the loop every 10 ms) goes on while bob's
    3 MiB notebook of small cells is checked (about a second here): if this fails, the check
    runs on the event loop again."""
    notebook = many_cells(3)
    started = time.monotonic()
    async with loop_watch() as waits:
        response = await gw.submit("bob", notebook, {"partition": "nope"})
    took = time.monotonic() - started
    assert response.status == 422  # checked in full, refused for its partition
    assert max(waits) < min(0.25, took / 2), (max(waits), took)


@pytest.fixture
def gated_checks(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[str]]:
    """Every notebook check waits for the returned event (set it to let them finish); the
    list records each check as it starts."""
    gate, started = threading.Event(), list[str]()
    check = uploads.upgraded_notebook

    def gated(notebook: bytes) -> bytes:
        started.append(next((name for name in ("alice", "bob") if name.encode() in notebook),
                            "check"))
        assert gate.wait(WAIT), "the test never opened the gate"
        return check(notebook)

    monkeypatch.setattr(uploads, "upgraded_notebook", gated)
    return gate, started


async def wait_for_checks(started: list[str], count: int) -> None:
    async with asyncio.timeout(WAIT):
        while len(started) < count:
            await asyncio.sleep(0.01)


async def test_users_take_turns_and_one_user_queues_at_most_max_checks(
        gw: Gateway, gated_checks: tuple[threading.Event, list[str]],
        make_notebook: Callable[..., bytes]) -> None:
    """bob's first upload is being checked and all the others he may have wait; alice's,
    sent after them, is checked next (users take turns), then the rest of bob's. One more of
    bob's is a 429 naming the limit. If the turns fail, alice waits behind every upload of
    bob's; if the 429 fails, one user could queue the checker up without end."""
    gate, started = gated_checks
    spec = {"partition": "nope"}  # refused after the check: no limit on stored jobs applies
    bobs, alices = make_notebook("who = 'bob'"), make_notebook("who = 'alice'")
    waiting = [asyncio.ensure_future(gw.submit("bob", bobs, spec))]
    await wait_for_checks(started, 1)
    waiting += [asyncio.ensure_future(gw.submit("bob", bobs, spec))
                for _ in range(MAX_CHECKS_PER_USER - 1)]
    checks, bob = gw.client.server.app[SERVICE]._notebook_checks, 2  # (bob's user id)
    async with asyncio.timeout(WAIT):  # until all of them wait their turn
        while checks._users.held(bob) < MAX_CHECKS_PER_USER:
            await asyncio.sleep(0.01)
    refused = await gw.submit("bob", bobs, spec)
    problem = await refused.json(content_type="application/problem+json")
    assert (problem["limit"], problem["value"]) == ("notebook_checks", MAX_CHECKS_PER_USER)
    assert refused.headers["Retry-After"] == "1"
    waiting.append(asyncio.ensure_future(gw.submit("alice", alices, spec)))
    await asyncio.sleep(0.2)  # (a negative: 0.2 s for a second check to start if one could)
    assert started == ["bob"]
    gate.set()
    assert {(await response).status for response in waiting} == {422}
    assert started[:3] == ["bob", "alice", "bob"]
    assert started.count("bob") == MAX_CHECKS_PER_USER


async def test_parallel_uploads_cannot_pass_the_active_job_limit_together(
        gw: Gateway, gated_checks: tuple[threading.Event, list[str]]) -> None:
    """With max_active_jobs = 1, two uploads of bob's that both passed the limit before their
    checks: the first stored gets 201, the other 429 (the limit is checked again after the
    check). If this fails, a user's parallel uploads overshoot their limits."""
    gate, started = gated_checks
    uploads_ = [asyncio.ensure_future(gw.submit("bob")) for _ in range(2)]
    await wait_for_checks(started, 1)
    gate.set()
    statuses = sorted([(await response).status for response in uploads_])
    assert statuses == [201, 429]


async def test_a_retry_sent_while_the_first_is_checked_gets_the_first_job(
        gw: Gateway, gated_checks: tuple[threading.Event, list[str]]) -> None:
    """A client that timed out retries with the same Idempotency-Key while its first upload
    is still checked: both get the one job, although it fills max_active_jobs (= 1). From a
    review: the key was looked up only before the check, so the retry got a 429."""
    gate, started = gated_checks
    first = asyncio.ensure_future(gw.submit("bob", key="k1"))
    await wait_for_checks(started, 1)
    retry = asyncio.ensure_future(gw.submit("bob", key="k1"))
    await asyncio.sleep(0.2)  # (the retry is in, waiting its turn behind the first check)
    gate.set()
    answers = [await first, await retry]
    assert [answer.status for answer in answers] == [201, 201], await answers[1].text()
    assert (await answers[0].json())["id"] == (await answers[1].json())["id"]
