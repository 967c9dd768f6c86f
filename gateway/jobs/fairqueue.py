"""A work queue that a pool of workers shares fairly between the owners of the work.

The submitters (a few tasks, :mod:`.submitter`) take the jobs to bring into Slurm from here.
Each submission runs commands as the job's unix user, and that user decides how long they take:
a ``sleep`` in the ``~/.bashrc`` an SSH command starts in, a slow FUSE mount of their own under
the work directory. With one first-in-first-out queue, one user's slow jobs could hold every
submitter and make everyone else's wait behind all of them (a red-team's finding). Here owners
take turns (round robin), and an owner never has more than ``per_owner`` ids being worked on at
once, so with more workers than that every other owner always finds one free. Within one owner,
ids keep their order. The webhook deliverer (:mod:`.webhooks`) shares its workers the same way.
"""

from __future__ import annotations

import asyncio
from collections import deque


class FairQueue:
    """Ids of work, each with its owner; :meth:`get` waits for the next one due, and the
    worker calls :meth:`done` with its owner when it has finished with it."""

    def __init__(self, per_owner: int) -> None:
        self._per_owner = per_owner
        self._waiting: dict[str, deque[str]] = {}  # owner -> ids; owners in turn order
        self._working: dict[str, int] = {}  # owner -> ids taken and not yet done
        self._wakers: list[asyncio.Future[None]] = []

    def put_nowait(self, owner: str, item: str) -> None:
        """Queue ``item`` of ``owner``'s, after that owner's earlier ones."""
        self._waiting.setdefault(owner, deque()).append(item)
        self._wake()

    async def get(self) -> tuple[str, str]:
        """``(owner, item)``: the first item of the first owner in turn with fewer than
        ``per_owner`` items being worked on; that owner's turn then goes to the back."""
        while True:
            found = self._take()
            if found is not None:
                return found
            waker = asyncio.get_running_loop().create_future()
            self._wakers.append(waker)
            try:
                await waker
            finally:
                if waker in self._wakers:  # cancelled while waiting
                    self._wakers.remove(waker)

    def done(self, owner: str) -> None:
        """One of ``owner``'s items taken by :meth:`get` is finished with (once per get)."""
        left = self._working.get(owner, 0) - 1
        if left > 0:
            self._working[owner] = left
        else:
            self._working.pop(owner, None)
        self._wake()

    def __len__(self) -> int:
        """Items waiting (not those being worked on)."""
        return sum(len(items) for items in self._waiting.values())

    def _take(self) -> tuple[str, str] | None:
        for owner, items in self._waiting.items():
            if self._working.get(owner, 0) < self._per_owner:
                item = items.popleft()
                del self._waiting[owner]
                if items:
                    self._waiting[owner] = items  # back of the turn order
                self._working[owner] = self._working.get(owner, 0) + 1
                return owner, item
        return None

    def _wake(self) -> None:
        """Let every waiting :meth:`get` look again (a few workers: no need to pick one)."""
        wakers, self._wakers = self._wakers, []
        for waker in wakers:
            if not waker.done():
                waker.set_result(None)
