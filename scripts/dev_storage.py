"""The dev cluster's SSH storage server, for data staging: used by scripts/dev-cluster. Stdlib only.

A unix account `storage` (no job user) owns /srv/storage, which holds a small deterministic data
set in demo/. Its own OpenSSH sshd listens on 127.0.0.1:2223 with its own ed25519 host key, keys
only, user `storage` only, SFTP included. Its authorized keys live in a root-owned file that
root (tests, the demo) appends to through `scripts/dev-cluster storage-authorize`. Everything a
client needs is published in $HPCGW_DEV_DIR/storage.json. SSHFS mounts by job users need
/dev/fuse usable by them (0666, what Debian's udev rule gives; /dev has no udev here).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

DEV_DIR = Path(os.environ.get("HPCGW_DEV_DIR", "/var/lib/hpcgw-dev"))
PORT = int(os.environ.get("HPCGW_DEV_STORAGE_PORT", "2223"))
USER = "storage"
ROOT = Path("/srv/storage")
DIR = DEV_DIR / "storage"  # root-owned: host key, sshd config, authorized keys
HOST_KEY = DIR / "ssh_host_ed25519_key"
AUTHORIZED_DIR = DIR / "authorized_keys"  # AuthorizedKeysFile AUTHORIZED_DIR/%u
AUTHORIZED = AUTHORIZED_DIR / USER
KNOWN_HOSTS = DIR / "known_hosts"
CONFIG = DIR / "sshd_config"
PIDFILE = DEV_DIR / "run" / "storage-sshd.pid"
LOG = DEV_DIR / "log" / "storage-sshd.log"
INFO = DEV_DIR / "storage.json"
FUSE = Path("/dev/fuse")
KEY_LINE = re.compile(r"[a-z][a-z0-9.@-]* [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?")


def say(message: str) -> None:
    print(f"dev-cluster: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, **kwargs)  # type: ignore[call-overload]


def demo_files() -> dict[str, str]:
    """The demo data set, relative to ROOT: the same bytes on every machine and every `up`."""
    rows = "".join(f"{n},{n * n},{n ** 3 % 1000},{'even' if n % 2 == 0 else 'odd'}\n"
                   for n in range(1, 301))
    return {
        "demo/README.txt": "Demo data on the hpcgw dev cluster's storage server (written by\n"
                           "scripts/dev-cluster up; any change here is overwritten by it).\n"
                           "numbers.csv: n, n squared, n cubed mod 1000, parity for n = 1..300.\n"
                           "set1/: a few small files to copy or mount as a directory.\n",
        "demo/numbers.csv": "n,square,cube_mod_1000,parity\n" + rows,
        "demo/set1/alpha.txt": "alpha\n",
        "demo/set1/beta.json": '{"name": "beta", "values": [1, 2, 3]}\n',
        "demo/set1/gamma.csv": "x,y\n0,0\n1,1\n2,4\n",
    }


def ensure_account() -> None:
    """The `storage` system account, home ROOT, unlocked for keys (sshd refuses '!' accounts)."""
    if subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0:
        run(["useradd", "--system", "--user-group", "--home-dir", str(ROOT), "--no-create-home",
             "--shell", "/bin/bash", "--comment", "hpcgw dev storage server", USER])
    run(["usermod", "-p", "*", USER])


def ensure_data() -> None:
    """ROOT and its demo set, owned by `storage`, private to it; unchanged files are left alone."""
    for path, text in demo_files().items():
        for parent in reversed(Path(path).parents):  # ROOT, ROOT/demo, ROOT/demo/set1
            _own(ROOT / parent, 0o750, make_dir=True)
        target, data = ROOT / path, text.encode()
        if not (target.is_file() and target.read_bytes() == data):
            partial = target.with_name(f".{target.name}.partial")
            partial.write_bytes(data)
            partial.replace(target)
        _own(target, 0o640)


def _own(path: Path, mode: int, make_dir: bool = False) -> None:
    if make_dir:
        path.mkdir(exist_ok=True)
    shutil.chown(path, USER, USER)
    path.chmod(mode)


def sshd_conf() -> str:
    return f"""\
# The dev cluster's storage server: a private sshd on loopback, keys only, user {USER} only.
Port {PORT}
ListenAddress 127.0.0.1
HostKey {HOST_KEY}
PidFile {PIDFILE}
AuthorizedKeysFile {AUTHORIZED_DIR}/%u
StrictModes yes
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
UsePAM no
PermitRootLogin no
AllowUsers {USER}
DisableForwarding yes
MaxSessions 64
MaxStartups 64:30:128
ClientAliveInterval 10
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""


