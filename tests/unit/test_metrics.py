"""GET /metrics against the whole service on the fake cluster: who may read it, and that the
figures follow what happens (jobs by state, the scheduler's calls, waits, reachability). The
real Slurm and promtool's lint are in tests/integration/test_metrics.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from gateway.scheduler import SchedulerState
from gateway.server import STORE, make_app

if TYPE_CHECKING:
    from conftest import FakeClusters

METRICS_TOKEN = "m" * 40
ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


async def client_for(tmp_path: Path, aiohttp_client: ClientFactory, fakes: FakeClusters,
                     raw_config: Callable[..., dict[str, Any]], token: str | None
                     ) -> tuple[TestClient[Any, Any], str]:
    raw = raw_config(tmp_path / "data")
    if token is not None:
        raw["metrics"] = {"token": token}
    app = make_app(parse_config(raw), cluster_factory=fakes)
    client = await aiohttp_client(app)
    store = app[STORE]
    return client, store.users.issue_token(store.users.add_user("alice", "alice"))


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape by (name, labels)."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def scrape(client: TestClient[Any, Any]) -> dict[tuple[str, frozenset[tuple[str, str]]],
                                                         float]:
    response = await client.get("/metrics",
                                headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status == 200
    assert response.content_type == "text/plain"
    return samples(await response.text())


async def test_without_a_token_configured_there_are_no_metrics(
        tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: FakeClusters,
        make_raw_config: Callable[..., dict[str, Any]]) -> None:
    client, alice = await client_for(tmp_path, aiohttp_client, fake_clusters, make_raw_config,
                                     None)
    for headers in ({}, {"Authorization": f"Bearer {alice}"}):
        response = await client.get("/metrics", headers=headers)
        assert response.status == 404
        assert "set [metrics] token" in (await response.json(content_type=None))["detail"]


@pytest.mark.parametrize("header", [None, "Bearer " + "m" * 39, "Bearer " + "m" * 41,
                                    "Basic " + "m" * 40, "USER"])
async def test_only_the_metrics_token_reads_them(
        tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: FakeClusters,
        make_raw_config: Callable[..., dict[str, Any]], header: str | None) -> None:
    """A user's own token, a near miss or another scheme: 401, and no figure leaks."""
    client, alice = await client_for(tmp_path, aiohttp_client, fake_clusters, make_raw_config,
                                     METRICS_TOKEN)
    headers = {} if header is None else {
        "Authorization": f"Bearer {alice}" if header == "USER" else header}
    response = await client.get("/metrics", headers=headers)
    assert response.status == 401
    assert "hpcgw_" not in await response.text()
    assert (await scrape(client))[("hpcgw_users", frozenset())] == 1


async def test_the_figures_follow_a_job(
        tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: FakeClusters,
        make_raw_config: Callable[..., dict[str, Any]],
        make_notebook: Callable[..., bytes]) -> None:
    client, alice = await client_for(tmp_path, aiohttp_client, fake_clusters, make_raw_config,
                                     METRICS_TOKEN)
    auth = {"Authorization": f"Bearer {alice}"}
    created = await client.post("/api/v1/jobs", data=upload(make_notebook(), {"partition": "gpu"}),
                                headers=auth)
    assert created.status == 201
    job_id = (await created.json())["id"]
    backend = fake_clusters.by_name["dev"].backend
    slurm_job_id = await wait_for(client, auth, job_id, lambda j: j["slurm_job_id"])
    backend.states[slurm_job_id] = SchedulerState.RUNNING
    await wait_for(client, auth, job_id, lambda j: j["state"] == "running")
    seen = await scrape(client)
    running = frozenset({"state": "running", "kind": "notebook", "cluster": "dev",
                         "partition": "gpu", "reason": ""}.items())
    assert seen[("hpcgw_jobs", running)] == 1
    assert seen[("hpcgw_scheduler_calls_total", frozenset(
        {"cluster": "dev", "operation": "submit", "outcome": "ok"}.items()))] == 1
    assert seen[("hpcgw_scheduler_calls_total", frozenset(
        {"cluster": "dev", "operation": "status", "outcome": "ok"}.items()))] >= 1
    assert seen[("hpcgw_queue_wait_seconds_count", frozenset(
        {"cluster": "dev", "partition": "gpu", "kind": "notebook"}.items()))] == 1
    assert seen[("hpcgw_cluster_reachable", frozenset({"cluster": "dev"}.items()))] == 1
    assert seen[("hpcgw_poll_cycle_seconds_count", frozenset({"cluster": "dev"}.items()))] >= 1
    assert [seen[(name, frozenset())] for name in (
        "hpcgw_users", "hpcgw_active_tokens", "hpcgw_active_sessions")] == [1, 1, 0]
    backend.unreachable = True  # the poller's next look fails
    await wait_until(lambda: scrape(client), lambda s: s[
        ("hpcgw_cluster_reachable", frozenset({"cluster": "dev"}.items()))] == 0)


async def test_each_application_has_registry_of_its_own(
        tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: FakeClusters,
        make_raw_config: Callable[..., dict[str, Any]],
        make_notebook: Callable[..., bytes]) -> None:
    """No module-level registry: a second gateway in the same process counts only its own."""
    first, alice = await client_for(tmp_path / "one", aiohttp_client, fake_clusters,
                                    make_raw_config, METRICS_TOKEN)
    second, _ = await client_for(tmp_path / "two", aiohttp_client, fake_clusters,
                                 make_raw_config, METRICS_TOKEN)
    auth = {"Authorization": f"Bearer {alice}"}
    created = await first.post("/api/v1/jobs", headers=auth, data=upload(make_notebook(), {}))
    await wait_for(first, auth, (await created.json())["id"], lambda j: j["slurm_job_id"])
    submit = ("hpcgw_scheduler_calls_total", frozenset(
        {"cluster": "dev", "operation": "submit", "outcome": "ok"}.items()))
    assert (await scrape(first))[submit] == 1
    assert submit not in await scrape(second)


def upload(notebook: bytes, spec: dict[str, Any]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("notebook", notebook, filename="nb.ipynb")
    form.add_field("spec", json.dumps(spec), content_type="application/json")
    return form


async def wait_for(client: TestClient[Any, Any], auth: dict[str, str], job_id: str,
                   condition: Callable[[dict[str, Any]], Any]) -> Any:
    async def job() -> dict[str, Any]:
        response = await client.get(f"/api/v1/jobs/{job_id}", headers=auth)
        found: dict[str, Any] = await response.json()
        return found

    return condition(await wait_until(job, condition))


async def wait_until(read: Callable[[], Awaitable[Any]], condition: Callable[[Any], Any],
                     timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await read()
        if condition(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition never held; last: {value!r}"[:2000])
        await asyncio.sleep(0.02)
