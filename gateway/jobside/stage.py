"""Copies a job's inputs from storage servers into its work directory, checked, before sbatch.

Copied by the gateway into ``<workdir>/.stage/`` (with the plan, the storage keys and a
known_hosts file, all 0600 in a 0700 directory) and run on the cluster's login side as the job's
own user; it depends on nothing of the gateway's. For each input of ``plan.json`` it

1. asks the storage server (``ssh``, pinned host key, the input's key only) what the path is:
   a directory (its regular files' sizes) or a file (its size), or missing or unreadable;
2. after checking the size against the plan's cap and the free space, streams it over ssh (a
   file as it is, a directory as a tar stream) into ``inputs/.partial-<parameter>`` (a
   temporary name: a partial copy never looks complete), while a second ssh has the server
   compute every file's SHA-256 (both at once), then hashes what arrived;
3. checks that every file the server listed arrived with its size and SHA-256 (and nothing
   else: links and special files are not copied), then renames it to ``inputs/<parameter>``
   (a directory's contents), or ``inputs/<parameter>/<name>`` (a file).

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
import stat
import subprocess
import sys
import tempfile
import time
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
    """ssh options: only this input's key, only the pinned host key, keepalives."""
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


# Run by the storage account's shell: what the path is, and each regular file's size.
PROBE = """LC_ALL=C; p={path}
if [ ! -e "$p" ]; then echo missing
elif [ ! -r "$p" ]; then echo unreadable
elif [ -d "$p" ]; then echo dir; cd "$p" && find . -type f -printf '%s %p\\n'
elif [ -f "$p" ]; then echo file; stat -c '%s .' -- "$p"
else echo special; fi"""
# Each regular file's SHA-256, by openssl when there is one (it uses the CPU's SHA
# instructions; coreutils' sha256sum is several times slower), run while the data streams.
CHECKSUMS = """LC_ALL=C; p={path}
if command -v openssl >/dev/null 2>&1; then set -- openssl dgst -sha256 -r
else set -- sha256sum; fi
if [ -d "$p" ]; then cd "$p" && find . -type f -exec "$@" {{}} +; else "$@" < "$p"; fi"""
# The data itself: a file as it is, a directory as a tar stream (links stay links).
STREAM = """p={path}; if [ -d "$p" ]; then exec tar -C "$p" -cf - .; else exec cat -- "$p"; fi"""
BLOCK = 1 << 20
FOLLOW_PAUSE = 0.005  # seconds to wait for more of a file that is still being written


def remote(item: dict[str, Any], stage_dir: str, script: str, **words: str) -> list[str]:
    """The ssh argv that runs ``script`` on the item's server, its ``{path}`` the item's quoted
    path and its other fields ``words`` (quoted by the caller)."""
    return ["ssh", *ssh_options(item, stage_dir), "-p", str(item["port"]),
            f"{item['user']}@{item['host']}", "--",
            script.format(**{"path": shlex.quote(item["path"]), **words})]


def probe(item: dict[str, Any], stage_dir: str) -> tuple[str, dict[str, int]]:
    """``(kind, {relative path: size})`` of the input on its server."""
    done = subprocess.run(remote(item, stage_dir, PROBE), capture_output=True, text=True,
                          check=False)
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
    sizes = {}
    for line in lines[1:]:
        size, _, name = line.partition(" ")
        sizes[name] = int(size)
    return kind, sizes


def parse_checksums(kind: str, text: str) -> dict[str, str]:
    """``{relative path: sha256}`` from ``openssl dgst -r`` or ``sha256sum`` lines."""
    sums = {}
    for line in text.splitlines():
        digest, name = line[:64], line[64:]
        name = name[2:] if name.startswith((" *", "  ")) else name
        sums["." if kind == "file" else name] = digest
    return sums


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def local_files(partial: str, kind: str) -> dict[str, tuple[str, int]]:
    """``{relative path: (sha256, size)}`` of what arrived, as the server names them; anything
    but regular files and directories (a link in the tar stream) is removed first."""
    if kind == "file":
        return {".": (sha256_of(partial), os.path.getsize(partial))}
    found = {}
    for root, dirs, names in os.walk(partial):
        for name in names + dirs:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                found["./" + os.path.relpath(path, partial)] = (sha256_of(path),
                                                                os.path.getsize(path))
            elif not stat.S_ISDIR(mode):
                os.unlink(path)  # links and special files are not copied
    return found


def receive(item: dict[str, Any], stage_dir: str, kind: str, partial: str,
            errors: Any) -> subprocess.Popen[bytes]:
    """Start the data stream into ``partial``: ssh writes a file straight to disk; a
    directory's tar stream goes to GNU tar (which never writes through a link it made: links
    to absolute or '..' targets stay placeholders until the end, and are removed after)."""
    if kind == "file":
        with open(partial, "xb") as out:
            return subprocess.Popen(remote(item, stage_dir, STREAM), stdout=out, stderr=errors)
    os.mkdir(partial, 0o700)
    data = subprocess.Popen(remote(item, stage_dir, STREAM), stdout=subprocess.PIPE,
                            stderr=errors)
    unpack = subprocess.Popen(["tar", "-x", "-f", "-", "-C", partial, "--no-same-owner",
                               "--no-same-permissions"], stdin=data.stdout, stderr=errors)
    assert data.stdout is not None
    data.stdout.close()  # tar holds it now
    if unpack.wait() != 0:
        data.kill()
    return data


