"""The CLI's sbatch/squeue/scancel habits against a real gateway on the dev cluster, both
transports: --parsable, -G, the job named after its notebook, queue filters and columns,
status by Slurm job id, cancelling several jobs, exit statuses by outcome, one-line errors
(never a traceback), a closed pipe, Ctrl-C while waiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import HPCGW, Api, Gateway, make_notebook

SLEEPER = "import time\ntime.sleep(alpha)"


def notebook(tmp_path: Path, name: str, *cells: str) -> Path:
    path = tmp_path / name
    path.write_bytes(make_notebook(*cells))
    return path


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and done.stderr.count("\n") <= 2, done.stderr


async def test_parsable_gpus_and_the_name_from_the_file(gateway: Gateway, alice: Api,
                                                        tmp_path: Path) -> None:
    path = notebook(tmp_path, "weekly report.ipynb", "print('hi')")
    done = gateway.cli("alice", "submit", str(path), "-p", "gpu", "-G", "1", "--parsable")
    job_id = done.stdout.strip()
    assert len(job_id) == 16 and done.stdout == job_id + "\n"
    job = await alice.wait_terminal(job_id)
    assert (job["name"], job["gpus"], job["state"]) == ("weekly report", 1, "succeeded")
    waited = gateway.cli("alice", "submit", str(path), "--parsable", "--wait")
    assert len(waited.stdout.strip()) == 16 and waited.stdout.count("\n") == 1


async def test_queue_filters_columns_and_status_by_slurm_id(
        gateway: Gateway, alice: Api, tmp_path: Path) -> None:
    name = f"q-{tmp_path.name[-12:]}"
    path = notebook(tmp_path, "q.ipynb", "print('done')")
    job_id = gateway.cli("alice", "submit", str(path), "-J", name, "--parsable").stdout.strip()
    job = await alice.wait_terminal(job_id)
    table = gateway.cli("alice", "queue", "-n", name, "-t", "succeeded",
                        "--format", "id,name,state,slurm,time,node,cells").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "STATE", "SLURM", "TIME", "NODE", "CELLS"]
    assert table[1].split() == [job_id, name, "succeeded", job["slurm_job_id"],
                                table[1].split()[4], job["node"], "2/2"]
    assert ":" in table[1].split()[4]  # M:SS, as squeue's TIME
    assert len(table) == 2
    bare = gateway.cli("alice", "queue", "-n", name, "--noheader", "--format", "id").stdout
    assert bare == job_id + "\n"
    assert gateway.cli("alice", "queue", "-n", name, "-t", "running").stdout.count("\n") == 1
    shown = json.loads(gateway.cli("alice", "status", job["slurm_job_id"], "--json").stdout)
    assert shown["id"] == job_id
    for unknown, words in ((job["slurm_job_id"] + "0000", "no job of yours has Slurm job id"),
                           ("0123456789abcdef", "no job 0123456789abcdef (of yours)")):
        missing = gateway.cli("alice", "status", unknown, check=False)
        assert missing.returncode == 5 and words in missing.stderr
        no_traceback(missing)
    # bob asks for alice's job by its Slurm id: it is not his
    assert gateway.cli("bob", "status", job["slurm_job_id"], check=False).returncode == 5
    wrong = gateway.cli("alice", "queue", "--format", "id,colour", check=False)
    assert wrong.returncode == 2 and "unknown column(s) colour" in wrong.stderr


async def test_cancel_several_and_exit_statuses_by_outcome(
        gateway: Gateway, alice: Api, tmp_path: Path) -> None:
    path = notebook(tmp_path, "sleep.ipynb", SLEEPER)
    ids = [gateway.cli("alice", "submit", str(path), "-P", "alpha=300",
                       "--parsable").stdout.strip() for _ in range(2)]
    for job_id in ids:
        await alice.wait_for(job_id, lambda j: j["state"] == "running", 120, "running")
    follower = subprocess.Popen([*HPCGW, "log", "-f", ids[0]], env=gateway.env("alice"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cancelled = gateway.cli("alice", "cancel", *ids)
    assert cancelled.stdout.splitlines() == [f"job {i}: cancel requested" for i in ids]
    for job_id in ids:
        assert (await alice.wait_terminal(job_id, 120))["state"] == "cancelled"
    assert follower.wait(timeout=60) == 3  # log -f ends with the job: cancelled
    again = gateway.cli("alice", "cancel", ids[0])
    assert again.stdout == f"job {ids[0]}: already cancelled\n"
    failing = notebook(tmp_path, "fails.ipynb", "raise ValueError('no')")
    failed = gateway.cli("alice", "submit", str(failing), "--wait", check=False)
    assert failed.returncode == 1 and "ValueError: no" in failed.stdout
    assert gateway.cli("alice", "cancel", check=False).returncode == 2


async def test_errors_are_one_line_and_a_closed_pipe_is_quiet(
        gateway: Gateway, tmp_path: Path) -> None:
    missing = gateway.cli("alice", "submit", str(tmp_path / "nope.ipynb"), check=False)
    assert missing.returncode == 2
    assert missing.stderr == f"hpcgw: error: {tmp_path / 'nope.ipynb'}: No such file or directory\n"
    unwritable = gateway.cli("alice", "fetch", "0123456789abcdef", "-o", "/proc/nope",
                             check=False)
    no_traceback(unwritable)
    env = {**gateway.env("alice"), "HPCGW_URL": gateway.url.removeprefix("http://")}
    schemeless = subprocess.run([*HPCGW, "queue"], env=env, capture_output=True, text=True)
    assert schemeless.returncode == 2 and "http:// or https:// URL" in schemeless.stderr
    # `hpcgw queue | head -1` once head has gone: every write to the pipe fails (EPIPE).
    reader, writer = os.pipe()
    os.close(reader)
    try:
        closed = subprocess.run([*HPCGW, "queue"], env=gateway.env("alice"), stdout=writer,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert closed.returncode == 0 and closed.stderr == ""


async def test_json_errors_are_problems_on_stdout(gateway: Gateway, tmp_path: Path) -> None:
    """With --json a script reads errors where it reads answers: the gateway's own problem
    (a 404 here), or one the CLI makes (a local file, an unreachable gateway), each with the
    exit status; stderr stays empty."""
    refused = gateway.cli("alice", "--json", "status", "0123456789abcdef", check=False)
    problem = json.loads(refused.stdout)
    assert (refused.returncode, refused.stderr) == (5, "")
    assert (problem["status"], problem["type"], problem["exit_status"]) == (
        404, "/problems/not-found", 5)
    missing = gateway.cli("alice", "submit", "--json", str(tmp_path / "nope.ipynb"),
                          check=False)
    assert missing.returncode == 2 and json.loads(missing.stdout) == {
        "type": "about:blank", "title": "Usage error", "exit_status": 2,
        "detail": f"{tmp_path / 'nope.ipynb'}: No such file or directory"}
    env = {**gateway.env("alice"), "HPCGW_URL": "http://127.0.0.1:9"}  # discard: nobody there
    away = subprocess.run([*HPCGW, "queue", "--json"], env=env, capture_output=True, text=True)
    assert away.returncode == 6 and away.stderr == ""
    assert json.loads(away.stdout)["title"] == "Gateway unreachable"


@pytest.fixture
def not_a_gateway() -> Iterator[str]:
    """A web server on loopback that answers every request with a small HTML page."""
    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<h1>not here</h1>")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_a_url_that_is_not_a_gateway_is_named(gateway: Gateway,
                                                    not_a_gateway: str) -> None:
    env = {**gateway.env("alice"), "HPCGW_URL": not_a_gateway}
    done = subprocess.run([*HPCGW, "queue"], env=env, capture_output=True, text=True)
    assert done.returncode == 5
    assert f"{not_a_gateway} did not answer as an hpcgw gateway does" in done.stderr
    no_traceback(done)


async def test_ctrl_c_while_waiting_leaves_the_job_running_and_says_so(
        gateway: Gateway, alice: Api, tmp_path: Path) -> None:
    path = notebook(tmp_path, "long.ipynb", SLEEPER)
    waiter = subprocess.Popen([*HPCGW, "submit", str(path), "-P", "alpha=300", "--wait"],
                              env=gateway.env("alice"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert waiter.stderr is not None
    first = waiter.stderr.readline()
    assert first.startswith("Submitted job "), first
    job_id = first.split()[-1]
    await alice.wait_for(job_id, lambda j: j["state"] == "running", 120, "running")
    waiter.send_signal(signal.SIGINT)
    _, rest = waiter.communicate(timeout=30)
    assert waiter.returncode == 130
    assert f"job {job_id} keeps running (hpcgw status {job_id}, hpcgw cancel {job_id})" in rest
    assert "Traceback" not in rest
    assert (await alice.job(job_id))["state"] == "running"
    await alice.call("POST", f"/api/v1/jobs/{job_id}/cancel")
