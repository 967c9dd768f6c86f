"""Unpacking a job's outputs archive, which comes from the cluster and is untrusted: only
regular files and directories under the listed paths land, never through or as a link, within
the byte and entry caps, and without holding up the event loop."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import cast

import pytest

from gateway.jobs.outputs import (
    ENTRY_BYTES,
    LOCAL_DIR,
    MAX_OUTPUT_ENTRIES,
    OutputsTooLarge,
    collect_outputs,
    list_outputs,
    output_file,
    unpack,
)
from gateway.transport import CommandResult, Transport
from tests.loopwatch import loop_watch


def archive(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    """A tar of (name, kind, data or link target) with kind file, dir, symlink, hardlink, fifo."""
    with tarfile.open(path, "w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                assert isinstance(data, str)
                info.linkname = data
            tar.addfile(info)
    return path


def test_files_and_directories_under_the_listed_paths_land(tmp_path: Path) -> None:
    tar = archive(tmp_path / "a.tar", [
        ("results", "dir", b""), ("results/a.txt", "file", b"A"),
        ("results/sub/b.csv", "file", b"1,2"), ("summary.json", "file", b"{}"),
        ("unlisted.txt", "file", b"no")])
    found = unpack(tar, tmp_path / "out", ["results", "summary.json", "missing.txt"],
                   limit=1024 * 1024)
    assert found == {"results", "summary.json"}
    assert (tmp_path / "out" / "results" / "sub" / "b.csv").read_bytes() == b"1,2"
    assert not (tmp_path / "out" / "unlisted.txt").exists()


@pytest.mark.parametrize("members", [
    [("results/evil", "symlink", "/etc/passwd")],
    [("results/hard", "hardlink", "/etc/passwd")],
    [("results/pipe", "fifo", b"")],
    [("/results/abs", "file", b"x")],
    [("results/../../escape", "file", b"x")],
    # A link first, then a file "through" it: the file must not follow the link.
    [("results", "symlink", "/tmp"), ("results/through", "file", b"x")],
])
def test_links_and_escapes_never_land(tmp_path: Path,
                                      members: list[tuple[str, str, bytes | str]]) -> None:
    out = tmp_path / "out"
    unpack(archive(tmp_path / "a.tar", members), out, ["results"], limit=1024 * 1024)
    for root, dirs, files in os.walk(out):
        for name in dirs + files:
            assert not os.path.islink(os.path.join(root, name))
    assert not (tmp_path / "escape").exists() and not Path("/tmp/through").exists()
    # Whatever landed is a plain file under the outputs: at most the file sent through the
    # skipped link, now in a real directory.
    assert {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()} \
        <= {"results/through"}


def test_a_collected_file_is_served_only_from_the_outputs(tmp_path: Path) -> None:
    outputs = tmp_path / LOCAL_DIR
    (outputs / "results").mkdir(parents=True)
    (outputs / "results" / "a.txt").write_text("A")
    (tmp_path / "secret").write_text("S")
    (outputs / "link").symlink_to(tmp_path / "secret")
    (outputs / "dirlink").symlink_to(tmp_path)
    assert list_outputs(tmp_path) == [{"path": "results/a.txt", "size": 1}]
    assert output_file(tmp_path, "results/a.txt") == outputs / "results" / "a.txt"
    for bad in ("link", "dirlink/secret", "../secret", "/etc/passwd", "results", ""):
        assert output_file(tmp_path, bad) is None, bad


def _octal12(value: int) -> bytes:
    """A 12-byte numeric field of a tar header."""
    return b"%011o\0" % value


def sparse_archive(path: Path, member: str, real_size: int) -> Path:
    """A tar (old GNU format) with one sparse member: 512 bytes stored, at the end of a file of
    ``real_size`` bytes whose rest is a hole, as ``tar --sparse`` writes it. A job's user can
    leave such an archive in the outputs archive's place."""
    data = b"x" * 512
    info = tarfile.TarInfo(member)
    info.size, info.mode = len(data), 0o644
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = _octal12(real_size - len(data))  # offset
    header[398:410] = _octal12(len(data))  # bytes stored there
    header[483:495] = _octal12(real_size)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    path.write_bytes(bytes(header) + data + b"\0" * (2 * tarfile.BLOCKSIZE))
    return path


