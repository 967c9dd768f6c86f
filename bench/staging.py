"""Data staging against OpenSSH in the same run (design.md §5: >= 0.8x scp's MB/s).

Against the dev cluster's storage server (storage@127.0.0.1:2223), as alice, with one fresh
key authorized there and the pinned host key, the same OpenSSH client options and so the same
cipher for every contender (``--cipher``; default: OpenSSH's own choice, printed):

1. copy mode, one file of ``--mb`` MiB: ``scp`` of the file (reference) against
   gateway/jobside/stage.py staging it (probe with SHA-256 on the server, scp to a temporary
   name, size and SHA-256 checked, rename) - the whole copy input of a job;
2. the same file read sequentially through an SSHFS mount (``dd bs=1M``), with the mount
   options the job script uses (plus ``--sshfs-options``), against the same scp;
3. ``--files`` small files (1 KiB each) in one directory: stage.py against ``ssh tar -cf - |
   tar -xf -`` (reference).

Each contender runs ``--rounds`` times, alternating; medians are printed with the ratio. The
data is made on the storage server first and removed at the end, as are the key's
authorized_keys line and alice's copies.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh
from _common import REPO, table

STORAGE = json.loads(Path("/var/lib/hpcgw-dev/storage.json").read_text())
ALICE = ["sudo", "-n", "-u", "alice", "--"]
STAGE = REPO / "gateway" / "jobside" / "stage.py"


def ssh_options(work: Path, cipher: str | None) -> list[str]:
    return [*(["-c", cipher] if cipher else []), "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", f"IdentityFile={work}/.stage/key-0",
            "-o", f"UserKnownHostsFile={work}/.stage/known_hosts",
            "-o", "StrictHostKeyChecking=yes", "-F", "/dev/null"]


def as_alice(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ALICE, *argv], check=True, text=True, capture_output=True,
                          **kwargs)  # type: ignore[call-overload]


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes, started with no dirty page left to write back (the previous
    contender's 1 GiB would otherwise be flushed on the next one's time)."""
    os.sync()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def prepare(work: Path) -> str:
    """alice's work dir with an authorized key; the public key line (to remove after)."""
    (work / ".stage").mkdir(parents=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    (work / ".stage" / "key-0").write_bytes(key.export_private_key("openssh"))
    (work / ".stage" / "known_hosts").write_text(STORAGE["known_hosts_line"] + "\n")
    shutil.copy(STAGE, work / ".stage" / "stage.py")
    for name in ("key-0", "known_hosts"):
        (work / ".stage" / name).chmod(0o600)
    public = key.export_public_key().decode().strip()
    subprocess.run([str(REPO / "scripts" / "dev-cluster"), "storage-authorize"],
                   input=public + "\n", text=True, check=True, capture_output=True)
    return public


def stage(work: Path, path: str) -> None:
    plan = {"inputs": [{"parameter": "data", "host": STORAGE["host"],
                        "port": STORAGE["port"], "user": STORAGE["user"], "key": "key-0",
                        "path": path}], "max_bytes": 1 << 40}
    (work / ".stage" / "plan.json").write_text(json.dumps(plan))
    subprocess.run(["chown", "-R", "alice:", str(work)], check=True)
    for name in ("key-0", "known_hosts", "plan.json"):
        (work / ".stage" / name).chmod(0o600)
    done = as_alice(["python3", "-I", str(work / ".stage" / "stage.py"), "--workdir",
                     str(work)])
    if "error" in json.loads(done.stdout):
        raise SystemExit(f"stage.py failed: {done.stdout}")


def make_data(root: Path, mb: int, files: int) -> tuple[Path, Path]:
    """A ``mb`` MiB file and a directory of ``files`` 1 KiB files on the storage server."""
    big, many = root / "big.bin", root / "many"
    many.mkdir(parents=True)
    with big.open("wb") as out:
        subprocess.run(["head", "-c", f"{mb}M", "/dev/urandom"], stdout=out, check=True)
    chunk = bytes(range(256)) * 4
    for number in range(files):
        (many / f"f{number:05d}.dat").write_bytes(chunk)
    subprocess.run(["chown", "-R", f"{STORAGE['user']}:", str(root)], check=True)
    return big, many


def scp_file(work: Path, big: Path, cipher: str | None) -> None:
    as_alice(["scp", "-q", "-P", str(STORAGE["port"]), *ssh_options(work, cipher),
              f"{STORAGE['user']}@{STORAGE['host']}:{big}", str(work / "scp.bin")])


def tar_pipe(work: Path, many: Path, cipher: str | None) -> None:
    target = work / "tarred"
    as_alice(["mkdir", str(target)])
    as_alice(["sh", "-c", 'ssh "$@" | tar -xf - -C ' + str(target), "sh",
              "-p", str(STORAGE["port"]), *ssh_options(work, cipher),
              f"{STORAGE['user']}@{STORAGE['host']}", "tar", "-C", str(many), "-cf", "-", "."])


def sshfs_read(work: Path, big: Path, cipher: str | None, extra: str) -> float:
    """Seconds to read ``big`` through a fresh mount (mounting not counted)."""
    point = work / "mnt"
    as_alice(["mkdir", "-p", str(point)])
    options = ",".join(filter(None, [
        f"IdentityFile={work}/.stage/key-0", f"UserKnownHostsFile={work}/.stage/known_hosts",
        "StrictHostKeyChecking=yes", "BatchMode=yes", "IdentitiesOnly=yes", "reconnect",
        "ServerAliveInterval=15", "ServerAliveCountMax=3", f"port={STORAGE['port']}", "ro",
        *([f"Ciphers={cipher}"] if cipher else []), extra]))
    as_alice(["sshfs", "-o", options, f"{STORAGE['user']}@{STORAGE['host']}:{big.parent}",
              str(point)])
    try:
        return timed(lambda: as_alice(["dd", f"if={point / big.name}", "of=/dev/null",
                                       "bs=1M", "status=none"]))
    finally:
        as_alice(["fusermount3", "-u", str(point)])


def reset(work: Path) -> None:
    """Remove what earlier contenders copied into ``work``."""
    for name in ("inputs", "tarred", "scp.bin"):
        target = work / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cipher", default=None)
    parser.add_argument("--sshfs-options", default="")
    args = parser.parse_args()
    tag = secrets.token_hex(4)
    data = Path(STORAGE["root"]) / f"bench-{tag}"
    work = Path("/home/alice") / f".hpcgw-bench-{tag}"
    public = prepare(work)
    big, many = make_data(data, args.mb, args.files)
    subprocess.run(["chown", "-R", "alice:", str(work)], check=True)
    cipher = args.cipher or subprocess.run(
        ["ssh", "-G", "x"], capture_output=True, text=True).stdout.split("ciphers ")[1].split(
            ",")[0]
    times: dict[str, list[float]] = {k: [] for k in ("scp", "stage", "sshfs", "tar", "many")}
    try:
        for _ in range(args.rounds):
            reset(work)  # every contender starts from an empty target, outside the timing
            times["scp"].append(timed(lambda: scp_file(work, big, args.cipher)))
            reset(work)
            times["stage"].append(timed(lambda: stage(work, str(big))))
            times["sshfs"].append(sshfs_read(work, big, args.cipher, args.sshfs_options))
            reset(work)
            times["tar"].append(timed(lambda: tar_pipe(work, many, args.cipher)))
            reset(work)
            times["many"].append(timed(lambda: stage(work, str(many))))
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        keys = Path(STORAGE["authorized_keys"])
        keys.write_text("".join(line for line in keys.read_text().splitlines(keepends=True)
                                if line.strip() != public))
    rate = {name: args.mb / median(values) for name, values in times.items()
            if name in ("scp", "stage", "sshfs")}
    print(f"cipher: {cipher}; {args.rounds} rounds, medians")
    print(table(["path", "reference", "hpcgw", "ratio"], [
        [f"copy {args.mb} MiB", f"scp {rate['scp']:.0f} MiB/s",
         f"stage.py {rate['stage']:.0f} MiB/s", f"{rate['stage'] / rate['scp']:.2f}x"],
        [f"read {args.mb} MiB via SSHFS", f"scp {rate['scp']:.0f} MiB/s",
         f"sshfs {rate['sshfs']:.0f} MiB/s", f"{rate['sshfs'] / rate['scp']:.2f}x"],
        [f"{args.files} x 1 KiB files", f"tar|ssh {median(times['tar']):.2f} s",
         f"stage.py {median(times['many']):.2f} s",
         f"{median(times['tar']) / median(times['many']):.2f}x"],
    ]))


if __name__ == "__main__":
    main()
