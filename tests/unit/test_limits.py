"""Per-user limits (design.md §4, ``[limits]``) through the HTTP API, the service running
in-process against the fake cluster: active notebook runs, active labs, submission rate.

Each test asserts what a client sees: 429 problem+json naming the limit (``limit``, ``value``),
``Retry-After`` for the rate limit only, another user unaffected, and the limit freeing up when
a job ends (or, for the rate, when the window's submissions age out: their ``created_at`` is moved
back in the store, the only way to let a minute pass without waiting for it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import parse_config
from gateway.server import STORE, make_app
from gateway.store import Store
from gateway.timestamps import format_timestamp

if TYPE_CHECKING:
    from conftest import FakeClusters

PROBLEM = "application/problem+json"
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
MakeGateway = Callable[..., Awaitable["Gateway"]]


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    store: Store
    tokens: dict[str, str]
    notebook: bytes

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def run(self, user: str = "alice", key: str | None = None) -> aiohttp.ClientResponse:
        """POST a notebook run (multipart) as ``user``."""
        form = aiohttp.FormData()
        form.add_field("notebook", self.notebook, filename="nb.ipynb",
                       content_type="application/x-ipynb+json")
        form.add_field("spec", json.dumps({"name": "nb"}), content_type="application/json")
        headers = self.auth(user) | ({"Idempotency-Key": key} if key else {})
        return await self.client.post("/api/v1/jobs", data=form, headers=headers)

    async def lab(self, user: str = "alice") -> aiohttp.ClientResponse:
        return await self.client.post("/api/v1/jobs", json={"kind": "lab"},
                                      headers=self.auth(user))

    async def created(self, response: aiohttp.ClientResponse) -> dict[str, Any]:
        assert response.status == 201, await response.text()
        job: dict[str, Any] = await response.json()
        return job

    async def cancel_until_ended(self, user: str, job_id: str) -> None:
        response = await self.client.post(f"/api/v1/jobs/{job_id}/cancel",
                                          headers=self.auth(user))
        assert response.status in (200, 202)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reply = await self.client.get(f"/api/v1/jobs/{job_id}", headers=self.auth(user))
            if (await reply.json())["state"] in TERMINAL:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} did not end after its cancel")


@pytest.fixture
async def make_gateway(
    tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: FakeClusters,
    make_raw_config: Callable[..., dict[str, Any]], make_notebook: Callable[..., bytes],
) -> MakeGateway:
    async def make(**limits: int) -> Gateway:
        raw = make_raw_config(tmp_path / "data")
        raw["limits"] = limits
        app = make_app(parse_config(raw), cluster_factory=fake_clusters)
        client = await aiohttp_client(app)
        store = app[STORE]
        tokens = {name: store.users.issue_token(store.users.add_user(name, name))
                  for name in ("alice", "bob")}
        return Gateway(client, store, tokens, make_notebook())
    return make


async def assert_limit(response: aiohttp.ClientResponse, limit: str, value: int) -> dict[str, Any]:
    """A 429 problem naming ``limit`` (and its configured ``value``)."""
    assert response.status == 429, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json(content_type=PROBLEM)
    assert body["status"] == 429 and body["title"] == "Limit exceeded"
    assert (body["limit"], body["value"]) == (limit, value)
    assert limit in body["detail"]
    return body


async def test_max_active_jobs(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(max_active_jobs=2)
    first = await gateway.created(await gateway.run())
    await gateway.created(await gateway.run())
    over = await gateway.run()
    body = await assert_limit(over, "max_active_jobs", 2)
    assert "Retry-After" not in over.headers  # waiting alone does not free it
    assert "2 notebook runs" in body["detail"]
    # Refused means not stored: alice still has exactly two jobs.
    listed = await gateway.client.get("/api/v1/jobs", headers=gateway.auth("alice"))
    assert len((await listed.json())["jobs"]) == 2
    # Bob has his own count; labs are counted apart from runs.
    await gateway.created(await gateway.run("bob"))
    await gateway.created(await gateway.lab())
    # A run that ends frees its place.
    await gateway.cancel_until_ended("alice", first["id"])
    await gateway.created(await gateway.run())
    await assert_limit(await gateway.run(), "max_active_jobs", 2)


async def test_max_active_labs(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(max_active_labs=1)
    lab = await gateway.created(await gateway.lab())
    over = await gateway.lab()
    await assert_limit(over, "max_active_labs", 1)
    assert "Retry-After" not in over.headers
    await gateway.created(await gateway.lab("bob"))
    await gateway.created(await gateway.run())  # runs are not labs
    await gateway.cancel_until_ended("alice", lab["id"])
    await gateway.created(await gateway.lab())


async def test_max_active_labs_zero_disables_labs(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(max_active_labs=0)
    body = await assert_limit(await gateway.lab(), "max_active_labs", 0)
    assert "disabled" in body["detail"]
    await gateway.created(await gateway.run())


async def test_rate_limit_names_it_and_says_when_to_retry(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(max_submissions_per_minute=3)
    jobs = [await gateway.created(await gateway.run()),
            await gateway.created(await gateway.lab()),  # labs count toward the rate too
            await gateway.created(await gateway.run())]
    # The oldest submission is 50.5 s old: one more is allowed when it turns 60 s old.
    now = time.time()
    for job, age in zip(jobs, (50.5, 20.0, 10.0), strict=True):
        gateway.store.db.execute("UPDATE jobs SET created_at = ? WHERE id = ?",
                                 [format_timestamp(now - age), job["id"]])
    over = await gateway.run()
    body = await assert_limit(over, "max_submissions_per_minute", 3)
    assert over.headers["Retry-After"] == "10"  # ceil(9.5 s)
    assert "retry in 10 s" in body["detail"]
    over = await gateway.lab()
    await assert_limit(over, "max_submissions_per_minute", 3)
    # Bob is not slowed down by alice.
    await gateway.created(await gateway.run("bob"))
    # Once the oldest has aged out, alice may submit one more, and then no more.
    gateway.store.db.execute("UPDATE jobs SET created_at = ? WHERE id = ?",
                             [format_timestamp(now - 61), jobs[0]["id"]])
    await gateway.created(await gateway.run())
    over = await gateway.run()
    await assert_limit(over, "max_submissions_per_minute", 3)
    assert over.headers["Retry-After"] == "40"  # when the one 20 s old turns 60 s old


async def test_an_idempotent_replay_is_not_counted_nor_refused(
    make_gateway: MakeGateway,
) -> None:
    gateway = await make_gateway(max_submissions_per_minute=2, max_active_jobs=2)
    first = await gateway.created(await gateway.run(key="run-1"))
    for _ in range(3):  # replays: neither counted nor refused
        replay = await gateway.run(key="run-1")
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert (await gateway.created(replay))["id"] == first["id"]
    await gateway.created(await gateway.run(key="run-2"))
    # Now at both limits: a replay is still answered with its job; a new key is refused.
    replay = await gateway.run(key="run-2")
    assert replay.status == 201 and replay.headers.get("Idempotent-Replayed") == "true"
    await assert_limit(await gateway.run(key="run-3"), "max_active_jobs", 2)
