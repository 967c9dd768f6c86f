"""The job event stream (``GET /api/v1/jobs/stream``, server-sent events) against the fake
cluster: one event per state change with the job as the API shows it, resuming after
``Last-Event-ID``, only the caller's jobs (an admin's ``?all=1``: everyone's), heartbeats that
carry the position past other users' changes, the per-user cap, and streams that end when the
gateway shuts down or the caller's credential stops naming them (revoked, disabled, demoted)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api import stream
from gateway.api.stream import STREAMS, JobStreams
from gateway.config import parse_config
from gateway.jobs.oversight import set_user
from gateway.scheduler import SchedulerState
from gateway.server import STORE, make_app

if TYPE_CHECKING:
    from conftest import FakeCluster, FakeClusters

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
LAB = {"kind": "lab", "time": "00:10:00"}


@dataclass
class Site:
    client: TestClient[Any, Any]
    app: web.Application
    cluster: FakeCluster
    tokens: dict[str, str]

    def auth(self, name: str, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}", **headers}

    async def lab(self, name: str) -> dict[str, Any]:
        response = await self.client.post("/api/v1/jobs", json=LAB, headers=self.auth(name))
        assert response.status == 201, await response.text()
        job: dict[str, Any] = await response.json()
        return job


@pytest.fixture
async def site(tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: FakeClusters,
               make_raw_config: Callable[..., dict[str, Any]]) -> Site:
    app = make_app(parse_config(make_raw_config(tmp_path / "data")), cluster_factory=fake_clusters)
    app[STREAMS] = JobStreams(per_user=2, interval=0.02, heartbeat=0.2)
    client = await aiohttp_client(app)
    users = app[STORE].users
    tokens = {name: users.issue_token(users.add_user(name, name, admin=name == "root"))
              for name in ("alice", "bob", "root")}
    return Site(client, app, fake_clusters.by_name["dev"], tokens)


async def read_events(response: aiohttp.ClientResponse, until: Callable[[list[dict[str, Any]]],
                      bool], timeout: float = 10.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Read SSE messages until ``until(events)``: (events as {id, event, data}, comments)."""
    events: list[dict[str, Any]] = []
    comments: list[str] = []
    message: dict[str, Any] = {}

    async def read() -> None:
        nonlocal message
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith(("id: ", "event: ")):
                key, _, value = line.partition(": ")
                message[key] = value
            elif line.startswith("data: "):
                message["data"] = json.loads(line[len("data: "):])
            elif line == "" and message:
                if "data" in message:  # EventSource dispatches only messages with data
                    events.append(message)
                else:
                    comments.append(f"id {message.get('id')}")  # a position only
                message = {}
                if until(events):
                    return

    await asyncio.wait_for(read(), timeout)
    return events, comments


def states(events: list[dict[str, Any]], job_id: str) -> list[str]:
    return [e["data"]["state"] for e in events if e["data"]["id"] == job_id]


async def test_state_changes_arrive_as_jobs_with_event_ids(site: Site) -> None:
    async with site.client.get("/api/v1/jobs/stream", headers=site.auth("alice")) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        job = await site.lab("alice")
        events, _ = await read_events(stream, lambda ev: "pending" in states(ev, job["id"]))
    assert all(e["event"] == "job" for e in events)
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
    pending = next(e["data"] for e in events if e["data"]["state"] == "pending")
    shown = await (await site.client.get(f"/api/v1/jobs/{job['id']}",
                                         headers=site.auth("alice"))).json()
    assert pending["id"] == shown["id"] and pending["kind"] == "lab"
    assert set(pending) == set(shown)  # the job as the API shows it


async def test_last_event_id_resumes_after_that_change(site: Site) -> None:
    async with site.client.get("/api/v1/jobs/stream?after=0",
                               headers=site.auth("alice")) as stream:
        job = await site.lab("alice")
        events, _ = await read_events(stream, lambda ev: "pending" in states(ev, job["id"]))
    first = events[0]
    site.cluster.backend.states[job["slurm_job_id"] or "101"] = SchedulerState.RUNNING
    headers = site.auth("alice", **{"Last-Event-ID": first["id"]})
    async with site.client.get("/api/v1/jobs/stream?after=0", headers=headers) as stream:
        again, _ = await read_events(stream, lambda ev: "running" in states(ev, job["id"]))
    assert int(again[0]["id"]) > int(first["id"])  # the header wins over ?after
    assert first["id"] not in [e["id"] for e in again]


async def test_only_the_callers_jobs_and_an_admin_sees_all(site: Site) -> None:
    async with site.client.get("/api/v1/jobs/stream", headers=site.auth("alice")) as mine, \
            site.client.get("/api/v1/jobs/stream?all=1", headers=site.auth("root")) as every:
        theirs = await site.lab("bob")
        own = await site.lab("alice")
        events, _ = await read_events(mine, lambda ev: "pending" in states(ev, own["id"]))
        seen, _ = await read_events(every, lambda ev: "pending" in states(ev, own["id"])
                                    and "pending" in states(ev, theirs["id"]))
    assert theirs["id"] not in {e["data"]["id"] for e in events}
    assert {e["data"]["user"] for e in seen} == {"alice", "bob"}
    refused = await site.client.get("/api/v1/jobs/stream?all=1", headers=site.auth("alice"))
    assert refused.status == 403


