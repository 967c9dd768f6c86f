"""Copy inputs from the dev cluster's storage server (127.0.0.1:2223, its own sshd and host key)
into real jobs, on both transports: registering the server through the CLI (pinned host key,
first contact confirmed by fingerprint), files and directories arriving checked, and each
staging failure ending the job ``failed``/``staging`` before anything reaches Slurm."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from gateway.store import Store

from .conftest import (
    DEV_DIR,
    REPO,
    Api,
    Gateway,
    make_notebook,
    slurm_jobs_tagged,
    stop_gateway,
)
from .lab_helpers import lab_get, request_lab, wait_ready
from .test_notebook_runs import outputs_text
from .test_resilience import Restartable

STORAGE = json.loads((DEV_DIR / "storage.json").read_text())
READ_INPUTS = (
    "import hashlib, os\n"
    "names = sorted(os.listdir(data_dir))\n"
    "digest = hashlib.sha256(open(numbers, 'rb').read()).hexdigest()\n"
    "print('files', names, 'numbers', digest, 'at', numbers.startswith(os.getcwd()))")


@pytest.fixture
def authorized() -> Iterator[list[str]]:
    """Public keys to authorize on the storage server; the lines added are removed after."""
    keys: list[str] = []
    yield keys
    path = Path(STORAGE["authorized_keys"])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if line.strip() not in keys))


def register(gateway: Gateway, user: str, authorized: list[str] | None, *extra: str,
             check: bool = True) -> tuple[str, subprocess.CompletedProcess[str]]:
    """``hpcgw storage add`` a server named for this test as ``user``; its public key
    authorized on the storage server unless ``authorized`` is None. (name, the CLI's result)"""
    name = "store-" + secrets.token_hex(4)
    added = gateway.cli(user, "storage", "add", name, "--host", STORAGE["host"], "--port",
                        str(STORAGE["port"]), "--user", STORAGE["user"], *extra, check=check)
    if authorized is not None and added.returncode == 0:
        public = added.stdout.strip().splitlines()[-1]
        subprocess.run([str(REPO / "scripts" / "dev-cluster"), "storage-authorize"],
                       input=public + "\n", text=True, check=True, capture_output=True)
        authorized.append(public)
    return name, added


async def run_with_inputs(api: Api, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    status, job = await api.submit(make_notebook(READ_INPUTS, parameters="data_dir = ''\n"
                                                 "numbers = ''"),
                                   {"name": "staged", "inputs": inputs})
    assert status == 201, job
    return await api.wait_terminal(job["id"], 120)


async def test_copied_file_and_directory_reach_the_notebook_checked(
        gateway: Gateway, alice: Api, authorized: list[str]) -> None:
    name, _ = register(gateway, "alice", authorized, "--host-key-file",
                       STORAGE["host_key_file"])
    job = await run_with_inputs(alice, [
        {"parameter": "data_dir", "storage": name, "path": "/srv/storage/demo/set1"},
        {"parameter": "numbers", "storage": name, "path": "/srv/storage/demo/numbers.csv",
         "mode": "copy"}])
    assert job["state"] == "succeeded", job
    status, notebook = await alice.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
    assert status == 200
    text = outputs_text(notebook)
    assert "['alpha.txt', 'beta.json', 'gamma.csv']" in text
    assert f"numbers {STORAGE['demo_files']['demo/numbers.csv']} at True" in text
    _, events = await alice.call("GET", f"/api/v1/jobs/{job['id']}/events")
    assert [e["to_state"] for e in events["events"]][:3] == ["accepted", "staging", "pending"]
    workdir = Path(f"/home/alice/.hpcgw/jobs/{job['id']}")
    leftovers = {p.name for p in workdir.iterdir()} & {".stage"}
    assert leftovers == set()  # the keys left the cluster with the stager
    assert not list((workdir / "inputs").glob(".partial-*"))


async def test_first_contact_pins_the_offered_key_only_when_its_fingerprint_is_confirmed(
        gateway: Gateway, authorized: list[str]) -> None:
    offered = str(asyncssh.import_public_key(
        Path(STORAGE["host_key_file"]).read_text()).get_fingerprint("sha256"))
    _, refused = register(gateway, "alice", None, check=False)  # not a terminal: no prompt
    assert refused.returncode == 2 and offered in refused.stderr  # not confirmed: usage
    _, wrong = register(gateway, "alice", None, "--accept-host-key", "SHA256:" + "A" * 43,
                        check=False)
    assert wrong.returncode == 2 and "not pinned" in wrong.stderr
    name, added = register(gateway, "alice", authorized, "--accept-host-key", offered)
    assert offered in added.stderr
    listed = json.loads(gateway.cli("alice", "storage", "list", "--json").stdout)
    assert {s["name"]: s["host_key_fingerprint"] for s in listed}[name] == offered


@pytest.mark.parametrize(("setup", "cause"), [
    ("missing path", "not found"),
    ("unreadable file", "permission denied"),
    ("key not authorized", "authentication refused"),
    ("other host key", "host key"),
])
async def test_a_staging_failure_ends_the_job_before_slurm_naming_input_and_cause(
        gateway: Gateway, alice: Api, authorized: list[str], setup: str, cause: str,
        tmp_path: Path) -> None:
    host_key = STORAGE["host_key_file"]
    if setup == "other host key":
        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        host_key = str(tmp_path / "other.pub")
        Path(host_key).write_text(other)
    name, _ = register(gateway, "alice", None if setup == "key not authorized" else authorized,
                       "--host-key-file", host_key)
    path = "/srv/storage/demo/nothing-here" if setup == "missing path" \
        else "/srv/storage/demo/numbers.csv"
    if setup == "unreadable file":  # root's, 0600: the storage account cannot read it
        unreadable = Path(STORAGE["root"]) / "demo" / f"private-{secrets.token_hex(4)}"
        unreadable.write_text("secret")
        unreadable.chmod(0o600)
        path = str(unreadable)
    try:
        job = await run_with_inputs(
            alice, [{"parameter": "numbers", "storage": name, "path": path}])
    finally:
        if setup == "unreadable file":
            unreadable.unlink()
    assert (job["state"], job["reason"]) == ("failed", "staging"), job
    assert job["message"].startswith("input numbers: ") and cause in job["message"], job
    assert job["slurm_job_id"] is None and slurm_jobs_tagged(job["id"]) == []
    assert not Path(f"/home/alice/.hpcgw/jobs/{job['id']}/.stage").exists()


async def test_another_users_storage_server_is_unknown(
        gateway: Gateway, alice: Api, bob: Api, authorized: list[str]) -> None:
    name, _ = register(gateway, "alice", authorized, "--host-key-file",
                       STORAGE["host_key_file"])
    status, problem = await bob.submit(make_notebook("print(1)"), {"inputs": [
        {"parameter": "numbers", "storage": name, "path": "/srv/storage/demo/numbers.csv"}]})
    assert status == 422
    assert problem["errors"] == [{"field": "inputs.0.storage",
                                  "message": f"no storage server {name!r} (hpcgw storage list)"}]
    status, _ = await bob.call("GET", f"/api/v1/storage/{name}")
    assert status == 404


def mounted_under(workdir: str) -> list[str]:
    """The mount points in /proc/mounts under ``workdir`` (this machine is the job's node)."""
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(workdir + "/")]


MOUNT_READER = (
    "import hashlib, os, time\n"
    "digest = hashlib.sha256(open(numbers, 'rb').read()).hexdigest()\n"
    "try:\n"
    "    open(os.path.join(data_dir, 'new.txt'), 'w').write('x')\n"
    "    wrote = 'wrote'\n"
    "except OSError as exc:\n"
    "    wrote = 'refused %s' % exc.errno\n"
    "print('mounted', sorted(os.listdir(data_dir)), digest, wrote)\n"
    "time.sleep(hold)")


async def run_mounted(api: Api, name: str, hold: int) -> dict[str, Any]:
    status, job = await api.submit(
        make_notebook(MOUNT_READER, parameters="data_dir = ''\nnumbers = ''\nhold = 0"),
        {"name": "mounted", "parameters": {"hold": hold}, "inputs": [
            {"parameter": "data_dir", "storage": name, "path": "/srv/storage/demo/set1",
             "mode": "mount"},
            {"parameter": "numbers", "storage": name, "path": "/srv/storage/demo/numbers.csv",
             "mode": "mount"}]})
    assert status == 201, job
    return dict(job)


async def test_mounted_inputs_are_read_only_and_gone_when_the_job_ends(
        gateway: Gateway, alice: Api, authorized: list[str]) -> None:
    name, _ = register(gateway, "alice", authorized, "--host-key-file",
                       STORAGE["host_key_file"])
    job = await alice.wait_terminal((await run_mounted(alice, name, 0))["id"], 120)
    assert job["state"] == "succeeded", job
    _, notebook = await alice.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
    text = outputs_text(notebook)
    assert "['alpha.txt', 'beta.json', 'gamma.csv']" in text
    assert STORAGE["demo_files"]["demo/numbers.csv"] in text and "refused 30" in text  # EROFS
    workdir = f"/home/alice/.hpcgw/jobs/{job['id']}"
    assert mounted_under(workdir) == []
    assert not Path(workdir, ".mounts").exists()


async def test_a_job_cancelled_while_mounted_leaves_no_mount_behind(
        gateway: Gateway, alice: Api, authorized: list[str]) -> None:
    name, _ = register(gateway, "alice", authorized, "--host-key-file",
                       STORAGE["host_key_file"])
    job = await run_mounted(alice, name, 600)
    workdir = f"/home/alice/.hpcgw/jobs/{job['id']}"
    await alice.wait_for(job["id"], lambda _: len(mounted_under(workdir)) == 2, 60,
                         "both mounts up")
    status, _ = await alice.call("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert status == 202
    job = await alice.wait_terminal(job["id"], 120)
    assert job["state"] == "cancelled", job
    await alice.wait_for(job["id"], lambda _: mounted_under(workdir) == [], 60, "unmounted")
    assert not Path(workdir, ".mounts").exists()


def stagers_of(job_id: str) -> list[int]:
    """Pids of the stager processes (gateway/jobside/stage.py) running for ``job_id``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(word.endswith(b"/.stage/stage.py") and job_id.encode() in word
               for word in command):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def big_input() -> Iterator[str]:
    """A 256 MiB file on the storage server (its owner's), removed after the test."""
    path = Path(STORAGE["root"]) / "demo" / f"big-{secrets.token_hex(4)}.bin"
    subprocess.run(["sudo", "-n", "-u", STORAGE["user"], "head", "-c", "256M", "/dev/urandom"],
                   stdout=path.open("wb"), check=True)
    shutil.chown(path, STORAGE["user"])
    yield str(path)
    path.unlink()


async def test_a_gateway_killed_during_staging_stages_again_and_submits_once(
        dev_config: Path, tmp_path: Path, authorized: list[str], big_input: str) -> None:
    restartable = Restartable(dev_config, tmp_path)
    try:
        gateway = restartable.gateway
        assert gateway is not None
        name, _ = register(gateway, "alice", authorized, "--host-key-file",
                           STORAGE["host_key_file"])
        api = restartable.api()
        status, job = await api.submit(make_notebook(
            "import os\nprint('size', os.path.getsize(big))", parameters="big = ''"),
            {"name": "killed while staging",
             "inputs": [{"parameter": "big", "storage": name, "path": big_input}]})
        assert status == 201, job
        await api.wait_for(job["id"], lambda _: bool(stagers_of(job["id"])), 60,
                           "the stager running")
        restartable.kill()  # the fault lands inside staging: the stager is running now
        store = Store(tmp_path / "data" / "hpcgw.db")
        assert store.get_job(job["id"])["state"] == "staging"
        store.close()
        restartable.start()
        done = await restartable.api().wait_terminal(job["id"], 180)
        assert done["state"] == "succeeded", done
        assert len(slurm_jobs_tagged(job["id"])) == 1
        _, notebook = await restartable.api().call("GET", f"/api/v1/jobs/{job['id']}/notebook")
        assert f"size {256 * 1024 * 1024}" in outputs_text(notebook)
    finally:
        assert restartable.gateway is not None
        stop_gateway(restartable.gateway.process)


@pytest.fixture
def storage_dest() -> Iterator[Path]:
    """A directory on the storage server for outputs (not created: the push makes it)."""
    dest = Path(STORAGE["root"]) / f"out-{secrets.token_hex(4)}"
    yield dest
    shutil.rmtree(dest, ignore_errors=True)


async def test_outputs_go_to_storage_checked_and_never_overwrite(
        gateway: Gateway, alice: Api, authorized: list[str], storage_dest: Path) -> None:
    name, _ = register(gateway, "alice", authorized, "--host-key-file",
                       STORAGE["host_key_file"])
    writes = ("import os\nos.makedirs('results/deep', exist_ok=True)\n"
              "open('results/deep/a.txt', 'w').write('alpha')\n"
              "open('summary.json', 'w').write('{}')\nopen('kept.txt', 'w').write('here')")
    spec = {"name": "push", "outputs": [
        {"path": "results", "storage": name, "dest": str(storage_dest)},
        {"path": "summary.json", "storage": name, "dest": str(storage_dest)},
        {"path": "kept.txt"}]}
    status, job = await alice.submit(make_notebook(writes), spec)
    assert status == 201, job
    job = await alice.wait_terminal(job["id"], 120)
    assert (job["state"], job["message"]) == ("succeeded", "the notebook ran to the end"), job
    assert (storage_dest / "results" / "deep" / "a.txt").read_text() == "alpha"
    assert (storage_dest / "summary.json").read_text() == "{}"
    assert storage_dest.stat().st_uid == (storage_dest / "summary.json").stat().st_uid != 0
    assert sorted(p.name for p in storage_dest.iterdir()) == ["results", "summary.json"]
    _, files = await alice.call("GET", f"/api/v1/jobs/{job['id']}/files")
    assert [f["path"] for f in files["files"]] == ["kept.txt"]  # the others went to storage
    assert not Path(f"/home/alice/.hpcgw/jobs/{job['id']}/.stage").exists()

    # The same destination again: refused, the first results intact, the outcome kept.
    status, again = await alice.submit(make_notebook(writes), spec)
    again = await alice.wait_terminal(again["id"], 120)
    assert again["state"] == "succeeded", again
    assert "results (to " in again["message"] and "already exists" in again["message"]
    assert (storage_dest / "results" / "deep" / "a.txt").read_text() == "alpha"
    assert sorted(p.name for p in storage_dest.iterdir()) == ["results", "summary.json"]


async def test_a_lab_keeps_its_work_between_sessions_and_sees_its_inputs(
        gateway: Gateway, alice: Api, authorized: list[str], storage_dest: Path) -> None:
    name, _ = register(gateway, "alice", authorized, "--host-key-file",
                       STORAGE["host_key_file"])
    spec = {"time": "00:10:00", "persist": {"storage": name, "path": f"{storage_dest}/home"},
            "inputs": [{"parameter": "data", "storage": name, "path": "/srv/storage/demo/set1"}]}
    first = await request_lab(alice, **spec)
    try:
        await wait_ready(alice, first["id"])
        status, listed = await lab_get(alice, first["id"], "api/contents/inputs/data")
        assert status == 200, listed
        assert sorted(item["name"] for item in listed["content"]) == [
            "alpha.txt", "beta.json", "gamma.csv"]
        status, _ = await alice.call("PUT", f"/labs/{first['id']}/api/contents/notes.txt", json={
            "type": "file", "format": "text", "content": "written in the first session"})
        assert status in (200, 201)
    finally:
        await alice.call("POST", f"/api/v1/jobs/{first['id']}/cancel")
    ended = await alice.wait_terminal(first["id"], 120)
    assert ended["state"] == "cancelled" and ended["message"] is not None \
        and "missing" not in ended["message"], ended
    home = storage_dest / "home"
    assert (home / "notes.txt").read_text() == "written in the first session"
    assert not (home / "inputs").exists()  # copied inputs are not sent back

    second = await request_lab(alice, **{**spec, "inputs": []})
    try:
        await wait_ready(alice, second["id"])
        status, notes = await lab_get(alice, second["id"], "api/contents/notes.txt")
        assert status == 200 and notes["content"] == "written in the first session"
    finally:
        await alice.call("POST", f"/api/v1/jobs/{second['id']}/cancel")
    await alice.wait_terminal(second["id"], 120)


async def test_a_lab_with_a_mount_reads_it_and_leaves_no_mount_behind(
        gateway: Gateway, alice: Api, authorized: list[str]) -> None:
    name, _ = register(gateway, "alice", authorized, "--host-key-file",
                       STORAGE["host_key_file"])
    lab = await request_lab(alice, time="00:10:00", inputs=[
        {"parameter": "data", "storage": name, "path": "/srv/storage/demo/set1",
         "mode": "mount"}])
    workdir = f"/home/alice/.hpcgw/jobs/{lab['id']}"
    try:
        await wait_ready(alice, lab["id"])
        assert mounted_under(workdir) == [f"{workdir}/inputs/data"]
        status, alpha = await lab_get(alice, lab["id"], "api/contents/inputs/data/alpha.txt")
        assert status == 200 and alpha["content"].strip(), alpha
    finally:
        await alice.call("POST", f"/api/v1/jobs/{lab['id']}/cancel")
    assert (await alice.wait_terminal(lab["id"], 120))["state"] == "cancelled"
    await alice.wait_for(lab["id"], lambda _: mounted_under(workdir) == [], 60, "unmounted")
    assert not Path(workdir, ".mounts").exists()


async def test_a_cancel_during_staging_stops_the_copy(
        gateway: Gateway, alice: Api, authorized: list[str], big_input: str) -> None:
    name, _ = register(gateway, "alice", authorized, "--host-key-file",
                       STORAGE["host_key_file"])
    status, job = await alice.submit(make_notebook("print(1)", parameters="big = ''"), {
        "name": "cancelled while staging",
        "inputs": [{"parameter": "big", "storage": name, "path": big_input}]})
    assert status == 201, job
    await alice.wait_for(job["id"], lambda _: bool(stagers_of(job["id"])), 60,
                         "the stager running")
    status, cancelled = await alice.call("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert status == 202
    assert (cancelled["state"], cancelled["reason"], cancelled["message"]) == (
        "cancelled", "user_cancelled", "cancelled during staging")
    await alice.wait_for(job["id"], lambda _: not stagers_of(job["id"]), 30, "stager gone")
    workdir = Path(f"/home/alice/.hpcgw/jobs/{job['id']}")
    await alice.wait_for(job["id"], lambda _: not (workdir / ".stage").exists(), 30,
                         "keys removed")
    assert slurm_jobs_tagged(job["id"]) == []
