"""The dev cluster's SSH storage server (scripts/dev_storage.py, started by `dev-cluster up`),
checked for real: its pinned host key, key-only logins for `storage` alone, SFTP and scp reads of
the demo data, and an SSHFS mount by a job user on the compute node (this machine)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest

from .conftest import DEV_DIR, REPO

pytestmark = pytest.mark.integration
DEV_CLUSTER = REPO / "scripts" / "dev-cluster"
NUMBERS = "demo/numbers.csv"
T = TypeVar("T")


def wait_until(what: str, predicate: Callable[[], T], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sudo", "-n", "-u", user, "--", *argv], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def storage() -> dict[str, Any]:
    """storage.json, once the storage sshd it names is running."""
    path = DEV_DIR / "storage.json"
    if not path.exists():
        pytest.fail(f"no {path}: run `scripts/dev-cluster up` first")
    info: dict[str, Any] = json.loads(path.read_text())
    pid = int(Path(info["pid_file"]).read_text().split()[0])
    if not Path(f"/proc/{pid}").exists():
        pytest.fail(f"the storage sshd (pid {pid}) is not running: `scripts/dev-cluster up`")
    return info


def authorize(line: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DEV_CLUSTER), "storage-authorize"], input=line,
                          capture_output=True, text=True, timeout=30)


def remove_lines(path: Path, added: set[str]) -> None:
    """Take out exactly the lines a test added (under the same lock storage-authorize takes)."""
    with path.open("r+") as keys:
        fcntl.flock(keys, fcntl.LOCK_EX)
        kept = [line for line in keys.read().splitlines(keepends=True)
                if line.strip() not in added]
        keys.seek(0)
        keys.truncate()
        keys.write("".join(kept))


def public_line(private: Path) -> str:
    return Path(f"{private}.pub").read_text().strip()


@pytest.fixture
def alice_dir(storage: dict[str, Any]) -> Iterator[Path]:
    """A 0700 directory alice owns (tmp_path is root's), with the pinned known_hosts in it."""
    path = Path(tempfile.mkdtemp(prefix="hpcgw-storage-test-"))
    (path / "known_hosts").write_text(storage["known_hosts_line"] + "\n")
    for item in (path, path / "known_hosts"):
        shutil.chown(item, "alice", "alice")
    yield path
    for mount in fuse_mounts(under=path):  # a failed test's mount
        subprocess.run(["fusermount3", "-u", "-z", mount], capture_output=True, timeout=30)
    if not fuse_mounts(under=path):  # never rmtree through a live mount: it deletes remote files
        shutil.rmtree(path)


@pytest.fixture
def alice_key(storage: dict[str, Any], alice_dir: Path) -> Iterator[Path]:
    """A fresh key alice holds, authorized for `storage` through storage-authorize."""
    key = alice_dir / "id_ed25519"
    made = as_user("alice", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                   "hpcgw-storage-test", "-f", str(key))
    assert made.returncode == 0, made.stderr
    line = public_line(key)
    added = authorize(line)
    assert added.returncode == 0, added.stderr
    yield key
    remove_lines(Path(storage["authorized_keys"]), {line})


def ssh_options(storage: dict[str, Any], key: Path, known_hosts: Path) -> list[str]:
    return ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-o", f"IdentityFile={key}",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "ConnectTimeout=10", "-o", f"Port={storage['port']}"]


def connect(storage: dict[str, Any], known_hosts: Path | bytes, **options: Any) -> Any:
    pinned = str(known_hosts) if isinstance(known_hosts, Path) else known_hosts
    return asyncssh.connect(storage["host"], port=storage["port"], known_hosts=pinned,
                            config=None, agent_path=None, connect_timeout=10, **options)


def test_host_key_is_the_published_one(storage: dict[str, Any]) -> None:
    key_type, key = Path(storage["host_key_file"]).read_text().split()[:2]
    assert storage["known_hosts_line"] == f"[127.0.0.1]:{storage['port']} {key_type} {key}"
    assert key_type == "ssh-ed25519"
    scan = subprocess.run(["ssh-keyscan", "-T", "10", "-t", "ed25519", "-p",
                           str(storage["port"]), storage["host"]],
                          capture_output=True, text=True, timeout=30)
    assert storage["known_hosts_line"] in scan.stdout.splitlines(), scan.stdout + scan.stderr


async def test_another_host_key_is_refused(storage: dict[str, Any], alice_key: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    pinned_wrong = f"[127.0.0.1]:{storage['port']} {other}\n".encode()
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with connect(storage, pinned_wrong, username=storage["user"],
                           client_keys=[str(alice_key)]):
            pass


def test_authorize_refuses_what_is_not_one_public_key(storage: dict[str, Any],
                                                      alice_dir: Path) -> None:
    authorized = Path(storage["authorized_keys"])
    before = authorized.read_bytes()
    key = alice_dir / "refused"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    line = public_line(key)
    for bad in ("not a key\n", key.read_text(), f"{line}\n{line}\n",
                f'command="/bin/sh" {line}\n', line.replace("AAAA", "BBBB", 1), ""):
        refused = authorize(bad)
        assert refused.returncode != 0, bad
    assert authorized.read_bytes() == before


def test_authorize_adds_a_key_once(storage: dict[str, Any], alice_dir: Path) -> None:
    key = alice_dir / "twice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "first",
                    "-f", str(key)], check=True)
    line = public_line(key)
    attempts = {line, line.replace(" first", " same key, other comment")}
    authorized = Path(storage["authorized_keys"])
    try:
        for attempt in sorted(attempts):
            assert authorize(attempt + "\n").returncode == 0
        blob = line.split()[1]
        assert [row.split()[1] for row in authorized.read_text().splitlines()].count(blob) == 1
    finally:
        remove_lines(authorized, attempts)
    assert line.split()[1] not in authorized.read_text()


