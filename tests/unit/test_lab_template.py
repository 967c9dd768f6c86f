"""The lab batch script (gateway/job_templates/lab.sh.j2): golden files, and what the script hands
to the JupyterLab launcher: never the token (lab.py reads it from its 0600 file), its private
runtime directory, and an exit record when the launcher never ran."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_templates import (
    GOLDEN_DIR,
    GPU_SPEC,
    JOB_ID,
    MARKER,
    UPDATE,
    directives,
    gpu_argv,
    job_argv,
    render_job,
    spec,
)

from gateway.spec import ResolvedSpec

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
    return render_job(job_spec, python=python)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    name, overrides = CASES[case]
    script = render_lab(name, **overrides)
    golden = GOLDEN_DIR / f"lab_{case}.sh"
    if UPDATE:
        golden.write_text(script)
    assert golden.exists(), f"{golden} is missing; run with HPCGW_UPDATE_GOLDEN=1 to create it"
    assert script == golden.read_text()


def test_no_directives_and_the_hostile_name_reaches_sbatch_only_made_safe() -> None:
    name, overrides = CASES["gpu_hostile_name"]
    assert directives(render_lab(name, **overrides)) == set()
    assert job_argv(spec(name, kind="lab", **overrides)) == gpu_argv(
        "hpcgw-x_touch_hpcgw-injected__SBATCH_--output__tmp_y___id_")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A scratch directory with a short path, like a real job directory's: pytest's tmp_path
    is long enough to make the script fall back to a socket alias under /tmp."""
    path = Path(tempfile.mkdtemp(prefix="hpcgw-test-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_lab_script(tmp_path: Path, token: str, job: Path | None = None) -> dict[str, object]:
    """Run the rendered script in a fake job directory (``job``, default ``tmp_path/job``) with
    a fake Python; what that Python received."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    job = job or tmp_path / "job"
    job.mkdir(parents=True)
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


def test_the_token_never_passes_through_the_script(short_tmp: Path) -> None:
    token = "tok-" + "s3cr3t" * 6
    ran = run_lab_script(short_tmp, token)
    env, argv = ran["env"], ran["argv"]
    assert isinstance(env, dict) and isinstance(argv, list)
    assert "lab.token" not in render_lab("x")  # lab.py reads it itself
    assert "JUPYTER_TOKEN" not in env
    assert not any(token in arg for arg in argv) and token not in "".join(env.values())
    assert token.encode() not in ran["stdout"]  # nothing echoes it into job.log
    assert "--ServerApp.port=0" in argv  # the server picks its own free port: no race
    assert f"--ServerApp.base_url=/labs/{JOB_ID}/" in argv
    assert "--ServerApp.ip=127.0.0.1" in argv
    assert "--KernelManager.transport=ipc" in argv  # kernels on unix sockets, never TCP
    assert not (Path(str(ran["job"])) / MARKER).exists()


def test_a_launcher_that_never_ran_leaves_a_launch_error(short_tmp: Path) -> None:
    # The stand-in Python writes no exit record, as a runtime that failed to start the image
    # (or an image without JupyterLab) would not: the script records a launch error. The
    # server's report, lab.json, is the launcher's to write, not the script's.
    ran = run_lab_script(short_tmp, "t" * 43)
    job = Path(str(ran["job"]))
    assert json.loads((job / "exit.json").read_text()) == {"status": "launch_error",
                                                           "exit_status": 0}
    assert not (job / "lab.json").exists()
    assert (job / "runtime").stat().st_mode & 0o777 == 0o700


# A kernel's sockets are <runtime dir>/kernel-<36-char id>-ipc-<N>: 50 bytes after the directory.
SOCKET_NAME_BYTES = len("/kernel-00000000-0000-0000-0000-000000000000-ipc-5")
SOCKET_PATH_MAX = 107


def test_kernel_sockets_go_in_the_private_runtime_dir(short_tmp: Path) -> None:
    ran = run_lab_script(short_tmp, "t" * 43)
    env = ran["env"]
    assert isinstance(env, dict)
    runtime = Path(str(ran["job"])) / "runtime"
    assert env["JUPYTER_RUNTIME_DIR"] == str(runtime)
    assert len(str(runtime)) + SOCKET_NAME_BYTES <= SOCKET_PATH_MAX
    assert b"too long" not in ran["stdout"]


def test_a_long_job_path_reaches_the_runtime_dir_through_a_short_private_alias(
    tmp_path: Path
) -> None:
    job = tmp_path / ("long-work-root-" + "x" * 40) / JOB_ID
    ran = run_lab_script(tmp_path, "t" * 43, job=job)
    env = ran["env"]
    assert isinstance(env, dict)
    runtime = job / "runtime"
    assert len(str(runtime)) + SOCKET_NAME_BYTES > SOCKET_PATH_MAX  # direct names can't work
    alias = Path(env["JUPYTER_RUNTIME_DIR"])
    try:
        assert alias.name == "r" and alias.parent.parent == Path("/tmp")
        assert alias.parent.name.startswith("hpcgw-")
        assert alias.parent.stat().st_mode & 0o777 == 0o700
        assert alias.is_symlink() and alias.resolve() == runtime.resolve()
        assert len(str(alias)) + SOCKET_NAME_BYTES <= SOCKET_PATH_MAX
        assert f"kernels use {alias}".encode() in ran["stdout"]
    finally:
        shutil.rmtree(alias.parent, ignore_errors=True)
