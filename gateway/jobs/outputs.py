"""Outputs: the files and directories a notebook run listed in ``outputs``, back at the gateway.

When the job ends (also failed or timed out: whatever exists is collected), the job's own user
packs the listed paths on the cluster (``tar``, symlinks kept as links, never followed; the
user's own permissions) into one archive in the work directory, which the gateway fetches with
the usual capped, streamed read (``gateway.max_output_bytes``) and unpacks into
``<data_dir>/jobs/<id>/outputs``: only regular files and directories, only under the listed
paths, never through a link. The archive is the job user's to write (a job may leave its own in
the archive's place), so the cap holds for what is unpacked as well as for what is fetched:
sparse members, whose few stored bytes stand for a file of any size, are never unpacked, and
every file or directory made counts :data:`ENTRY_BYTES` besides its size, so empty ones are no
way around it. An archive may also hold at most :data:`MAX_OUTPUT_ENTRIES` members and make at
most that many files and directories (those a member's path implies included). Unpacking runs
in a thread, never on the event loop. A listed path the job did not write, or outputs over a
cap, is reported (the job's message says which); it never changes the job's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from ..errors import GatewayError
from ..transport import RemoteFileMissing, Transport

ARCHIVE = ".hpcgw-outputs.tar"
LOCAL_DIR = "outputs"
TAR_TIMEOUT = 600.0
# The most members an outputs archive may hold, and the most files and directories unpacking it
# may make, in the gateway's data directory: a job that writes more packs them itself (one
# listed archive). Not a setting: it bounds the gateway's own inodes, memory and time, whatever
# the byte cap.
MAX_OUTPUT_ENTRIES = 10_000
# What each file or directory unpacked counts against the byte cap besides its size (a tar
# header's size): the inode and directory entry it costs the gateway.
ENTRY_BYTES = 512


async def collect_outputs(transport: Transport, workdir: str, user: str, paths: list[str],
                          local: Path, limit: int) -> list[str]:
    """Bring ``paths`` (relative to ``workdir``) back into ``local/outputs``; what could not be
    brought back, each as ``"<path> (<why>)"``. Cluster errors other than a refused or
    missing file are raised (the collector retries those)."""
    archive = f"{workdir}/{ARCHIVE}"
    await transport.run(["tar", "-C", workdir, "--no-wildcards", "-cf", archive, "--", *paths],
                        user=user, timeout=TAR_TIMEOUT, check=False)  # 2: some path missing
    part = local / (ARCHIVE + ".part")
    try:
        await transport.fetch_to(archive, part, user=user, limit=limit)
    except RemoteFileMissing:
        return [f"{path} (not written)" for path in paths]
    except GatewayError as exc:  # too large, not a regular file: the outputs are refused
        part.unlink(missing_ok=True)
        return [f"{path} (refused: {exc.detail})" for path in paths]
    finally:
        with contextlib.suppress(GatewayError):
            await transport.run(["rm", "-f", "--", archive], user=user)
    dest = local / LOCAL_DIR
    try:  # in a thread: up to the caps' worth of files, and nothing in it touches the loop
        found = await asyncio.to_thread(unpack, part, dest, paths, limit)
    except (OutputsTooLarge, tarfile.TarError, ValueError, OSError) as exc:
        # A damaged or hostile archive (tarfile raises ValueError for some bad headers, a
        # file where a directory was unpacked OSError), or the gateway's disk: none unpacked.
        await asyncio.to_thread(shutil.rmtree, dest, ignore_errors=True)
        return [f"{path} (refused: {str(exc)[:200]})" for path in paths]
    finally:
        part.unlink(missing_ok=True)
    return [f"{path} (not written)" for path in paths if path not in found]


class OutputsTooLarge(Exception):
    """An outputs archive over a cap: its files add up to more bytes than the limit, or it
    holds or makes more than :data:`MAX_OUTPUT_ENTRIES` members, files and directories."""


def _member_path(name: str, paths: list[str]) -> PurePosixPath | None:
    """The member's path if it is safe and under one of ``paths``, else None."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    text = str(path)
    if not any(text == asked or text.startswith(asked + "/") for asked in paths):
        return None
    return path