async def test_bad_event_ids_are_refused(site: Site) -> None:
    for headers, query in (({"Last-Event-ID": "x1"}, ""), ({}, "?after=-1"), ({}, "?all=yes")):
        response = await site.client.get("/api/v1/jobs/stream" + query,
                                         headers=site.auth("alice", **headers))
        assert response.status == 422, await response.text()


async def test_heartbeats_and_the_per_user_cap(site: Site) -> None:
    async with site.client.get("/api/v1/jobs/stream", headers=site.auth("alice")) as one, \
            site.client.get("/api/v1/jobs/stream", headers=site.auth("alice")) as two:
        assert await asyncio.wait_for(one.content.readuntil(b": keep-alive\n\n"), 5) == (
            b"retry: 2000\n\n: keep-alive\n\n")  # no job changed: a heartbeat only
        third = await site.client.get("/api/v1/jobs/stream", headers=site.auth("alice"))
        assert third.status == 429
        assert (await third.json())["limit"] == "job_streams"
        other = await site.client.get("/api/v1/jobs/stream", headers=site.auth("bob"))
        assert other.status == 200  # the cap is per user
        other.close()
        assert two.status == 200
    await asyncio.sleep(0.1)
    again = await site.client.get("/api/v1/jobs/stream", headers=site.auth("alice"))
    assert again.status == 200  # closed streams no longer count
    again.close()


async def test_shutdown_ends_open_streams(site: Site) -> None:
    async with site.client.get("/api/v1/jobs/stream", headers=site.auth("alice")) as stream:
        assert stream.status == 200
        await site.app[STREAMS].close()
        rest = await asyncio.wait_for(stream.content.read(), 5)
    assert rest.startswith(b"retry:")  # the stream ended, with nothing after its preamble


async def ended(response: aiohttp.ClientResponse) -> bytes:
    """What is left of the stream once the gateway ends it (5 s deadline)."""
    return await asyncio.wait_for(response.content.read(), 5)


async def test_a_stream_ends_when_its_token_is_revoked_or_its_user_disabled(site: Site) -> None:
    users = site.app[STORE].users
    async with site.client.get("/api/v1/jobs/stream", headers=site.auth("alice")) as alice, \
            site.client.get("/api/v1/jobs/stream", headers=site.auth("bob")) as bob:
        assert alice.status == bob.status == 200
        assert users.revoke_token(site.tokens["alice"])
        set_user(site.app[STORE], "bob", disabled=True)
        await site.lab("root")  # a change wakes every stream: each checks its caller first
        for response in (alice, bob):
            rest = await ended(response)
            assert b"event: job" not in rest


async def test_an_admins_stream_of_everyone_ends_when_they_are_demoted(site: Site) -> None:
    async with site.client.get("/api/v1/jobs/stream?all=1", headers=site.auth("root")) as every:
        job = await site.lab("alice")
        events, _ = await read_events(every, lambda ev: "pending" in states(ev, job["id"]))
        set_user(site.app[STORE], "root", admin=False)
        secret = await site.lab("bob")
        rest = await ended(every)
    assert secret["id"].encode() not in rest  # nothing of bob's after the demotion
    assert events  # it did stream while root was an admin


async def test_the_position_moves_past_other_users_changes(site: Site) -> None:
    async with site.client.get("/api/v1/jobs/stream", headers=site.auth("bob")) as bob:
        job = await site.lab("alice")
        while site.app[STORE].get_job(job["id"])["state"] != "pending":
            await asyncio.sleep(0.02)
        newest = site.app[STORE].last_event_id()

        async def heartbeats_until_newest() -> bytes:
            seen = b""
            while f"id: {newest}\n".encode() not in seen:
                seen += await bob.content.readuntil(b": keep-alive\n\n")
            return seen

        text = await asyncio.wait_for(heartbeats_until_newest(), 5)
    assert b"event: job" not in text  # nothing of alice's, but EventSource resumes from there


async def test_a_long_history_goes_out_batch_by_batch_with_the_loop_turning_between(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream from ``after=0`` over a long history: between batches the loop serves others
    (a red-team's stream replayed a user's whole history without letting go of the loop)."""
    monkeypatch.setattr(stream, "_message", lambda event_id, job, everyone: b"message")
    history = 3 * stream.BATCH

    class History:
        def event_watermark(self) -> int:
            return history

        def job_changes(self, user: Any, after: int, *, everyone: bool,
                        limit: int) -> list[tuple[int, dict[str, Any]]]:
            return [(n, {}) for n in range(after + 1, min(after + limit, history) + 1)]

    others: list[str] = []
    asyncio.get_running_loop().call_soon(others.append, "served")
    messages = stream._messages(History(), JobStreams(), lambda: object(),  # type: ignore[arg-type]
                                0, False)
    for _ in range(stream.BATCH):
        await anext(messages)
    assert others == []  # one batch: no turn of the loop in between
    await anext(messages)
    assert others == ["served"]
    await messages.aclose()
