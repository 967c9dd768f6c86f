"""Copies a job's inputs from storage servers into its work directory, checked, before sbatch.

Copied by the gateway into ``<workdir>/.stage/`` (with the plan, the storage keys and a
known_hosts file, all 0600 in a 0700 directory) and run on the cluster's login side as the job's
own user; it depends on nothing of the gateway's. For each input of ``plan.json`` it

1. asks the storage server (``ssh``, pinned host key, the input's key only) what the path is:
   a directory (every regular file's SHA-256) or a file (its SHA-256 and size), or missing or
   unreadable;
2. copies it with ``scp`` to ``inputs/.partial-<parameter>`` (a temporary name: a partial copy
   never looks complete), after checking its size against the plan's cap and the free space;
3. checks every file's size and SHA-256 against what the server said, then renames it to
   ``inputs/<parameter>`` (a directory's contents), or ``inputs/<parameter>/<name>`` (a file).

A ``mount`` input is only probed (1.): it is mounted on the node by the job itself (SSHFS), at
``inputs/<parameter>``: its directory, or a file's parent directory.

It prints one JSON object: ``{"inputs": {parameter: local path}, "mounts": {parameter: the
directory to mount}}``, or ``{"error": {"parameter": ..., "cause": ..., "message": ...}}`` for
the first input that failed (exit 1). Running it again repeats every copy from the start (a
gateway restart mid-staging).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from typing import Any

SSH_TIMEOUT = 15  # seconds to connect; keepalives end a transfer that stalls
# What a storage server's stderr says, and what the job's message calls it (first match wins).
CAUSES = [
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "host key changed",
     "the storage server's host key changed since it was pinned; refused"),
    ("Host key verification failed", "host key refused",
     "the storage server's host key is not the pinned one; refused"),
    ("Permission denied (publickey", "authentication refused",
     "the storage server refused the key (is the public key in authorized_keys?)"),
    ("Connection refused", "unreachable", "the storage server refused the connection"),
    ("timed out", "unreachable", "the storage server did not answer"),
    ("No space left on device", "disk full", "the job's file system is full"),
    ("Permission denied", "permission denied", "permission denied"),
    ("No such file", "not found", "no such file or directory on the storage server"),
]


class StageError(Exception):
    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


def ssh_options(item: dict[str, Any], stage_dir: str) -> list[str]:
    """Options shared by ssh and scp: only this input's key, only the pinned host key."""
    return ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"IdentityFile={os.path.join(stage_dir, item['key'])}",
            "-o", f"UserKnownHostsFile={os.path.join(stage_dir, 'known_hosts')}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={SSH_TIMEOUT}", "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=3", "-F", "/dev/null"]


def explain(stderr: str, fallback: str) -> StageError:
    for needle, cause, message in CAUSES:
        if needle in stderr:
            return StageError(cause, message)
    return StageError(fallback, stderr.strip().splitlines()[-1][:300] if stderr.strip()
                      else fallback)


# Run by the storage account's shell: what the path is, and the checksums to verify against.
PROBE = """LC_ALL=C; p={path}
if [ ! -e "$p" ]; then echo missing
elif [ ! -r "$p" ]; then echo unreadable
elif [ -d "$p" ]; then echo dir; cd "$p" && find . -type f -exec sha256sum {{}} + \\
  && find . -type f -printf 'size %s %p\\n'
elif [ -f "$p" ]; then echo file; sha256sum < "$p"; stat -c 'size %s' -- "$p"
else echo special; fi"""


def probe(item: dict[str, Any], stage_dir: str) -> tuple[str, dict[str, tuple[str, int]]]:
    """``(kind, {relative path: (sha256, size)})`` of the input on its server."""
    target = f"{item['user']}@{item['host']}"
    done = subprocess.run(
        ["ssh", *ssh_options(item, stage_dir), "-p", str(item["port"]), target, "--",
         PROBE.format(path=shlex.quote(item["path"]))],
        capture_output=True, text=True, check=False)
    if done.returncode != 0 and not done.stdout:
        raise explain(done.stderr, "probe failed")
    lines = done.stdout.splitlines()
    kind = lines[0] if lines else ""
    if kind in ("missing", "unreadable", "special"):
        raise StageError({"missing": "not found", "unreadable": "permission denied",
                          "special": "not a file"}[kind],
                         f"{item['path']}: " + {"missing": "no such file or directory",
                                                "unreadable": "permission denied",
                                                "special": "neither a file nor a directory"}[kind])
    if done.returncode != 0 or kind not in ("file", "dir"):
        raise explain(done.stderr, "probe failed")
    return kind, parse_listing(kind, lines[1:])


