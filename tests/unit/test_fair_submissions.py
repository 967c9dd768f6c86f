"""Submissions are served fairly between unix users (gateway/jobs/fairqueue.py).

Found by a red-team: every job went through one first-in-first-out queue to four submitters.
A user who makes the commands the gateway runs as them slow (a ``sleep`` in the ``~/.bashrc``
an SSH command starts in, a slow FUSE mount under their own work directory) held every
submitter with their jobs, up to ``command_timeout`` per command, and everyone else's jobs
waited behind all of theirs before anything was even copied to the cluster.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import parse_config
from gateway.jobs.context import SUBMITTERS, SUBMITTERS_PER_USER
from gateway.jobs.fairqueue import FairQueue
from gateway.server import STORE, make_app

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
WAIT = 10.0


async def taken(queue: FairQueue, count: int) -> list[tuple[str, str]]:
    async with asyncio.timeout(WAIT):
        return [await queue.get() for _ in range(count)]


async def test_owners_take_turns_and_keep_their_own_order() -> None:
    queue = FairQueue(per_owner=10)
    for item in ("b1", "b2", "b3"):
        queue.put_nowait("bob", item)
    queue.put_nowait("alice", "a1")
    queue.put_nowait("carol", "c1")
    queue.put_nowait("alice", "a2")
    assert await taken(queue, 6) == [("bob", "b1"), ("alice", "a1"), ("carol", "c1"),
                                     ("bob", "b2"), ("alice", "a2"), ("bob", "b3")]
    assert len(queue) == 0


async def test_an_owner_has_at_most_per_owner_items_worked_on() -> None:
    """bob's third item waits until one of his first two is done, while alice's goes."""
    queue = FairQueue(per_owner=2)
    for item in ("b1", "b2", "b3"):
        queue.put_nowait("bob", item)
    assert await taken(queue, 2) == [("bob", "b1"), ("bob", "b2")]
    third = asyncio.ensure_future(queue.get())
    queue.put_nowait("alice", "a1")
    assert await asyncio.wait_for(third, WAIT) == ("alice", "a1")
    fourth = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)  # (it looked, and waits)
    assert not fourth.done() and len(queue) == 1
    queue.done("bob")
    assert await asyncio.wait_for(fourth, WAIT) == ("bob", "b3")


async def test_a_cancelled_get_takes_nothing() -> None:
    queue = FairQueue(per_owner=1)
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    queue.put_nowait("bob", "b1")
    assert await taken(queue, 1) == [("bob", "b1")]


async def test_one_users_stuck_commands_do_not_hold_back_anothers_submission(
    tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: Any,
    make_raw_config: Callable[..., dict[str, Any]], make_notebook: Callable[..., bytes],
) -> None:
    """bob's commands hang (here until the test lets them go) with more of his jobs queued
    than there are submitters; alice's job, submitted after all of them, still reaches
    Slurm. Then bob's go on, each of them submitted. If this fails, alice's job waited
    behind every job of bob's."""
    assert SUBMITTERS > SUBMITTERS_PER_USER
    app = make_app(parse_config(make_raw_config(tmp_path / "data")),
                   cluster_factory=fake_clusters)
    client = await aiohttp_client(app)
    store = app[STORE]
    tokens = {name: store.users.issue_token(store.users.add_user(name, name))
              for name in ("alice", "bob")}
    transport = fake_clusters.by_name["dev"].transport
    put_files, bobs_shell = transport.put_files, asyncio.Event()

    async def stuck_for_bob(directory: str, files: Mapping[str, bytes], *, user: str) -> None:
        if user == "bob":
            await asyncio.wait_for(bobs_shell.wait(), WAIT)
        await put_files(directory, files, user=user)

    transport.put_files = stuck_for_bob

    async def submit(user: str) -> str:
        form = aiohttp.FormData()
        form.add_field("notebook", make_notebook(), filename="in.ipynb",
                       content_type="application/x-ipynb+json")
        form.add_field("spec", json.dumps({"name": "x"}), content_type="application/json")
        response = await client.post("/api/v1/jobs", data=form,
                                     headers={"Authorization": f"Bearer {tokens[user]}"})
        assert response.status == 201, await response.text()
        return str((await response.json())["id"])

    async def in_slurm(job_ids: list[str]) -> None:
        async with asyncio.timeout(WAIT):
            while any(store.get_job(job_id)["state"] != "pending" for job_id in job_ids):
                await asyncio.sleep(0.02)

    bobs = [await submit("bob") for _ in range(SUBMITTERS * 2)]
    alices = await submit("alice")
    await in_slurm([alices])
    assert all(store.get_job(job_id)["state"] != "pending" for job_id in bobs)
    bobs_shell.set()
    await in_slurm(bobs)
