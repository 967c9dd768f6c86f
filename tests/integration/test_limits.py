"""Per-user limits and artifact retention against a real `hpcgw serve` on the dev cluster.

Each test runs its own gateway (its own data directory, a `[limits]` table of small values
appended to the dev cluster's config) and cancels what it left in Slurm before stopping it.
Limits are checked per gateway user: alice over a limit gets 429 naming it, bob is unaffected,
and the CLI prints the problem and exits non-zero. `hpcgw artifacts prune` runs as a real
command while the server runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from .conftest import (
    TERMINAL,
    Api,
    Gateway,
    add_users,
    make_notebook,
    start_gateway,
    stop_gateway,
    write_config,
)

# Long enough to stay active for the whole test wherever Slurm puts it; cancelled at the end.
SLEEPER = make_notebook("import time\ntime.sleep(600)")
PROBLEM = "application/problem+json"


@contextmanager
def own_gateway(dev_config: Path, home: Path, limits: dict[str, int]) -> Iterator[Gateway]:
    """A gateway with these ``[limits]``; on exit every job it still has is cancelled."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "gateway.toml"
    write_config(dev_config, config, home / "data")
    with config.open("a") as file:
        file.write("\n[limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items()))
    tokens = add_users(config)
    process, url = start_gateway(config, home / "gateway.log")
    gateway = Gateway(url, config, tokens, process, home / "gateway.log")
    try:
        yield gateway
    finally:
        try:
            asyncio.run(cancel_everything(gateway))
        finally:
            stop_gateway(process)


async def cancel_everything(gateway: Gateway) -> None:
    """Cancel every job of alice and bob and wait until each has ended (nothing left in Slurm)."""
    for user in ("alice", "bob"):
        api = Api(gateway, user)
        _, listed = await api.call("GET", "/api/v1/jobs")
        live = [job["id"] for job in listed["jobs"] if job["state"] not in TERMINAL]
        for job_id in live:
            await api.call("POST", f"/api/v1/jobs/{job_id}/cancel")
        for job_id in live:
            await api.wait_terminal(job_id, timeout=120)


async def post_job(gateway: Gateway, user: str, *, lab: bool = False,
                   key: str | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST /api/v1/jobs as ``user`` (a sleeping notebook run, or a lab):
    ``(status, headers, body)``."""
    headers = {"Authorization": f"Bearer {gateway.tokens[user]}"}
    if key:
        headers["Idempotency-Key"] = key
    kwargs: dict[str, Any] = {"json": {"kind": "lab"}}
    if not lab:
        form = aiohttp.FormData()
        form.add_field("spec", json.dumps({"name": "sleeper"}), content_type="application/json")
        form.add_field("notebook", SLEEPER, filename="nb.ipynb",
                       content_type="application/x-ipynb+json")
        kwargs = {"data": form}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session, \
            session.post(gateway.url + "/api/v1/jobs", headers=headers, **kwargs) as reply:
        return reply.status, dict(reply.headers), await reply.json(content_type=None)


async def created(gateway: Gateway, user: str, **kwargs: Any) -> str:
    status, _, body = await post_job(gateway, user, **kwargs)
    assert status == 201, body
    return str(body["id"])


async def refused(gateway: Gateway, user: str, limit: str, value: int,
                  **kwargs: Any) -> dict[str, str]:
    """A request over ``limit``: 429 problem+json naming it. Returns the headers."""
    status, headers, body = await post_job(gateway, user, **kwargs)
    assert status == 429, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert (body["limit"], body["value"]) == (limit, value) and limit in body["detail"]
    return headers


def cli_refused(gateway: Gateway, limit: str, *args: str) -> None:
    """`hpcgw ARGS` as alice: non-zero exit, the problem's detail (naming ``limit``) printed."""
    result = gateway.cli("alice", *args, check=False)
    assert result.returncode != 0, result.stdout
    assert "429" in result.stderr and limit in result.stderr, result.stderr


async def end(gateway: Gateway, user: str, job_id: str) -> dict[str, Any]:
    api = Api(gateway, user)
    status, _ = await api.call("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert status in (200, 202)
    return await api.wait_terminal(job_id, timeout=120)


def test_active_jobs_and_labs_are_limited_per_user(dev_config: Path, tmp_path: Path) -> None:
    notebook = tmp_path / "sleeper.ipynb"
    notebook.write_bytes(SLEEPER)
    limits = {"max_active_jobs": 2, "max_active_labs": 1}
    with own_gateway(dev_config, tmp_path / "gw", limits) as gateway:
        async def scenario() -> None:
            first = await created(gateway, "alice")
            await created(gateway, "alice")
            headers = await refused(gateway, "alice", "max_active_jobs", 2)
            assert "Retry-After" not in headers
            cli_refused(gateway, "max_active_jobs", "submit", str(notebook))
            await created(gateway, "bob")  # bob has his own count
            await end(gateway, "alice", first)  # an ended run frees its place
            await created(gateway, "alice")
            await refused(gateway, "alice", "max_active_jobs", 2)

            lab = await created(gateway, "alice", lab=True)  # labs are counted apart
            await refused(gateway, "alice", "max_active_labs", 1, lab=True)
            cli_refused(gateway, "max_active_labs", "lab", "-t", "0:05:00")
            await created(gateway, "bob", lab=True)
            await end(gateway, "alice", lab)
            await created(gateway, "alice", lab=True)
        asyncio.run(scenario())


def test_submission_rate_is_limited_per_user(dev_config: Path, tmp_path: Path) -> None:
    notebook = tmp_path / "sleeper.ipynb"
    notebook.write_bytes(SLEEPER)
    with own_gateway(dev_config, tmp_path / "gw", {"max_submissions_per_minute": 3}) as gateway:
        async def scenario() -> None:
            started = time.monotonic()
            first = await created(gateway, "alice", key="run-1")
            await end(gateway, "alice", first)  # an ended job still counts toward the rate
            await created(gateway, "alice", lab=True)
            await created(gateway, "alice")
            assert time.monotonic() - started < 50, "too slow to test a 60 s window"
            headers = await refused(gateway, "alice", "max_submissions_per_minute", 3)
            assert 1 <= int(headers["Retry-After"]) <= 60
            await refused(gateway, "alice", "max_submissions_per_minute", 3, lab=True)
            cli_refused(gateway, "max_submissions_per_minute", "submit", str(notebook))
            # An idempotent replay is answered with its job, not refused, not counted.
            status, headers, body = await post_job(gateway, "alice", key="run-1")
            assert (status, body["id"], headers.get("Idempotent-Replayed")) == (
                201, first, "true")
            await created(gateway, "bob")
        asyncio.run(scenario())


def test_prune_removes_an_ended_jobs_files_and_the_api_says_so(
    dev_config: Path, tmp_path: Path,
) -> None:
    with own_gateway(dev_config, tmp_path / "gw", {}) as gateway:
        alice = Api(gateway, "alice")

        async def ended_job() -> str:
            job_id = await created(gateway, "alice")
            await end(gateway, "alice", job_id)
            status, _ = await alice.call("GET", f"/api/v1/jobs/{job_id}/notebook")
            assert status in (200, 409)
            return job_id

        job_id = asyncio.run(ended_job())
        directory = tmp_path / "gw" / "data" / "jobs" / job_id
        size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
        assert (directory / "input.ipynb").read_bytes() == SLEEPER

        # The configured retention (30 days) keeps a job that just ended.
        kept = json.loads(gateway.cli("alice", "artifacts", "prune", "--json").stdout)
        assert kept["jobs"] == 0 and directory.exists()

        result = gateway.cli("alice", "--config", str(gateway.config), "artifacts", "prune",
                             "--older-than", "0", "--json")
        report = json.loads(result.stdout)
        assert (report["jobs"], report["job_ids"], report["bytes"]) == (1, [job_id], size)
        assert not directory.exists()

        async def api_view() -> None:
            status, problem = await alice.call("GET", f"/api/v1/jobs/{job_id}/notebook")
            assert status == 410, problem
            assert problem["artifacts_removed_at"] and "removed" in problem["detail"]
            _, listed = await alice.call("GET", "/api/v1/jobs")
            [job] = listed["jobs"]
            assert (job["id"], job["state"], job["notebook_available"]) == (
                job_id, "cancelled", False)
            assert job["artifacts_removed_at"]
        asyncio.run(api_view())
        again = gateway.cli("alice", "artifacts", "prune", "--older-than", "0")
        assert "0 job(s), 0 bytes" in again.stdout
