"""Webhooks through the HTTP API (fake cluster, real local receiver): each user reads their own
secret; a job's spec carries its webhook and shows it; a loopback webhook is refused at submit
unless the admin allows private addresses; with it allowed, the job's deliveries arrive signed
and its events list them as webhook rows among its state changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.server import STORE, make_app
from gateway.webhooks.signing import webhook_secret
from tests.unit.conftest import COOKIE_SECRET, FakeClusters, raw_config
from tests.unit.test_api import Api, ClientFactory, api, assert_problem  # noqa: F401
from tests.webhook_receiver import receiving


async def test_each_user_reads_a_secret_of_their_own(api: Api) -> None:  # noqa: F811
    answers = {}
    for user, token in (("alice", api.alice), ("bob", api.bob)):
        response = await api.get("/api/v1/webhook-secret", token)
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        answers[user] = await response.json()
    store = api.app[STORE]
    for user in ("alice", "bob"):
        assert answers[user] == {"secret": webhook_secret(COOKIE_SECRET,
                                                          store.users.get_user(user).id)}
    assert answers["alice"] != answers["bob"]
    again = await (await api.get("/api/v1/webhook-secret")).json()
    assert again == answers["alice"]
    anonymous = await api.client.get("/api/v1/webhook-secret")
    await assert_problem(anonymous, 401)


async def test_a_job_shows_its_webhook_and_a_loopback_one_is_refused(
    api: Api,  # noqa: F811
) -> None:
    job = await api.create({"webhook": {"url": "https://hooks.example.org/in"}})
    assert job["webhook"] == {"url": "https://hooks.example.org/in"}
    assert (await api.create())["webhook"] is None
    refused = await assert_problem(
        await api.submit({"webhook": {"url": "http://127.0.0.1:8080/internal"}}), 422)
    assert refused["fields"] == ["webhook.url"]
    assert "only to public addresses" in refused["errors"][0]["message"]


@pytest.fixture
async def open_api(tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: FakeClusters,
                   make_notebook: Any) -> Api:
    """The API of a gateway whose admin allows private addresses (the receiver is local)."""
    raw = raw_config(tmp_path / "data")
    raw["webhooks"] = {"allow_private": True, "backoff_s": 0.05}
    app = make_app(parse_config(raw), cluster_factory=fake_clusters)
    client = await aiohttp_client(app)
    store = app[STORE]
    alice = store.users.issue_token(store.users.add_user("alice", "alice"))
    bob = store.users.issue_token(store.users.add_user("bob", "bob"))
    return Api(client, app, fake_clusters.by_name["dev"], alice, bob, make_notebook())


async def test_deliveries_arrive_signed_and_show_in_the_events(open_api: Api) -> None:
    secret = (await (await open_api.get("/api/v1/webhook-secret")).json())["secret"]
    bob_secret = (await (await open_api.get("/api/v1/webhook-secret",
                                            open_api.bob)).json())["secret"]
    async with receiving() as receiver:
        receiver.statuses = [503]
        job = await open_api.pending({"webhook": {"url": receiver.url}})
        got = await receiver.wait_for(4)
    assert [(d.data["job_id"], d.data["state"]) for d in got] == [
        (job["id"], "accepted"), (job["id"], "accepted"), (job["id"], "staging"),
        (job["id"], "pending")]
    assert all(d.signed_by(secret) and not d.signed_by(bob_secret) for d in got)
    events = (await (await open_api.get(f"/api/v1/jobs/{job['id']}/events")).json())["events"]
    states = [(e["from_state"], e["to_state"]) for e in events if e["kind"] == "state"]
    assert states == [(None, "accepted"), ("accepted", "staging"), ("staging", "pending")]
    webhooks = [e["message"] for e in events if e["kind"] == "webhook"]
    assert webhooks[0].startswith("webhook delivery 1/5 of accepted to http://127.0.0.1:")
    assert webhooks[0].endswith("HTTP 503, retrying in 0.05 s")
    forbidden = await open_api.get(f"/api/v1/jobs/{job['id']}/events", open_api.bob)
    await assert_problem(forbidden, 404)
