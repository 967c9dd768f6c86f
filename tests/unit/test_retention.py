"""Artifact retention: the store queries, the pruning pass (only real directories under
``data_dir/jobs``, no symlink followed), ``hpcgw artifacts prune``, the server's daily task and
what the API says about a pruned job."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.keys import SERVICE
from gateway.cli.main import main
from gateway.config import parse_config
from gateway.jobs.retention import DAY_S, prune, prune_daily
from gateway.scheduler import SchedulerState
from gateway.server import STORE, make_app
from gateway.states import State
from gateway.store import Store, User
from gateway.timestamps import format_timestamp
from tests.factories import add_job

if TYPE_CHECKING:
    from conftest import FakeClusters

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
NOW = time.time()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    store = Store(data_dir / "hpcgw.db")
    yield store
    store.close()


def job_with_files(store: Store, data_dir: Path, user: User, job_id: str,
                   ended_days_ago: float | None, files: dict[str, bytes]) -> Path:
    """A job with ``files`` in its directory; terminal (succeeded, with a notebook) and ended
    that many days before NOW unless ``ended_days_ago`` is None (then still pending)."""
    ended = ended_days_ago is not None
    add_job(store, user, job_id, state=State.SUCCEEDED if ended else State.PENDING,
            at={State.PENDING: {"slurm_job_id": "1"}, State.SUCCEEDED: {"has_notebook": 1}})
    directory = data_dir / "jobs" / job_id
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    if ended_days_ago is not None:
        store.update_job(job_id, ended_at=format_timestamp(NOW - ended_days_ago * DAY_S))
    return directory


def test_prune_removes_only_jobs_ended_long_enough_ago(store: Store, data_dir: Path) -> None:
    alice = store.users.add_user("alice", "alice")
    old = job_with_files(store, data_dir, alice, "a" * 16, 10,
                         {"input.ipynb": b"x" * 100, "output.ipynb": b"y" * 50, "job.log": b"z"})
    recent = job_with_files(store, data_dir, alice, "b" * 16, 1, {"input.ipynb": b"x"})
    running = job_with_files(store, data_dir, alice, "c" * 16, None, {"input.ipynb": b"x"})

    report = prune(store, data_dir, 7, now=NOW)

    assert (report.jobs, report.bytes, report.refused) == (["a" * 16], 151, [])
    assert not old.exists() and recent.exists() and running.exists()
    job = store.get_job("a" * 16)
    assert job["state"] == "succeeded" and job["reason"] == "completed"  # never touched
    assert job["has_notebook"] == 0 and job["artifacts_removed_at"]
    assert [e["to_state"] for e in store.events("a" * 16)][-1] == "succeeded"  # no new event
    assert store.get_job("b" * 16)["artifacts_removed_at"] is None
    # A second pass finds nothing left to do; 0 days prunes every ended job, never a live one.
    assert prune(store, data_dir, 7, now=NOW).jobs == []
    assert prune(store, data_dir, 0).jobs == ["b" * 16]
    assert running.exists() and store.get_job("c" * 16)["artifacts_removed_at"] is None


def test_a_missing_directory_is_recorded_with_zero_bytes(store: Store, data_dir: Path) -> None:
    alice = store.users.add_user("alice", "alice")
    directory = job_with_files(store, data_dir, alice, "a" * 16, 10, {})
    directory.rmdir()
    report = prune(store, data_dir, 1, now=NOW)
    assert (report.jobs, report.bytes) == (["a" * 16], 0)
    assert store.get_job("a" * 16)["artifacts_removed_at"]


def test_symlinks_are_never_followed(store: Store, data_dir: Path, tmp_path: Path) -> None:
    alice = store.users.add_user("alice", "alice")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"p" * 1000)
    # A job whose directory was replaced by a symlink out of data_dir/jobs: refused.
    swapped = job_with_files(store, data_dir, alice, "a" * 16, 10, {"input.ipynb": b"x"})
    for child in swapped.iterdir():
        child.unlink()
    swapped.rmdir()
    swapped.symlink_to(outside, target_is_directory=True)
    # A job directory holding a symlink to a file (and one to a directory) outside.
    holder = job_with_files(store, data_dir, alice, "b" * 16, 10, {"job.log": b"l" * 10})
    (holder / "output.ipynb").symlink_to(outside / "precious")
    (holder / "sub").symlink_to(outside, target_is_directory=True)

    report = prune(store, data_dir, 1, now=NOW)

    assert report.jobs == ["b" * 16] and report.bytes == 10  # the links' targets not counted
    assert len(report.refused) == 1 and report.refused[0].startswith("a" * 16)
    assert (outside / "precious").read_bytes() == b"p" * 1000
    assert swapped.is_symlink() and not holder.exists()
    assert store.get_job("a" * 16)["artifacts_removed_at"] is None  # left for an admin to see


# -- the command -----------------------------------------------------------------------------------


def write_config(path: Path, data_dir: Path, retention_days: float) -> Path:
    path.write_text(f"""
[gateway]
data_dir = "{data_dir}"
cookie_secret = "{'s' * 40}"
artifact_retention_days = {retention_days}

[[clusters]]
name = "dev"
transport = "local"
work_root = "/home/{{unix_user}}/.hpcgw/jobs"
python = "/usr/bin/python3"
default_partition = "cpu"

