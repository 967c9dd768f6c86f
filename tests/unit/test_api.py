"""The HTTP API (design.md §3) against an in-process fake cluster (FakeTransport + FakeBackend).

The whole service runs: the submitter stages files through the fake transport and submits to the
fake backend, the poller polls it, the collector fetches artifacts from the fake transport. Tests
move Slurm jobs along by editing ``backend.states`` and wait for the API to show the result.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.keys import CONFIG
from gateway.config import parse_config
from gateway.errors import problem_types
from gateway.scheduler import SchedulerState
from gateway.server import STORE, make_app
from gateway.store import User

if TYPE_CHECKING:
    from conftest import FakeCluster, FakeClusters

PROBLEM = "application/problem+json"
JOB_ID = re.compile(r"^[0-9a-f]{16}$")
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
NOTEBOOK_LIMIT = 2048
ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@dataclass
class Api:
    client: TestClient[Any, Any]
    app: web.Application
    cluster: FakeCluster
    alice: str  # tokens
    bob: str
    notebook: bytes

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def submit(
        self, spec: Any, *, token: str | None = None, notebook: bytes | None = None,
        spec_first: bool = False, key: str | None = None, raw_spec: str | None = None,
        files: Sequence[tuple[str, bytes]] = (),
    ) -> aiohttp.ClientResponse:
        parts: list[tuple[str, Any, str | None, str]] = [
            ("notebook", self.notebook if notebook is None else notebook, "in.ipynb",
             "application/x-ipynb+json"),
            ("spec", raw_spec if raw_spec is not None else json.dumps(spec), None,
             "application/json"),
        ]
        form = aiohttp.FormData()
        parts += [("file", data, filename, "application/octet-stream")
                  for filename, data in files]
        for name, value, filename, content_type in (parts[::-1] if spec_first else parts):
            form.add_field(name, value, filename=filename, content_type=content_type)
        headers = self.auth(token or self.alice)
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.client.post("/api/v1/jobs", data=form, headers=headers)

    async def create(self, spec: Any | None = None, **kwargs: Any) -> dict[str, Any]:
        response = await self.submit({"name": "nb"} if spec is None else spec, **kwargs)
        assert response.status == 201, await response.text()
        job: dict[str, Any] = await response.json()
        return job

    async def get(self, path: str, token: str | None = None) -> aiohttp.ClientResponse:
        return await self.client.get(path, headers=self.auth(token or self.alice))

    async def job(self, job_id: str, token: str | None = None) -> dict[str, Any]:
        response = await self.get(f"/api/v1/jobs/{job_id}", token)
        assert response.status == 200, await response.text()
        job: dict[str, Any] = await response.json()
        return job

    async def wait(
        self, job_id: str, condition: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
        token: str | None = None,
    ) -> dict[str, Any]:
        """Poll the job through the API until ``condition`` holds (or fail at the deadline)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            job = await self.job(job_id, token)
            if condition(job):
                return job
            if loop.time() > deadline:
                raise AssertionError(f"job {job_id} never met the condition; last seen: {job}")
            await asyncio.sleep(0.02)

    async def wait_state(self, job_id: str, *states: str) -> dict[str, Any]:
        return await self.wait(job_id, lambda job: job["state"] in states)

    async def pending(self, spec: Any | None = None) -> dict[str, Any]:
        """A job that reached Slurm (state pending)."""
        job = await self.create(spec)
        return await self.wait_state(job["id"], "pending")

    def slurm(self, job: dict[str, Any]) -> str:
        slurm_job_id: str = job["slurm_job_id"]
        assert slurm_job_id in self.cluster.backend.states
        return slurm_job_id

    def workdir(self, job_id: str) -> str:
        return f"/home/alice/.hpcgw/jobs/{job_id}"


@pytest.fixture
async def api(
    tmp_path: Path,
    aiohttp_client: ClientFactory,
    fake_clusters: FakeClusters,
    make_raw_config: Callable[..., dict[str, Any]],
    make_notebook: Callable[..., bytes],
) -> Api:
    config = parse_config(make_raw_config(tmp_path / "data", max_notebook_bytes=NOTEBOOK_LIMIT))
    app = make_app(config, cluster_factory=fake_clusters)
    client = await aiohttp_client(app)
    store = app[STORE]
    alice = store.users.issue_token(store.users.add_user("alice", "alice"))
    bob = store.users.issue_token(store.users.add_user("bob", "bob"))
    return Api(client, app, fake_clusters.by_name["dev"], alice, bob, make_notebook())


