"""The lab batch script (job_templates/lab.sh.j2): golden files, and what the script hands to
the JupyterLab launcher — the token only through the environment, never argv."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_templates import (
    GOLDEN_DIR,
    GPU_DIRECTIVES,
    GPU_SPEC,
    JOB_ID,
    MARKER,
    UPDATE,
    WORKDIR,
    directives,
    spec,
)

from gateway.jobs.submitter import slurm_job_name
from gateway.spec import ResolvedSpec
from gateway.templates import make_environment, render

CASES = {
    "plain": ("lab", {}),
    "gpu_hostile_name": (f"x\ntouch {MARKER}\n#SBATCH --output=/tmp/y $(id)", GPU_SPEC),
}
# A stand-in for the job-side Python: records its argv, environment and pid, then exits.
FAKE_PYTHON = """#!/bin/sh
printf '%s\\n' "$@" > argv.txt
env > env.txt
echo $$ > pid.txt
"""


def render_lab(name: str, python: str = "/usr/bin/python3", **overrides: object) -> str:
    job_spec: ResolvedSpec = spec(name, kind="lab", **overrides)
    return render(make_environment(), "lab.sh.j2", job_id=JOB_ID, workdir=WORKDIR,
                  python=python, slurm_name=slurm_job_name(job_spec.name), spec=job_spec,
                  lab_bind="127.0.0.1")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    name, overrides = CASES[case]
    script = render_lab(name, **overrides)
    golden = GOLDEN_DIR / f"lab_{case}.sh"
    if UPDATE:
        golden.write_text(script)
    assert golden.exists(), f"{golden} is missing; run with HPCGW_UPDATE_GOLDEN=1 to create it"
    assert script == golden.read_text()


def test_directives_are_exactly_the_expected_ones() -> None:
    script = render_lab(CASES["gpu_hostile_name"][0], **CASES["gpu_hostile_name"][1])
    assert directives(script) == GPU_DIRECTIVES | {
        "#SBATCH --job-name=hpcgw-x_touch_hpcgw-injected__SBATCH_--output__tmp_y___id_"}


def run_lab_script(tmp_path: Path, token: str) -> dict[str, object]:
    """Run the rendered script (its #SBATCH lines are comments to bash) in a fake job
    directory with a fake Python; what that Python received."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    job = tmp_path / "job"
    job.mkdir()
    (job / "lab.token").write_text(token)
    script = render_lab(CASES["gpu_hostile_name"][0], python=str(python),
                        **CASES["gpu_hostile_name"][1])
    done = subprocess.run(["bash", "-c", script], cwd=job, capture_output=True, timeout=10,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    env = dict(line.split("=", 1) for line in (job / "env.txt").read_text().splitlines()
               if "=" in line)
    return {"argv": (job / "argv.txt").read_text().splitlines(), "env": env,
            "pid": (job / "pid.txt").read_text().strip(), "job": job, "stdout": done.stdout}


def test_the_token_reaches_the_server_only_through_its_environment(tmp_path: Path) -> None:
    token = "tok-" + "s3cr3t" * 6
    ran = run_lab_script(tmp_path, token)
    env, argv = ran["env"], ran["argv"]
    assert isinstance(env, dict) and isinstance(argv, list)
    assert env["JUPYTER_TOKEN"] == token
    assert not any(token in arg for arg in argv)
    assert token.encode() not in ran["stdout"]  # nothing echoes it into job.log
    assert "--ServerApp.port=0" in argv  # the server picks its own free port: no race
    assert f"--ServerApp.base_url=/labs/{JOB_ID}/" in argv
    assert "--ServerApp.ip=127.0.0.1" in argv
    assert not (Path(str(ran["job"])) / MARKER).exists()


def test_lab_json_points_at_the_info_file_of_the_exec_d_server(tmp_path: Path) -> None:
    ran = run_lab_script(tmp_path, "t" * 43)
    job = Path(str(ran["job"]))
    link = job / "lab.json"
    assert os.readlink(link) == f"runtime/jpserver-{ran['pid']}.json"
    assert (job / "runtime").stat().st_mode & 0o777 == 0o700
    info = {"port": 40001, "base_url": f"/labs/{JOB_ID}/"}
    (job / "runtime" / f"jpserver-{ran['pid']}.json").write_text(json.dumps(info))
    assert json.loads(link.read_text())["port"] == 40001
