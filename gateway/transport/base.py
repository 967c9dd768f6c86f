"""The transport contract every scheduler backend and connector goes through.

A transport runs a command as a given unix user on the cluster's login side and reads and writes
files there. The local transport does it with processes on this machine (through an admin-set
prefix such as ``sudo -n -u {unix_user} --``); the SSH transport over a pooled connection per
(cluster, unix user). Backends never know which one they have.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from ..errors import CommandFailed, CommandTimeout


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: str
    # The command wrote more to stdout than the caller's ``stdout_limit`` (and was killed).
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


class RemoteFileMissing(CommandFailed):
    """The file asked for does not exist on the cluster (yet), or is a dangling symlink."""

    status = 404
    type_slug = "remote-file-missing"
    title = "File not found on the cluster"


class RemoteFileRefused(CommandFailed):
    """A file on the cluster the gateway will not read: see the subclasses. ``detail`` names
    the file (and the cap); ``path`` and ``limit`` (None where no cap was the cause) carry them
    as data. Retrying never helps: the file is what its owner made it."""

    status = 502
    type_slug = "remote-file-refused"
    title = "File on the cluster refused"

    def __init__(self, argv: Sequence[str], path: str, why: str,
                 limit: int | None = None) -> None:
        super().__init__(argv, None, why)
        self.path = path
        self.limit = limit
        self.detail = f"{path}: {why}"
        self.args = (self.detail,)


class RemoteFileTooLarge(RemoteFileRefused):
    """The file holds more than the read's cap (``limit`` bytes)."""

    type_slug = "remote-file-too-large"
    title = "File on the cluster too large"

    def __init__(self, argv: Sequence[str], path: str, limit: int) -> None:
        super().__init__(argv, path, f"larger than the cap of {format_size(limit)}", limit)


class NotARegularFile(RemoteFileRefused):
    """The path (after following symlinks) is a directory, device, FIFO or socket."""

    type_slug = "remote-file-not-regular"
    title = "Not a regular file on the cluster"

    def __init__(self, argv: Sequence[str], path: str) -> None:
        super().__init__(argv, path, "not a regular file (a directory, device, FIFO or socket, "
                                     "or a symlink to one); refused")


class CommandOutputTooLarge(CommandFailed):
    """A command printed more to stdout than the gateway keeps of it (``limit`` bytes): it was
    stopped there and nothing it printed is used. Over SSH every command starts in the user's
    login shell, whose rc files may print anything; retrying does not help while they do."""

    type_slug = "command-output-too-large"
    title = "Cluster command printed too much"

    def __init__(self, argv: Sequence[str], limit: int) -> None:
        super().__init__(argv, -1, f"printed more than the cap of {format_size(limit)} to "
                                   "stdout; stopped")
        self.limit = limit
        self.detail = f"{argv[0] if argv else '?'} {self.stderr}"
        self.args = (self.detail,)


