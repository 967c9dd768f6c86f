"""One holder at a time, and waiting owners take turns: a lock that is fair between users.

:class:`gateway.offload.Offload` works on one document at a time. With a first-come lock, a
user who queued many documents would make everyone else's wait behind all of them; with
:class:`Turns`, owners take turns (round robin) and an owner's own waiters keep their order, so
another user waits for at most one document of each owner ahead of them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class Turns:
    """A lock whose waiters are served by owner in turn (see the module's account)."""

    def __init__(self) -> None:
        self._held = False
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}  # owners in turn order

    @asynccontextmanager
    async def turn(self, owner: Hashable) -> AsyncIterator[None]:
        """Hold the lock for the block, once ``owner``'s turn has come. A waiter cancelled
        before its turn leaves the line; one cancelled as its turn came passes it on."""
        if self._held or self._waiting:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(owner, deque()).append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on()  # the turn had come: the next one's
                else:
                    self._leave(owner, waiter)
                raise
        self._held = True
        try:
            yield
        finally:
            if owner in self._waiting:  # the owner has had its turn: its other waiters go last
                self._waiting[owner] = self._waiting.pop(owner)
            self._pass_on()

    def _pass_on(self) -> None:
        """Give the lock to the first waiter of the next owner in turn; that owner goes to
        the back of the order. Free if nobody waits."""
        while self._waiting:
            owner = next(iter(self._waiting))
            waiters = self._waiting.pop(owner)
            waiter = waiters.popleft()
            if waiters:
                self._waiting[owner] = waiters
            if not waiter.done():
                waiter.set_result(None)
                return  # (held: the waiter holds it now)
        self._held = False

    def _leave(self, owner: Hashable, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(owner)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiting[owner]
