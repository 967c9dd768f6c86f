"""The job-side stager (gateway/jobside/stage.py) run by hand as alice against the dev storage
server, for the failures a whole job can't easily provoke: the cap, a full file system (a
small tmpfs as the work directory) and a copy that arrives damaged (a stand-in ``ssh`` on PATH
that runs the real one and changes a byte of the data stream: fault injection, which the check
must catch)."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from .conftest import REPO
from .test_staging import STORAGE, authorized  # noqa: F401 - the fixture

STAGE = REPO / "gateway" / "jobside" / "stage.py"
ALICE = ["sudo", "-n", "-u", "alice", "--"]


@pytest.fixture
def workdir(authorized: list[str]) -> Iterator[Path]:  # noqa: F811
    """alice's work directory (in her home: she must reach it) with a .stage holding an
    authorized key and the pinned host key; removed after the test."""
    home = Path("/home/alice") / f".hpcgw-stage-test-{secrets.token_hex(4)}"
    work = home / "work"
    (work / ".stage").mkdir(parents=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    (work / ".stage" / "key-0").write_bytes(key.export_private_key("openssh"))
    (work / ".stage" / "known_hosts").write_text(STORAGE["known_hosts_line"] + "\n")
    shutil.copy(STAGE, work / ".stage" / "stage.py")
    public = key.export_public_key().decode().strip()
    subprocess.run([str(REPO / "scripts" / "dev-cluster"), "storage-authorize"],
                   input=public + "\n", text=True, check=True, capture_output=True)
    authorized.append(public)
    yield work
    shutil.rmtree(home)


def run_stager(work: Path, path: str, max_bytes: int = 10**9,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    plan = {"inputs": [{"parameter": "data", "host": STORAGE["host"], "port": STORAGE["port"],
                        "user": STORAGE["user"], "key": "key-0", "path": path}],
            "max_bytes": max_bytes}
    (work / ".stage" / "plan.json").write_text(json.dumps(plan))
    subprocess.run(["chown", "-R", "alice:", str(work)], check=True)
    for name in ("key-0", "known_hosts", "plan.json"):
        (work / ".stage" / name).chmod(0o600)
    done = subprocess.run([*ALICE, *(["env", *[f"{k}={v}" for k, v in env.items()]] if env
                                     else []),
                           "python3", "-I", str(work / ".stage" / "stage.py"),
                           "--workdir", str(work)], capture_output=True, text=True, timeout=120)
    return dict(json.loads(done.stdout))


def test_a_good_copy_then_the_cap(workdir: Path) -> None:
    assert run_stager(workdir, "/srv/storage/demo/set1") == {
        "inputs": {"data": f"{workdir}/inputs/data"}, "mounts": {}, "persist": None}
    assert sorted(os.listdir(workdir / "inputs" / "data")) == ["alpha.txt", "beta.json",
                                                                "gamma.csv"]
    error = run_stager(workdir, "/srv/storage/demo/numbers.csv", max_bytes=100)["error"]
    assert (error["parameter"], error["cause"]) == ("data", "too large")


def test_a_full_file_system_is_named_before_copying(workdir: Path) -> None:
    small = workdir / "inputs"
    small.mkdir()
    alice_uid = pwd.getpwnam("alice").pw_uid  # hers to write in: only the space is missing
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=4k,mode=0700,uid={alice_uid}", "tmpfs",
                    str(small)], check=True)
    try:
        error = run_stager(workdir, "/srv/storage/demo/numbers.csv")["error"]
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert error["cause"] == "disk full", error


def test_a_damaged_copy_is_refused_and_never_looks_complete(workdir: Path) -> None:
    fake = workdir / "bin"
    fake.mkdir()
    (fake / "ssh").write_text(  # the data stream (not the probe, not the checksums) damaged
        "#!/bin/bash\ncase \"$*\" in *'exec cat'*) ;; *) exec /usr/bin/ssh \"$@\" ;; esac\n"
        "/usr/bin/ssh \"$@\" | { head -c 10; printf X; tail -c +12; }\n")
    (fake / "ssh").chmod(0o700)  # alice's after run_stager's chown
    error = run_stager(workdir, "/srv/storage/demo/numbers.csv",
                       env={"PATH": f"{fake}:/usr/bin:/bin"})["error"]
    assert error["cause"] == "checksum mismatch", error
    assert not (workdir / "inputs" / "data").exists()  # only the temporary name was written


def test_links_in_a_directory_are_not_copied(workdir: Path) -> None:
    tree = Path(STORAGE["root"]) / f"links-{secrets.token_hex(4)}"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "real.txt").write_text("real")
    (tree / "passwd").symlink_to("/etc/passwd")
    (tree / "up").symlink_to("..")
    subprocess.run(["chown", "-hR", f"{STORAGE['user']}:", str(tree)], check=True)
    try:
        assert "inputs" in run_stager(workdir, str(tree))
    finally:
        shutil.rmtree(tree)
    copied = workdir / "inputs" / "data"
    assert sorted(str(p.relative_to(copied)) for p in copied.rglob("*")) == ["sub",
                                                                          "sub/real.txt"]
    assert not any(p.is_symlink() for p in copied.rglob("*"))
