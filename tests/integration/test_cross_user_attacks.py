"""Attacks by a second cluster user (bob) on the first (alice), on the real dev cluster, each
with the check that it landed where it says and that it changed nothing for alice.

- bob reads the gateway's store: every file is 0600 in a 0700 directory, whatever the umask of
  the command that made it, and the database holds no lab token.
- bob forges squeue lines through his own job's comment (Slurm prints a comment's newlines
  raw): a terminal state, an unknown state word and another node for alice's running notebook
  and ready lab. alice's jobs go on and end as Slurm says, and polling stays alive for everyone.
- alice's lab.json is swapped (by lab code, say) to point at a port where bob listens: bob's
  listener is challenged, proves nothing, and never receives the lab's token; the lab ends
  failed/launch_failed saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    DEV_DIR,
    HPCGW,
    Api,
    Gateway,
    add_users,
    dev_source,
    make_notebook,
    start_gateway,
    stop_gateway,
    write_config,
)
from .lab_helpers import request_lab, wait_ready

pytestmark = pytest.mark.timeout(600)
SLEEP_CELL = "import time\nfor _ in range(200):\n    time.sleep(0.1)\nprint('done')"


def as_user(user: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sudo", "-n", "-u", user, "--", *argv], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd="/tmp")


@pytest.fixture
def world_traversable(tmp_path: Path) -> Iterator[Path]:
    """A directory bob can enter, for a store made there (pytest's tmp_path is root-only)."""
    place = Path(os.path.realpath(DEV_DIR)) / f"attack-{os.getpid()}-{time.monotonic_ns()}"
    place.mkdir(mode=0o755)
    yield place
    subprocess.run(["rm", "-rf", "--", str(place)], check=False)


def test_bob_cannot_read_the_store(world_traversable: Path, dev_config: Path) -> None:
    data = world_traversable / "data"
    config = world_traversable / "gateway.toml"
    write_config(dev_config, config, data)
    config.chmod(0o600)
    added = subprocess.run([*HPCGW, "--config", str(config), "user", "add", "carol",
                            "--unix-user", "alice"], capture_output=True, text=True,
                           preexec_fn=lambda: os.umask(0o022), check=True)
    assert added.stdout.strip().startswith("hpcgw_")
    for path in (data, data / "hpcgw.db"):
        assert path.exists()
        denied = as_user("bob", "cat", str(path / "x" if path == data else path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    listing = as_user("bob", "ls", str(data))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in data.glob("hpcgw.db*"))


def _squeue_with_comments() -> str:
    """squeue as the gateway used to read it (the comment last): what the forgery prints."""
    return subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i|%T|%r|%N|%u|%k"],
                          capture_output=True, text=True, check=True).stdout


async def test_forged_squeue_lines_change_nothing_for_alice(
        gateway: Gateway, alice: Api) -> None:
    status, notebook = await alice.submit(make_notebook(SLEEP_CELL), {"time": "00:05:00"})
    assert status == 201, notebook
    lab = await request_lab(alice, time="00:10:00")
    try:
        lab = await wait_ready(alice, lab["id"])
        notebook = await alice.wait_for(notebook["id"], lambda j: j["state"] == "running",
                                        90, "running")
        nb_slurm, lab_slurm = notebook["slurm_job_id"], lab["slurm_job_id"]
        forged = "\n".join([
            "hpcgw:0000000000000000",
            f"{nb_slurm}|TIMEOUT|None|vm|alice|x",
            f"{lab_slurm}|RUNNING|None|evil.example|alice|x",
            f"{lab_slurm}|WIBBLE|None|vm|alice|x",
            "424242|WIBBLE|None|vm|alice|x",
        ])
        submitted = as_user("bob", "sbatch", "--parsable", "-t", "5", f"--comment={forged}",
                            stdin="#!/bin/bash\nsleep 120\n")
        assert submitted.returncode == 0, submitted.stderr
        bob_job = submitted.stdout.strip().split(";")[0]
        try:
            # The fault landed: a reader of %k now sees extra lines for alice's jobs.
            assert f"{nb_slurm}|TIMEOUT|None|vm|alice|x" in _squeue_with_comments()
            # Polling is alive for everyone: a new job of alice's runs to its end meanwhile.
            status, probe = await alice.submit(make_notebook("print(1)"), {})
            assert status == 201, probe
            probe = await alice.wait_terminal(probe["id"], 120)
            assert probe["state"] == "succeeded", probe
            still = await alice.job(notebook["id"])
            assert still["state"] == "running", still  # not timed_out
            lab_now = await alice.job(lab["id"])
            assert lab_now["state"] == "ready" and lab_now["node"] != "evil.example", lab_now
            status, _ = await alice.call("GET", f"/labs/{lab['id']}/api/status")
            assert status == 200
            done = await alice.wait_terminal(notebook["id"], 120)
            assert (done["state"], done["reason"]) == ("succeeded", "completed"), done
        finally:
            subprocess.run(["scancel", bob_job], check=False)
        # The gateway's squeue format has no comment: it never even saw the forged lines.
        assert "poll cycle on dev failed" not in gateway.log_path.read_text()
    finally:
        await alice.call("POST", f"/api/v1/jobs/{lab['id']}/cancel")


LISTENER = r"""
import json, socket, sys
# bob's listener: answers every request with a made-up identity proof, records what it gets.
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    conn.settimeout(5)
    try:
        data = conn.recv(65536)
        while data:
            print(json.dumps(data.decode("latin-1")), flush=True)
            body = json.dumps({"address": "127.0.0.1:1", "proof": "0" * 64}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            data = conn.recv(65536)
    except OSError:
        pass
    conn.close()
"""

HOLD_BACK = """#!/bin/sh
# The job-side Python, held back for good: the real server never starts, so the only port in
# lab.json is the one the test writes there.
while [ ! -e go ]; do sleep 0.1; done
exec /opt/hpcgw-jobenv/bin/python "$@"
"""


@pytest.mark.parametrize("transport", ["local", "ssh"])
async def test_a_swapped_lab_json_port_never_gets_the_token(
        transport: str, dev_config: Path, world_traversable: Path, tmp_path: Path) -> None:
    wrapper = world_traversable / "held-python"
    wrapper.write_text(HOLD_BACK)
    wrapper.chmod(0o755)
    config = tmp_path / "gateway.toml"
    write_config(dev_source(dev_config, transport), config, tmp_path / "data",
                 start_timeout=15.0, python=f'"{wrapper}"')
    tokens = add_users(config)
    process, url = start_gateway(config, tmp_path / "gateway.log")
    gateway = Gateway(url, config, tokens, process, tmp_path / "gateway.log")
    listener = subprocess.Popen(["sudo", "-n", "-u", "bob", "--", "/usr/bin/python3", "-c",
                                 LISTENER], stdout=subprocess.PIPE, text=True, cwd="/tmp")
    alice = Api(gateway, "alice")
    lab_id = ""
    try:
        assert listener.stdout is not None
        bob_port = int(listener.stdout.readline())
        lab = await request_lab(alice, time="00:05:00")
        lab_id = lab["id"]
        workdir = f"/home/alice/.hpcgw/jobs/{lab['id']}"
        await alice.wait_for(lab["id"], lambda j: j["state"] == "running", 90, "running")
        # What lab.py would write once its server listens, but naming bob's port.
        swap = as_user("alice", "sh", "-c", f'cd {workdir} && printf \'{{"port": {bob_port}}}\' '
                       "> lab.json.new && mv -f lab.json.new lab.json")
        assert swap.returncode == 0, swap.stderr
        job = await alice.wait_terminal(lab["id"], 120)
        assert (job["state"], job["reason"]) == ("failed", "launch_failed"), job
        assert "proved it holds the lab's token" in job["message"], job
    finally:
        listener.terminate()
        received = listener.communicate(timeout=20)[0]
        if lab_id:
            await alice.call("POST", f"/api/v1/jobs/{lab_id}/cancel")
        stop_gateway(process)
    requests = [json.loads(line) for line in received.splitlines() if line.startswith('"')]
    assert requests and all("/hpcgw/proof?nonce=" in r for r in requests), requests[:3]
    token = Path(f"{workdir}/lab.token").read_text().strip()
    assert not any(token in r or "Authorization" in r for r in requests)