def ensure_server_files() -> bool:
    """Host key (once), authorized keys file, known_hosts, sshd config. True if the config changed.

    Every directory up to the authorized keys is root's and not group/world writable: sshd's
    StrictModes refuses the file otherwise. The file is world-readable (public keys only): sshd
    reads it as the user logging in."""
    for directory in (DIR, AUTHORIZED_DIR):
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "root", "root")
        directory.chmod(0o755)
    if not HOST_KEY.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hpcgw-dev-storage",
             "-f", str(HOST_KEY)])
    AUTHORIZED.touch(exist_ok=True)
    shutil.chown(AUTHORIZED, "root", "root")
    AUTHORIZED.chmod(0o644)
    KNOWN_HOSTS.write_text(known_hosts_line() + "\n")
    changed = not CONFIG.exists() or CONFIG.read_text() != sshd_conf()
    if changed:
        CONFIG.write_text(sshd_conf())
        run(["/usr/sbin/sshd", "-t", "-f", str(CONFIG)])
    return changed


def known_hosts_line() -> str:
    key_type, key = Path(f"{HOST_KEY}.pub").read_text().split()[:2]
    return f"[127.0.0.1]:{PORT} {key_type} {key}"


def sshd_argv() -> list[str]:
    """The command that starts the storage sshd as a daemon (it writes PIDFILE)."""
    return ["/usr/sbin/sshd", "-f", str(CONFIG), "-E", str(LOG)]


def answers() -> bool:
    """True once something on the storage port sends an SSH banner."""
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=1) as conn:
            conn.settimeout(2)
            return conn.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def serves_our_host_key() -> bool:
    """The server on the port proves the host key we generated (not another daemon's)."""
    scan = subprocess.run(["ssh-keyscan", "-T", "5", "-t", "ed25519", "-p", str(PORT),
                           "127.0.0.1"], capture_output=True, text=True)
    return known_hosts_line() in scan.stdout.splitlines()


def write_info() -> None:
    """storage.json: everything a test or the gateway needs to reach the storage server."""
    info = {
        "host": "127.0.0.1",
        "port": PORT,
        "user": USER,
        "root": str(ROOT),
        "demo_dir": str(ROOT / "demo"),
        "demo_files": {path: hashlib.sha256(text.encode()).hexdigest()
                       for path, text in demo_files().items()},
        "host_key_file": f"{HOST_KEY}.pub",
        "known_hosts_line": known_hosts_line(),
        "known_hosts_file": str(KNOWN_HOSTS),
        "authorized_keys": str(AUTHORIZED),
        "authorized_keys_dir": str(AUTHORIZED_DIR),
        "pid_file": str(PIDFILE),
        "log": str(LOG),
    }
    partial = INFO.with_name(f".{INFO.name}.partial")
    partial.write_text(json.dumps(info, indent=2) + "\n")
    partial.chmod(0o644)
    partial.replace(INFO)


def ensure_fuse() -> None:
    """/dev/fuse usable by job users (SSHFS on the compute node), and fusermount3 present."""
    if not FUSE.exists():
        run(["mknod", "-m", "0666", str(FUSE), "c", "10", "229"])
    if FUSE.stat().st_mode & 0o777 != 0o666:
        FUSE.chmod(0o666)
    if not shutil.which("fusermount3") or not shutil.which("sshfs"):
        raise SystemExit("dev-cluster: sshfs or fusermount3 is missing (Debian sshfs, fuse3)")


def authorize(text: str) -> int:
    """`storage-authorize`: one OpenSSH public key line (stdin) appended to AUTHORIZED, once."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1 or not KEY_LINE.fullmatch(lines[0]):
        say("storage-authorize: expected exactly one public key line: TYPE BASE64 [COMMENT]")
        return 2
    line = lines[0]
    check = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=line + "\n",
                           capture_output=True, text=True)
    if check.returncode != 0:
        say(f"storage-authorize: not a public key: {check.stderr.strip()}")
        return 2
    if not AUTHORIZED.exists():
        say(f"storage-authorize: {AUTHORIZED} is missing: run `scripts/dev-cluster up` first")
        return 1
    key = line.split()[:2]
    with AUTHORIZED.open("r+") as keys:
        fcntl.flock(keys, fcntl.LOCK_EX)
        content = keys.read()
        present = any(existing.split()[:2] == key for existing in content.splitlines())
        if not present:
            keys.write(("\n" if content and not content.endswith("\n") else "") + line + "\n")
    say(f"storage-authorize: {'already authorized' if present else 'authorized'} "
        f"{check.stdout.strip()}")
    return 0