def follow(path: str, data: subprocess.Popen[bytes]) -> tuple[str, int]:
    """SHA-256 and size of the file ``data`` is writing, read as it grows (tail -f), so the
    hashing overlaps the transfer; complete once ``data`` has ended."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as growing:
        while True:
            ended = data.poll() is not None  # before the read: nothing is missed after it
            block = growing.read(BLOCK)
            if block:
                digest.update(block)
                size += len(block)
            elif ended:
                return digest.hexdigest(), size
            else:
                time.sleep(FOLLOW_PAUSE)


def copy_checked(item: dict[str, Any], stage_dir: str, kind: str, sizes: dict[str, int],
                 partial: str) -> None:
    """Stream the input into ``partial`` while its server computes the checksums, then check
    that every file it listed arrived with its size and SHA-256, and nothing else."""
    with tempfile.TemporaryFile() as errors:
        sums = subprocess.Popen(remote(item, stage_dir, CHECKSUMS), stdout=subprocess.PIPE,
                                stderr=errors)
        data = receive(item, stage_dir, kind, partial, errors)
        followed = follow(partial, data) if kind == "file" else None
        listed = parse_checksums(kind, sums.communicate()[0].decode(errors="replace"))
        if data.wait() != 0 or sums.returncode != 0:
            errors.seek(0)
            raise explain(errors.read().decode(errors="replace"), "copy failed")
    received = {".": followed} if followed else local_files(partial, kind)
    expected = {name: (listed.get(name), size) for name, size in sizes.items()}
    if received != expected:
        wrong = sorted(set(received) ^ set(expected)
                       | {n for n in received if received[n] != expected.get(n)})
        raise StageError("checksum mismatch", f"{(wrong or ['?'])[0]} differs from the "
                         "storage server's copy (size or SHA-256)")


def plan_mount(item: dict[str, Any], workdir: str, stage_dir: str) -> tuple[str, str]:
    """Probe one mount input: (the local path its parameter gets, the directory to mount)."""
    kind, _ = probe(item, stage_dir)
    point = os.path.join(workdir, "inputs", item["parameter"])
    if kind == "dir":
        return point, item["path"]
    name = os.path.basename(item["path"].rstrip("/"))
    return os.path.join(point, name), os.path.dirname(item["path"].rstrip("/")) or "/"


def restore(item: dict[str, Any], workdir: str, stage_dir: str, max_bytes: int) -> str:
    """A lab's persisted working directory, copied into ``work/`` (empty the first time, when
    the directory does not exist on the server yet); its path."""
    work = os.path.join(workdir, "work")
    try:
        copied = stage_one({**item, "parameter": "work"}, workdir, stage_dir, max_bytes,
                           os.path.join(workdir, ".restore"))
    except StageError as exc:
        if exc.cause != "not found":
            raise
        shutil.rmtree(work, ignore_errors=True)
        os.mkdir(work, 0o700)
        return work
    shutil.rmtree(work, ignore_errors=True)
    os.replace(copied, work)
    os.rmdir(os.path.join(workdir, ".restore"))
    return work


def stage_one(item: dict[str, Any], workdir: str, stage_dir: str, max_bytes: int,
              inputs: str | None = None) -> str:
    """Copy one input into the job's ``inputs/`` (or ``inputs``); the local path its
    parameter gets."""
    kind, sizes = probe(item, stage_dir)
    if item.get("persist") and kind != "dir":
        raise StageError("not a directory", f"{item['path']}: a lab persists a directory")
    total = sum(sizes.values())
    if total > max_bytes:
        raise StageError("too large", f"{total} bytes, over the gateway's cap of {max_bytes}")
    inputs = inputs or os.path.join(workdir, "inputs")
    os.makedirs(inputs, mode=0o700, exist_ok=True)
    if shutil.disk_usage(inputs).free < total:
        raise StageError("disk full", f"{total} bytes do not fit in the job's file system")
    partial = os.path.join(inputs, f".partial-{item['parameter']}")
    final = os.path.join(inputs, item["parameter"])
    for stale in (partial, final):
        shutil.rmtree(stale, ignore_errors=True)
    copy_checked(item, stage_dir, kind, sizes, partial)
    if kind == "dir":
        os.replace(partial, final)
        return final
    os.makedirs(final, mode=0o700)
    name = os.path.basename(item["path"].rstrip("/")) or "input"
    os.replace(partial, os.path.join(final, name))
    return os.path.join(final, name)


# Run by the storage account's shell with the tar stream on stdin: unpack into a temporary
# directory beside the destination (refused if the destination's name is taken).
RECEIVE = """LC_ALL=C; d={dest}; n={name}; t={partial}; keep={keep}
mkdir -p -- "$d" && cd -- "$d" || exit 3
if [ "$keep" = 1 ] && {{ [ -e "$n" ] || [ -L "$n" ]; }}; then
  echo "hpcgw: $n already exists in $d" >&2; exit 17; fi