[clusters.partitions.cpu]
max_time = "02:00:00"
""")
    return path


def test_the_command_uses_the_configured_retention(
    store: Store, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    alice = store.users.add_user("alice", "alice")
    old = job_with_files(store, data_dir, alice, "a" * 16, 10, {"output.ipynb": b"y" * 64})
    recent = job_with_files(store, data_dir, alice, "b" * 16, 2, {"output.ipynb": b"y" * 8})

    config = write_config(tmp_path / "keep.toml", data_dir, 0)
    assert main(["--config", str(config), "artifacts", "prune"]) == 0
    out, err = capsys.readouterr()
    assert "0 job(s), 0 bytes" in out and "keep for ever" in err
    assert old.exists()

    config = write_config(tmp_path / "week.toml", data_dir, 7)
    assert main(["artifacts", "prune", "--config", str(config), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer == {"older_than_days": 7, "jobs": 1, "bytes": 64, "job_ids": ["a" * 16],
                      "refused": []}
    assert not old.exists() and recent.exists()

    assert main(["--config", str(config), "artifacts", "prune", "--older-than", "1.5"]) == 0
    assert "1 job(s), 8 bytes" in capsys.readouterr().out
    assert not recent.exists()


def test_the_command_refuses_a_negative_age() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["artifacts", "prune", "--older-than", "-1"])
    assert exit_info.value.code == 2


# -- the server ------------------------------------------------------------------------------------


@pytest.fixture
async def served(
    data_dir: Path, aiohttp_client: ClientFactory, fake_clusters: FakeClusters,
    make_raw_config: Callable[..., dict[str, Any]],
) -> tuple[TestClient[Any, Any], web.Application]:
    app = make_app(parse_config(make_raw_config(data_dir, artifact_retention_days=1)),
                   cluster_factory=fake_clusters)
    return await aiohttp_client(app), app


async def run_to_success(client: TestClient[Any, Any], app: web.Application,
                         fake_clusters: FakeClusters, notebook: bytes,
                         auth: dict[str, str]) -> str:
    """A notebook run that succeeds with an executed notebook; its id."""
    form = aiohttp.FormData()
    form.add_field("notebook", notebook, filename="nb.ipynb")
    form.add_field("spec", json.dumps({"name": "nb"}), content_type="application/json")
    reply = await client.post("/api/v1/jobs", data=form, headers=auth)
    assert reply.status == 201, await reply.text()
    job_id: str = (await reply.json())["id"]
    fake = fake_clusters.by_name["dev"]
    deadline = time.monotonic() + 10
    while not (job := app[STORE].get_job(job_id))["slurm_job_id"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    workdir = job["workdir"]
    fake.transport.files[f"{workdir}/output.ipynb"] = notebook
    fake.transport.files[f"{workdir}/exit.json"] = b'{"status": "ok"}'
    fake.backend.states[job["slurm_job_id"]] = SchedulerState.COMPLETED
    while app[STORE].get_job(job_id)["state"] != "succeeded":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    return job_id


async def test_the_api_says_a_pruned_notebook_is_gone(
    served: tuple[TestClient[Any, Any], web.Application], fake_clusters: FakeClusters,
    make_notebook: Callable[..., bytes], data_dir: Path,
) -> None:
    client, app = served
    store = app[STORE]
    token = store.users.issue_token(store.users.add_user("alice", "alice"))
    auth = {"Authorization": f"Bearer {token}"}
    job_id = await run_to_success(client, app, fake_clusters, make_notebook(), auth)
    assert (await client.get(f"/api/v1/jobs/{job_id}/notebook", headers=auth)).status == 200
    assert (await client.get(f"/api/v1/jobs/{job_id}/log", headers=auth)).status == 200

    report = prune(store, data_dir, 0)

    assert report.jobs == [job_id] and report.bytes > 0
    assert not (data_dir / "jobs" / job_id).exists()
    reply = await client.get(f"/api/v1/jobs/{job_id}/notebook", headers=auth)
    assert reply.status == 410
    problem = await reply.json(content_type="application/problem+json")
    assert problem["artifacts_removed_at"] and "removed" in problem["detail"]
    assert (await client.get(f"/api/v1/jobs/{job_id}/log", headers=auth)).status == 410
    listed = (await (await client.get("/api/v1/jobs", headers=auth)).json())["jobs"]
    assert [(j["id"], j["state"], j["notebook_available"], bool(j["artifacts_removed_at"]))
            for j in listed] == [(job_id, "succeeded", False, True)]


async def test_the_server_prunes_by_itself(
    served: tuple[TestClient[Any, Any], web.Application], fake_clusters: FakeClusters,
    make_notebook: Callable[..., bytes], data_dir: Path,
) -> None:
    client, app = served
    store, service = app[STORE], app[SERVICE]
    assert any(task.get_name() == "artifact-retention" for task in asyncio.all_tasks())
    token = store.users.issue_token(store.users.add_user("alice", "alice"))
    auth = {"Authorization": f"Bearer {token}"}
    old = await run_to_success(client, app, fake_clusters, make_notebook(), auth)
    fresh = await run_to_success(client, app, fake_clusters, make_notebook(), auth)
    store.update_job(old, ended_at=format_timestamp(time.time() - 2 * DAY_S))  # retention: 1 day

    task = asyncio.create_task(prune_daily(service.ctx, first_delay=0))
    try:
        deadline = time.monotonic() + 10
        while not store.get_job(old)["artifacts_removed_at"]:
            assert time.monotonic() < deadline, "the retention pass never ran"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert not (data_dir / "jobs" / old).exists()
    assert (data_dir / "jobs" / fresh / "output.ipynb").exists()
    assert store.get_job(fresh)["artifacts_removed_at"] is None
    assert os.listdir(data_dir / "jobs") == [fresh]