def format_size(size: int) -> str:
    """``size`` bytes for people: ``64 MiB (67108864 bytes)``, ``7 bytes``."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.4g} {unit} ({size} bytes)"
    return f"{size} bytes"


class Transport(Protocol):
    """Runs commands and moves files on one cluster. All calls take explicit timeouts."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run ``argv`` as unix user ``user`` (None: the gateway's own identity on the cluster).

        Same contract as :func:`gateway.transport.process.run_command`. A transport whose
        commands start in a shell the user controls (SSH: the login shell and its rc files)
        caps what it keeps: stdout past its cap raises :class:`CommandOutputTooLarge` (with or
        without ``check``), and only the tail of stderr is kept.
        """
        ...

    async def put_files(self, directory: str, files: Mapping[str, bytes], *, user: str) -> None:
        """Create ``directory`` (and parents) as ``user``, the leaf mode 0700, and write each
        of ``files`` (plain names, no slashes) into it with mode 0600, replacing what was there.
        """
        ...

    async def read_file(self, path: str, *, user: str, limit: int, tail: bool = False,
                        offset: int | None = None) -> bytes:
        """Read ``path`` as ``user``, at most ``limit`` bytes of it (``limit`` >= 0).

        Without ``tail``: the whole file if it holds at most ``limit`` bytes, else
        :class:`RemoteFileTooLarge`. With ``tail``: its last ``limit`` bytes (all of a smaller
        file). With ``offset`` (and no ``tail``): a window, the bytes from ``offset`` on, at
        most ``limit`` of them (empty at or past the end; never too large). Symlinks are
        followed, but what they lead to must be a regular file, else
        :class:`NotARegularFile` (a FIFO, ``/dev/zero``, a directory). A file swapped after the
        check is still refused or cut at the cap: the gateway never holds more than ``limit``
        bytes of it, whatever the cluster sends. Raises :class:`RemoteFileMissing` if it does
        not exist (a dangling symlink included).
        """
        ...

    async def fetch_to(self, path: str, local_path: str | os.PathLike[str], *, user: str,
                       limit: int) -> int:
        """Copy ``path`` (read as ``user``) into the local file ``local_path`` (created with mode
        0600, or truncated) and return its size. Streams: memory use does not grow with the
        file. The same refusals as :meth:`read_file` without ``tail``: more than ``limit`` bytes
        raises :class:`RemoteFileTooLarge` (at most ``limit`` + 1 bytes reach the disk first).
        Raises :class:`RemoteFileMissing` if it does not exist; on any failure ``local_path``
        may hold a partial copy (write to a temporary name, then rename).
        """
        ...

    async def forward(self, host: str, port: int, *, user: str) -> tuple[str, int]:
        """Where ``host:port``, as the cluster's side sees it, answers from this machine, for
        connections opened as ``user`` (a lab's server on its node, say). Local: the address
        itself. Over SSH: a local port forward on 127.0.0.1, kept while it is in use and
        re-opened when the user's connection has changed. Raises ClusterUnavailable when no
        forward can be opened."""
        ...

    def retain_forwards(self, keep: set[tuple[str, str, int]]) -> None:
        """Close every forward whose ``(user, host, port)`` is not in ``keep``."""
        ...

    async def close(self) -> None:
        """Release connections and forwards; further calls may reconnect."""
        ...


class CommandTransport:
    """File transfer built on :meth:`run` alone, so every transport that can run a command moves
    files the same way: a whole job directory is one ``tar`` reading from stdin, a file is one
    capped read (:func:`read_argv`). Subclasses implement ``run`` and ``close``, and
    ``read_file`` and ``fetch_to`` with a runner that counts (and streams) the output."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        raise NotImplementedError

    async def put_files(self, directory: str, files: Mapping[str, bytes], *, user: str) -> None:
        archive = tar_archive(files)
        await self.run(mkdir_argv(directory), user=user)
        await self.run(untar_argv(directory), user=user, stdin=archive)

    async def read_file(self, path: str, *, user: str, limit: int, tail: bool = False,
                        offset: int | None = None) -> bytes:
        raise NotImplementedError  # needs a runner that counts the output: see the subclasses

    async def fetch_to(self, path: str, local_path: str | os.PathLike[str], *, user: str,
                       limit: int) -> int:
        raise NotImplementedError  # needs a streaming command runner: see the subclasses

    async def forward(self, host: str, port: int, *, user: str) -> tuple[str, int]:
        return host, port  # the gateway runs inside the cluster's network

    def retain_forwards(self, keep: set[tuple[str, str, int]]) -> None:
        return None

    async def close(self) -> None:
        return None


def mkdir_argv(directory: str) -> list[str]:
    """Creates ``directory`` and its parents; the leaf gets mode 0700."""
    return ["mkdir", "-p", "-m", "700", "--", directory]


def untar_argv(directory: str) -> list[str]:
    """Extracts a tar archive read from stdin into ``directory``, owned by whoever runs it.
    Reads 1 MiB records (``-b 2048``, reassembled from short pipe reads by ``-B``): GNU tar's
    default 10 KiB records cost it about twice the system CPU per GiB."""
    return ["tar", "-x", "-m", "--no-same-owner", "--no-overwrite-dir", "-b", "2048", "-B",
            "-C", directory, "-f", "-"]


# The one remote command behind every file read, run by ``sh -c`` with the mode (``head``,
# ``tail`` or ``from``), the byte count, the path and (``from``) the first byte's position,
# counted from 1, as positional arguments: nothing a caller passes is ever part of the script's
# text. The path must lead to a regular file both before it is opened (a FIFO would block the
# open) and once it is open (stdin: a file swapped in between is refused too); then at most COUNT
# bytes leave: ``head -c`` for a whole read (the cap plus one, so that a file over the cap shows
# as one), ``tail -c`` for a tail read (it seeks on a regular file), both for a window.
READ_SCRIPT = """\
[ -e "$3" ] || { echo "hpcgw-read: no such file" >&2; exit 3; }
[ -f "$3" ] || { echo "hpcgw-read: not a regular file" >&2; exit 4; }
exec <"$3"
[ -f /dev/stdin ] || { echo "hpcgw-read: not a regular file" >&2; exit 4; }
if [ "$1" = tail ]; then exec tail -c "$2"; fi
if [ "$1" = from ]; then tail -c "+$4" | head -c "$2"; exit; fi
exec head -c "$2"
"""
READ_MISSING, READ_NOT_REGULAR = 3, 4


def read_argv(path: str, limit: int, tail: bool, offset: int | None = None) -> list[str]:
    """The command that writes at most ``limit`` + 1 bytes of ``path`` to stdout (its last
    ``limit`` bytes with ``tail``; at most ``limit`` bytes from ``offset`` with one), refusing
    what is not a regular file (:data:`READ_SCRIPT`)."""
    if limit < 0:
        raise ValueError(f"a read's limit must be >= 0, not {limit}")
    if offset is not None:
        if offset < 0 or tail:
            raise ValueError(f"a window read needs an offset >= 0 and no tail, not {offset}")
        return ["sh", "-c", READ_SCRIPT, "hpcgw-read", "from", str(limit), path, str(offset + 1)]
    mode, count = ("tail", limit) if tail else ("head", limit + 1)
    return ["sh", "-c", READ_SCRIPT, "hpcgw-read", mode, str(count), path]


def read_error(exc: CommandFailed, path: str) -> CommandFailed:
    """``exc`` of a read command of ``path``, as :class:`RemoteFileMissing` or
    :class:`NotARegularFile` where the read script said so (others unchanged)."""
    if isinstance(exc, RemoteFileRefused | RemoteFileMissing | CommandTimeout):
        return exc
    if exc.returncode == READ_MISSING or "No such file" in exc.stderr:
        return RemoteFileMissing(exc.argv, exc.returncode, f"{path}: no such file")
    if exc.returncode == READ_NOT_REGULAR:
        return NotARegularFile(exc.argv, path)
    return exc


def capped_sink(sink: Callable[[bytes], object], argv: Sequence[str], path: str,
                limit: int) -> Callable[[bytes], None]:
    """``sink`` behind a counter: a chunk that would take the total past ``limit`` bytes raises
    :class:`RemoteFileTooLarge` instead of reaching ``sink`` (the transfer then stops)."""
    received = 0

    def write(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)
        if received > limit:
            raise RemoteFileTooLarge(argv, path, limit)
        sink(chunk)

    return write


def open_private(local_path: str | os.PathLike[str]) -> BinaryIO:
    """``local_path`` opened for writing, truncated, created with mode 0600."""
    fd = os.open(local_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb")


TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tarfile's (and GNU tar's) default record size


def tar_archive(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar of plain files, each mode 0600 (see :func:`tar_pieces`)."""
    return b"".join(tar_pieces(files))


def tar_pieces(files: Mapping[str, bytes], chunk: int = 1 << 20) -> list[bytes | memoryview]:
    """The same bytes as ``tarfile`` writes for ``files`` (plain names, mode 0600, PAX format),
    as a list of pieces: headers, views of at most ``chunk`` bytes into each file's data (no
    copy), padding, the end-of-archive blocks. Raises ValueError for a name that is not a plain
    file name before anything is produced.
    """
    pieces: list[bytes | memoryview] = []
    written = 0
    for name, data in files.items():
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o600
        header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        view = memoryview(data)
        pieces += [header, *(view[at:at + chunk] for at in range(0, len(view), chunk))]
        padding = -len(data) % TAR_BLOCK
        pieces.append(bytes(padding))
        written += len(header) + len(data) + padding
    end = 2 * TAR_BLOCK
    pieces.append(bytes(end + -(written + end) % TAR_RECORD))
    return pieces
