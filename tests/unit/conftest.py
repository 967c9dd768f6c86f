"""Shared builders and in-process fakes for the unit tests (no Slurm, no sshd, no network).

- :func:`raw_config` / :func:`build_config`: a gateway config as TOML would give it, two partitions
  (``cpu``, and ``gpu`` with two ``a100`` GPUs) and one allowlisted account ``proj1``.
- :class:`FakeTransport`: the Transport protocol over a dict of files.
- :class:`FakeBackend`: the SchedulerBackend protocol over a dict of Slurm job states; tests move
  jobs along by editing ``backend.states``.
- :class:`FakeClusters`: a ``cluster_factory`` for ``make_app`` that remembers the fakes it made.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.config import ClusterConfig, Config, parse_config
from gateway.errors import ClusterUnavailable
from gateway.jobs.clusters import ClusterLink
from gateway.scheduler import SchedulerState, SchedulerStatus, SubmitOptions
from gateway.store import Store
from gateway.transport import CommandResult, RemoteFileMissing, RemoteFileTooLarge

COOKIE_SECRET = "s" * 40

CLUSTER: dict[str, Any] = {
    "name": "dev",
    "transport": "local",
    "work_root": "/home/{unix_user}/.hpcgw/jobs",
    "python": "/usr/bin/python3",
    "default_partition": "cpu",
    "partitions": {
        "cpu": {"max_time": "02:00:00", "default_time": "00:30:00", "max_cpus": 8,
                "max_memory": "8G"},
        "gpu": {"max_time": "1-00:00:00", "default_time": "01:00:00", "max_cpus": 16,
                "max_memory": "64G", "max_gpus": 2, "gpu_types": ["a100"]},
    },
    "accounts": ["proj1"],
}


def raw_config(data_dir: Path, **gateway: Any) -> dict[str, Any]:
    """A config document (the dict ``tomllib`` would produce), one cluster ``dev``."""
    return {
        "gateway": {"data_dir": str(data_dir), "cookie_secret": COOKIE_SECRET, **gateway},
        "poll": {"young_interval": 0.05, "old_interval": 0.05, "lost_after": 0.1},
        "clusters": [copy.deepcopy(CLUSTER)],
    }


def build_config(data_dir: Path, **gateway: Any) -> Config:
    return parse_config(raw_config(data_dir, **gateway))


def notebook_bytes(source: str = "print('hello')") -> bytes:
    """A small, valid nbformat 4 notebook."""
    return json.dumps({
        "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": None,
                   "outputs": [], "source": source}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }).encode()


class FakeTransport:
    """Transport over a dict ``path -> bytes``; records every command it was asked to run."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.commands: list[tuple[list[str], str | None]] = []
        self.puts: list[tuple[str, str]] = []  # (directory, user)
        self.reads: list[tuple[str, int, bool]] = []  # (path, limit, tail), fetch_to included
        self.errors: dict[str, list[Exception]] = {}  # path -> errors to raise, in order
        self.closed = False

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        self.commands.append((list(argv), user))
        if list(argv[:4]) == ["stat", "-L", "-c", "%s"] and argv[-1] in self.files:
            return CommandResult(list(argv), 0, b"%d\n" % len(self.files[argv[-1]]), "")
        return CommandResult(list(argv), 0, b"", "")

    async def put_files(self, directory: str, files: Mapping[str, bytes], *, user: str) -> None:
        self.puts.append((directory, user))
        for name, data in files.items():
            assert "/" not in name
            self.files[f"{directory}/{name}"] = data

    async def read_file(self, path: str, *, user: str, limit: int, tail: bool = False,
                        offset: int | None = None) -> bytes:
        """As the real transports: RemoteFileMissing, RemoteFileTooLarge over ``limit`` (whole
        reads), the last ``limit`` bytes (tail reads), or ``limit`` bytes from ``offset``
        (window reads). ``errors[path]`` is raised instead, popped from its list so that tests
        can script a sequence (``[]``: no more errors)."""
        self.reads.append((path, limit, tail))
        if self.errors.get(path):
            raise self.errors[path].pop(0)
        if path not in self.files:
            raise RemoteFileMissing(["sh", "-c", "read", path], 3, f"{path}: no such file")
        data = self.files[path]
        if offset is not None:
            return data[offset:offset + limit]
        if tail:
            return data[len(data) - limit:] if limit else b""
        if len(data) > limit:
            raise RemoteFileTooLarge(["sh", "-c", "read", path], path, limit)
        return data

    async def forward(self, host: str, port: int, *, user: str) -> tuple[str, int]:
        return host, port  # as the local transport: no tunnel

    def retain_forwards(self, keep: set[tuple[str, str, int]]) -> None:
        return None

    async def fetch_to(self, path: str, local_path: str | os.PathLike[str], *, user: str,
                       limit: int) -> int:
        data = await self.read_file(path, user=user, limit=limit)
        Path(local_path).write_bytes(data)
        return len(data)

    async def close(self) -> None:
        self.closed = True


@dataclass
class Submission:
    script: str
    user: str
    tag: str
    slurm_job_id: str
    options: SubmitOptions | None = None  # None: put there by a test (FakeBackend.enqueue)


