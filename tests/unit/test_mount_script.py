"""The notebook script with SSHFS mounts: a golden file with a hostile storage path, and bash
itself showing that path reaches sshfs as one word and runs nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from test_templates import GOLDEN_DIR, JOB_ID, UPDATE, WORKDIR, cluster_config, job_row, spec

from gateway.jobs.scripts import render_script
from gateway.runtimes.none import HostRuntime
from gateway.spec import InputSpec
from gateway.templates import make_environment

HOSTILE = "/srv/a b/$(touch hpcgw-injected)/`id`'q\"/x,y"


def mounted_script() -> str:
    inputs = (InputSpec(parameter="data", storage="s", path=HOSTILE, mode="mount"),
              InputSpec(parameter="table", storage="s", path="/srv/t.csv", mode="mount",
                        writable=True))
    job = {**job_row(spec("mounted", inputs=inputs)), "staged_inputs": json.dumps({
        "parameters": {"data": f"{WORKDIR}/inputs/data",
                       "table": f"{WORKDIR}/inputs/table/t.csv"},
        "mounts": [{"parameter": "data", "input": 0, "remote": HOSTILE,
                    "host": "storage.example", "port": 2223, "user": "storage"},
                   {"parameter": "table", "input": 1, "remote": "/srv",
                    "host": "storage.example", "port": 2223, "user": "storage"}]})}
    return render_script(make_environment(), job, cluster_config(), {"none": HostRuntime()})


def test_golden_with_mounts() -> None:
    script = mounted_script()
    golden = GOLDEN_DIR / "mounts_hostile.sh"
    if UPDATE:
        golden.write_text(script)
    assert script == golden.read_text()


def test_the_hostile_path_is_one_word_for_sshfs(tmp_path: Path) -> None:
    joined = mounted_script().replace(" \\\n    ", " ")  # the long line's continuations
    lines = [line for line in joined.split("\n") if line.startswith("if ! sshfs ")]
    assert len(lines) == 2
    words = lines[0].removeprefix("if ! ").removesuffix("; then")
    listed = subprocess.run(["bash", "-c", f"set -- {words}; printf '%s\\0' \"$@\""],
                            cwd=tmp_path, capture_output=True, check=True,
                            env={"PATH": os.environ["PATH"]}).stdout.split(b"\0")[:-1]
    assert [word.decode() for word in listed] == [
        "sshfs", "-o",
        f"IdentityFile={WORKDIR}/.mounts/key-0,UserKnownHostsFile={WORKDIR}/.mounts/known_hosts,"
        "GlobalKnownHostsFile=/dev/null,StrictHostKeyChecking=yes,BatchMode=yes,"
        "IdentitiesOnly=yes,reconnect,ServerAliveInterval=15,ServerAliveCountMax=3,port=2223,ro",
        f"storage@storage.example:{HOSTILE}", f"{WORKDIR}/inputs/data"]
    assert not (tmp_path / "hpcgw-injected").exists()
    assert lines[1].split(",port=2223")[1].startswith(" ")  # writable: no ro
    assert JOB_ID in lines[1]