rm -rf -- "$t" && mkdir -m 700 -- "$t" && tar -xf - -C "$t" || exit 4
if command -v openssl >/dev/null 2>&1; then set -- openssl dgst -sha256 -r
else set -- sha256sum; fi
cd -- "$t" && find . -type f -exec "$@" {{}} +"""
PUBLISH = """d={dest}; n={name}; t={partial}; s={source}
cd -- "$d" || exit 3
if [ -e "$n" ]; then mv -- "$n" "$t/.replaced" || exit 3; fi
mv -- "$s" "$n" && rm -rf -- "$t"
"""


def local_tree(workdir: str, path: str, exclude: str | None = None) -> dict[str, str]:
    """``{"./<path>/...": sha256}`` of the regular files of an output (links not followed:
    tar sends them as links); StageError if the path is missing or leaves the work directory."""
    full = os.path.join(workdir, path)
    real = os.path.realpath(full)
    if not (real + "/").startswith(os.path.realpath(workdir) + "/") or not os.path.lexists(full):
        raise StageError("not written", f"{path}: not in the job's work directory")
    if os.path.isfile(full) and not os.path.islink(full):
        return {f"./{path}": sha256_of(full)}
    sums = {}
    for root, _dirs, names in os.walk(full):
        for name in names:
            local = os.path.join(root, name)
            relative = os.path.relpath(local, workdir)
            if exclude and (relative + "/").startswith(exclude + "/"):
                continue
            if stat.S_ISREG(os.lstat(local).st_mode):
                sums["./" + relative] = sha256_of(local)
    return sums


def push_one(item: dict[str, Any], workdir: str, stage_dir: str) -> str:
    """Send one output to its storage server: into a temporary directory beside ``dest``,
    every file checked there by SHA-256, then renamed to ``dest/<the output's name>``."""
    sums = local_tree(workdir, item["path"], item.get("exclude"))
    name = item.get("name") or os.path.basename(item["path"])
    partial = f".partial-{name}-{os.getpid()}"
    words = {"dest": shlex.quote(item["dest"]), "name": shlex.quote(name),
             "partial": shlex.quote(partial), "keep": "0" if item.get("replace") else "1",
             "source": shlex.quote(f"{partial}/{item['path']}")}
    excluded = [f"--exclude=./{item['exclude']}"] if item.get("exclude") else []
    tar = subprocess.Popen(["tar", "-C", workdir, *excluded, "-cf", "-", "--",
                            f"./{item['path']}"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sent = subprocess.run(remote(item, stage_dir, RECEIVE, **words), stdin=tar.stdout,
                          capture_output=True, text=True, check=False)
    tar.wait()
    if sent.returncode == 17:
        raise StageError("exists", f"{item['dest']}/{name} already exists on the server")
    if sent.returncode != 0:
        raise explain(sent.stderr, "push failed")
    if parse_checksums("dir", sent.stdout) != sums:
        raise StageError("checksum mismatch", "the storage server's copy differs")
    moved = subprocess.run(remote(item, stage_dir, PUBLISH, **words),
                           capture_output=True, text=True, check=False)
    if moved.returncode != 0:
        raise explain(moved.stderr, "push failed")
    return f"{item['dest'].rstrip('/')}/{name}"


def push_all(plan: dict[str, Any], workdir: str, stage_dir: str) -> int:
    """``--push``: each output of the plan to its server; prints ``{"pushed": {path: where}}``
    and ``{"failed": {path: "cause: message"}}`` (one failure does not stop the others)."""
    pushed, failed = {}, {}
    for item in plan["outputs"]:
        try:
            pushed[item["path"]] = push_one(item, workdir, stage_dir)
        except StageError as exc:
            failed[item["path"]] = f"{exc.cause}: {exc.message}"
        except OSError as exc:
            failed[item["path"]] = f"local error: {exc}"[:300]
    print(json.dumps({"pushed": pushed, "failed": failed}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--push", action="store_true", help="send the plan's outputs")
    args = parser.parse_args()
    stage_dir = os.path.join(args.workdir, ".stage")
    # One stager per job at a time: one left running by a gateway that was killed is waited
    # for (held until it exits), then everything is copied again.
    lock = os.open(os.path.join(args.workdir, ".stage.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    with open(os.path.join(stage_dir, "plan.json")) as handle:
        plan = json.load(handle)
    if args.push:
        return push_all(plan, args.workdir, stage_dir)
    staged: dict[str, str] = {}
    mounts: dict[str, str] = {}
    persisted = None
    for item in plan["inputs"]:
        try:
            if item.get("persist"):
                persisted = restore(item, args.workdir, stage_dir, plan["max_bytes"])
                continue
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
    print(json.dumps({"inputs": staged, "mounts": mounts, "persist": persisted}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
