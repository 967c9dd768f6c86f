"""Kernels talk over IPC sockets in the job's private directory, never over TCP ports
(runs once per transport, local and ssh, on the real dev cluster; twenty notebooks at once
only on ssh).

With TCP, a kernel's five ports were picked free and bound later, so notebooks starting together
on one node collided ("Address already in use", then "Kernel died before replying to
kernel_info"), and every other user on the node could reach the ports. ipykernel (7.x) still
opens one TCP socket of its own that no setting turns off, its loopback pipe for the output of
forked subprocesses (bound atomically, keyed with a per-kernel random secret); the checks here
allow exactly that one and no other.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nbformat
import pytest

from .conftest import (
    Api,
    Gateway,
    add_users,
    make_notebook,
    start_gateway,
    stop_gateway,
    write_config,
)
from .kernel_client import run_cell, start_kernel
from .lab_helpers import request_lab, wait_ready

pytestmark = pytest.mark.timeout(900)

SOCKET_PATH_MAX = 107
CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
# A cell that reports, from inside the kernel, its connection file and its process id.
REPORT = ("import json, os\n"
          "from ipykernel.connect import get_connection_file\n"
          "from ipykernel.kernelapp import IPKernelApp\n"
          "print(json.dumps({'file': get_connection_file(), 'pid': os.getpid(),\n"
          "    'info': json.load(open(get_connection_file())),\n"
          "    'pipe': getattr(IPKernelApp.instance().iopub_thread, '_pipe_port', None)}))")


def workdir(gateway_config: Path, job_id: str, user: str = "alice") -> Path:
    cluster = tomllib.loads(gateway_config.read_text())["clusters"][0]
    return Path(cluster["work_root"].replace("{unix_user}", user)) / job_id


def kernel_tcp_sockets(pid: int) -> list[tuple[str, int, str]]:
    """(hex local address, port, hex state) of every TCP socket process ``pid`` holds, read
    from outside the process (as root): its socket fds matched against /proc/net/tcp{,6}."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    assert inodes, f"process {pid} holds no socket"
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields and int(fields[9]) in inodes:
                address, port = fields[1].split(":")
                found.append((address, int(port, 16), fields[3]))
    return found


def check_kernel(report: dict[str, Any], runtime: Path, *, alive: bool = True,
                 via_alias: bool = False) -> None:
    """The kernel's connection file says ipc and lies in the job's private ``runtime``; its five
    sockets are named in ``runtime`` itself or (``via_alias``) through a short alias of it in a
    private directory under /tmp. While the kernel runs (``alive``) they are private sockets in
    ``runtime`` and its only TCP socket is ipykernel's loopback subprocess pipe."""
    info = report["info"]
    assert info["transport"] == "ipc", info
    assert Path(report["file"]).parent == runtime
    assert runtime.stat().st_mode & 0o777 == 0o700
    named_in = Path(info["ip"]).parent
    if via_alias:
        assert named_in.name == "r" and named_in.parent.parent == Path("/tmp"), named_in
        assert named_in.parent.name.startswith("hpcgw-")
    else:
        assert named_in == runtime
    paths = [Path(f"{info['ip']}-{info[channel]}") for channel in CHANNELS]
    assert all(len(str(path).encode()) <= SOCKET_PATH_MAX for path in paths)
    if alive:
        for path in paths:
            assert path.resolve().parent == runtime
            mode = path.stat().st_mode
            assert stat.S_ISSOCK(mode) and mode & 0o077 == 0, (path, oct(mode))
        assert kernel_tcp_sockets(report["pid"]) == [("0100007F", report["pipe"], "0A")]


def kernel_report(notebook: bytes) -> dict[str, Any]:
    """What the REPORT cell printed in an executed notebook."""
    executed = nbformat.reads(notebook.decode(), as_version=4)
    cell = next(c for c in executed.cells if c.source == REPORT)
    return dict(json.loads(cell.outputs[0]["text"]))


# The collisions were on the node, whichever transport submitted: once, on ssh.
@pytest.mark.parametrize("transport", ["ssh"], indirect=True)
async def test_twenty_notebooks_started_together_on_one_node_all_succeed(
    alice: Api, gateway: Gateway
) -> None:
    notebook = make_notebook(REPORT)
    submitted = await asyncio.gather(*(
        alice.submit(notebook, {"name": f"together {i}", "time": "00:10:00"})
        for i in range(20)))
    assert all(status == 201 for status, _ in submitted), submitted
    jobs = await asyncio.gather(*(alice.wait_terminal(job["id"], timeout=420)
                                  for _, job in submitted))
    assert [(j["state"], j["reason"]) for j in jobs] == [("succeeded", "completed")] * 20, [
        (j["id"], j["state"], j["reason"], j["message"]) for j in jobs
        if j["state"] != "succeeded"]
    assert len({j["node"] for j in jobs}) == 1  # the dev cluster's one node: all side by side
    for job in jobs:
        status, executed = await alice.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
        assert status == 200
        check_kernel(kernel_report(executed), workdir(gateway.config, job["id"]) / "runtime",
                     alive=False)
        _, log = await alice.call("GET", f"/api/v1/jobs/{job['id']}/log")
        assert b"Address already in use" not in log and b"Kernel died" not in log