@dataclass
class FakeBackend:
    """A scheduler that keeps each Slurm job's state in ``states`` (absent = forgotten)."""

    states: dict[str, SchedulerState] = field(default_factory=dict)
    submissions: list[Submission] = field(default_factory=list)
    # Slurm job id -> the user the scheduler reports (default: whoever submitted it).
    users: dict[str, str] = field(default_factory=dict)
    cancels: list[tuple[str, str]] = field(default_factory=list)
    # Slurm job id -> when a pending job is expected to start (squeue's %S), if set.
    expected_starts: dict[str, str] = field(default_factory=dict)
    status_calls: int = 0
    # While set, every call fails the way an unreachable slurmctld does.
    unreachable: bool = False
    _next_id: int = 100

    def _check_reachable(self) -> None:
        if self.unreachable:
            raise ClusterUnavailable("squeue: Unable to contact slurm controller")

    async def submit(self, script: str, options: SubmitOptions) -> str:
        self._check_reachable()
        return self.enqueue(options.user, options.tag, script, options)

    def enqueue(self, user: str, tag: str, script: str = "#!/bin/bash\n",
                options: SubmitOptions | None = None) -> str:
        """A new PENDING Slurm job of ``user`` tagged ``tag`` (as an sbatch the gateway did not
        see the answer of would leave); its Slurm job id."""
        self._next_id += 1
        job_id = str(self._next_id)
        self.submissions.append(Submission(script, user, tag, job_id, options))
        self.states[job_id] = SchedulerState.PENDING
        return job_id

    def _status(self, job_id: str) -> SchedulerStatus:
        state = self.states[job_id]
        submission = next(s for s in self.submissions if s.slurm_job_id == job_id)
        return SchedulerStatus(
            job_id=job_id, state=state, raw_state=state.value,
            pending_reason="Priority" if state is SchedulerState.PENDING else None,
            node=None if state is SchedulerState.PENDING else "vm", tag=submission.tag,
            user=self.users.get(job_id, submission.user),
            expected_start=(self.expected_starts.get(job_id)
                            if state is SchedulerState.PENDING else None))

    async def status_many(self, job_ids: Iterable[str]) -> dict[str, SchedulerStatus]:
        self.status_calls += 1
        self._check_reachable()
        return {j: self._status(j) for j in job_ids if j in self.states}

    async def find_by_tag(self, tag: str, *, user: str) -> SchedulerStatus | None:
        self._check_reachable()
        for submission in reversed(self.submissions):
            if submission.tag == tag and submission.slurm_job_id in self.states:
                return self._status(submission.slurm_job_id)
        return None

    async def cancel(self, job_id: str, *, user: str) -> None:
        self._check_reachable()
        self.cancels.append((job_id, user))  # like scancel: a job already gone is no error
        if job_id in self.states and not self.states[job_id].ended:
            self.states[job_id] = SchedulerState.CANCELLED

    async def cluster_info(self) -> dict[str, Any]:
        self._check_reachable()
        return {"partitions": {name: {
            "available": True, "time_limit": "1-00:00:00", "nodes": 1, "gres": gres,
            "cpus_per_node": 4, "memory_per_node_mb": 7000, "node_states": {"idle": 1}}
            for name, gres in (("cpu", "(null)"), ("gpu", "gpu:2"))}}


@dataclass
class FakeCluster:
    transport: FakeTransport
    backend: FakeBackend


class FakeClusters:
    """``cluster_factory`` for ``make_app``: one FakeTransport + FakeBackend per cluster."""

    def __init__(self) -> None:
        self.by_name: dict[str, FakeCluster] = {}

    def __call__(self, cluster: ClusterConfig) -> ClusterLink:
        fake = FakeCluster(FakeTransport(), FakeBackend())
        self.by_name[cluster.name] = fake
        return ClusterLink(cluster, fake.transport, fake.backend)


# Test modules get these through fixtures, never ``import conftest`` (several conftest.py files
# share that module name when the whole tests/ tree is collected).


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh store in the test's temp dir (test files with their own layout override it)."""
    store = Store(tmp_path / "hpcgw.db")
    yield store
    store.close()


@pytest.fixture
def make_raw_config() -> Callable[..., dict[str, Any]]:
    return raw_config


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    """``[gateway]`` keys set on top of the test config by the lab proxy's ``gw`` fixture
    (tests/unit/test_relay.py); a test module overrides this fixture to change them."""
    return {}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return build_config(tmp_path / "data")


@pytest.fixture
def make_notebook() -> Callable[..., bytes]:
    return notebook_bytes


@pytest.fixture
def fake_clusters() -> FakeClusters:
    return FakeClusters()


@dataclass
class Site:
    """A whole gateway app on the fake cluster, with users alice, bob and root (an admin)."""

    client: TestClient[Any, Any]
    store: Store
    cluster: FakeCluster
    tokens: dict[str, str]

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    async def lab(self, name: str) -> dict[str, Any]:
        """A new lab of user ``name`` (201 asserted)."""
        response = await self.client.post("/api/v1/jobs", json={"kind": "lab", "time": "00:10:00"},
                                          headers=self.auth(name))
        assert response.status == 201, await response.text()
        job: dict[str, Any] = await response.json()
        return job

    async def wait(self, job_id: str, *states: str) -> dict[str, Any]:
        """The job's row once it is in one of ``states`` (10 s deadline)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            job = self.store.get_job(job_id)
            if job["state"] in states:
                return job
            assert loop.time() < deadline, f"{job_id} stayed {job['state']}, not {states}"
            await asyncio.sleep(0.02)


@pytest.fixture
async def site(tmp_path: Path, aiohttp_client: Any, fake_clusters: FakeClusters,
               make_raw_config: Callable[..., dict[str, Any]]) -> Site:
    from gateway.server import STORE, make_app  # the app's own modules, only where needed

    app = make_app(parse_config(make_raw_config(tmp_path / "data")),
                   cluster_factory=fake_clusters)
    client = await aiohttp_client(app)
    users = app[STORE].users
    tokens = {name: users.issue_token(users.add_user(name, name, admin=name == "root"))
              for name in ("alice", "bob", "root")}
    return Site(client, app[STORE], fake_clusters.by_name["dev"], tokens)