def unpack(archive: Path, dest: Path, paths: list[str], limit: int,
           max_entries: int = MAX_OUTPUT_ENTRIES) -> set[str]:
    """Unpack the regular files and directories of ``archive`` that lie under ``paths`` into
    ``dest`` (replaced), never following or creating links; the listed paths found. Sparse
    files are left out. Raises :class:`OutputsTooLarge` (``dest`` then holds part of the files,
    never more than the caps allow) on reading the archive's member past ``max_entries``
    (skipped ones count too), or before making a file or directory past ``max_entries`` (the
    missing directories of a member's path count) or past ``limit`` bytes (each file or
    directory made counts :data:`ENTRY_BYTES` besides a file's size). Blocking: call it in a
    thread."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(mode=0o700, parents=True)
    found: set[str] = set()
    members = made = unpacked = 0
    with tarfile.open(archive, "r:") as tar:
        for member in tar:
            members += 1
            if members > max_entries:
                raise OutputsTooLarge(f"more than {max_entries} archive members")
            path = _member_path(member.name, paths)
            if path is None or member.issparse() or not (member.isreg() or member.isdir()):
                continue
            target = dest.joinpath(*path.parts)
            new = _new_entries(dest, target)
            if new is None:
                continue
            made += new
            unpacked += new * ENTRY_BYTES + (member.size if member.isreg() else 0)
            if made > max_entries:
                raise OutputsTooLarge(f"more than {max_entries} files and directories")
            if unpacked > limit:
                raise OutputsTooLarge(f"more than {limit} bytes once unpacked")
            if member.isdir():
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
            else:
                _write(tar, member, target)
            found |= {asked for asked in paths
                      if str(path) == asked or str(path).startswith(asked + "/")}
    return found


def _new_entries(dest: Path, target: Path) -> int | None:
    """How many files and directories writing ``target`` (under ``dest``) makes: the missing
    directories on its way and itself, 0 if it exists already; None if the way passes through
    anything but a real directory (a link, a file)."""
    parts = target.relative_to(dest).parts
    current = dest
    for depth, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return len(parts) - depth
        if depth < len(parts) - 1 and not stat.S_ISDIR(mode):
            return None
    return 0


def _leaves(dest: Path, target: Path) -> bool:
    """Whether writing ``target`` would pass through anything but a real directory of ours."""
    current = dest
    for part in target.relative_to(dest).parts[:-1]:
        current = current / part
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return True
    return False


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    source = tar.extractfile(member)
    assert source is not None  # a regular file
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with source, os.fdopen(os.open(target, flags, 0o600), "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def list_outputs(local: Path) -> list[dict[str, object]]:
    """The collected output files of a job (``local``: its data directory), path and size,
    sorted; regular files only, no link followed. Walks the outputs (at most
    :data:`MAX_OUTPUT_ENTRIES` entries): blocking, call it in a thread."""
    root = local / LOCAL_DIR
    files = []
    for directory, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            full = Path(directory) / name
            info = os.lstat(full)
            if stat.S_ISREG(info.st_mode):
                files.append({"path": full.relative_to(root).as_posix(), "size": info.st_size})
    return sorted(files, key=lambda entry: str(entry["path"]))


def output_file(local: Path, path: str) -> Path | None:
    """The collected output ``path`` of a job, if it is a regular file under its outputs (no
    link followed); None otherwise."""
    root = (local / LOCAL_DIR).resolve()
    candidate = PurePosixPath(path)
    if candidate.is_absolute() or ".." in candidate.parts or not candidate.parts:
        return None
    target = root.joinpath(*candidate.parts)
    if _leaves(root, target):
        return None
    try:
        return target if stat.S_ISREG(os.lstat(target).st_mode) else None
    except FileNotFoundError:
        return None