async def lab_kernel_report(api: Api, gateway: Gateway, job_id: str) -> dict[str, Any]:
    """Start a kernel in the lab through the proxy, run REPORT on it; the report, with the
    kernel's id, while the kernel still runs."""
    lab = f"{gateway.url}/labs/{job_id}/"
    async with aiohttp.ClientSession() as session:
        kernel = await start_kernel(session, lab, api.headers)
        async with session.ws_connect(f"{lab}api/kernels/{kernel}/channels",
                                      headers=api.headers) as ws:
            report = dict(json.loads(await run_cell(ws, REPORT)))
            assert (await run_cell(ws, "print(6 * 7)")).strip() == "42"
    return {**report, "kernel_id": kernel}


async def test_a_lab_kernel_uses_ipc_sockets_in_the_jobs_runtime_dir(
    alice: Api, gateway: Gateway
) -> None:
    lab = await request_lab(alice, partition="cpu", time="00:10:00", name="ipc lab")
    try:
        await wait_ready(alice, lab["id"])
        report = await lab_kernel_report(alice, gateway, lab["id"])
        runtime = workdir(gateway.config, lab["id"]) / "runtime"
        # The connection file the server wrote, read as root from the job's directory.
        connection_file = runtime / f"kernel-{report['kernel_id']}.json"
        assert Path(report["file"]) == connection_file
        assert json.loads(connection_file.read_text()) == report["info"]
        assert report["info"]["ip"] == str(runtime / f"kernel-{report['kernel_id']}-ipc")
        check_kernel(report, runtime)
    finally:
        await alice.call("POST", f"/api/v1/jobs/{lab['id']}/cancel")


# -- a work_root too long to name unix sockets in: the same, through a short private alias ----

LONG_ROOT_DIR = "hpcgw-ipc-test-" + "w" * 70


@pytest.fixture(scope="module")
def long_root_gateway(dev_config: Path, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[Gateway]:
    """A local-transport gateway whose work_root is long enough that neither a notebook's nor a
    lab's kernel sockets fit in a unix socket path under the job's directory."""
    home = tmp_path_factory.mktemp("gateway-long-root")
    config = home / "gateway.toml"
    write_config(dev_config, config, home / "data")
    text, count = re.subn(r'(?m)^work_root = ".*"$',
                          f'work_root = "/home/{{unix_user}}/.hpcgw/{LONG_ROOT_DIR}/jobs"',
                          config.read_text())
    assert count == 1
    config.write_text(text)
    process, url = start_gateway(config, home / "gateway.log")
    gateway = Gateway(url, config, add_users(config), process, home / "gateway.log")
    yield gateway
    stop_gateway(process)
    shutil.rmtree(f"/home/alice/.hpcgw/{LONG_ROOT_DIR}", ignore_errors=True)
    for alias_dir in Path("/tmp").glob("hpcgw-*"):  # what the labs' aliases leave behind
        if str((alias_dir / "r").resolve(strict=False)).startswith(
                f"/home/alice/.hpcgw/{LONG_ROOT_DIR}/"):
            shutil.rmtree(alias_dir, ignore_errors=True)


async def test_a_long_work_root_still_runs_notebooks_and_lab_kernels_over_ipc(
    long_root_gateway: Gateway
) -> None:
    api = Api(long_root_gateway, "alice")
    status, job = await api.submit(make_notebook(REPORT), {"name": "long root"})
    assert status == 201, job
    lab = await request_lab(api, partition="cpu", time="00:10:00", name="long root lab")
    try:
        runtime = workdir(long_root_gateway.config, job["id"]) / "runtime"
        assert len(str(runtime / "kernel-ipc-1").encode()) > SOCKET_PATH_MAX
        job = await api.wait_terminal(job["id"], timeout=180)
        assert (job["state"], job["reason"]) == ("succeeded", "completed"), job
        _, executed = await api.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
        report = kernel_report(executed)
        check_kernel(report, runtime, alive=False, via_alias=True)
        _, log = await api.call("GET", f"/api/v1/jobs/{job['id']}/log")
        assert b"the kernel's sockets are reached through /tmp/hpcgw-" in log

        await wait_ready(api, lab["id"])
        report = await lab_kernel_report(api, long_root_gateway, lab["id"])
        lab_runtime = workdir(long_root_gateway.config, lab["id"]) / "runtime"
        check_kernel(report, lab_runtime, via_alias=True)
        alias = Path(report["info"]["ip"]).parent
        assert alias.is_symlink()
        assert alias.parent.stat().st_uid == lab_runtime.stat().st_uid  # alice's own
        assert alias.parent.stat().st_mode & 0o777 == 0o700
    finally:
        await api.call("POST", f"/api/v1/jobs/{lab['id']}/cancel")
