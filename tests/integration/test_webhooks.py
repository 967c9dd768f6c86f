"""Webhooks of a real `hpcgw serve` on the dev cluster, received by a real aiohttp server on
127.0.0.1 that checks every signature the way a user's receiver would.

With `[webhooks] allow_private = true` (the receiver is on loopback) a notebook run's state
changes arrive in order, accepted to succeeded, signed with the secret alice reads from the API
(bob's verifies none of them); the first answer is a 503, so the first delivery is retried,
and the retry shows in the job's events and the gateway's log. A gateway with the default
policy refuses a loopback or link-local webhook at submit (422), and a name that resolves to
loopback at delivery: the hostile user's receiver on the gateway's host gets nothing.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from gateway.webhooks.addresses import refusal
from tests.webhook_receiver import Delivery, Receiver, receiving

from .conftest import SECRETS, Api, Gateway, log_events, make_notebook, own_gateway

FAST_RETRIES = """
[webhooks]
allow_private = true
backoff_s = 0.2
max_backoff_s = 1.0
"""


@pytest.fixture(scope="module")
def hooked_gateway(dev_config: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Gateway]:
    with own_gateway(dev_config, tmp_path_factory.mktemp("gateway-webhooks"),
                     FAST_RETRIES) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def public_only_gateway(dev_config: Path, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[Gateway]:
    with own_gateway(dev_config, tmp_path_factory.mktemp("gateway-public-webhooks")) as gateway:
        yield gateway


async def secret_of(api: Api) -> str:
    status, answer = await api.call("GET", "/api/v1/webhook-secret")
    assert status == 200, answer
    secret = str(answer["secret"])
    SECRETS.add(secret)  # the session's no_secret_in_any_log check looks for it too
    return secret


async def events_until(api: Api, job_id: str, condition: Any, what: str,
                       timeout: float = 30.0) -> list[dict[str, Any]]:
    """The job's events once ``condition(events)`` holds; fails at the deadline."""
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status, answer = await api.call("GET", f"/api/v1/jobs/{job_id}/events")
        assert status == 200, answer
        events = answer["events"]
        if condition(events):
            return events
        await asyncio.sleep(0.25)
    raise AssertionError(f"job {job_id}: no {what} within {timeout}s; events {events}")


def deliveries_of(got: list[Delivery]) -> list[tuple[int, str]]:
    """(event_id, state) of each delivery, a retried one once."""
    seen: list[tuple[int, str]] = []
    for delivery in got:
        data = delivery.data
        if (data["event_id"], data["state"]) not in seen:
            seen.append((data["event_id"], data["state"]))
    return seen


async def test_a_run_s_state_changes_arrive_signed_in_order_and_a_503_is_retried(
    hooked_gateway: Gateway,
) -> None:
    alice, bob = Api(hooked_gateway, "alice"), Api(hooked_gateway, "bob")
    alice_secret, bob_secret = await secret_of(alice), await secret_of(bob)
    cli = hooked_gateway.cli("bob", "webhook-secret").stdout.strip()
    assert cli == bob_secret != alice_secret
    async with receiving(Receiver(statuses=[503])) as receiver:
        # A path and query the receiver may treat as a secret: never in the gateway's log.
        url = receiver.url.replace("/hook", "/in/private-path-x1?key=private-query-k9")
        status, job = await alice.submit(make_notebook("print('hooked')"), {
            "partition": "cpu", "webhook": {"url": url}})
        assert status == 201, job
        assert job["webhook"] == {"url": url}
        assert (await alice.wait_terminal(job["id"]))["state"] == "succeeded"
        got = await receiver.wait_until(
            lambda got: any(d.data["state"] == "succeeded" for d in got), "succeeded", 30)
    assert all(d.data["job_id"] == job["id"] for d in got)
    assert all(d.signed_by(alice_secret) for d in got), [d.headers for d in got]
    assert not any(d.signed_by(bob_secret) for d in got)
    assert got[0].body == got[1].body  # the 503 was retried: the same event again
    assert {d.headers["User-Agent"] for d in got} == {"hpcgw-webhooks"}
    events = await events_until(
        alice, job["id"], lambda events: sum(e["kind"] == "webhook" for e in events) >= len(got),
        "delivery row for every delivery")
    changes = [e["to_state"] for e in events if e["kind"] == "state"]
    assert [state for _, state in deliveries_of(got)] == changes  # each once, in order
    assert changes[0] == "accepted" and changes[-1] == "succeeded" and "running" in changes
    rows = [e["message"] for e in events if e["kind"] == "webhook"]
    origin = receiver.url.removesuffix("/hook")
    assert rows[0] == (f"webhook delivery 1/5 of accepted to {origin}: HTTP 503, "
                       "retrying in 0.2 s")
    assert rows[1] == f"webhook delivery 2/5 of accepted to {origin}: HTTP 204"
    logged = [e for e in log_events(hooked_gateway.log_path) if e.get("job_id") == job["id"]
              and e.get("webhook") == origin]
    assert [(e["attempt"], e["outcome"]) for e in logged][:2] == [(1, "retrying"),
                                                                  (2, "delivered")]
    log_text = hooked_gateway.log_path.read_text()
    assert "private-path-x1" not in log_text and "private-query-k9" not in log_text


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "169.254.169.254",
                                  "[::ffff:127.0.0.1]", "10.0.0.1"])
async def test_without_allow_private_an_internal_webhook_is_refused_at_submit(
    public_only_gateway: Gateway, host: str
) -> None:
    alice = Api(public_only_gateway, "alice")
    async with receiving() as receiver:
        port = receiver.url.split(":")[-1].split("/")[0]
        status, problem = await alice.submit(make_notebook("print('never')"), {
            "webhook": {"url": f"http://{host}:{port}/hook"}})
        assert status == 422, problem
        assert problem["fields"] == ["webhook.url"]
        assert "only to public addresses" in problem["errors"][0]["message"]
        assert receiver.deliveries == []


async def test_without_allow_private_a_name_resolving_to_loopback_gets_nothing(
    public_only_gateway: Gateway,
) -> None:
    """The host's own name passes the submit check (a name is not resolved then) and is
    refused where the delivery connects: every address it resolves to is checked."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    assert all(refusal(ip_address(a.split("%")[0])) for a in addresses), (
        f"this test needs the host's name ({name}) to resolve to internal addresses only, "
        f"as on the dev machine; it resolves to {addresses}")
    alice = Api(public_only_gateway, "alice")
    async with receiving(host="127.0.0.1") as receiver:
        url = receiver.url.replace("127.0.0.1", name)
        status, job = await alice.submit(make_notebook("print('never told')"),
                                         {"webhook": {"url": url}})
        assert status == 201, job
        try:
            events = await events_until(
                alice, job["id"], lambda events: any(e["kind"] == "webhook" for e in events),
                "delivery row")
        finally:
            await alice.call("POST", f"/api/v1/jobs/{job['id']}/cancel")
        assert receiver.deliveries == []
    row = next(e for e in events if e["kind"] == "webhook")
    assert row["to_state"] == "accepted"
    assert row["message"].startswith(f"webhook delivery 1/5 of accepted to http://{name}:")
    assert "refused" in row["message"] and row["message"].endswith("not retried")
    assert not any(address in row["message"] for address in addresses)  # no network map