def test_a_sparse_member_never_unpacks_into_its_declared_size(tmp_path: Path) -> None:
    tar = sparse_archive(tmp_path / "a.tar", "results/zeros.bin", 64 * 1024 * 1024)
    with tarfile.open(tar) as check:  # the archive is what it says: 64 MiB once unpacked
        assert [member.size for member in check] == [64 * 1024 * 1024]
    found = unpack(tar, tmp_path / "out", ["results"], limit=1024 * 1024)
    assert found == set()
    assert not any(path.is_file() for path in (tmp_path / "out").rglob("*"))


def test_files_that_add_up_past_the_cap_are_refused(tmp_path: Path) -> None:
    tar = archive(tmp_path / "a.tar", [("results/a", "file", b"a" * 600),
                                       ("results/b", "file", b"b" * 600)])
    limit = 1200 + 3 * ENTRY_BYTES  # their bytes; results, a and b at ENTRY_BYTES each
    assert unpack(tar, tmp_path / "fits", ["results"], limit=limit) == {"results"}
    with pytest.raises(OutputsTooLarge):
        unpack(tar, tmp_path / "over", ["results"], limit=limit - 1)


def test_empty_files_and_directories_count_against_the_byte_cap(tmp_path: Path) -> None:
    tar = archive(tmp_path / "a.tar", [("results/a", "file", b""), ("results/d", "dir", b""),
                                       ("results/d/e", "file", b"")])
    limit = 4 * ENTRY_BYTES  # results (implied by its members), a, d, d/e
    assert unpack(tar, tmp_path / "fits", ["results"], limit=limit) == {"results"}
    with pytest.raises(OutputsTooLarge, match="bytes"):
        unpack(tar, tmp_path / "over", ["results"], limit=limit - 1)


def empty_files(path: Path, count: int, depth: int = 0) -> Path:
    """A tar of the directory ``results`` and ``count`` empty files in it, each ``depth``
    directories deeper of its own (those directories implied, not members), as a job can leave
    in the outputs archive's place."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        directory = tarfile.TarInfo("results")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for number in range(count):
            tar.addfile(tarfile.TarInfo(f"results/{number}/" + "d/" * depth + "f"
                                        if depth else f"results/{number}"))
    return path


def entries_under(root: Path) -> int:
    """Files and directories under ``root``."""
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


@pytest.mark.parametrize(("count", "depth", "why"), [
    (MAX_OUTPUT_ENTRIES, 0, "more than 10000 archive members"),
    # 201 members, 12,201 directories and files once their paths are made.
    (200, 59, "more than 10000 files and directories"),
])
def test_an_archive_past_the_entry_cap_stops_at_the_cap(tmp_path: Path, count: int,
                                                        depth: int, why: str) -> None:
    tar = empty_files(tmp_path / "a.tar", count, depth)
    with pytest.raises(OutputsTooLarge, match=why):
        unpack(tar, tmp_path / "out", ["results"], limit=1024**3)
    assert entries_under(tmp_path / "out") <= MAX_OUTPUT_ENTRIES


class ArchiveLeftByTheJob:
    """The cluster as collect_outputs sees it when the job left its own bytes where the
    archive goes (its ``tar`` failing to replace a read-only file)."""

    def __init__(self, archive: bytes) -> None:
        self.archive = archive

    async def run(self, argv: list[str], *, user: str | None, stdin: bytes | None = None,
                  timeout: float | None = None, check: bool = True) -> CommandResult:
        return CommandResult(list(argv), 2 if argv[0] == "tar" else 0, b"", "")

    async def fetch_to(self, path: str, local_path: Path, *, user: str, limit: int) -> int:
        assert len(self.archive) <= limit
        local_path.write_bytes(self.archive)
        return len(self.archive)


async def test_a_sparse_archive_left_by_the_job_lands_nothing(tmp_path: Path) -> None:
    limit = 1024 * 1024
    data = sparse_archive(tmp_path / "a.tar", "results/zeros.bin", 64 * limit).read_bytes()
    job = tmp_path / "job"
    job.mkdir()
    missing = await collect_outputs(cast(Transport, ArchiveLeftByTheJob(data)), "/work/job",
                                    "bob", ["results"], job, limit)
    assert missing == ["results (not written)"]
    assert not any(path.is_file() for path in job.rglob("*"))


async def test_a_damaged_archive_left_by_the_job_is_refused(tmp_path: Path) -> None:
    whole = archive(tmp_path / "a.tar", [("results/a", "file", b"a" * 1000),
                                         ("results/b", "file", b"b" * 600_000)]).read_bytes()
    job = tmp_path / "job"
    job.mkdir()
    missing = await collect_outputs(cast(Transport, ArchiveLeftByTheJob(whole[:300_000])),
                                    "/work/job", "bob", ["results"], job, 1024 * 1024)
    assert len(missing) == 1 and missing[0].startswith("results (refused: ")
    assert not (job / LOCAL_DIR).exists()  # nothing half-unpacked is served


def bad_sparse_map(path: Path) -> Path:
    """A pax archive whose sparse map is not numbers: tarfile raises ValueError reading it."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("results/x")
        info.size, info.pax_headers = 3, {"GNU.sparse.map": "x,y"}
        tar.addfile(info, io.BytesIO(b"abc"))
    return path