async def assert_problem(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json(content_type=PROBLEM)
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Bearer not-a-token", "Basic YWxpY2U6c2VjcmV0",
    "Token hpcgw_x",
])
async def test_401_without_a_valid_token(api: Api, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path in [("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs"),
                         ("GET", "/api/v1/clusters"), ("GET", "/api/v1/jobs/0123456789abcdef"),
                         ("GET", "/api/v1/no-such-route")]:
        response = await api.client.request(method, path, headers=headers)
        body = await assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "hpcgw_" not in json.dumps(body)


async def test_revoked_token_is_refused(api: Api) -> None:
    assert (await api.get("/api/v1/jobs")).status == 200
    assert api.app[STORE].users.revoke_token(api.alice)
    await assert_problem(await api.get("/api/v1/jobs"), 401)


async def test_bearer_scheme_is_case_insensitive(api: Api) -> None:
    response = await api.client.get("/api/v1/jobs", headers={"Authorization": f"bearer {api.bob}"})
    assert response.status == 200


async def test_openapi_needs_no_auth(api: Api) -> None:
    response = await api.client.get("/api/v1/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/health"} <= set(document["paths"])
    assert "JobSpec" in document["components"]["schemas"]


async def test_health_needs_no_auth(api: Api) -> None:
    response = await api.client.get("/api/v1/health")
    assert response.status == 200
    assert (await response.json())["clusters"] == {"dev": {"reachable": True, "error": None}}


async def test_health_reports_an_unreachable_cluster(api: Api) -> None:
    """/health answers from the poller's view: the change shows within a refresh or two."""
    api.cluster.backend.unreachable = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        response = await api.client.get("/api/v1/health")
        assert response.status == 200
        dev = (await response.json())["clusters"]["dev"]
        if dev["reachable"] is False or loop.time() > deadline:
            break
        await asyncio.sleep(0.02)
    assert dev["reachable"] is False and "slurm controller" in dev["error"]
    response = await api.get("/api/v1/clusters")
    assert (await response.json())["clusters"][0]["reachable"] is False


async def test_clusters_lists_the_policy(api: Api) -> None:
    response = await api.get("/api/v1/clusters")
    assert response.status == 200
    (dev,) = (await response.json())["clusters"]
    assert dev["name"] == "dev" and dev["default_partition"] == "cpu"
    assert dev["accounts"] == ["proj1"]
    assert dev["partitions"]["gpu"]["max_gpus"] == 2
    assert dev["partitions"]["gpu"]["gpu_types"] == ["a100"]
    assert dev["images"] == []  # no container runtime yet: nothing to offer


# -- submission ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec_first", [False, True])
async def test_submit_in_either_part_order(api: Api, spec_first: bool) -> None:
    response = await api.submit(
        {"name": "my run", "partition": "gpu", "gpus": 1, "gpu_type": "a100",
         "account": "proj1", "memory": "2G", "parameters": {"lr": 0.5}},
        spec_first=spec_first)
    assert response.status == 201, await response.text()
    job = await response.json()
    assert JOB_ID.match(job["id"])
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert "Idempotent-Replayed" not in response.headers
    assert job["state"] == "accepted"
    assert (job["kind"], job["name"], job["partition"], job["gpus"], job["gpu_type"]) == (
        "notebook", "my run", "gpu", 1, "a100")
    assert (job["memory"], job["time"], job["account"]) == ("2048M", "0-01:00:00", "proj1")
    assert job["parameters"] == {"lr": 0.5}
    for key in ("pending_reason", "reason", "slurm_job_id", "node", "started_at", "ended_at"):
        assert job[key] is None, key
    assert job["message"].startswith("warning: the notebook has no cell tagged 'parameters'")
    assert job["created_at"]


async def test_submitted_job_reaches_slurm_as_its_owner(api: Api) -> None:
    job = await api.pending({"name": "x'; id", "parameters": {"lr": 0.1}})
    (submission,) = api.cluster.backend.submissions
    assert submission.user == "alice"
    assert submission.tag == job["id"]
    assert job["slurm_job_id"] == submission.slurm_job_id
    assert submission.options is not None and submission.options.partition == "cpu"
    assert "#SBATCH" not in submission.script  # scheduler options travel as SubmitOptions
    assert "export HPCGW_JOB_NAME='x'\"'\"'; id'\n" in submission.script
    files = api.cluster.transport.files
    workdir = api.workdir(job["id"])
    assert files[f"{workdir}/input.ipynb"] == api.notebook
    assert json.loads(files[f"{workdir}/parameters.json"]) == {"lr": 0.1}
    assert files[f"{workdir}/job.sh"].decode() == submission.script
    assert api.cluster.transport.puts == [(workdir, "alice")]


async def test_invalid_notebook_is_422(api: Api) -> None:
    for notebook in (b"{not json", b'{"cells": "nope"}', b"\xff\xfe"):
        body = await assert_problem(await api.submit({"name": "x"}, notebook=notebook), 422)
        assert body["fields"] == ["notebook"]
    assert api.app[STORE].list_jobs(api.app[STORE].users.get_user("alice").id) == []


async def test_unknown_partition_is_422(api: Api) -> None:
    body = await assert_problem(await api.submit({"partition": "bigmem"}), 422)
    assert body["fields"] == ["partition"]
    assert body["errors"][0]["field"] == "partition"
    assert "bigmem" in body["errors"][0]["message"]


async def test_every_bad_field_is_named(api: Api) -> None:
    spec = {"partition": "gpu", "gpus": 9, "account": "other", "time": "3-00:00:00"}
    body = await assert_problem(await api.submit(spec, notebook=b"[]"), 422)
    assert body["fields"] == ["account", "gpus", "notebook", "time"]


async def test_unknown_fields_are_422(api: Api) -> None:
    body = await assert_problem(await api.submit({"name": "x", "nodes": 2, "exclusive": True}),
                                422)
    assert body["fields"] == ["exclusive", "nodes"]


async def test_bad_parameter_name_is_422(api: Api) -> None:
    body = await assert_problem(
        await api.submit({"parameters": {"x = 1; import os#": 1}}), 422)
    assert body["fields"] == ["parameters"]


async def test_oversized_notebook_is_413(api: Api) -> None:
    response = await api.submit({"name": "big"}, notebook=b"x" * (10 * 1024))
    body = await assert_problem(response, 413)
    assert "notebook" in body["detail"]
    assert not api.cluster.backend.submissions


async def test_spec_part_that_is_not_json_is_400(api: Api) -> None:
    body = await assert_problem(await api.submit(None, raw_spec="{name: x"), 400)
    assert body["fields"] == ["spec"] and body["detail"].startswith("spec is not valid JSON: ")


async def test_missing_and_unknown_parts_are_422(api: Api) -> None:
    form = aiohttp.FormData()
    form.add_field("notebook", api.notebook, filename="a.ipynb", content_type="application/json")
    body = await assert_problem(
        await api.client.post("/api/v1/jobs", data=form, headers=api.auth(api.alice)), 422)
    assert body["fields"] == ["spec"]
    form = aiohttp.FormData()
    form.add_field("script", b"#!/bin/sh", filename="x.sh", content_type="text/plain")
    body = await assert_problem(
        await api.client.post("/api/v1/jobs", data=form, headers=api.auth(api.alice)), 422)
    assert body["fields"] == ["script"]


async def test_other_content_types(api: Api) -> None:
    response = await api.client.post("/api/v1/jobs", data=b"hello", headers={
        **api.auth(api.alice), "Content-Type": "text/plain"})
    await assert_problem(response, 415)
    response = await api.client.post("/api/v1/jobs", json={"kind": "notebook"},
                                     headers=api.auth(api.alice))
    assert (await assert_problem(response, 422))["fields"] == ["kind"]
    response = await api.client.post("/api/v1/jobs", data=b"{not json", headers={
        **api.auth(api.alice), "Content-Type": "application/json"})
    assert (await assert_problem(response, 400))["fields"] == ["body"]


async def test_idempotency_key_replays_the_same_job(api: Api) -> None:
    first = await api.submit({"name": "once"}, key="run-42")
    assert first.status == 201
    second = await api.submit({"name": "once"}, key="run-42", spec_first=True)  # parts swapped
    assert second.status == 201
    assert second.headers["Idempotent-Replayed"] == "true"
    first_job, second_job = await first.json(), await second.json()
    assert second_job["id"] == first_job["id"]
    jobs = (await (await api.get("/api/v1/jobs")).json())["jobs"]
    assert [j["id"] for j in jobs] == [first_job["id"]]
    # The same key with another request is refused, whatever differs.
    for different in ({"spec": {"name": "twice"}}, {"spec": {"name": "once"}, "notebook": b"{}"},
                      {"spec": {"name": "once"}, "files": [("helper.py", b"x = 1")]}):
        response = await api.submit(different.pop("spec"), key="run-42", **different)
        body = await assert_problem(response, 422)
        assert body["type"].endswith("/idempotency-key-reused")
        assert body["job_id"] == first_job["id"]
        assert "already used for a different request" in body["detail"]
    lab = {"kind": "lab", "time": "00:10:00"}
    for spec, status in ((lab, 201), (lab, 201), ({**lab, "cpus": 2}, 422)):
        response = await api.client.post("/api/v1/jobs", json=spec, headers={
            **api.auth(api.alice), "Idempotency-Key": "lab-1"})
        assert response.status == status, await response.text()
    jobs = (await (await api.get("/api/v1/jobs")).json())["jobs"]
    assert len(jobs) == 2
    # Bob may use the same key: it is his own job.
    bobs = await api.submit({"name": "bob"}, key="run-42", token=api.bob)
    assert bobs.status == 201
    assert (await bobs.json())["id"] != first_job["id"]


@pytest.mark.parametrize("key", ["", "k" * 201])
async def test_bad_idempotency_key_is_422(api: Api, key: str) -> None:
    body = await assert_problem(await api.submit({"name": "x"}, key=key), 422)
    assert body["fields"] == ["Idempotency-Key"]


async def test_job_list_is_newest_first_and_only_mine(api: Api) -> None:
    ids = [(await api.create({"name": f"n{n}"}))["id"] for n in range(3)]
    await api.create({"name": "bob's"}, token=api.bob)
    response = await api.get("/api/v1/jobs")
    assert response.status == 200
    jobs = (await response.json())["jobs"]
    assert [j["id"] for j in jobs] == ids[::-1]
    assert [j["name"] for j in jobs] == ["n2", "n1", "n0"]


# -- ownership -------------------------------------------------------------------------------------


def _normalised(body: dict[str, Any], job_id: str) -> str:
    return json.dumps(body, sort_keys=True).replace(job_id, "JOB")


@pytest.mark.parametrize(("method", "suffix"), [
    ("GET", ""), ("POST", "/cancel"), ("GET", "/notebook"), ("GET", "/log"), ("GET", "/events"),
])
async def test_another_users_job_is_404_like_a_missing_one(
    api: Api, method: str, suffix: str
) -> None:
    job = await api.pending()
    missing = "0123456789abcdef"
    assert missing != job["id"]
    answers = []
    for job_id in (job["id"], missing):
        response = await api.client.request(
            method, f"/api/v1/jobs/{job_id}{suffix}", headers=api.auth(api.bob))
        answers.append((response.status, response.content_type,
                        _normalised(await response.json(content_type=None), job_id)))
    assert answers[0] == answers[1]
    assert answers[0][:2] == (404, PROBLEM)
    # Bob's attempt changed nothing for Alice.
    assert not api.cluster.backend.cancels
    assert (await api.job(job["id"]))["state"] == "pending"


async def test_malformed_job_id_is_404(api: Api) -> None:
    for job_id in ("0123", "ABCDEF0123456789", "0123456789abcdef0", "0123456789abcdeg"):
        await assert_problem(await api.get(f"/api/v1/jobs/{job_id}"), 404)


# -- lifecycle -------------------------------------------------------------------------------------


async def test_notebook_before_there_is_one_is_409(api: Api) -> None:
    job = await api.pending()
    body = await assert_problem(await api.get(f"/api/v1/jobs/{job['id']}/notebook"), 409)
    assert job["id"] in json.dumps(body)


async def test_a_run_to_success(api: Api) -> None:
    job = await api.pending()
    await api.wait(job["id"], lambda j: j["pending_reason"] == "Priority")  # Slurm's word
    slurm_id = api.slurm(job)
    api.cluster.backend.states[slurm_id] = SchedulerState.RUNNING
    running = await api.wait_state(job["id"], "running")
    assert running["node"] == "vm" and running["started_at"]
    assert running["pending_reason"] is None

    workdir = api.workdir(job["id"])
    files = api.cluster.transport.files
    files[f"{workdir}/job.log"] = b"hpcgw: job started\n"
    log = await api.get(f"/api/v1/jobs/{job['id']}/log")  # read live while running
    assert log.status == 200 and await log.text() == "hpcgw: job started\n"

    output = api.notebook.replace(b"hello", b"executed")
    files[f"{workdir}/output.ipynb"] = output
    files[f"{workdir}/exit.json"] = json.dumps({"status": "ok"}).encode()
    files[f"{workdir}/job.log"] += b"done\n"
    api.cluster.backend.states[slurm_id] = SchedulerState.COMPLETED
    done = await api.wait_state(job["id"], *TERMINAL)
    assert (done["state"], done["reason"]) == ("succeeded", "completed")
    assert done["ended_at"] and done["notebook_available"] is True

    response = await api.get(f"/api/v1/jobs/{job['id']}/notebook")
    assert response.status == 200
    assert response.content_type == "application/x-ipynb+json"
    assert await response.read() == output
    log = await api.get(f"/api/v1/jobs/{job['id']}/log")
    assert await log.text() == "hpcgw: job started\ndone\n"
    listed = await api.get(f"/api/v1/jobs/{job['id']}/files")  # it listed no outputs
    assert listed.status == 200 and await listed.json() == {"files": []}
    events = (await (await api.get(f"/api/v1/jobs/{job['id']}/events")).json())["events"]
    assert [e["to_state"] for e in events] == [
        "accepted", "staging", "pending", "running", "collecting", "succeeded"]
    # Terminal: a cancel now changes nothing.
    response = await api.client.post(f"/api/v1/jobs/{job['id']}/cancel",
                                     headers=api.auth(api.alice))
    assert response.status == 200
    assert (await response.json())["state"] == "succeeded"


async def log_from(api: Api, job_id: str, offset: int | str) -> tuple[bytes, dict[str, str]]:
    response = await api.get(f"/api/v1/jobs/{job_id}/log?offset={offset}")
    assert response.status == 200, await response.text()
    return await response.read(), dict(response.headers)


async def test_a_user_has_at_most_eight_live_log_reads_under_way(api: Api) -> None:
    """Each live read is a process or an SSH channel on the cluster's side: a script that
    asks for its log many times at once gets 429 past eight, and the reads end as usual."""
    job = await api.pending()
    api.cluster.transport.files[f"{api.workdir(job['id'])}/job.log"] = b"hello\n"
    api.cluster.backend.states[api.slurm(job)] = SchedulerState.RUNNING
    await api.wait_state(job["id"], "running")
    transport = api.cluster.transport
    slow_cluster, read = asyncio.Event(), transport.read_file
    reading = []

    async def slow_read(path: str, **kwargs: Any) -> bytes:
        if path.endswith("/job.log"):
            reading.append(path)
            await slow_cluster.wait()
        return await read(path, **kwargs)

    transport.read_file = slow_read  # type: ignore[method-assign]
    asked = [asyncio.create_task(api.get(f"/api/v1/jobs/{job['id']}/log?offset={n}"))
             for n in range(8)]
    await api.wait(job["id"], lambda _: len(reading) == 8)
    ninth = await asyncio.wait_for(api.get(f"/api/v1/jobs/{job['id']}/log"), 10)
    problem = await ninth.json()
    assert (ninth.status, problem["limit"], problem["value"]) == (429, "live_log_reads", 8)
    assert ninth.headers["Retry-After"] == "1" and len(reading) == 8
    slow_cluster.set()
    assert [answer.status for answer in await asyncio.gather(*asked)] == [200] * 8
    assert (await api.get(f"/api/v1/jobs/{job['id']}/log")).status == 200


async def test_a_followed_log_gets_each_byte_once_live_and_after_the_end(api: Api) -> None:
    job = await api.pending()
    slurm_id = api.slurm(job)
    api.cluster.backend.states[slurm_id] = SchedulerState.RUNNING
    await api.wait_state(job["id"], "running")
    files, workdir = api.cluster.transport.files, api.workdir(job["id"])
    limit = api.app[CONFIG].gateway.log_tail_bytes
    body, headers = await log_from(api, job["id"], 0)  # before Slurm wrote any
    assert body == b"" and headers["Hpcgw-Log-Next"] == "0"
    assert headers["Hpcgw-Job-State"] == "running"
    first = b"".join(b"cell %6d done\n" % n for n in range(limit // 16 + 8))  # limit + 128
    files[f"{workdir}/job.log"] = first
    body, headers = await log_from(api, job["id"], 0)
    assert body == first[:limit] and headers["Hpcgw-Log-Start"] == "0"
    body, headers = await log_from(api, job["id"], headers["Hpcgw-Log-Next"])
    assert body == first[limit:] and headers["Hpcgw-Log-Next"] == str(len(first))
    files[f"{workdir}/job.log"] += b"the end\n"
    body, headers = await log_from(api, job["id"], len(first))
    assert body == b"the end\n"
    files[f"{workdir}/progress.json"] = b'{"done": 2, "total": 3}'
    await api.wait(job["id"], lambda j: j["progress"] == {"done": 2, "total": 3})
    files[f"{workdir}/exit.json"] = b'{"status": "ok"}'
    files[f"{workdir}/progress.json"] = b'{"done": 3, "total": 3}'
    api.cluster.backend.states[slurm_id] = SchedulerState.COMPLETED
    done = await api.wait_state(job["id"], *TERMINAL)
    assert done["progress"] == {"done": 3, "total": 3}
    # Collected: only the log's tail is kept, and offsets keep their meaning.
    whole = files[f"{workdir}/job.log"]
    body, headers = await log_from(api, job["id"], len(first))
    assert body == b"the end\n" and headers["Hpcgw-Job-State"] == "succeeded"
    body, headers = await log_from(api, job["id"], 0)  # before the kept tail: from its start
    assert headers["Hpcgw-Log-Start"] == str(len(whole) - limit) and body == whole[-limit:]
    body, headers = await log_from(api, job["id"], len(whole))
    assert body == b"" and headers["Hpcgw-Log-Next"] == str(len(whole))
    for bad in ("-1", "x", "1e3", str(2**60)):
        await assert_problem(await api.get(f"/api/v1/jobs/{job['id']}/log?offset={bad}"), 422)


async def test_a_failing_notebook_keeps_its_partial_notebook(api: Api) -> None:
    job = await api.pending()
    workdir = api.workdir(job["id"])
    files = api.cluster.transport.files
    files[f"{workdir}/output.ipynb"] = api.notebook
    files[f"{workdir}/exit.json"] = json.dumps(
        {"status": "notebook_error", "ename": "ValueError", "evalue": "bad lr", "cell": 2}
    ).encode()
    api.cluster.backend.states[api.slurm(job)] = SchedulerState.FAILED
    done = await api.wait_state(job["id"], *TERMINAL)
    assert (done["state"], done["reason"]) == ("failed", "notebook_error")
    assert "ValueError: bad lr" in done["message"]
    assert (await api.get(f"/api/v1/jobs/{job['id']}/notebook")).status == 200


async def test_time_limit(api: Api) -> None:
    job = await api.pending()
    api.cluster.backend.states[api.slurm(job)] = SchedulerState.TIMEOUT
    done = await api.wait_state(job["id"], *TERMINAL)
    assert (done["state"], done["reason"]) == ("timed_out", "time_limit")
    await assert_problem(await api.get(f"/api/v1/jobs/{job['id']}/notebook"), 409)


async def test_a_job_slurm_forgets_without_a_record_is_lost(api: Api) -> None:
    job = await api.pending()
    del api.cluster.backend.states[api.slurm(job)]
    done = await api.wait_state(job["id"], *TERMINAL)
    assert (done["state"], done["reason"]) == ("failed", "lost")


async def test_a_job_slurm_forgets_with_an_ok_record_succeeded(api: Api) -> None:
    job = await api.pending()
    api.cluster.transport.files[f"{api.workdir(job['id'])}/exit.json"] = b'{"status": "ok"}'
    del api.cluster.backend.states[api.slurm(job)]
    done = await api.wait_state(job["id"], *TERMINAL)
    assert (done["state"], done["reason"]) == ("succeeded", "completed")


async def test_cancel_then_cancel_again(api: Api) -> None:
    job = await api.pending()
    path = f"/api/v1/jobs/{job['id']}/cancel"
    response = await api.client.post(path, headers=api.auth(api.alice))
    assert response.status == 202
    assert api.cluster.backend.cancels == [(job["slurm_job_id"], "alice")]
    done = await api.wait_state(job["id"], *TERMINAL)
    assert (done["state"], done["reason"]) == ("cancelled", "user_cancelled")
    assert "on request" in done["message"]
    sent = len(api.cluster.backend.cancels)
    again = await api.client.post(path, headers=api.auth(api.alice))
    assert again.status == 200
    assert (await again.json())["state"] == "cancelled"
    assert len(api.cluster.backend.cancels) == sent  # a terminal job is not scancelled again


async def test_scancel_is_sent_once(api: Api) -> None:
    job = await api.pending()
    response = await api.client.post(f"/api/v1/jobs/{job['id']}/cancel",
                                     headers=api.auth(api.alice))
    assert response.status == 202
    await api.wait_state(job["id"], *TERMINAL)
    assert api.cluster.backend.cancels == [(job["slurm_job_id"], "alice")]


async def test_unreachable_scheduler_keeps_the_state(api: Api) -> None:
    job = await api.pending()
    backend = api.cluster.backend
    backend.unreachable = True
    calls = backend.status_calls
    away = await api.wait(job["id"], lambda j: j["scheduler_reachable"] is False)
    # A failed poll left the job as it was: still pending, never failed for it.
    assert backend.status_calls > calls
    assert away["state"] == "pending" and away["reason"] is None
    backend.unreachable = False
    back = await api.wait(job["id"], lambda j: j["scheduler_reachable"] is True)
    assert back["state"] == "pending"


async def test_cancel_while_the_scheduler_is_away_is_sent_later(api: Api) -> None:
    job = await api.pending()
    backend = api.cluster.backend
    backend.unreachable = True
    response = await api.client.post(f"/api/v1/jobs/{job['id']}/cancel",
                                     headers=api.auth(api.alice))
    assert response.status == 202
    assert (await response.json())["state"] == "pending"
    assert backend.cancels == []
    backend.unreachable = False
    done = await api.wait_state(job["id"], *TERMINAL)
    assert (done["state"], done["reason"]) == ("cancelled", "user_cancelled")
    assert backend.cancels[0] == (job["slurm_job_id"], "alice")
    assert set(backend.cancels) == {(job["slurm_job_id"], "alice")}


async def test_many_jobs_one_status_query_per_cycle(api: Api) -> None:
    jobs = [await api.create({"name": f"n{n}"}) for n in range(5)]
    for job in jobs:
        await api.wait_state(job["id"], "pending")
    backend = api.cluster.backend
    before = backend.status_calls
    for submission in backend.submissions:
        backend.states[submission.slurm_job_id] = SchedulerState.RUNNING
    for job in jobs:
        await api.wait_state(job["id"], "running")
    # Five jobs moved, yet the poller asked once per cycle, not once per job.
    assert backend.status_calls - before < 5


async def test_a_job_whose_submission_cannot_be_built_fails(api: Api) -> None:
    store = api.app[STORE]
    # A row Store.add_user would refuse today (as an older store may hold): its unix name makes
    # an unsafe workdir, so no sbatch options can be built for it.
    row_id = store.db["users"].insert(
        {"name": "carol", "unix_user": "car ol", "created_at": "2026-01-01T00:00:00Z"}).last_pk
    token = store.users.issue_token(User(int(row_id), "carol", "car ol"))
    job = await api.create({"name": "x"}, token=token)
    done = await api.wait(job["id"], lambda j: j["state"] in TERMINAL, token=token)
    assert (done["state"], done["reason"]) == ("failed", "launch_failed")
    assert "refused submit options" in done["message"] and "car ol" in done["message"]
    assert not api.cluster.backend.submissions


async def test_side_files_land_next_to_the_notebook(api: Api) -> None:
    files = [("helper.py", b"def double(x):\n    return 2 * x\n"), ("data.csv", b"a,b\n1,2\n")]
    response = await api.submit({"name": "with files"}, files=files)
    assert response.status == 201, await response.text()
    job = await api.wait_state((await response.json())["id"], "pending")
    staged = api.cluster.transport.files
    for name, data in files:
        assert staged[f"{api.workdir(job['id'])}/{name}"] == data
    assert staged[f"{api.workdir(job['id'])}/input.ipynb"] == api.notebook


@pytest.mark.parametrize(("name", "problem"), [
    ("../evil.py", "one plain file name"),
    ("sub/dir.py", "one plain file name"),
    (".bashrc", "one plain file name"),
    ("naïve name.py", "one plain file name"),
    ("x" * 200, "one plain file name"),
    ("runner.py", "the gateway uses this name itself"),
    ("input.ipynb", "the gateway uses this name itself"),
    ("lab.token", "the gateway uses this name itself"),
])
async def test_bad_side_file_names_are_refused(api: Api, name: str, problem: str) -> None:
    response = await api.submit({"name": "x"}, files=[(name, b"x")])
    body = await assert_problem(response, 422)
    assert any(problem in error["message"] for error in body["errors"]), body
    assert not api.cluster.backend.submissions


async def test_side_files_sent_twice_or_too_large_are_refused(api: Api) -> None:
    body = await assert_problem(
        await api.submit({"name": "x"}, files=[("a.py", b"1"), ("a.py", b"2")]), 422)
    assert [e["message"] for e in body["errors"]] == ["sent more than once"]
    limit = api.app[CONFIG].gateway.max_side_files_bytes
    response = await api.submit({"name": "x"}, files=[("a.bin", b"x" * (limit // 2 + 1)),
                                                      ("b.bin", b"x" * (limit // 2 + 1))])
    await assert_problem(response, 413)
    assert not api.cluster.backend.submissions


# -- listing: filters and pages --------------------------------------------------------------------


async def list_page(api: Api, query: str, token: str | None = None) -> dict[str, Any]:
    response = await api.get(f"/api/v1/jobs{query}", token)
    assert response.status == 200, await response.text()
    page: dict[str, Any] = await response.json()
    if page["next"]:
        assert response.headers["Link"] == f'<{page["next"]}>; rel="next"'
    return page


async def test_the_job_list_pages_and_filters(api: Api) -> None:
    made = [await api.create({"name": f"run-{n % 2}"}) for n in range(5)]
    lab = await api.client.post("/api/v1/jobs", json={"kind": "lab", "time": "00:10:00"},
                                headers=api.auth(api.alice))
    assert lab.status == 201
    lab_id = (await lab.json())["id"]
    await api.create({"name": "bobs"}, token=api.bob)
    newest_first = [lab_id, *(job["id"] for job in reversed(made))]
    seen, query = [], "?limit=2"
    while True:  # every job once, in order, across pages
        page = await list_page(api, query)
        seen += [job["id"] for job in page["jobs"]]
        if not page["next"]:
            break
        query = "?" + page["next"].split("?", 1)[1]
        assert "limit=2" in query
    assert seen == newest_first
    by_name = await list_page(api, "?name=run-1")
    assert [j["id"] for j in by_name["jobs"]] == [made[3]["id"], made[1]["id"]]
    assert [j["id"] for j in (await list_page(api, "?kind=lab"))["jobs"]] == [lab_id]
    states = await list_page(api, "?state=accepted,staging,pending&kind=notebook")
    assert {j["id"] for j in states["jobs"]} == {job["id"] for job in made}
    assert (await list_page(api, "?since=2999-01-01T00:00:00Z"))["jobs"] == []
    assert len((await list_page(api, "?since=2000-01-01T00:00:00%2B02:00"))["jobs"]) == 6
    pending = await api.wait_state(made[0]["id"], "pending")
    by_slurm = await list_page(api, f"?slurm_job_id={pending['slurm_job_id']}")
    assert [j["id"] for j in by_slurm["jobs"]] == [made[0]["id"]]
    assert (await list_page(api, f"?slurm_job_id={pending['slurm_job_id']}", api.bob))[
        "jobs"] == []  # another user's Slurm job id finds nothing


@pytest.mark.parametrize(("query", "fields"), [
    ("?limit=0", ["limit"]), ("?limit=501", ["limit"]), ("?limit=x", ["limit"]),
    ("?state=running,bogus", ["state"]), ("?state=", ["state"]), ("?kind=batch", ["kind"]),
    ("?slurm_job_id=12;3", ["slurm_job_id"]), ("?since=yesterday", ["since"]),
    ("?since=2026-01-01T00:00:00", ["since"]), ("?cursor=abc", ["cursor"]),
    ("?color=red&limit=-1", ["color", "limit"]),
])
async def test_bad_list_filters_are_422_naming_each(api: Api, query: str,
                                                     fields: list[str]) -> None:
    assert (await assert_problem(await api.get(f"/api/v1/jobs{query}"), 422))["fields"] == fields


# -- notebooks as uploaded ------------------------------------------------------------------------


def v3_notebook() -> bytes:
    from nbformat import v3

    notebook = v3.new_notebook()
    sheet = v3.new_worksheet()
    sheet.cells.append(v3.new_code_cell(input="print('written in format 3')"))
    notebook.worksheets.append(sheet)
    return str(v3.writes_json(notebook)).encode()


async def test_an_old_notebook_is_upgraded_and_a_job_is_named_after_its_file(api: Api) -> None:
    job = await api.create({}, notebook=v3_notebook())
    assert job["name"] == "in"  # the part's file name, in.ipynb, as sbatch names a job
    stored = (api.app[CONFIG].gateway.data_dir / "jobs" / job["id"] / "input.ipynb").read_text()
    upgraded = json.loads(stored)
    assert upgraded["nbformat"] == 4 and "worksheets" not in upgraded
    assert "".join(upgraded["cells"][0]["source"]) == "print('written in format 3')"
    v4 = await api.create({}, notebook=api.notebook)
    assert (api.app[CONFIG].gateway.data_dir / "jobs" / v4["id"] / "input.ipynb").read_bytes(
        ) == api.notebook  # a v4 notebook is kept as it came


@pytest.mark.parametrize(("notebook", "words"), [
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code"}]}',
     "not a valid Jupyter notebook: "),
    (b"not json", "not a valid Jupyter notebook: "),
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code", '
     b'"id": "a", "source": "1", "metadata": {}, "outputs": [], "execution_count": "one"}]}',
     "not a valid Jupyter notebook: 'one' is not of type 'integer', 'null'"),
])
async def test_an_invalid_notebook_is_refused_with_nbformats_words(
        api: Api, notebook: bytes, words: str) -> None:
    body = await assert_problem(await api.submit({"name": "x"}, notebook=notebook), 422)
    [error] = body["errors"]
    assert error["field"] == "notebook" and words in error["message"]


async def test_parameters_without_a_parameters_cell_run_with_a_warning(api: Api) -> None:
    """papermill then injects them in a cell of their own; the job says so, in its message and
    its first event, and runs. A tagged cell, or no parameters, gets no warning."""
    untagged = await api.create({"parameters": {"alpha": 1}})
    assert untagged["message"].startswith("warning: the notebook has no cell tagged "
                                          "'parameters'")
    events = await (await api.get(f"/api/v1/jobs/{untagged['id']}/events")).json()
    assert events["events"][0]["message"] == untagged["message"]
    pending = await api.wait_state(untagged["id"], "pending")  # the submitter cleared message
    assert pending["message"] == untagged["message"]
    tagged_notebook = json.loads(api.notebook)
    tagged_notebook["cells"][0]["metadata"]["tags"] = ["parameters"]
    tagged = await api.create({"parameters": {"alpha": 1}},
                              notebook=json.dumps(tagged_notebook).encode())
    plain = await api.create({})
    assert tagged["message"] is None and plain["message"] is None


# -- problems explained --------------------------------------------------------------------------


async def test_every_problem_type_points_at_a_page_the_gateway_serves(api: Api) -> None:
    answers = [await api.submit({"gpus": "x"}),  # 422
               await api.client.get("/api/v1/jobs"),  # 401, no token
               await api.get("/api/v1/jobs/0123456789abcdef")]  # 404
    for answer in answers:
        problem = await answer.json(content_type=PROBLEM)
        assert problem["type"].startswith("/problems/")
        page = await api.client.get(problem["type"])  # no token needed
        assert page.status == 200 and page.content_type == "text/html"
        assert problem["title"] in await page.text()
    listing = await (await api.client.get("/problems/")).text()
    for slug in problem_types():
        assert f'id="{slug}"' in listing
    assert "validation" in listing and "<script" not in listing
    await assert_problem(await api.client.get("/problems/nonsense"), 404)


async def test_a_method_not_allowed_says_which_are(api: Api) -> None:
    response = await api.client.delete("/api/v1/jobs", headers=api.auth(api.alice))
    await assert_problem(response, 405)
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}
