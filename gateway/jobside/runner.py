"""Runs one notebook with papermill inside a Slurm job and leaves an exit record.

Copied by the gateway into the job's directory and run by the job-side Python (which has
papermill). It depends on nothing of the gateway's and never contacts it. The exit record
(``exit.json``, written atomically) tells the gateway what happened even after Slurm has
forgotten the job:

    {"status": "started"}   (as soon as it runs and papermill imports; replaced at the end)
    {"status": "ok"}
    {"status": "notebook_error", "ename": ..., "evalue": ..., "cell": N}
    {"status": "error", "ename": ..., "evalue": ...}

While it runs, what each cell prints (stdout and stderr) goes to this process's own output,
the job's log, with a line ``hpcgw: cell N/M`` before each code cell; a failing cell's
traceback follows (colours stripped). ``--progress`` (``progress.json``, written atomically)
holds ``{"done": N, "total": M}``: code cells finished out of all code cells of the notebook.

Exit status: 0 ok, 3 the notebook raised, 4 anything else (kernel died, bad input, ...). A
Python without papermill (an image that lacks it) writes no record at all: the batch script
then records a launch error, and this script's last line says what was missing.

It may run inside a container (``gateway/runtimes/``), started in the job's directory. When
``$HOME`` is not a directory there (a home the image does not reach), ``HOME`` becomes the job's
directory, so Jupyter's files have somewhere to go.

The kernel talks to this runner over IPC (unix domain) sockets, never TCP: no port is picked
free and bound later, so runs starting together on one node never collide, and no other user
on the node can reach the kernel. Its connection file (``kernel.json``) and its sockets
(``kernel-ipc-<N>``) live in the job's private runtime directory, ``--runtime-dir`` (the batch
script makes it with mode 0700). A unix socket's path holds at most 107 bytes: when the runtime
directory's path is too long for that, the sockets are named through a short alias instead, a
symlink to the same directory inside a private 0700 directory that ``mkdtemp`` makes under
``/tmp``, removed when the run ends. The sockets themselves always stay in the runtime directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# sizeof(sockaddr_un.sun_path) - 1 on Linux: the longest path a unix socket can be bound at.
SOCKET_PATH_MAX = 107
# jupyter_client names a kernel's sockets "<ip>-<N>" with N from 1 up (five channels, skipping
# names that exist): room for N up to 999, should stale sockets of an earlier attempt be there.
SOCKET_SUFFIX_MAX = len("-999")
SOCKET_STEM = "kernel-ipc"
# The colour codes of an IPython traceback, stripped before it goes to the log.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def write_record(path: str, record: dict[str, Any]) -> None:
    partial = path + ".part"
    with open(partial, "w") as handle:
        json.dump(record, handle)
    os.replace(partial, path)


@contextmanager
def socket_prefix(runtime_dir: str) -> Iterator[str]:
    """The kernel's ``ip`` (the path its sockets are named after, ``<ip>-<N>``) for sockets in
    ``runtime_dir``: ``runtime_dir/kernel-ipc``, or the same through a short alias when that
    would not fit in a socket path (see the module docstring); the alias goes on exit."""
    runtime_dir = os.path.abspath(runtime_dir)
    prefix = os.path.join(runtime_dir, SOCKET_STEM)
    if len(os.fsencode(prefix)) + SOCKET_SUFFIX_MAX <= SOCKET_PATH_MAX:
        yield prefix
        return
    alias_dir = tempfile.mkdtemp(prefix="hpcgw-", dir="/tmp")  # a fresh name, mode 0700
    try:
        alias = os.path.join(alias_dir, "r")
        os.symlink(runtime_dir, alias)
        print(f"hpcgw: {runtime_dir} is too long to name unix sockets in; the kernel's "
              f"sockets are reached through {alias}", flush=True)
        yield os.path.join(alias, SOCKET_STEM)
    finally:
        shutil.rmtree(alias_dir, ignore_errors=True)


def ipc_kernel_manager(runtime_dir: str, prefix: str) -> type[Any]:
    """A jupyter_client kernel manager class whose kernels use the ``ipc`` transport, with the
    connection file ``runtime_dir/kernel.json`` and sockets ``<prefix>-<N>``."""
    from jupyter_client.manager import AsyncKernelManager

    connection_file = os.path.join(os.path.abspath(runtime_dir), "kernel.json")

    class IpcKernelManager(AsyncKernelManager):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.connection_file = connection_file
            self.ip = prefix

    return IpcKernelManager


def progress_engine(progress_path: str) -> type[Any]:
    """papermill's nbclient engine, reporting as it goes: ``hpcgw: cell N/M`` on stdout before
    each code cell and ``{"done": N, "total": M}`` in ``progress_path`` after each (a failed
    cell is not done)."""
    from papermill.engines import NBClientEngine

    class ProgressEngine(NBClientEngine):  # type: ignore[misc]
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
            code = [index for index, cell in enumerate(nb_man.nb.cells)
                    if cell.cell_type == "code"]
            done = 0
            write_record(progress_path, {"done": done, "total": len(code)})
            started, completed = nb_man.cell_start, nb_man.cell_complete

            def cell_start(cell: Any, cell_index: int | None = None, **more: Any) -> None:
                if cell_index in code:
                    print(f"hpcgw: cell {code.index(cell_index) + 1}/{len(code)}", flush=True)
                started(cell, cell_index, **more)

            def cell_complete(cell: Any, cell_index: int | None = None, **more: Any) -> None:
                nonlocal done
                completed(cell, cell_index, **more)
                if cell_index in code and cell.metadata.papermill.get("status") != "failed":
                    done += 1
                    write_record(progress_path, {"done": done, "total": len(code)})

            nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    return ProgressEngine


def execute(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    import papermill
    from papermill.engines import papermill_engines
    from papermill.exceptions import PapermillExecutionError

    with open(args.parameters) as handle:
        parameters = json.load(handle)
    os.makedirs(args.runtime_dir, mode=0o700, exist_ok=True)
    papermill_engines.register("hpcgw", progress_engine(args.progress))
    try:
        with socket_prefix(args.runtime_dir) as prefix:
            papermill.execute_notebook(
                args.input,
                args.output,
                parameters=parameters,
                kernel_name=args.kernel,
                engine_name="hpcgw",
                progress_bar=False,
                stdout_file=sys.stdout,
                stderr_file=sys.stderr,
                request_save_on_cell_execute=True,
                kernel_manager_class=ipc_kernel_manager(args.runtime_dir, prefix),
            )
    except PapermillExecutionError as exc:
        print(f"hpcgw: the notebook raised in cell [{exc.exec_count}]:", flush=True)
        print(ANSI_ESCAPE.sub("", "\n".join(exc.traceback)), flush=True)
        return 3, {"status": "notebook_error", "ename": exc.ename, "evalue": exc.evalue,
                   "cell": exc.exec_count}
    return 0, {"status": "ok"}


def usable_home() -> None:
    """Point ``HOME`` at the working directory when it names no directory here (shared with
    lab.py: each launcher is copied into the job's directory on its own)."""
    home = os.environ.get("HOME", "")
    if not os.path.isdir(home):
        print(f"hpcgw: HOME ({home or 'unset'}) is not a directory here; using {os.getcwd()}",
              flush=True)
        os.environ["HOME"] = os.getcwd()


def main() -> int:
    parser = argparse.ArgumentParser()
    for option in ("--input", "--output", "--parameters", "--kernel", "--exit-record"):
        parser.add_argument(option, required=True)
    parser.add_argument("--runtime-dir", default="runtime",
                        help="the job's private (0700) directory for the kernel's files")
    parser.add_argument("--progress", default="progress.json",
                        help="where the code cells done / total are kept while it runs")
    args = parser.parse_args()
    try:
        import papermill  # noqa: F401 - the one thing this Python must have
    except ImportError as exc:
        print(f"hpcgw: papermill cannot be imported by {sys.executable}: {exc}", flush=True)
        return 4
    usable_home()
    write_record(args.exit_record, {"status": "started"})
    try:
        code, record = execute(args)
    except Exception as exc:  # the record must say what happened, whatever it was
        traceback.print_exc()
        code, record = 4, {"status": "error", "ename": type(exc).__name__, "evalue": str(exc)}
    write_record(args.exit_record, record)
    print(f"hpcgw: notebook run ended: {record['status']}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