@pytest.mark.parametrize("made", ["bad sparse map", "a file where a directory was"])
async def test_an_archive_that_cannot_be_unpacked_refuses_the_outputs_not_the_job(
        tmp_path: Path, made: str) -> None:
    """Reviewer's find: these raised out of the collection, which then stayed ``collecting``
    until a restart, where the same happened again."""
    if made == "bad sparse map":
        data = bad_sparse_map(tmp_path / "a.tar").read_bytes()
    else:
        data = archive(tmp_path / "a.tar", [("results/d", "dir", b""),
                                            ("results/d", "file", b"x")]).read_bytes()
    job = tmp_path / "job"
    job.mkdir()
    missing = await collect_outputs(cast(Transport, ArchiveLeftByTheJob(data)), "/work/job",
                                    "bob", ["results"], job, 1024 * 1024)
    assert len(missing) == 1 and missing[0].startswith("results (refused: ")
    assert not (job / LOCAL_DIR).exists()


async def test_outputs_past_the_entry_cap_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    data = empty_files(tmp_path / "a.tar", MAX_OUTPUT_ENTRIES).read_bytes()  # one member past
    job = tmp_path / "job"
    job.mkdir()
    missing = await collect_outputs(cast(Transport, ArchiveLeftByTheJob(data)), "/work/job",
                                    "bob", ["results"], job, 1024**3)
    assert missing == ["results (refused: more than 10000 archive members)"]
    assert entries_under(job) == 0


async def test_the_event_loop_keeps_turning_while_outputs_unpack(tmp_path: Path) -> None:
    """The largest archive allowed (the cap's worth of entries) takes the gateway a while to
    unpack; meanwhile every other request still gets its turn."""
    data = empty_files(tmp_path / "a.tar", MAX_OUTPUT_ENTRIES - 1).read_bytes()
    cluster = ArchiveLeftByTheJob(data)
    job = tmp_path / "job"
    job.mkdir()
    async with loop_watch(every=0.005) as waits:
        missing = await collect_outputs(cast(Transport, cluster), "/work/job", "bob",
                                        ["results"], job, 1024**3)
    assert missing == [] and entries_under(job / LOCAL_DIR) == MAX_OUTPUT_ENTRIES
    # (0.92 s on the loop itself; under a loaded machine a thread still costs tenths)
    assert len(waits) > 1 and max(waits) < 0.5, f"the event loop stood still {max(waits):.2f} s"
