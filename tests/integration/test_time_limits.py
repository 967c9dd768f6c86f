"""Slurm's time limit, for each kind of job at once: a notebook run, a lab and a notebook run
inside the dev cluster's image, each asked for with one minute, end ``timed_out``/``time_limit``.

Slurm looks at time limits about every 30 s, so each of these waits 60-90 s of real time
whatever the gateway does. They are submitted together and waited on together, on the ssh
transport only (the one a centre runs; the limit is Slurm's, the same on both): one wait in
the suite instead of five.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from .conftest import Api, Gateway, cancel_quietly, make_notebook
from .lab_helpers import lab_get, request_lab, wait_ready
from .test_containers import IMAGE, job_processes
from .test_notebook_runs import outputs_text

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
LIMIT = "00:01:00"
# Slurm's check every ~30 s after the minute, and the poller's turn after that.
DEADLINE = 240


async def notebook_run(alice: Api, submitted: list[str]) -> None:
    """A notebook that prints, then sleeps past its limit: the printed output comes back."""
    status, job = await alice.submit(
        make_notebook("print('started', flush=True)", "import time\ntime.sleep(600)"),
        {"time": LIMIT})
    assert status == 201, job
    submitted.append(job["id"])
    job = await alice.wait_terminal(job["id"], DEADLINE)
    assert (job["state"], job["reason"]) == ("timed_out", "time_limit"), job
    status, partial = await alice.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
    assert status == 200 and "started" in outputs_text(partial)


async def lab(alice: Api, submitted: list[str]) -> None:
    """A lab that was ready: once timed out its proxy answers 404, as for any ended lab."""
    job = await request_lab(alice, partition="cpu", time=LIMIT, name="short lab")
    submitted.append(job["id"])
    assert (await wait_ready(alice, job["id"]))["state"] == "ready"
    job = await alice.wait_terminal(job["id"], DEADLINE)
    assert (job["state"], job["reason"]) == ("timed_out", "time_limit"), job
    status, _ = await lab_get(alice, job["id"], "api/status")
    assert status == 404


async def notebook_in_the_image(alice: Api, submitted: list[str]) -> None:
    """A notebook in the image: its runner and kernel were running, and none of its
    processes is left once Slurm has ended it."""
    status, job = await alice.submit(make_notebook("import time\ntime.sleep(600)"),
                                     {"image": IMAGE, "time": LIMIT})
    assert status == 201, job
    submitted.append(job["id"])
    await alice.wait_for(job["id"], lambda j: j["state"] == "running", 60, "running")
    await alice.wait_for(job["id"], lambda _: len(job_processes(job["id"])) >= 2, 30,
                         "the runner and its kernel up")
    job = await alice.wait_terminal(job["id"], DEADLINE)
    assert (job["state"], job["reason"]) == ("timed_out", "time_limit"), job
    assert not job_processes(job["id"]), os.linesep.join(job_processes(job["id"]))


@pytest.mark.parametrize("transport", ["ssh"], indirect=True)
async def test_a_notebook_a_lab_and_an_image_job_end_timed_out_at_their_limit(
        alice: Api, gateway: Gateway) -> None:
    submitted: list[str] = []
    try:
        await asyncio.gather(notebook_run(alice, submitted), lab(alice, submitted),
                             notebook_in_the_image(alice, submitted))
    finally:  # after a failure, what still runs must not hold the node for later tests
        await asyncio.to_thread(cancel_quietly, gateway, submitted)