async def test_sftp_as_storage_reads_the_demo_data(storage: dict[str, Any], alice_key: Path,
                                                   alice_dir: Path) -> None:
    async with connect(storage, alice_dir / "known_hosts", username=storage["user"],
                       client_keys=[str(alice_key)]) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open(f"{storage['root']}/{NUMBERS}", "rb") as remote:
            data = await remote.read()
        listed = sorted(await sftp.listdir(f"{storage['demo_dir']}/set1"))
    assert hashlib.sha256(data).hexdigest() == storage["demo_files"][NUMBERS]
    assert data == (Path(storage["root"]) / NUMBERS).read_bytes()
    assert len(data.splitlines()) == 301
    assert [name for name in listed if not name.startswith(".")] == sorted(
        Path(p).name for p in storage["demo_files"] if p.startswith("demo/set1/"))


def test_scp_as_alice_reads_the_demo_data(storage: dict[str, Any], alice_key: Path,
                                          alice_dir: Path) -> None:
    source = f"{storage['root']}/{NUMBERS}"
    direct = as_user("alice", "cat", source)
    assert direct.returncode != 0  # /srv/storage is storage's alone: the copy goes over SSH
    target = alice_dir / "numbers.csv"
    copied = as_user("alice", "scp", "-q",
                     *ssh_options(storage, alice_key, alice_dir / "known_hosts"),
                     f"{storage['user']}@{storage['host']}:{source}", str(target))
    assert copied.returncode == 0, copied.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == storage["demo_files"][NUMBERS]


async def test_password_logins_are_refused(storage: dict[str, Any], alice_dir: Path) -> None:
    attempt = subprocess.run(
        ["ssh", "-v", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
         "-o", "PreferredAuthentications=password,keyboard-interactive",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={alice_dir}/known_hosts",
         "-p", str(storage["port"]), f"{storage['user']}@{storage['host']}", "true"],
        capture_output=True, text=True, timeout=30)
    assert attempt.returncode == 255
    offered = [line for line in attempt.stderr.splitlines()
               if "Authentications that can continue:" in line]
    assert offered and all(line.endswith(": publickey") for line in offered), attempt.stderr
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(storage, alice_dir / "known_hosts", username=storage["user"],
                           password="storage", client_keys=None,
                           preferred_auth="password,keyboard-interactive"):
            pass