def parse_listing(kind: str, lines: list[str]) -> dict[str, tuple[str, int]]:
    sums: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for line in lines:
        if line.startswith("size "):
            _, size, *rest = line.split(" ", 2)
            sizes[rest[0] if rest else "."] = int(size)
        else:
            digest, _, name = line.partition("  ")
            sums[name or "."] = digest
    if kind == "file":
        return {".": (sums["-"] if "-" in sums else next(iter(sums.values())), sizes["."])}
    return {name: (sums[name], sizes[name]) for name in sums}


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy(item: dict[str, Any], stage_dir: str, partial: str) -> None:
    source = f"{item['user']}@{item['host']}:{item['path']}"
    done = subprocess.run(
        ["scp", "-B", "-q", "-r", "-P", str(item["port"]), *ssh_options(item, stage_dir),
         "--", source, partial], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise explain(done.stderr, "copy failed")


def verify(kind: str, listing: dict[str, tuple[str, int]], partial: str) -> None:
    """Every file the server listed is here with its size and SHA-256, and nothing else."""
    if kind == "file":
        found = {".": partial}
    else:
        found = {}
        for root, _, names in os.walk(partial):
            for name in names:
                local = os.path.join(root, name)
                found["./" + os.path.relpath(local, partial)] = local
    if set(found) != set(listing):
        raise StageError("checksum mismatch", "the copy does not hold the files the storage "
                         "server listed")
    for name, local in found.items():
        digest, size = listing[name]
        if os.path.getsize(local) != size or sha256_of(local) != digest:
            raise StageError("checksum mismatch", f"{name} differs from the storage server's "
                             "copy (size or SHA-256)")


def plan_mount(item: dict[str, Any], workdir: str, stage_dir: str) -> tuple[str, str]:
    """Probe one mount input: (the local path its parameter gets, the directory to mount)."""
    kind, _ = probe(item, stage_dir)
    point = os.path.join(workdir, "inputs", item["parameter"])
    if kind == "dir":
        return point, item["path"]
    name = os.path.basename(item["path"].rstrip("/"))
    return os.path.join(point, name), os.path.dirname(item["path"].rstrip("/")) or "/"


def stage_one(item: dict[str, Any], workdir: str, stage_dir: str, max_bytes: int) -> str:
    """Copy one input into the job's ``inputs/``; the local path its parameter gets."""
    kind, listing = probe(item, stage_dir)
    total = sum(size for _, size in listing.values())
    if total > max_bytes:
        raise StageError("too large", f"{total} bytes, over the gateway's cap of {max_bytes}")
    inputs = os.path.join(workdir, "inputs")
    os.makedirs(inputs, mode=0o700, exist_ok=True)
    if shutil.disk_usage(inputs).free < total:
        raise StageError("disk full", f"{total} bytes do not fit in the job's file system")
    partial = os.path.join(inputs, f".partial-{item['parameter']}")
    final = os.path.join(inputs, item["parameter"])
    for stale in (partial, final):
        shutil.rmtree(stale, ignore_errors=True)
    copy(item, stage_dir, partial)
    verify(kind, listing, partial)
    if kind == "dir":
        os.replace(partial, final)
        return final
    os.makedirs(final, mode=0o700)
    name = os.path.basename(item["path"].rstrip("/")) or "input"
    os.replace(partial, os.path.join(final, name))
    return os.path.join(final, name)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    stage_dir = os.path.join(args.workdir, ".stage")
    # One stager per job at a time: one left running by a gateway that was killed is waited
    # for (held until it exits), then everything is copied again.
    lock = os.open(os.path.join(args.workdir, ".stage.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    with open(os.path.join(stage_dir, "plan.json")) as handle:
        plan = json.load(handle)
    staged: dict[str, str] = {}
    mounts: dict[str, str] = {}
    for item in plan["inputs"]:
        try:
            if item.get("mode") == "mount":
                staged[item["parameter"]], mounts[item["parameter"]] = plan_mount(
                    item, args.workdir, stage_dir)
                continue
            staged[item["parameter"]] = stage_one(item, args.workdir, stage_dir,
                                                  plan["max_bytes"])
        except StageError as exc:
            print(json.dumps({"error": {"parameter": item["parameter"], "cause": exc.cause,
                                        "message": exc.message}}))
            return 1
        except OSError as exc:
            cause = "disk full" if exc.errno == 28 else "local error"
            print(json.dumps({"error": {"parameter": item["parameter"], "cause": cause,
                                        "message": str(exc)[:300]}}))
            return 1
    print(json.dumps({"inputs": staged, "mounts": mounts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
