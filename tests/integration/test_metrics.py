"""/metrics of a real `hpcgw serve` on the dev cluster after a notebook run and a lab: the
figures say what happened, and Prometheus' own linter (promtool, Debian's prometheus package)
accepts the exposition."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Api, Gateway, make_notebook, own_gateway
from .lab_helpers import lab_get, request_lab, wait_ready

TOKEN = "scrape-" + "s" * 40
PROMTOOL = "/usr/bin/promtool"


@pytest.fixture(scope="module")
def metered_gateway(dev_config: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Gateway]:
    with own_gateway(dev_config, tmp_path_factory.mktemp("gateway-metrics"),
                     f'[metrics]\ntoken = "{TOKEN}"\n') as gateway:
        yield gateway


async def test_metrics_after_a_run_and_a_lab_pass_promtool(metered_gateway: Gateway) -> None:
    alice = Api(metered_gateway, "alice")
    status, job = await alice.submit(make_notebook("print('counted')"), {"partition": "cpu"})
    assert status == 201, job
    lab = await request_lab(alice, time="00:10:00")
    try:
        await wait_ready(alice, lab["id"])
        status, _ = await lab_get(alice, lab["id"], "api/status")  # through the proxy
        assert status == 200
        assert (await alice.wait_terminal(job["id"]))["state"] == "succeeded"
    finally:
        await alice.call("POST", f"/api/v1/jobs/{lab['id']}/cancel")
    async with aiohttp.ClientSession() as session, session.get(
            f"{metered_gateway.url}/metrics",
            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200
        exposition = await response.text()
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition,
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout + lint.stderr
    seen = {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exposition) for s in family.samples}
    done = (("cluster", "dev"), ("kind", "notebook"), ("partition", "cpu"),
            ("reason", "completed"), ("state", "succeeded"))
    assert seen[("hpcgw_jobs", done)] == 1
    assert seen[("hpcgw_lab_ready_seconds_count", (("cluster", "dev"), ("partition", "cpu")))] \
        == 1
    assert seen[("hpcgw_queue_wait_seconds_count",
                 (("cluster", "dev"), ("kind", "notebook"), ("partition", "cpu")))] == 1
    assert seen[("hpcgw_scheduler_calls_total",
                 (("cluster", "dev"), ("operation", "submit"), ("outcome", "ok")))] == 2
    assert seen[("hpcgw_proxy_requests_total", (("kind", "http"), ("status", "2xx")))] >= 1
    assert seen[("hpcgw_cluster_reachable", (("cluster", "dev"),))] == 1
