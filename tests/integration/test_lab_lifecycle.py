"""Labs through faults and policies, each on a gateway of the test's own: SIGKILL and restart,
a dropped SSH connection, the idle cull, and a lab whose server never comes up."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import (
    Api,
    Gateway,
    add_users,
    dev_source,
    start_gateway,
    stop_gateway,
    write_config,
)
from .kernel_client import run_cell, start_kernel
from .lab_helpers import request_lab, wait_answers, wait_ready
from .test_ssh_faults import sshd_sessions

pytestmark = pytest.mark.timeout(600)


class OwnGateway:
    """A gateway process of one test, which may be SIGKILLed and started again."""

    def __init__(self, source: Path, home: Path, **settings: object) -> None:
        home.mkdir(parents=True)
        self.config = home / "gateway.toml"
        write_config(source, self.config, home / "data", **settings)
        self.tokens = add_users(self.config)
        self.log = home / "gateway.log"
        self.started: list[Gateway] = []
        self.start()

    @property
    def current(self) -> Gateway:
        return self.started[-1]

    def start(self) -> Gateway:
        process, url = start_gateway(self.config, self.log)
        self.started.append(Gateway(url, self.config, self.tokens, process, self.log))
        return self.current

    def kill(self) -> None:
        self.current.process.send_signal(signal.SIGKILL)
        self.current.process.wait()

    def api(self) -> Api:
        return Api(self.current, "alice")


@pytest.fixture
def own_gateway(dev_config: Path, tmp_path: Path) -> Iterator[object]:
    made: list[OwnGateway] = []

    def make(transport: str = "local", **settings: object) -> OwnGateway:
        made.append(OwnGateway(dev_source(dev_config, transport), tmp_path / f"gw{len(made)}",
                               **settings))
        return made[-1]
    yield make
    for gateway in made:
        stop_gateway(gateway.current.process)


@pytest.mark.parametrize("transport", ["local", "ssh"])
async def test_a_restarted_gateway_serves_running_labs_at_the_same_url(
    own_gateway: object, transport: str
) -> None:
    gateway = own_gateway(transport)  # type: ignore[operator]
    api = gateway.api()
    lab = await wait_ready(api, (await request_lab(api, time="00:10:00"))["id"])
    headers = api.headers
    path = f"/labs/{lab['id']}/"
    async with aiohttp.ClientSession() as session:
        kernel = await start_kernel(session, gateway.current.url + path, headers)
        async with session.ws_connect(f"{gateway.current.url}{path}api/kernels/{kernel}/channels",
                                      headers=headers) as ws:
            await run_cell(ws, "x = 41")
        gateway.kill()
        gateway.start()  # another port: `hpcgw serve --port 0`
        api = gateway.api()
        assert (await api.job(lab["id"]))["state"] == "ready"
        await wait_answers(api, lab["id"])
        async with session.ws_connect(f"{gateway.current.url}{path}api/kernels/{kernel}/channels",
                                      headers=headers) as ws:
            assert (await run_cell(ws, "print(x + 1)")).strip() == "42"
    await api.call("POST", f"/api/v1/jobs/{lab['id']}/cancel")
    assert (await api.wait_terminal(lab["id"]))["state"] == "cancelled"


async def test_a_dropped_ssh_connection_heals_and_the_lab_answers_again(
    own_gateway: object
) -> None:
    gateway = own_gateway("ssh")  # type: ignore[operator]
    api = gateway.api()
    lab = await wait_ready(api, (await request_lab(api, time="00:10:00"))["id"])
    await wait_answers(api, lab["id"])
    killed = 0
    for pid in sshd_sessions():
        os.kill(pid, signal.SIGKILL)
        killed += 1
    assert killed, "no SSH session to cut"
    await wait_answers(api, lab["id"], timeout=90)
    assert (await api.job(lab["id"]))["state"] == "ready"
    await api.call("POST", f"/api/v1/jobs/{lab['id']}/cancel")
    assert (await api.wait_terminal(lab["id"]))["state"] == "cancelled"


async def test_an_idle_lab_is_stopped_with_reason_idle(own_gateway: object) -> None:
    gateway = own_gateway(idle_timeout=6.0, check_interval=1.0)  # type: ignore[operator]
    api = gateway.api()
    lab = await wait_ready(api, (await request_lab(api, time="00:10:00"))["id"])
    job = await api.wait_terminal(lab["id"], timeout=90)
    assert (job["state"], job["reason"]) == ("cancelled", "idle")
    status, _ = await api.call("GET", f"/labs/{lab['id']}/api/status")
    assert status == 404


async def test_a_lab_whose_server_never_starts_fails_with_pythons_error(
    own_gateway: object
) -> None:
    # A job-side Python without JupyterLab: the launcher never runs, the job could not start.
    gateway = own_gateway(python='"/usr/bin/python3"')  # type: ignore[operator]
    api = gateway.api()
    lab = await request_lab(api, time="00:10:00")
    job = await api.wait_terminal(lab["id"], timeout=120)
    assert (job["state"], job["reason"]) == ("failed", "launch_failed"), job
    assert job["message"] == ("the job's command could not start: ModuleNotFoundError: No module "
                              "named 'jupyter_server'"), job["message"]
