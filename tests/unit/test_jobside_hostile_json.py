"""What bob's own job leaves for the gateway to read, nested deeper than Python's JSON parser
goes (``[[[[...``: RecursionError, not ValueError) or shaped as no notebook writer shapes it: the
job ends (never stuck in ``collecting`` or ``staging``, the task never crashes) and pages
render (red-team findings). The rest of what a job writes: test_collector_bounds.py and others."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import gateway.jobs.collector as collector
from gateway.config import Config
from gateway.jobs.collector import collect
from gateway.states import State
from gateway.store import Store
from tests.factories import add_job, job_context
from tests.unit.test_collector_bounds import EXIT, WORKDIR, Setup
from tests.unit.test_collector_bounds import fast_backoff as fast_backoff  # the fixture

if TYPE_CHECKING:
    from conftest import FakeClusters

PROGRESS = f"{WORKDIR}/progress.json"


@pytest.fixture
def setup(config: Config, store: Store, fake_clusters: FakeClusters) -> Setup:
    return Setup(config, store, fake_clusters)


async def _collect_as_the_service_does(setup: Setup) -> None:
    """collect() runs as its own background task; an exception just ends the task."""
    task = asyncio.get_running_loop().create_task(collect(setup.ctx, "j1"))
    await asyncio.wait([task], timeout=10)
    assert task.done()
    if task.exception() is not None:
        pytest.fail(f"the collection task crashed with {task.exception()!r}; "
                    f"the job is left in {setup.job()['state']!r}")


async def test_a_deeply_nested_exit_json_ends_the_job_instead_of_crashing_collection(
        setup: Setup) -> None:
    # bob's notebook ends with: open("exit.json", "w").write("[" * 5000)
    setup.transport.files[EXIT] = b"[" * 5000
    await _collect_as_the_service_does(setup)
    assert setup.job()["state"] != State.COLLECTING


async def test_a_deeply_nested_progress_json_ends_the_job_instead_of_crashing_collection(
        setup: Setup) -> None:
    # progress.json is capped at 4 KiB, but 4 KiB of "[" is deeper than Python's parser goes
    setup.transport.files[PROGRESS] = b"[" * 4000
    await _collect_as_the_service_does(setup)
    assert setup.job()["state"] != State.COLLECTING


async def test_a_deeply_nested_stager_answer_fails_staging_instead_of_crashing_it(
        config: Config, store: Store, fake_clusters: FakeClusters,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # bob's running job swaps <workdir>/.stage/stage.py of his next job (his own directory)
    # for one that prints 60 KiB of "[" (under REPORT_LIMIT)
    import gateway.jobs.stager as stager

    runtime = fake_clusters(config.clusters[0])
    ctx = job_context(config, store, {"dev": runtime})
    from gateway.spec import parse_spec, resolve_spec

    spec = resolve_spec(parse_spec({"name": "nb"}), config, "nb")
    add_job(store, store.users.add_user("bob", "bob"), "j2", state=State.STAGING,
            workdir=WORKDIR, spec=spec.model_dump_json())

    async def hostile_stager(*_: Any, **__: Any) -> tuple[bytes, str]:
        return b"[" * 60_000, ""

    monkeypatch.setattr(stager, "run_stager", hostile_stager)
    monkeypatch.setattr(stager, "stage_files", lambda _ctx, _job: ({}, {}))
    task = asyncio.get_running_loop().create_task(stager.stage_job(ctx, "j2"))
    await asyncio.wait([task], timeout=10)
    if task.exception() is not None:
        pytest.fail(f"the staging task crashed with {task.exception()!r}; the job is left in "
                    f"{store.get_job('j2')['state']!r}")
    assert store.get_job("j2")["state"] == State.FAILED


def test_a_deeply_nested_push_answer_counts_as_not_sent() -> None:
    from types import SimpleNamespace

    from gateway.jobs.pusher import _not_sent

    push = SimpleNamespace(path="results", storage="data")
    assert _not_sent(b"[" * 60_000, [push]) == ["results (to data: not sent)"]  # type: ignore[list-item]


@pytest.mark.parametrize("notebook", [
    b"[" * 5000,  # deeper than Python's JSON parser goes
    json.dumps({"cells": [{"cell_type": "code", "source": [1], "outputs": []}]}).encode(),
    json.dumps({"cells": [{"cell_type": "code", "source": "", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": [None]}]}]}).encode(),
], ids=["deep", "int-source", "none-in-text"])
def test_a_hostile_executed_notebook_renders_as_a_problem_page(
        tmp_path: Path, notebook: bytes) -> None:
    from gateway.api.rendered import render_notebook

    path = tmp_path / "output.ipynb"
    path.write_bytes(notebook)
    page = render_notebook(path, "nb")  # an exception here is a 500, every time it is viewed
    assert "<html" in page.lower()


def test_untrusted_json_too_deep_is_a_value_error() -> None:
    from gateway import untrusted

    assert untrusted.loads(b'{"port": 8888}') == {"port": 8888}
    for hostile in (b"[" * 5000, b'{"a":' * 3000, b"not json"):
        with pytest.raises(ValueError):
            untrusted.loads(hostile)


async def test_whatever_breaks_a_collection_ends_the_job_failed(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug the job's files found")

    monkeypatch.setattr(collector, "_fetch_until_deadline", broken)
    await _collect_as_the_service_does(setup)
    job = setup.job()
    assert (job["state"], job["reason"]) == (State.FAILED, "job_error")
    assert "could not be collected" in job["message"]