@pytest.mark.parametrize("user", ["alice", "bob", "root"])
async def test_only_storage_may_log_in(storage: dict[str, Any], alice_key: Path,
                                       alice_dir: Path, user: str) -> None:
    """Even with the key in the user's own authorized keys file, AllowUsers refuses the login."""
    their_keys = Path(storage["authorized_keys_dir"]) / user
    created = not their_keys.exists()
    line = public_line(alice_key)
    log = Path(storage["log"])
    log_start = log.stat().st_size
    with their_keys.open("a") as keys:
        keys.write(line + "\n")
    their_keys.chmod(0o644)
    try:
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(storage, alice_dir / "known_hosts", username=user,
                               client_keys=[str(alice_key)]):
                pass
        refusal = f"User {user} from 127.0.0.1 not allowed because not listed in AllowUsers"
        wait_until(f"sshd to log {refusal!r}",
                   lambda: refusal in log.read_bytes()[log_start:].decode(errors="replace"), 10)
    finally:
        if created:
            their_keys.unlink()
        else:
            remove_lines(their_keys, {line})


def fuse_mounts(under: Path) -> list[str]:
    """FUSE mount points at or below ``under``, as /proc/mounts lists them."""
    with Path("/proc/mounts").open() as mounts:
        return [fields[1] for fields in (line.split() for line in mounts)
                if fields[2].startswith("fuse") and Path(fields[1]).is_relative_to(under)]


def sshfs_processes(mountpoint: Path) -> list[int]:
    """Live (not zombie) sshfs processes serving ``mountpoint``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if argv[0].endswith(b"sshfs") and str(mountpoint).encode() in argv and state != "Z":
            found.append(int(entry.name))
    return found


def test_sshfs_mount_as_alice(storage: dict[str, Any], alice_key: Path,
                              alice_dir: Path) -> None:
    assert Path("/dev/fuse").stat().st_mode & 0o777 == 0o666
    mountpoint = alice_dir / "mnt"
    assert as_user("alice", "mkdir", str(mountpoint)).returncode == 0
    options = ",".join([
        f"IdentityFile={alice_key}", "IdentitiesOnly=yes", "IdentityAgent=none",
        "BatchMode=yes", "StrictHostKeyChecking=yes",
        f"UserKnownHostsFile={alice_dir}/known_hosts", f"port={storage['port']}",
        "reconnect", "ServerAliveInterval=15", "ServerAliveCountMax=3"])
    mounted = as_user("alice", "sshfs", "-F", "/dev/null", "-o", options,
                      f"{storage['user']}@{storage['host']}:{storage['demo_dir']}",
                      str(mountpoint))
    assert mounted.returncode == 0, mounted.stderr
    wait_until("the sshfs mount", lambda: fuse_mounts(under=mountpoint) == [str(mountpoint)], 10)
    read = as_user("alice", "cat", str(mountpoint / "numbers.csv"))
    assert read.returncode == 0, read.stderr
    assert hashlib.sha256(read.stdout.encode()).hexdigest() == storage["demo_files"][NUMBERS]
    listed = as_user("alice", "ls", str(mountpoint / "set1"))
    assert listed.stdout.split() == ["alpha.txt", "beta.json", "gamma.csv"]
    unmounted = as_user("alice", "fusermount3", "-u", str(mountpoint))
    assert unmounted.returncode == 0, unmounted.stderr
    wait_until("the mount to go", lambda: not fuse_mounts(under=mountpoint), 10)
    wait_until("sshfs to exit", lambda: not sshfs_processes(mountpoint), 10)
