"""CPU-heavy work on documents users wrote, kept from stopping the gateway for everyone.

The gateway serves every user from one event loop. Parsing a big JSON document (an uploaded
notebook, an executed one to show as a page) is one long C call that holds the interpreter's
lock the whole time, so a thread does not help: a notebook of 16 MiB of ``[[],[],...]`` stopped
the loop for seconds. :class:`Offload` runs such work in a thread only while the document is
small (:data:`IN_PROCESS_UP_TO`: a stall of a tenth of a second at worst), and otherwise in a
worker process of its own; one document at a time either way, users taking turns,
with :data:`WORKER_MEMORY` of address space and :data:`WORK_TIMEOUT` seconds per document. A
document that runs it out of either kills the process (a new one starts for the next document)
and raises :class:`WorkFailed`; the gateway's own memory never holds what it would have built.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from .turns import Turns

T = TypeVar("T")
IN_PROCESS_UP_TO = 1 << 20  # bytes of a document worked on in a thread of the gateway itself
WORK_TIMEOUT = 120.0
WORKER_MEMORY = 2 << 30  # bytes of address space of the worker process


class WorkFailed(Exception):
    """The worker process ran out of time or memory on a document, or died."""


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class Offload:
    """Runs ``function(*args)`` off the event loop, in a process for big documents (see the
    module's account). ``close()`` stops the worker process, if one runs."""

    def __init__(self, *, timeout: float = WORK_TIMEOUT, memory: int = WORKER_MEMORY) -> None:
        self._timeout, self._memory = timeout, memory
        self._pool: ProcessPoolExecutor | None = None
        self._turns = Turns()

    async def run(self, size: int, function: Callable[..., T], *args: Any,
                  owner: Hashable = None) -> T:
        """``function(*args)`` for a document of ``size`` bytes when its turn comes (one
        document at a time, ``owner``s in turn: :mod:`gateway.turns`): in a thread up to
        :data:`IN_PROCESS_UP_TO`, else in the worker process (``function`` and ``args`` must
        pickle; so must what it returns or raises). What ``function`` raises is raised here;
        :class:`WorkFailed` if the process ran out of time or memory."""
        async with self._turns.turn(owner):
            if size <= IN_PROCESS_UP_TO:
                return await asyncio.to_thread(function, *args)
            try:
                work = asyncio.wrap_future(self._submit(function, *args))
                return await asyncio.wait_for(work, self._timeout)
            except (TimeoutError, MemoryError, BrokenProcessPool) as exc:
                self.close()
                raise WorkFailed(f"the document took more than {self._timeout:g} s or "
                                 f"{self._memory >> 20} MiB of memory to work on") from exc

    def _submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        """``function(*args)`` handed to the worker process, started if none runs; a worker
        that died while idle (the OOM killer, an admin) is replaced first."""
        if self._pool is not None:
            try:
                return self._pool.submit(function, *args)
            except BrokenProcessPool:
                self.close()
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_limit_memory, initargs=(self._memory,))
        return self._pool.submit(function, *args)

    def close(self) -> None:
        """Stop the worker process (killed if busy: its work is given up)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()  # (a busy worker would make shutdown wait for its work)
        pool.shutdown(wait=False, cancel_futures=True)
