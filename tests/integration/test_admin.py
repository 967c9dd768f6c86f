"""The admin role and disabling a user, on a real `hpcgw serve` with a real lab on the dev
cluster, driven through the CLI an admin would type (`hpcgw user add --admin`, `hpcgw user
set --disable|--enable`) while the gateway runs."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import HPCGW, SECRETS, Api, Gateway, own_gateway, squeue_state
from .lab_helpers import lab_get, login, request_lab, wait_ready


def hpcgw(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HPCGW, "--config", str(gateway.config), *args],
                          capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture(scope="module")
def site(dev_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with alice, bob and root, an admin (mapped to alice's unix user)."""
    with own_gateway(dev_config, tmp_path_factory.mktemp("gateway-admin")) as gateway:
        added = hpcgw(gateway, "user", "add", "root", "--unix-user", "alice", "--admin")
        gateway.tokens["root"] = added.stdout.strip().splitlines()[-1]
        SECRETS.add(gateway.tokens["root"])
        yield gateway


async def wait_listed(admin: Api, job_id: str, state: str, timeout: float = 60
                      ) -> dict[str, Any]:
    """The job as the admin listing shows it, once it is in ``state``."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, answer = await admin.call("GET", "/api/v1/admin/jobs?user=alice")
        assert status == 200, answer
        seen = next(job for job in answer["jobs"] if job["id"] == job_id)
        if seen["state"] == state:
            return seen
        await asyncio.sleep(0.25)
    raise AssertionError(f"{job_id} not {state} within {timeout}s: {seen}")


async def test_admin_lists_everyone_and_a_disabled_user_stops_at_once(site: Gateway) -> None:
    alice, bob, root = Api(site, "alice"), Api(site, "bob"), Api(site, "root")
    lab = await request_lab(alice, time="00:10:00")
    try:
        await wait_ready(alice, lab["id"])
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            await login(browser, site.url, site.tokens["alice"])
            async with browser.get(f"{site.url}/labs/{lab['id']}/api/status") as page:
                assert page.status == 200  # her browser session reaches the lab

            status, answer = await bob.call("GET", "/api/v1/admin/jobs")
            assert status == 403, answer
            listed = await wait_listed(root, lab["id"], "ready")
            assert listed["user"] == "alice" and listed["kind"] == "lab"

            said = hpcgw(site, "user", "set", "alice", "--disable").stdout
            assert "disabled" in said and f"stopping 1 lab(s): {lab['id']}" in said
            # The very next requests: her token, her browser session, her lab.
            assert (await alice.call("GET", "/api/v1/jobs"))[0] == 401
            assert (await lab_get(alice, lab["id"], "api/status"))[0] == 401
            async with browser.get(f"{site.url}/labs/{lab['id']}/api/status",
                                   allow_redirects=False) as page:
                assert page.status == 401
            assert (await bob.call("GET", "/api/v1/jobs"))[0] == 200

        ended = await wait_listed(root, lab["id"], "cancelled")
        assert ended["reason"] == "user_disabled", ended
        assert squeue_state(ended["slurm_job_id"]) in ("", "CANCELLED", "COMPLETING")
        users = hpcgw(site, "user", "list").stdout
        assert any(line.split()[:4] == ["alice", "alice", "no", "disabled"]
                   for line in users.splitlines())

        hpcgw(site, "user", "set", "alice", "--enable")
        assert (await alice.call("GET", f"/api/v1/jobs/{lab['id']}"))[0] == 200
    finally:  # whatever failed: alice enabled again, her lab cancelled
        hpcgw(site, "user", "set", "alice", "--enable")
        await alice.call("POST", f"/api/v1/jobs/{lab['id']}/cancel")
