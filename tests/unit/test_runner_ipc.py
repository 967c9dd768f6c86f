"""The notebook runner's kernel talks over IPC sockets in the job's private directory, never TCP.

Runs the real batch script (gateway/job_templates/notebook.sh.j2, on the host runtime) with the
real job-side Python (/opt/hpcgw-jobenv, with papermill and ipykernel) in a fake job directory.
A probe cell in the notebook reports, from inside the kernel process, its connection file, its own
socket file descriptors and the node's TCP and unix socket tables; the test reads that report
from the executed notebook and checks it.

The five kernel channels are IPC sockets. ipykernel (7.x) itself still opens one TCP socket that
no setting turns off: the PULL socket through which forked subprocesses send their output to the
kernel (``IOPubThread(..., pipe=True)`` binds it with ``bind_to_random_port("tcp://127.0.0.1")``,
an atomic bind, so it cannot collide, and it drops every message that lacks the kernel's random
16-byte key). The tests pin that down exactly: that socket, on loopback, and no other.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import nbformat
import pytest

from gateway.runtimes.base import PASSED_VARIABLES, ContainerJob
from gateway.runtimes.none import HostRuntime
from gateway.spec import ResolvedSpec
from gateway.templates import make_environment, render

JOBENV_PYTHON = Path("/opt/hpcgw-jobenv/bin/python")
RUNNER = Path(__file__).resolve().parents[2] / "gateway" / "jobside" / "runner.py"
SOCKET_PATH_MAX = 107

# Runs inside the kernel: everything the test needs to judge the kernel's transport.
PROBE = r'''
import json, os
from ipykernel.connect import get_connection_file
from ipykernel.kernelapp import IPKernelApp
inodes = []
for fd in os.listdir("/proc/self/fd"):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        continue
    if target.startswith("socket:["):
        inodes.append(int(target[len("socket:["):-1]))
info = json.load(open(get_connection_file()))
ports = [info[k] for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]
sockets = [f"{info['ip']}-{port}" for port in ports]
print(json.dumps({
    "connection_file": get_connection_file(),
    "connection": info,
    "socket_inodes": inodes,
    "subprocess_pipe_port": getattr(IPKernelApp.instance().iopub_thread, "_pipe_port", None),
    "sockets": {path: {"mode": os.stat(path).st_mode, "real": os.path.realpath(path)}
                for path in sockets},
    "ip_dir_modes": [os.stat(os.path.dirname(info["ip"])).st_mode,
                     os.stat(os.path.dirname(os.path.dirname(info["ip"]))).st_mode],
    "net": {name: open(f"/proc/net/{name}").read() for name in ("tcp", "tcp6", "unix")},
}))
'''


def notebook_script(python: str) -> str:
    job_spec = ResolvedSpec(
        kind="notebook", name="ipc", cluster="dev", partition="cpu", account=None, qos=None,
        constraint=None, reservation=None, gpus=0, gpu_type=None, cpus=1, memory_mb=None,
        time_s=600, image=None, kernel="python3", parameters={})
    return render(make_environment(), "notebook.sh.j2", job_id="0123456789abcdef",
                  workdir="/home/alice/.hpcgw/jobs/0123456789abcdef", python=python,
                  slurm_name="hpcgw-ipc", spec=job_spec, runtime=HostRuntime(),
                  container=ContainerJob(image="", workdir="/home/alice/.hpcgw/jobs/x"),
                  passed_variables=PASSED_VARIABLES)


def run_job(job: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the batch script in ``job`` (a fresh 0700 directory); (the run, the probe's report)."""
    if not JOBENV_PYTHON.exists():
        pytest.fail(f"{JOBENV_PYTHON} is missing: scripts/test (or scripts/demo) installs it")
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(PROBE)]
    (job / "input.ipynb").write_text(nbformat.writes(notebook))
    (job / "parameters.json").write_text("{}")
    shutil.copy(RUNNER, job / "runner.py")
    done = subprocess.run(
        ["bash", "-c", notebook_script(str(JOBENV_PYTHON))], cwd=job, capture_output=True,
        text=True, timeout=180, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                     "HOME": str(job)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((job / "exit.json").read_text()) == {"status": "ok"}
    executed = nbformat.reads((job / "output.ipynb").read_text(), as_version=4)
    return done, json.loads(executed.cells[0].outputs[0]["text"])


def tcp_sockets(table: str, inodes: set[int]) -> list[tuple[str, int, str]]:
    """(local address in /proc's hex, local port, state in /proc's hex) of the sockets with
    these inodes in a /proc/net/tcp or tcp6 table (state 0A is LISTEN)."""
    found = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if fields and int(fields[9]) in inodes:
            address, port = fields[1].split(":")
            found.append((address, int(port, 16), fields[3]))
    return found


def unix_paths(table: str, inodes: set[int]) -> set[str]:
    """The bound paths in /proc/net/unix of the sockets with these inodes."""
    paths = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and int(fields[6]) in inodes:
            paths.add(fields[7])
    return paths


def check_ipc_only(report: dict[str, Any], runtime: Path) -> None:
    """What a user would check: transport ipc, every channel's socket a private file in
    ``runtime``, and no TCP socket in the kernel process but ipykernel's own loopback pipe for
    subprocess output (see the module docstring)."""
    connection = report["connection"]
    assert connection["transport"] == "ipc"
    assert Path(report["connection_file"]) == runtime / "kernel.json"
    inodes = set(report["socket_inodes"])
    assert inodes, "the probe saw no socket of the kernel's own"
    assert tcp_sockets(report["net"]["tcp6"], inodes) == []
    assert tcp_sockets(report["net"]["tcp"], inodes) == [
        ("0100007F", report["subprocess_pipe_port"], "0A")]  # 127.0.0.1, LISTEN
    assert len(report["sockets"]) == 5
    for path, seen in report["sockets"].items():
        assert len(path.encode()) <= SOCKET_PATH_MAX
        assert stat.S_ISSOCK(seen["mode"]) and seen["mode"] & 0o077 == 0, oct(seen["mode"])
        assert Path(seen["real"]).parent == runtime, seen["real"]
    # The kernel's listening unix sockets are exactly those five paths.
    assert unix_paths(report["net"]["unix"], inodes) == set(report["sockets"])
    assert os.stat(runtime).st_mode & 0o777 == 0o700  # (jupyter_client adds the sticky bit)


def test_kernel_uses_ipc_sockets_in_the_private_runtime_dir(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir(mode=0o700)
    done, report = run_job(job)
    runtime = job / "runtime"
    check_ipc_only(report, runtime)
    assert report["connection"]["ip"] == str(runtime / "kernel-ipc")
    assert "too long" not in done.stdout
    assert sorted(p.name for p in runtime.iterdir()) == []  # sockets and file cleaned up


def test_a_long_job_path_names_the_sockets_through_a_private_alias(tmp_path: Path) -> None:
    job = tmp_path / ("long-work-root-" + "x" * 90) / "0123456789abcdef"
    job.mkdir(mode=0o700, parents=True)
    runtime = job / "runtime"
    assert len(str(runtime / "kernel-ipc-1").encode()) > SOCKET_PATH_MAX  # direct names can't
    done, report = run_job(job)
    check_ipc_only(report, runtime)
    ip = Path(report["connection"]["ip"])
    alias_dir = ip.parent.parent
    assert ip.name == "kernel-ipc" and ip.parent.name == "r"
    assert alias_dir.parent == Path("/tmp") and alias_dir.name.startswith("hpcgw-")
    # The runtime dir (through the alias) and the alias's own directory: both private.
    assert [mode & 0o777 for mode in report["ip_dir_modes"]] == [0o700, 0o700]
    assert f"sockets are reached through {alias_dir}/r" in done.stdout
    assert not alias_dir.exists()  # removed when the run ended
