"""A pending job shows when Slurm expects it to start (squeue's %S), through the API, and
only while it is pending (fake cluster; the real squeue format is checked in
tests/integration/test_expected_start.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gateway.scheduler import SchedulerState

if TYPE_CHECKING:
    from conftest import Site


async def test_a_pending_job_shows_when_slurm_expects_it_to_start(site: Site) -> None:
    lab = await site.lab("alice")
    pending = await site.wait(lab["id"], "pending")
    backend = site.cluster.backend
    backend.expected_starts[pending["slurm_job_id"]] = "2026-12-02T16:17:00.000Z"

    async def shown() -> Any:
        answer = await site.client.get(f"/api/v1/jobs/{lab['id']}", headers=site.auth("alice"))
        return (await answer.json())["expected_start"]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await shown() != "2026-12-02T16:17:00.000Z":
        assert loop.time() < deadline, "the expected start never showed"
        await asyncio.sleep(0.02)
    backend.states[pending["slurm_job_id"]] = SchedulerState.RUNNING
    await site.wait(lab["id"], "running")
    assert await shown() is None  # only while pending
