"""Open lab WebSockets and streaming answers, on either path, checked again while they last.

A WebSocket stays open only while what admitted it still holds: its credential names its owner
and its lab is still the owner's ready lab (:func:`.fastpath.still_admitted`: a revoked token,
a disabled user or an ended lab ends it). Both paths register each WebSocket they open
here, the fast path's byte pipes (:mod:`.pipe`) and aiohttp's frame relays (:mod:`.relay_ws`);
one task asks every check each :data:`CHECK_INTERVAL` s while any is open (the lookups are
cached until the store changes, so a check is cheap) and ends with 1008 (policy) each that no
longer holds. When the gateway stops, every one ends with 1001 (going away: a browser's lab
reconnects).

An HTTP answer that is still streaming (a long download, an event stream) is registered the
same way (``websocket=False``: not counted as a WebSocket), and cut (its ``end``, whatever the
code) once it is no longer admitted: a credential revoked mid-answer stops it within about a
second, as it stops a WebSocket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Gauge

from .wsframes import GOING_AWAY, POLICY_VIOLATION

CHECK_INTERVAL = 1.0
log = logging.getLogger(__name__)

End = Callable[[int], None]  # ends a WebSocket, both sides, with this close code
# What aiohttp's path is handed to register a WebSocket or an answer it relays, given how to
# end it: it returns how to say that it is gone.
Watch = Callable[[End], Callable[[], None]]


@dataclass(eq=False, slots=True)
class Watched:
    """One open WebSocket: is it still admitted, how to end it, what to do once it is gone."""

    admitted: Callable[[], Awaitable[bool]]
    end: End
    on_gone: Callable[[], None] | None
    websocket: bool = True  # counted by the gauge (False: a streaming HTTP answer)
    ended: bool = False  # end() was called: not checked or ended again


class OpenWebSockets:
    """The open WebSockets (and streaming answers); ``gauge`` counts the WebSockets."""

    def __init__(self, gauge: Gauge, every: float = CHECK_INTERVAL) -> None:
        self._gauge, self._every = gauge, every
        self._open: set[Watched] = set()
        self._checker: asyncio.Task[None] | None = None
        self._going_away = False

    def __len__(self) -> int:
        return len(self._open)

    def watch(self, admitted: Callable[[], Awaitable[bool]], end: End,
              on_gone: Callable[[], None] | None = None, *, websocket: bool = True) -> Watched:
        """Register an open WebSocket (``websocket=False``: a streaming answer) until
        :meth:`gone`: ``end(code)`` is called at most once, when ``admitted()`` answers False
        (1008) or the gateway stops (1001, at once if it already has); ``on_gone()`` exactly
        once, at :meth:`gone` (after ``end``, if any: the owner calls :meth:`gone` once its
        connections are closed)."""
        watched = Watched(admitted, end, on_gone, websocket)
        self._open.add(watched)
        if websocket:
            self._gauge.inc()
        if self._going_away:
            asyncio.get_running_loop().call_soon(self._end, watched, GOING_AWAY)
        elif self._checker is None or self._checker.done():
            self._checker = asyncio.get_running_loop().create_task(self._check())
        return watched

    def gone(self, watched: Watched) -> None:
        """The WebSocket ended (either side closed, or it was ended): no longer watched.
        Calling it again, or after an end from here, does nothing."""
        if watched in self._open:
            self._open.discard(watched)
            if watched.websocket:
                self._gauge.dec()
            if watched.on_gone is not None:
                watched.on_gone()

    def _end(self, watched: Watched, code: int) -> None:
        if watched in self._open and not watched.ended:
            watched.ended = True
            watched.end(code)

    async def _check(self) -> None:
        """While any is open: end each whose check answers False; a check that fails (the
        database busy, say) is logged and asked again next time."""
        while self._open:
            await asyncio.sleep(self._every)
            for watched in [watched for watched in self._open if not watched.ended]:
                try:
                    admitted = await watched.admitted()
                except Exception:
                    log.exception("could not check an open lab WebSocket again")
                    continue
                if not admitted:
                    self._end(watched, POLICY_VIOLATION)

    def going_away(self) -> None:
        """The gateway stops: end every open WebSocket, and any opened from now on."""
        self._going_away = True
        if self._checker is not None:
            self._checker.cancel()
        for watched in list(self._open):
            self._end(watched, GOING_AWAY)
