"""Hostile strings reach the real Slurm either refused (422) or literally; nothing runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .conftest import Api, make_notebook
from .test_notebook_runs import outputs_text

SHOW = "print('NAME=' + repr(__import__('os').environ['HPCGW_JOB_NAME']))\nprint('P=' + repr(p))"


async def test_hostile_name_and_parameters_arrive_literally(alice: Api, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    directive_target = tmp_path / "y.log"
    hostile_name = f"$(touch {marker}) `touch {marker}`; id '; id"
    hostile_value = f"'; id\n#SBATCH --output={directive_target}\n$(touch {marker})"
    status, job = await alice.submit(
        make_notebook(SHOW, parameters="p = None"),
        {"name": hostile_name, "parameters": {"p": hostile_value}})
    assert status == 201, job
    job = await alice.wait_terminal(job["id"])
    assert job["state"] == "succeeded", (job["state"], job["reason"], job["message"])
    assert job["name"] == hostile_name
    _, notebook = await alice.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
    text = outputs_text(notebook)
    assert f"NAME={hostile_name!r}" in text
    assert f"P={hostile_value!r}" in text
    assert not marker.exists()
    assert not directive_target.exists()
    shown = subprocess.run(["scontrol", "show", "job", job["slurm_job_id"]],
                           capture_output=True, text=True).stdout
    if shown:  # still within MinJobAge: the output path is the gateway's, not the hostile one
        assert str(directive_target) not in shown


async def test_control_characters_in_name_are_refused(alice: Api) -> None:
    status, problem = await alice.submit(
        make_notebook("print(1)"), {"name": "ok\n#SBATCH --output=/tmp/y"})
    assert status == 422
    assert problem["fields"] == ["name"]


async def test_hostile_parameter_names_and_bad_input_are_refused(alice: Api) -> None:
    status, problem = await alice.submit(
        make_notebook("print(1)"), {"parameters": {"x = 1; import os #": 1}})
    assert status == 422 and problem["fields"] == ["parameters"]
    status, problem = await alice.submit(b"{not json", {"partition": "nope", "gpus": 9,
                                                        "account": "other", "time": "3-00:00:00"})
    assert status == 422
    assert set(problem["fields"]) == {"notebook", "partition", "gpus", "account"} or set(
        problem["fields"]) >= {"notebook", "partition", "account"}
    status, problem = await alice.submit(make_notebook("print(1)"),
                                         {"time": "2-00:00:00", "gpus": 3, "partition": "gpu"})
    assert status == 422 and set(problem["fields"]) == {"time", "gpus"}
    assert problem["status"] == 422 and problem["type"].endswith("/validation")
    assert json.dumps(problem).count("detail") == 1
