"""The stager's gateway side without a cluster: the plan it sends (keys as files, never in the
plan), and the answer it reads back from the cluster, which is untrusted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from gateway.config import Config
from gateway.errors import ValidationFailed
from gateway.jobs.stager import StagingFailed, _report, run_stager, stage_files
from gateway.spec import InputSpec, parse_spec, resolve_spec
from gateway.staging.credentials import StorageCredentials
from gateway.store import Store
from gateway.transport.local import LocalTransport
from tests.factories import add_job, job_context

WORKDIR = "/home/alice/.hpcgw/jobs/0011223344556677"
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


async def test_the_plan_names_key_files_and_the_keys_travel_as_files(
        config: Config, store: Store) -> None:
    async def never_asked(*_: object) -> str:
        raise AssertionError("the host key is given")

    credentials = StorageCredentials(store.storage, "c" * 40, config.staging, never_asked)
    alice = store.users.add_user("alice", "alice")
    await credentials.add(alice, "data", "127.0.0.1", 2223, "storage", HOST_KEY)
    spec = resolve_spec(parse_spec({"name": "nb", "inputs": [
        {"parameter": "a", "storage": "data", "path": "/srv/a"},
        {"parameter": "b", "storage": "data", "path": "/srv/b.csv"}]}), config, "nb")
    job = add_job(store, alice, "0011223344556677", spec=spec.model_dump_json())
    ctx = job_context(config, store)
    ctx.credentials = credentials
    files, transfers = stage_files(ctx, job)
    plan = json.loads(files["plan.json"])
    assert [(i["parameter"], i["key"], i["path"]) for i in plan["inputs"]] == [
        ("a", "key-0", "/srv/a"), ("b", "key-1", "/srv/b.csv")]
    assert b"PRIVATE KEY" not in files["plan.json"]
    assert files["key-0"].startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert files["known_hosts"].decode().splitlines() == [f"[127.0.0.1]:2223 {HOST_KEY}"] * 2
    assert set(files) == {"plan.json", "known_hosts", "key-0", "key-1"}  # the stager: run_stager
    assert {key: t.port for key, t in transfers.items()} == {"key-0": 2223, "key-1": 2223}


COPY_A = InputSpec(parameter="a", storage="s", path="/srv/a")
MOUNT_B = InputSpec(parameter="b", storage="s", path="/srv/set/b.csv", mode="mount")


@pytest.mark.parametrize("answer", [
    b"", b"not json", b"[]", b'{"inputs": "x"}',
    b'{"inputs": {}}',  # a parameter missing
    json.dumps({"inputs": {"a": "/etc/passwd"}}).encode(),  # outside the job
    json.dumps({"inputs": {"a": f"{WORKDIR}/inputs/a/../../../x"}}).encode(),
    json.dumps({"inputs": {"a": f"{WORKDIR}/inputs/ab"}}).encode(),  # another input's place
    json.dumps({"inputs": {"a": f"{WORKDIR}/inputs/a", "b": "/x"}}).encode(),
])
def test_an_untrusted_answer_is_refused(answer: bytes) -> None:
    with pytest.raises(StagingFailed):
        _report(answer, "", WORKDIR, (COPY_A,))


@pytest.mark.parametrize("mounts", [
    {},  # the mount's remote directory missing
    {"b": "/etc"},  # not the input's directory
    {"b": "/srv/set/b.csv"},  # a file as the directory to mount, yet a file's path given
    {"b": "/srv/set", "a": "/srv"},  # a copy input as a mount
])
def test_an_untrusted_mount_answer_is_refused(mounts: dict[str, str]) -> None:
    answer = {"inputs": {"a": f"{WORKDIR}/inputs/a", "b": f"{WORKDIR}/inputs/b/b.csv"},
              "mounts": mounts}
    with pytest.raises(StagingFailed):
        _report(json.dumps(answer).encode(), "", WORKDIR, (COPY_A, MOUNT_B))


def test_a_persisted_lab_directory_must_be_its_work_directory() -> None:
    for persist, ok in ((f"{WORKDIR}/work", True), (f"{WORKDIR}/inputs", False),
                        ("/home/alice", False), (None, False)):
        answer = json.dumps({"inputs": {}, "mounts": {}, "persist": persist}).encode()
        if ok:
            assert _report(answer, "", WORKDIR, (), persist=True)["persist"] is True
        else:
            with pytest.raises(StagingFailed):
                _report(answer, "", WORKDIR, (), persist=True)


def test_a_good_answer_and_an_error_answer() -> None:
    good = {"a": f"{WORKDIR}/inputs/a", "b": f"{WORKDIR}/inputs/b/b.csv"}
    answer = json.dumps({"inputs": good, "mounts": {"b": "/srv/set"}}).encode()
    assert _report(answer, "", WORKDIR, (COPY_A, MOUNT_B)) == {
        "parameters": good, "mounts": [{"parameter": "b", "input": 1, "remote": "/srv/set"}],
        "persist": False}
    error: dict[str, Any] = {"error": {"parameter": "b", "cause": "not found",
                                       "message": "/srv/b: no such file or directory"}}
    with pytest.raises(StagingFailed, match=r"^input b: not found: /srv/b: no such"):
        _report(json.dumps(error).encode(), "", WORKDIR, (COPY_A, MOUNT_B))
    with pytest.raises(StagingFailed, match="no answer: Traceback line"):
        _report(b"", "Traceback\nTraceback line", WORKDIR, (COPY_A,))


@pytest.mark.parametrize(("inputs", "fields"), [
    ([{"parameter": "x", "storage": "s", "path": "relative"}], {"inputs.0.path"}),
    ([{"parameter": "x", "storage": "s", "path": "/a/../etc"}], {"inputs.0.path"}),
    ([{"parameter": "x", "storage": "s", "path": "/a/*"}], {"inputs.0.path"}),
    ([{"parameter": "not valid", "storage": "s", "path": "/a"}], {"inputs.0.parameter"}),
    ([{"parameter": "x", "storage": "s", "path": "/a", "mode": "ftp"}], {"inputs.0.mode"}),
    ([{"parameter": "x", "storage": "s", "path": "/a", "user": "root"}], {"inputs.0.user"}),
])
def test_bad_inputs_are_refused_by_shape(inputs: list[dict[str, Any]], fields: set[str]) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_spec({"inputs": inputs})
    assert {error["field"] for error in info.value.errors} == fields


def test_a_parameter_bound_twice_or_also_given_is_refused(config: Config) -> None:
    given = {"parameters": {"y": 1}, "inputs": [
        {"parameter": "x", "storage": "s", "path": "/a"},
        {"parameter": "x", "storage": "s", "path": "/b"},
        {"parameter": "y", "storage": "s", "path": "/c"},
        {"parameter": "z", "storage": "s", "path": "/d", "writable": True}]}
    with pytest.raises(ValidationFailed) as info:
        resolve_spec(parse_spec(given), config, "nb")
    assert [(e["field"], e["message"]) for e in info.value.errors] == [
        ("inputs.1.parameter", "bound by another input too"),
        ("inputs.2.parameter", "also given a value in parameters"),
        ("inputs.3.writable", "only a mount can be writable")]


def test_the_stagers_remote_scripts_format_and_parse_as_sh(tmp_path: Path) -> None:
    """Every remote script of gateway/jobside/stage.py takes its quoted values (a stray brace
    would be a KeyError at push time) and is valid sh."""
    from gateway.jobside import stage

    words = {"path": "'/srv/a b'", "dest": "/srv/d", "name": "n", "partial": ".partial-n-1",
             "keep": "1", "source": "'.partial-n-1/./x'"}
    for script in (stage.PROBE, stage.CHECKSUMS, stage.STREAM, stage.RECEIVE, stage.PUBLISH):
        text = script.format(**words)
        checked = subprocess.run(["sh", "-n", "-c", text], capture_output=True, text=True,
                                 check=False)
        assert checked.returncode == 0, (text, checked.stderr)


@pytest.mark.parametrize(("printed", "answer", "errors"), [
    ("echo 'ssh: a warning'; echo '{\"inputs\": {}}'", b'{"inputs": {}}', "ssh: a warning"),
    # A stager replaced by the job's user, flooding: cut on the cluster, never read whole.
    ("head -c 10000000 /dev/zero | tr '\\0' x; echo '{\"inputs\": {}}'", b"",
     "the stager printed more than 65536 bytes"),
])
async def test_what_the_stager_prints_is_capped_and_split(
        config: Config, tmp_path: Path, printed: str, answer: bytes, errors: str) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\n{printed}\n")
    fake_python.chmod(0o700)
    transport = LocalTransport(config.clusters[0].model_copy(update={"command_prefix": []}))
    job = {"unix_user": "alice", "workdir": str(tmp_path / "work")}
    got = await run_stager(transport, str(fake_python), job, {"plan.json": b"{}"}, timeout=30)
    assert got == (answer, errors)
    assert not (tmp_path / "work" / ".stage").exists()  # the keys' directory went too
