"""Caches of what the store answered, emptied whenever the database may have changed.

The lab proxy asks "whose is this token" and "where is this ready lab" on every request; the
answers change rarely, but when they change (a token revoked, a user disabled, a lab ended) the
very next request must see it. So a :class:`StampedCache` holds its entries only as long as the
database's *change stamp* is the one they were read under:

- ``total_changes`` of the store's connection: every row this process wrote (a revocation
  through the API, the poller moving a job);
- ``PRAGMA data_version``: bumped by every commit of any *other* connection (the admin CLI in
  another process disabling a user).

Any write empties the cache, whatever it touched: a miss costs one query, and no write can be
forgotten by a list of "what to invalidate". Reading ``data_version`` costs about 3 µs, so a
:class:`ChangeStamp` reads it at most once per turn of the event loop (every request handled in
that turn sees the same commits of other processes, as if those came a moment later); this
process's own writes count at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
Stamp = tuple[int, int]
MAX_ENTRIES = 4096


class ChangeStamp:
    """The store connection's change stamp (shared by all its caches)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._version: int | None = None  # data_version read in this turn of the loop

    def __call__(self) -> Stamp:
        version = self._version
        if version is None:
            version = self._connection.execute("PRAGMA data_version").fetchone()[0]
            try:
                asyncio.get_running_loop().call_soon(self._forget)
                self._version = version
            except RuntimeError:  # no loop (the CLI): read it every time
                pass
        return self._connection.total_changes, version

    def _forget(self) -> None:
        self._version = None


class StampedCache(Generic[K, V]):
    """Values by key, valid while the database's change stamp stays what it was.

    Only found values are kept (a miss is asked again each time, so guessing keys fills
    nothing). A value may also carry a deadline (a session's expiry). When full, the cache is
    emptied rather than managed: it is refilled from the store at one query per key.
    """

    def __init__(self, stamp: ChangeStamp, max_entries: int = MAX_ENTRIES) -> None:
        self._stamp_now = stamp
        self._max = max_entries
        self._entries: dict[K, tuple[V, float | None]] = {}
        self._stamp: Stamp = (-1, -1)

    def _current(self) -> Stamp:
        """The stamp now; the entries are dropped if they were read under another one."""
        stamp = self._stamp_now()
        if stamp != self._stamp:
            self._entries.clear()
            self._stamp = stamp
        return stamp

    def _found(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, until = entry
        if until is not None and now >= until:
            del self._entries[key]
            return None
        return value

    def _keep(self, stamp: Stamp, key: K, value: V, until: float | None) -> None:
        # A write (here or elsewhere) after ``stamp`` was read may have made ``value`` stale.
        if stamp != self._stamp:
            return
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (value, until)

    def lookup(self, key: K, load: Callable[[], tuple[V, float | None] | None],
               now: float) -> V | None:
        """The value for ``key``: kept, or ``load()``'s ``(value, valid until or None)``
        (None: nothing found, not kept)."""
        stamp = self._current()
        value = self._found(key, now)
        if value is not None:
            return value
        loaded = load()
        if loaded is None:
            return None
        self._keep(stamp, key, *loaded)
        return loaded[0]

    async def lookup_async(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """:meth:`lookup` for a loader that awaits (and raises rather than answering None);
        a write while it awaited leaves its answer unkept."""
        stamp = self._current()
        value = self._found(key, 0.0)
        if value is not None:
            return value
        loaded = await load()
        self._keep(stamp, key, loaded, None)
        return loaded

    def peek(self, key: K) -> V | None:
        """The value kept for ``key`` while the stamp is unchanged, else None (nothing loaded)."""
        self._current()
        return self._found(key, 0.0)

    def discard(self, key: K) -> None:
        """Forget ``key`` (its value turned out wrong, e.g. the address no longer answers)."""
        self._entries.pop(key, None)
