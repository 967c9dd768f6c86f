"""Idle lab connections, kept for the proxy's fast path.

:class:`UpstreamPool` keeps idle connections per lab (at most :data:`MAX_IDLE` each and
:data:`MAX_IDLE_TOTAL` over all labs, the oldest closed first; closed after
:data:`IDLE_TIMEOUT` s unused) and opens proven ones when none is idle. A connection
goes back to the pool only after a complete response that the server did not mark
``Connection: close``, to a request that was sent whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from functools import partial

from .identity import LabIdentity, open_proven
from .splice import MAX_SPLICES, SpliceBudget
from .upstream import UpstreamConnection

MAX_IDLE = 64
MAX_IDLE_TOTAL = 1024  # the gateway's descriptors held by idle lab connections, at most
IDLE_TIMEOUT = 30.0


class UpstreamPool:
    """Idle proven connections, per lab and per what was proven there."""

    def __init__(self, max_idle_total: int = MAX_IDLE_TOTAL, max_splices: int = MAX_SPLICES
                 ) -> None:
        # Per lab, oldest first: the next request takes the newest.
        self._idle: dict[tuple[LabIdentity, str, int], list[UpstreamConnection]] = {}
        self._total = 0  # connections in all of those lists
        self._max_total = max_idle_total
        self._reaper: asyncio.TimerHandle | None = None
        self.splices = SpliceBudget(max_splices)  # shared by all its connections

    async def acquire(self, identity: LabIdentity, host: str, port: int
                      ) -> tuple[UpstreamConnection, bool]:
        """A connection to the lab, and whether it was reused (else freshly proven). Raises
        :class:`.identity.LabNotProven`, OSError or TimeoutError."""
        idle = self.take(identity, host, port)
        if idle is not None:
            return idle, True
        sock = await open_proven(identity, host, port)
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                partial(UpstreamConnection, self.splices), sock=sock)
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        return connection, False

    def take(self, identity: LabIdentity, host: str, port: int) -> UpstreamConnection | None:
        """An idle connection to the lab, if one is open."""
        idle = self._idle.get((identity, host, port))
        while idle:
            connection = idle.pop()
            self._total -= 1
            if not connection.closed:
                return connection
        return None

    def release(self, identity: LabIdentity, host: str, port: int,
                connection: UpstreamConnection) -> None:
        """Keep ``connection`` for the next request to the same lab (or close it if the pool
        for that lab is full)."""
        idle = self._idle.setdefault((identity, host, port), [])
        if not connection.idle_clean or len(idle) >= MAX_IDLE:
            connection.close()  # bytes of the last request still queued: not reusable
            return
        assert connection.transport is not None
        if not connection.transport.is_reading():  # paused while its client was slow
            connection.transport.resume_reading()
        if self._total >= self._max_total:
            self._close_oldest()
        connection.idle_since = time.monotonic()
        idle.append(connection)
        self._total += 1
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._reap)

    def _close_oldest(self) -> None:
        """Make room under MAX_IDLE_TOTAL: close the connection idle the longest, any lab's."""
        idle = min((idle for idle in self._idle.values() if idle),
                   key=lambda idle: idle[0].idle_since)
        idle.pop(0).close()
        self._total -= 1

    def _reap(self) -> None:
        self._reaper = None
        horizon = time.monotonic() - IDLE_TIMEOUT
        for key, idle in list(self._idle.items()):
            for connection in [c for c in idle if c.idle_since <= horizon or c.closed]:
                idle.remove(connection)
                self._total -= 1
                connection.close()
            if not idle:
                del self._idle[key]
        if self._idle:
            self._reaper = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._reap)

    def retain(self, job_prefixes: set[str]) -> None:
        """Close the idle connections of labs whose prefix is not in ``job_prefixes``."""
        for key in [k for k in self._idle if k[0].prefix not in job_prefixes]:
            for connection in self._idle.pop(key):
                self._total -= 1
                connection.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        self._total = 0
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
