"""Interactive labs on the real cluster: JupyterLab in a Slurm job, reached only through the
gateway's proxy at /labs/{id}/ (runs once per transport, local and ssh)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from .conftest import (
    SUITE_LAB_CONNECTIONS,
    Api,
    Gateway,
    cancel_quietly,
    slurm_jobs_tagged,
    squeue_state,
)
from .kernel_client import run_cell, start_kernel
from .lab_helpers import lab_get, login, request_lab, wait_ready

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def labs(gateway: Gateway) -> Iterator[dict[str, dict[str, Any]]]:
    """Two labs asked for at the same moment on the same node: a GPU lab (the one most tests
    use) and a CPU lab. Both must come up: no port race. (A lab at its time limit:
    test_time_limits.py.)"""
    async def start() -> dict[str, dict[str, Any]]:
        api = Api(gateway, "alice")
        gpu, cpu = await asyncio.gather(
            request_lab(api, partition="gpu", gpus=1, time="00:20:00", name="gpu lab"),
            request_lab(api, partition="cpu", time="00:20:00", name="cpu lab"))
        ready = await asyncio.gather(wait_ready(api, gpu["id"]), wait_ready(api, cpu["id"]))
        return {"gpu": ready[0], "cpu": ready[1]}
    started = asyncio.run(start())
    yield started
    cancel_quietly(gateway, [job["id"] for job in started.values()])


def bearer(gateway: Gateway, user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.tokens[user]}"}


async def test_both_labs_went_pending_running_ready(labs: dict[str, Any], alice: Api) -> None:
    for job in labs.values():
        status, events = await alice.call("GET", f"/api/v1/jobs/{job['id']}/events")
        states = [e["to_state"] for e in events["events"]]
        assert states == ["accepted", "staging", "pending", "running", "ready"], states
        status, answer = await lab_get(alice, job["id"], "api/status")
        assert status == 200 and "started" in answer
        assert job["lab_url"] == f"/labs/{job['id']}/lab"


async def test_kernel_over_the_proxied_websocket_sees_its_gpu(
    labs: dict[str, Any], gateway: Gateway
) -> None:
    lab = f"{gateway.url}/labs/{labs['gpu']['id']}/"
    async with aiohttp.ClientSession() as session:
        kernel = await start_kernel(session, lab, bearer(gateway))
        async with session.ws_connect(f"{lab}api/kernels/{kernel}/channels",
                                      headers=bearer(gateway)) as ws:
            printed = await run_cell(
                ws, "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))")
            assert printed.strip() in ("0", "1")
            assert (await run_cell(ws, "print(6 * 7)")).strip() == "42"
        async with session.delete(f"{lab}api/kernels/{kernel}",
                                  headers=bearer(gateway)) as gone:
            assert gone.status == 204


async def test_terminal_and_file_transfer_through_the_proxy(
    labs: dict[str, Any], gateway: Gateway
) -> None:
    lab = f"{gateway.url}/labs/{labs['gpu']['id']}/"
    headers = bearer(gateway)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{lab}api/terminals", headers=headers) as created:
            assert created.status == 200
            name = (await created.json())["name"]
        async with session.ws_connect(f"{lab}terminals/websocket/{name}",
                                      headers=headers) as ws:
            await ws.send_str(json.dumps(["stdin", "echo hello-$((6*7))\r"]))
            seen = ""
            async with asyncio.timeout(30):
                while "hello-42" not in seen:
                    frame = json.loads((await ws.receive()).data)
                    if frame[0] == "stdout":
                        seen += frame[1]
        await session.delete(f"{lab}api/terminals/{name}", headers=headers)
        payload = "x" * 300_000 + "\nend\n"
        path = f"hpcgw-test-{labs['gpu']['id']}.txt"
        async with session.put(f"{lab}api/contents/{path}", headers=headers, json={
                "type": "file", "format": "text", "content": payload}) as put:
            assert put.status in (200, 201), await put.text()
        async with session.get(f"{lab}files/{path}", headers=headers) as got:
            assert got.status == 200 and await got.text() == payload
        async with session.delete(f"{lab}api/contents/{path}", headers=headers) as deleted:
            assert deleted.status == 204


async def test_other_users_and_anonymous_callers_never_reach_the_lab(
    labs: dict[str, Any], gateway: Gateway, bob: Api
) -> None:
    job_id = labs["gpu"]["id"]
    missing = "0123456789abcdef"
    mine = await lab_get(bob, job_id, "api/status")
    nobody = await lab_get(bob, missing, "api/status")
    assert mine[0] == nobody[0] == 404
    assert mine[1]["detail"].replace(job_id, missing) == nobody[1]["detail"]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{gateway.url}/labs/{job_id}/api/events/subscribe",
                                     headers=bearer(gateway, "bob"))
        assert refused.value.status == 404
        async with session.get(f"{gateway.url}/labs/{job_id}/lab", allow_redirects=False,
                               headers={"Accept": "text/html"}) as page:
            assert page.status == 302
            where = urlsplit(page.headers["Location"])
            assert where.path == "/login"
            assert parse_qs(where.query)["next"] == [f"/labs/{job_id}/lab"]
        async with session.get(f"{gateway.url}/labs/{job_id}/api/status") as api_call:
            assert api_call.status == 401


async def test_a_user_holding_max_lab_connections_waits_for_one_of_them(
    labs: dict[str, Any], gateway: Gateway
) -> None:
    """Alice holds the suite's ``max_lab_connections`` WebSockets open on JupyterLab's event
    stream: her next request to the lab gets 429 naming the limit (no byte reaches the lab),
    those held keep working, and once one closes the lab answers her again."""
    lab = f"{gateway.url}/labs/{labs['gpu']['id']}/"
    async with aiohttp.ClientSession() as session:
        held = [await session.ws_connect(f"{lab}api/events/subscribe", headers=bearer(gateway),
                                         autoping=n > 0)  # the first one shows its pongs
                for n in range(SUITE_LAB_CONNECTIONS)]
        try:
            async with session.get(f"{lab}api/status", headers=bearer(gateway)) as refused:
                problem = await refused.json(content_type=None)
                assert (refused.status, refused.headers.get("Retry-After")) == (429, "1")
                assert (problem["limit"], problem["value"]) == (
                    "max_lab_connections", SUITE_LAB_CONNECTIONS)
            await held[0].ping(b"still there")  # a held one still reaches the lab
            pong = await held[0].receive(timeout=10)
            assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"still there")
            await held.pop().close()
            async with asyncio.timeout(30):
                while True:  # the close reaches the gateway a moment after the client's
                    async with session.get(f"{lab}api/status",
                                           headers=bearer(gateway)) as answer:
                        if answer.status != 429:
                            assert answer.status == 200 and "started" in await answer.json()
                            break
                    await asyncio.sleep(0.05)
        finally:
            await asyncio.gather(*(ws.close() for ws in held))


@pytest.mark.parametrize("trick", [
    "@127.0.0.1:1/api/status", "%2e%2e/%2e%2e/api/v1/jobs", "..%2f..%2fapi/v1/jobs",
    "//127.0.0.1:1/api/status", "http://127.0.0.1:1/",
])
async def test_no_url_picks_another_upstream(
    labs: dict[str, Any], gateway: Gateway, trick: str
) -> None:
    job_id = labs["gpu"]["id"]
    async with aiohttp.ClientSession() as session, session.get(
            aiohttp.client.URL(f"{gateway.url}/labs/{job_id}/{trick}", encoded=True),
            headers=bearer(gateway), allow_redirects=False) as answer:
        body = await answer.text()
        # Either the gateway refused it, or the job's own JupyterLab (Tornado) answered it.
        assert answer.status in (404, 302, 301) or "TornadoServer" in answer.headers.get(
            "Server", ""), (answer.status, body[:300])
        assert answer.status != 200 or "TornadoServer" in answer.headers.get("Server", "")
        assert '"jobs"' not in body


async def test_browser_session_cookie_xsrf_and_origin_rules(
    labs: dict[str, Any], gateway: Gateway
) -> None:
    job_id = labs["gpu"]["id"]
    lab = f"{gateway.url}/labs/{job_id}/"
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, like a browser keeps them
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        bad = await login(session, gateway.url, "hpcgw_not-a-token")
        assert bad.status == 401
        for hostile in ("//evil.example/x", "/\\evil.example", "https://evil.example/"):
            answer = await login(session, gateway.url, gateway.tokens["alice"], hostile)
            assert answer.status == 303 and answer.headers["Location"] == "/"
        answer = await login(session, gateway.url, gateway.tokens["alice"], f"/labs/{job_id}/lab")
        assert answer.headers["Location"] == f"/labs/{job_id}/lab"
        session_cookie = answer.cookies["hpcgw_session"]
        assert session_cookie["httponly"] and session_cookie["samesite"] == "Lax"
        async with session.get(f"{lab}lab", headers={"Accept": "text/html"}) as page:
            assert page.status == 200
            text = await page.text()
            assert "jupyter-config-data" in text
            for cookie in page.headers.getall("Set-Cookie", []):
                assert f"Path=/labs/{job_id}/" in cookie, cookie
        # A state change with only the cookie and no XSRF header is refused ...
        async with session.post(f"{lab}api/kernels", json={"name": "python3"}) as forged:
            assert forged.status == 403
        async with session.post(f"{gateway.url}/api/v1/jobs/{job_id}/cancel") as forged:
            assert forged.status == 403
        # ... and with the lab's _xsrf cookie echoed in the header (as JupyterLab does) allowed.
        xsrf = next(c.value for c in jar if c.key == "_xsrf")
        async with session.post(f"{lab}api/kernels", json={"name": "python3"},
                                headers={"X-XSRFToken": xsrf}) as made:
            assert made.status == 201
            kernel = (await made.json())["id"]
        origin = f"http://{urlsplit(gateway.url).netloc}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as foreign:
            await session.ws_connect(f"{lab}api/kernels/{kernel}/channels",
                                     headers={"Origin": "http://evil.example"})
        assert foreign.value.status == 403
        async with session.ws_connect(f"{lab}api/kernels/{kernel}/channels",
                                      headers={"Origin": origin}) as ws:
            assert (await run_cell(ws, "print('via cookie')")).strip() == "via cookie"
        async with session.delete(f"{lab}api/kernels/{kernel}",
                                  headers={"X-XSRFToken": xsrf}) as deleted:
            assert deleted.status == 204


async def test_the_lab_token_is_never_exposed(labs: dict[str, Any], gateway: Gateway,
                                              alice: Api) -> None:
    job_id = labs["gpu"]["id"]
    token = _lab_token(gateway, job_id)
    assert len(token) >= 32
    processes = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True,
                               text=True, check=True).stdout
    assert token not in processes
    status, log = await alice.call("GET", f"/api/v1/jobs/{job_id}/log")
    assert status == 200 and b"Jupyter Server" in log and token.encode() not in log
    status, page = await lab_get(alice, job_id, "lab", headers={"Accept": "text/html"})
    assert status == 200 and token.encode() not in page
    status, job = await alice.call("GET", f"/api/v1/jobs/{job_id}")
    assert token not in json.dumps(job)
    assert token not in gateway.log_path.read_text()
    for store_file in _store_files(gateway):  # a copy of the store opens no lab
        assert token.encode() not in store_file.read_bytes(), store_file


def _lab_token(gateway: Gateway, job_id: str) -> str:
    """The token as the job got it (its 0600 ``lab.token``, read as root)."""
    return Path(f"/home/alice/.hpcgw/jobs/{job_id}/lab.token").read_text().strip()


def _store_files(gateway: Gateway) -> list[Path]:
    data_dir = Path(tomllib.loads(gateway.config.read_text())["gateway"]["data_dir"])
    return [data_dir / name for name in ("hpcgw.db", "hpcgw.db-wal") if (data_dir / name).exists()]


async def test_cancel_ends_the_slurm_job_and_removes_the_route(
    labs: dict[str, Any], alice: Api
) -> None:
    job_id = labs["gpu"]["id"]
    slurm_ids = slurm_jobs_tagged(job_id)
    assert len(slurm_ids) == 1
    status, _ = await alice.call("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert status == 202
    job = await alice.wait_terminal(job_id)
    assert (job["state"], job["reason"]) == ("cancelled", "user_cancelled")
    assert squeue_state(slurm_ids[0]) in ("", "CANCELLED")
    status, _ = await lab_get(alice, job_id, "api/status")
    assert status == 404


async def test_a_lab_asked_for_with_no_resources_handles_a_10_mib_kernel_message(
        alice: Api, gateway: Gateway) -> None:
    # The partition's lab_default_memory (1G on the dev cluster), not Slurm's 256 MB per CPU,
    # at which such a message killed JupyterLab.
    lab = await request_lab(alice)
    try:
        job = await wait_ready(alice, lab["id"])
        assert job["memory"] == "1024M" and job["cpus"] == 1
        base = f"{gateway.url}/labs/{lab['id']}/"
        async with aiohttp.ClientSession() as session:
            kernel = await start_kernel(session, base, alice.headers)
            async with session.ws_connect(f"{base}api/kernels/{kernel}/channels",
                                          headers=alice.headers, max_msg_size=0) as ws:
                # 10 MiB in all with the message's envelope: JupyterLab's (tornado's) own cap.
                size = 10 * 1024 * 1024 - 4096
                code = "data = '" + "x" * size + "'\nprint(len(data))"
                printed = await run_cell(ws, code, timeout=120)
        assert printed == f"{size}\n"
        assert (await alice.job(lab["id"]))["state"] == "ready"
    finally:
        await alice.call("POST", f"/api/v1/jobs/{lab['id']}/cancel")
