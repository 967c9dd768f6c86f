"""Big documents users wrote are worked on in a process of its own (gateway/offload.py).

Found by a red-team: a thread does not keep the event loop turning while ``json.loads`` parses
a big document (one C call that holds the interpreter's lock throughout): a 4 MiB notebook of
nested lists stopped the loop for about a second while it was checked, and a run with
parameters was parsed a second time on the loop itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import parse_config
from gateway.offload import IN_PROCESS_UP_TO, Offload, WorkFailed
from gateway.server import STORE, make_app
from tests.loopwatch import loop_watch

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
WAIT = 30.0


def where(_: bytes) -> tuple[int, int]:
    """(the process, the thread) the work ran in."""
    return os.getpid(), threading.get_ident()


def sleepy(seconds: float) -> None:
    time.sleep(seconds)


def pid() -> int:
    return os.getpid()


def greedy(mib: int) -> int:
    return len(bytearray(mib << 20))


async def test_small_documents_stay_in_the_gateway_and_big_ones_go_to_the_worker() -> None:
    offload = Offload()
    try:
        small = await offload.run(IN_PROCESS_UP_TO, where, b"")
        big = await offload.run(IN_PROCESS_UP_TO + 1, where, b"")
        again = await offload.run(IN_PROCESS_UP_TO + 1, where, b"")
    finally:
        offload.close()
    assert small[0] == os.getpid() and small[1] != threading.get_ident()
    assert big[0] != os.getpid() and again[0] == big[0]  # one worker, kept


async def test_a_document_that_takes_too_long_or_too_much_memory_is_given_up() -> None:
    """The worker is killed and the caller gets WorkFailed; the next document gets a new
    worker. If this fails, one document could hold the worker (and every upload behind it)
    for ever, or grow without bound."""
    offload = Offload(timeout=5.0, memory=512 << 20)  # (time to start a worker under load)
    try:
        first = await offload.run(IN_PROCESS_UP_TO + 1, where, b"")
        with pytest.raises(WorkFailed):
            await asyncio.wait_for(offload.run(IN_PROCESS_UP_TO + 1, sleepy, 60.0), WAIT)
        with pytest.raises(WorkFailed):
            await asyncio.wait_for(offload.run(IN_PROCESS_UP_TO + 1, greedy, 1024), WAIT)
        assert await offload.run(IN_PROCESS_UP_TO + 1, greedy, 64) == 64 << 20
        after = await offload.run(IN_PROCESS_UP_TO + 1, where, b"")
    finally:
        offload.close()
    assert after[0] != first[0]


def nested_lists(mib: float) -> bytes:
    """A valid v4 notebook of about ``mib`` MiB whose one cell's metadata is ``[[],[],...]``:
    the most Python objects per byte for ``json.loads`` to build."""
    cell = {"cell_type": "code", "id": "c1", "metadata": {"x": [[]] * int(mib * 2**20 // 3)},
            "execution_count": None, "outputs": [], "source": "x = 1"}
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
                      separators=(",", ":")).encode()


@pytest.mark.parametrize("spec", [{"partition": "nope"}, {"parameters": {"alpha": 1}}],
                         ids=["refused-after-the-check", "with-parameters"])
async def test_the_loop_keeps_turning_while_a_notebook_of_nested_lists_is_taken(
    tmp_path: Path, aiohttp_client: ClientFactory, fake_clusters: Any,
    make_raw_config: Callable[..., dict[str, Any]], spec: dict[str, Any],
) -> None:
    app = make_app(parse_config(make_raw_config(tmp_path / "data")),
                   cluster_factory=fake_clusters)
    client = await aiohttp_client(app)
    token = app[STORE].users.issue_token(app[STORE].users.add_user("bob", "bob"))
    form = aiohttp.FormData()
    form.add_field("notebook", nested_lists(4), filename="in.ipynb",
                   content_type="application/x-ipynb+json")
    form.add_field("spec", json.dumps(spec), content_type="application/json")
    async with loop_watch() as waits:
        response = await client.post("/api/v1/jobs", data=form,
                                     headers={"Authorization": f"Bearer {token}"})
    assert response.status == (422 if "partition" in spec else 201), await response.text()
    if "parameters" in spec:  # the parameters' check ran in the worker too
        assert "no cell tagged 'parameters'" in (await response.json())["message"]
    assert max(waits) < 0.25, max(waits)


async def test_a_worker_that_died_between_documents_is_replaced() -> None:
    """A worker killed while idle (the OOM killer, an admin) is replaced for the next
    document (from a review: the broken pool's submit() raised BrokenProcessPool outside
    run()'s try, and every big document after it failed until the gateway restarted)."""
    offload = Offload(timeout=30.0)
    try:
        first = await offload.run(IN_PROCESS_UP_TO + 1, pid)
        os.kill(first, signal.SIGKILL)
        for _ in range(100):  # the pool's manager thread notices the death
            await asyncio.sleep(0.05)
            if getattr(offload._pool, "_broken", False):
                break
        second = await offload.run(IN_PROCESS_UP_TO + 1, pid)
    finally:
        offload.close()
    assert second != first
