"""Notebook runs on the real dev cluster, through the HTTP API and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from .conftest import Api, Gateway, make_notebook, squeue_state

PRINT_PARAMS = ("import os\n"
                "print('alpha=%r gpus=%s' % (alpha, os.environ.get('CUDA_VISIBLE_DEVICES')))")


def outputs_text(notebook_bytes: bytes) -> str:
    notebook = nbformat.reads(notebook_bytes.decode(), as_version=4)
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") or json.dumps(output.get("data", {})))
            texts.extend([output.get("ename", ""), output.get("evalue", "")])
    return "\n".join(texts)


async def test_notebook_with_parameters_runs_and_comes_back(alice: Api) -> None:
    status, job = await alice.submit(
        make_notebook(PRINT_PARAMS), {"partition": "gpu", "gpus": 1, "cpus": 2,
                                      "memory": "1G", "time": "00:10:00",
                                      "parameters": {"alpha": 0.5}, "name": "params"})
    assert status == 201, job
    assert job["state"] == "accepted" and job["partition"] == "gpu" and job["gpus"] == 1
    job = await alice.wait_terminal(job["id"])
    assert (job["state"], job["reason"]) == ("succeeded", "completed"), job
    assert job["slurm_job_id"] and job["node"] and job["started_at"] and job["ended_at"]

    status, notebook = await alice.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
    assert status == 200
    text = outputs_text(notebook)
    assert "alpha=0.5" in text
    assert "gpus=0" in text or "gpus=1" in text  # one GPU of the two, as Slurm assigned it
    injected = nbformat.reads(notebook.decode(), as_version=4).cells[1]
    assert "injected-parameters" in injected.metadata.get("tags", [])

    _, events = await alice.call("GET", f"/api/v1/jobs/{job['id']}/events")
    states = [e["to_state"] for e in events["events"]]
    assert states == ["accepted", "staging", "pending", "running", "collecting", "succeeded"]
    status, log = await alice.call("GET", f"/api/v1/jobs/{job['id']}/log")
    assert status == 200 and b"notebook run ended: ok" in log


async def test_cli_submit_wait_fetch_status_queue_log(gateway: Gateway, tmp_path: Path) -> None:
    notebook = tmp_path / "nb.ipynb"
    notebook.write_bytes(make_notebook(PRINT_PARAMS))
    submitted = gateway.cli(
        "alice", "submit", str(notebook), "-p", "gpu", "--gres=gpu:1", "-c", "2", "--mem", "1G",
        "-t", "0:10:00", "-P", "alpha=0.5", "-J", "cli run", "--wait", "--json")
    job = json.loads(submitted.stdout)
    assert job["state"] == "succeeded" and job["name"] == "cli run" and job["cpus"] == 2
    assert job["memory"] == "1024M" and job["time"] == "0-00:10:00"

    gateway.cli("alice", "fetch", job["id"], "-o", str(tmp_path / "out.ipynb"))
    assert "alpha=0.5" in outputs_text((tmp_path / "out.ipynb").read_bytes())
    assert json.loads(gateway.cli("alice", "status", job["id"], "--json").stdout)["id"] == job["id"]
    assert job["id"] in gateway.cli("alice", "queue").stdout
    assert "notebook run ended: ok" in gateway.cli("alice", "log", job["id"]).stdout
    plain = gateway.cli("alice", "submit", str(notebook))
    assert plain.stdout.startswith("Submitted job ")


async def test_side_files_sit_next_to_the_notebook_in_the_job(
        gateway: Gateway, tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n3,4\n")
    notebook = tmp_path / "nb.ipynb"
    notebook.write_bytes(make_notebook(
        "import csv, os\nfrom helper import double\n"
        "rows = list(csv.reader(open('data.csv')))\n"
        "print('doubled', double(len(rows)), sorted(os.listdir('.')))"))
    submitted = gateway.cli("alice", "submit", str(notebook), "--file", str(tmp_path / "helper.py"),
                            "--file", str(tmp_path / "data.csv"), "-J", "side files", "--wait",
                            "--json")
    job = json.loads(submitted.stdout)
    assert job["state"] == "succeeded", job
    gateway.cli("alice", "fetch", job["id"], "-o", str(tmp_path / "out.ipynb"))
    text = outputs_text((tmp_path / "out.ipynb").read_bytes())
    assert "doubled 6" in text and "'data.csv'" in text and "'helper.py'" in text


async def test_failing_notebook_ends_failed_with_the_error(alice: Api, gateway: Gateway,
                                                           tmp_path: Path) -> None:
    notebook = make_notebook("print('before the error')", "raise ValueError('boom 42')",
                             "print('never')")
    _, job = await alice.submit(notebook, {"time": "00:05:00"})
    job = await alice.wait_terminal(job["id"])
    assert (job["state"], job["reason"]) == ("failed", "notebook_error"), job
    assert "ValueError" in job["message"] and "boom 42" in job["message"]
    status, partial = await alice.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
    assert status == 200
    text = outputs_text(partial)
    assert "before the error" in text and "boom 42" in text and "never" not in text

    (tmp_path / "bad.ipynb").write_bytes(notebook)
    waited = gateway.cli("alice", "submit", str(tmp_path / "bad.ipynb"), "--wait", check=False)
    assert waited.returncode != 0 and "notebook_error" in waited.stdout


async def test_cancel_running_job(alice: Api) -> None:
    _, job = await alice.submit(make_notebook("import time\ntime.sleep(600)"), {})
    job = await alice.wait_for(job["id"], lambda j: j["state"] == "running", 60, "running")
    status, cancelled = await alice.call("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert status == 202, cancelled
    job = await alice.wait_terminal(job["id"], 60)
    assert (job["state"], job["reason"]) == ("cancelled", "user_cancelled"), job
    assert squeue_state(job["slurm_job_id"]) in ("", "CANCELLED")
    status, again = await alice.call("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert status == 200 and again["state"] == "cancelled"


async def test_pending_job_shows_slurm_reason_and_can_be_cancelled(alice: Api) -> None:
    sleeper = make_notebook("import time\ntime.sleep(600)")
    _, whole_node = await alice.submit(sleeper, {"cpus": 16, "name": "whole node"})
    await alice.wait_for(whole_node["id"], lambda j: j["state"] == "running", 60, "running")
    _, queued = await alice.submit(sleeper, {"cpus": 16, "name": "queued"})
    queued = await alice.wait_for(
        queued["id"], lambda j: j["state"] == "pending" and bool(j["pending_reason"]), 30,
        "pending with a reason")
    assert queued["pending_reason"] in ("Resources", "Priority")
    for job in (queued, whole_node):
        assert (await alice.call("POST", f"/api/v1/jobs/{job['id']}/cancel"))[0] == 202
    for job in (queued, whole_node):
        assert (await alice.wait_terminal(job["id"], 60))["state"] == "cancelled"


async def test_memory_hog_ends_out_of_memory(alice: Api) -> None:
    hog = "chunks = []\nfor _ in range(200):\n    chunks.append(bytearray(32 * 1024 * 1024))"
    _, job = await alice.submit(make_notebook(hog), {"memory": "300M"})
    job = await alice.wait_terminal(job["id"], 120)
    assert (job["state"], job["reason"]) == ("failed", "out_of_memory"), job


async def test_other_users_jobs_are_invisible(alice: Api, bob: Api) -> None:
    _, job = await alice.submit(make_notebook("print(1)"), {})
    missing_id = "0" * 16
    for method, suffix in (("GET", ""), ("POST", "/cancel"), ("GET", "/notebook"),
                           ("GET", "/log"), ("GET", "/events")):
        theirs = await bob.call(method, f"/api/v1/jobs/{job['id']}{suffix}")
        nothing = await bob.call(method, f"/api/v1/jobs/{missing_id}{suffix}")
        assert theirs[0] == nothing[0] == 404
        # The same answer as for an id that never existed, down to the last byte.
        assert json.dumps(theirs[1]).replace(job["id"], missing_id) == json.dumps(nothing[1])
    _, listing = await bob.call("GET", "/api/v1/jobs")
    assert job["id"] not in {j["id"] for j in listing["jobs"]}
    assert (await alice.wait_terminal(job["id"]))["state"] == "succeeded"
