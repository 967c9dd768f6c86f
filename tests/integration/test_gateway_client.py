"""A laptop's own Jupyter server on a lab's kernels: jupyter_server's gateway client
(`jupyter lab --gateway-url URL/labs/ID --GatewayClient.auth_token TOKEN
--GatewayClient.auth_scheme Bearer`, the README's command) through the gateway's proxy.

The "laptop" is a real `jupyter server` started here in gateway mode (the job environment's
JupyterLab, as a user would have their own); the kernel it asks for starts in the lab, on the
compute node, as the lab's owner; the cell runs there. Another user's token gets nothing.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp

from .conftest import Api, Gateway
from .kernel_client import run_cell, start_kernel
from .lab_helpers import request_lab, wait_ready

LAPTOP_JUPYTER = "/opt/hpcgw-jobenv/bin/jupyter"
LOCAL_TOKEN = "laptop-secret"  # the local server's own token, for this test only


class Laptop:
    """A `jupyter server` in gateway mode; its URL once it listens."""

    def __init__(self, home: Path, gateway_url: str, token: str) -> None:
        env = {**os.environ, **{f"JUPYTER_{name}_DIR": str(home / name.lower())
                                for name in ("RUNTIME", "CONFIG", "DATA")}}
        self.log = home / "server.log"
        # --allow-root: CI runs as root; a laptop user needs no such flag.
        argv = [LAPTOP_JUPYTER, "server", "--no-browser", "--allow-root",
                "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
                f"--IdentityProvider.token={LOCAL_TOKEN}", f"--ServerApp.root_dir={home}",
                f"--gateway-url={gateway_url}", f"--GatewayClient.auth_token={token}",
                "--GatewayClient.auth_scheme=Bearer"]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        self.url = self._wait_listening(60)

    def _wait_listening(self, timeout: float) -> str:
        """The server's URL once it accepts connections. (jupyter_server prints the URL of a
        port it chose with ``--port=0`` before it listens there: the printed port alone is
        not enough.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", self.log.read_text())
            if found and _accepts(int(found[1])):
                return found[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"jupyter server did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()



async def test_a_laptop_jupyter_runs_a_cell_on_the_labs_node(
        gateway: Gateway, alice: Api, tmp_path: Path, labs: list[str]) -> None:
    lab = await request_lab(alice, time="00:20:00")
    labs.append(lab["id"])
    ready = await wait_ready(alice, lab["id"])
    laptop = Laptop(tmp_path, f"{gateway.url}/labs/{lab['id']}", gateway.tokens["alice"])
    local = {"Authorization": f"token {LOCAL_TOKEN}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            async with session.get(f"{laptop.url}api/kernelspecs", headers=local) as specs:
                assert specs.status == 200
                assert "python3" in (await specs.json())["kernelspecs"]
            kernel = await start_kernel(session, laptop.url, local)
            async with session.ws_connect(f"{laptop.url}api/kernels/{kernel}/channels",
                                          headers=local) as ws:
                printed = await run_cell(ws, "import os; print(os.environ['SLURM_JOB_ID'], "
                                         "os.environ['SLURMD_NODENAME'], os.getuid())")
            # The kernel is the lab's: the lab lists it (asked through the gateway directly).
            status, kernels = await alice.call("GET", f"/labs/{lab['id']}/api/kernels")
    finally:
        laptop.stop()
    job_id, node, uid = printed.split()
    assert (job_id, node) == (ready["slurm_job_id"], ready["node"])
    assert int(uid) == _uid("alice")
    assert status == 200 and kernel in {k["id"] for k in kernels}, kernels
    assert f"GatewayKernelManager started kernel: {kernel}" in laptop.log.read_text()


async def test_another_users_token_gets_no_kernel(
        gateway: Gateway, alice: Api, tmp_path: Path, labs: list[str]) -> None:
    """Bob pointing his laptop at Alice's lab: the gateway refuses every request, so his
    server starts no kernel there."""
    lab = await request_lab(alice, time="00:20:00")
    labs.append(lab["id"])
    await wait_ready(alice, lab["id"])
    laptop = Laptop(tmp_path, f"{gateway.url}/labs/{lab['id']}", gateway.tokens["bob"])
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session, \
                session.post(f"{laptop.url}api/kernels", json={"name": "python3"},
                             headers={"Authorization": f"token {LOCAL_TOKEN}"}) as started:
            assert started.status >= 400, await started.text()
    finally:
        laptop.stop()
    status, kernels = await alice.call("GET", f"/labs/{lab['id']}/api/kernels")
    assert status == 200 and kernels == []
    assert "GatewayKernelManager started kernel" not in laptop.log.read_text()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid
