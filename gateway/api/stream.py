"""The job event stream: ``GET /api/v1/jobs/stream``, server-sent events (text/event-stream).

One ``event: job`` per state change of the caller's jobs (an admin's ``?all=1``: every user's
jobs), its ``data`` the job as ``GET /api/v1/jobs/{id}`` shows it (an admin's stream adds the
owner as ``user``), its ``id`` the events row of the change. A client that reconnects sends
``Last-Event-ID`` (EventSource does by itself) and gets every change after that row; a new
stream starts after ``?after=N`` (a page that just listed the jobs passes the watermark it
read first), else with the next change. Comment lines (``: keep-alive``) every
``heartbeat`` seconds keep proxies from closing an idle stream.

One watcher task per application looks at the newest events row every ``interval`` seconds
and wakes the streams when it moved; each stream then reads only its own changes. A user may
hold at most ``per_user`` streams at once (429 beyond). On shutdown every stream ends cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from ..errors import FieldError, TooManyRequests, ValidationFailed
from ..jobs.oversight import admin_view
from ..jobs.service import JobService
from ..jobs.views import job_view
from ..users import User
from .keys import SERVICE, current_user
from .middleware import caller_now
from .models import AdminJob, Job

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
MAX_EVENT_ID = 2**53
BATCH = 200


class JobStreams:
    """The open streams of one application: the per-user cap, the watcher, shutdown."""

    def __init__(self, per_user: int = 8, interval: float = 0.5, heartbeat: float = 15.0,
                 lifetime: float = 3600.0) -> None:
        self.per_user, self.interval, self.heartbeat = per_user, interval, heartbeat
        self.lifetime = lifetime  # a stream ends after this long; EventSource reconnects
        self.open: Counter[int] = Counter()  # user id -> streams open
        self.closing = asyncio.Event()
        self._tick = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    def changed(self) -> asyncio.Event:
        """An event set at the next change seen (a fresh one after each change)."""
        return self._tick

    def watch(self, service: JobService) -> None:
        """Start the watcher once (it needs the service, which exists only after startup)."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(service), name="job-streams")

    async def _watch(self, service: JobService) -> None:
        seen = service.event_watermark()
        while not self.closing.is_set():
            await asyncio.sleep(self.interval)
            try:
                newest = service.event_watermark()
            except Exception:  # a busy database: try again next time
                log.exception("job streams: the newest event could not be read")
                continue
            if newest != seen:
                seen, tick, self._tick = newest, self._tick, asyncio.Event()
                tick.set()

    async def close(self) -> None:
        """End every stream (they return at their next wake-up) and the watcher."""
        self.closing.set()
        self._tick.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher


STREAMS = web.AppKey("job_streams", JobStreams)


def _event_id(raw: str | None, field: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) >= MAX_EVENT_ID:
        raise ValidationFailed([FieldError(field, "an event id: a whole number >= 0")])
    return int(raw)


def _message(event_id: int, job: dict[str, Any], everyone: bool) -> bytes:
    """One SSE message; the JSON has no newline, so it is one ``data:`` line."""
    model = (AdminJob.model_validate(admin_view(job)) if everyone
             else Job.model_validate(job_view(job)))
    data = json.dumps(model.model_dump(mode="json"), separators=(",", ":"))
    return f"id: {event_id}\nevent: job\ndata: {data}\n\n".encode()


@routes.get("/api/v1/jobs/stream")
async def job_stream(request: web.Request) -> web.StreamResponse:
    """The caller's job state changes as server-sent events (see the module's text).

    422 for a ``Last-Event-ID`` or ``after`` that is not an event id, or ``all`` other than
    ``1``; 403 for ``?all=1`` from a user who is not an admin; 429 at the per-user cap.
    """
    service, streams, user = request.app[SERVICE], request.app[STREAMS], current_user(request)
    everyone = request.query.get("all") is not None
    if everyone and request.query["all"] != "1":
        raise ValidationFailed([FieldError("all", "1, or leave it out")])
    if everyone:
        service.require_admin(user)
    after = _event_id(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    if after is None:
        after = _event_id(request.query.get("after"), "after")
    if streams.open[user.id] >= streams.per_user:
        raise TooManyRequests(f"at most {streams.per_user} job streams at once per user",
                              limit="job_streams", value=streams.per_user, retry_after=5)
    if after is None:
        after = service.event_watermark()
    streams.watch(service)
    streams.open[user.id] += 1
    try:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")

        def allowed() -> User | None:
            """The caller while the credential still names them (and, for every user's jobs,
            they are still an admin); None ends the stream."""
            now = caller_now(request)
            if now is None or now.id != user.id or (everyone and not now.admin):
                return None
            return now

        async for chunk in _messages(service, streams, allowed, after, everyone):
            await response.write(chunk)
        return response
    finally:
        streams.open[user.id] -= 1
        if streams.open[user.id] <= 0:
            del streams.open[user.id]


async def _messages(service: JobService, streams: JobStreams,
                    allowed: Callable[[], User | None], after: int,
                    everyone: bool) -> AsyncIterator[bytes]:
    """The stream's messages: changes after ``after``, heartbeats between, until shutdown,
    the stream's lifetime, or the moment ``allowed()`` no longer names the caller (checked
    before every read: a revoked token, an ended session, a disabled or demoted user).

    The position moves past rows that were not the caller's too: once a read returns less
    than a batch, every change up to the watermark taken before it has been seen, and the
    heartbeat carries that position as its ``id:`` (EventSource keeps it for a reconnect),
    so no read rescans what an earlier one passed over."""
    ends = asyncio.get_running_loop().time() + streams.lifetime
    sent = after
    while not streams.closing.is_set() and asyncio.get_running_loop().time() < ends:
        user = allowed()
        if user is None:
            return
        tick, seen = streams.changed(), service.event_watermark()
        changes = service.job_changes(user, after, everyone=everyone, limit=BATCH)
        for event_id, job in changes:
            yield _message(event_id, job, everyone)
            after = sent = event_id
        if len(changes) == BATCH:
            await asyncio.sleep(0)  # a long history: the loop serves others between batches
            continue
        after = max(after, seen)
        try:
            await asyncio.wait_for(tick.wait(), streams.heartbeat)
        except TimeoutError:
            yield (f"id: {after}\n" if after != sent else "") .encode() + b": keep-alive\n\n"
            sent = after


def setup(app: web.Application, streams: JobStreams | None = None) -> None:
    """Add the stream's route and its shutdown to ``app``."""
    app[STREAMS] = streams or JobStreams()

    async def close_streams(app: web.Application) -> None:
        await app[STREAMS].close()

    app.on_shutdown.append(close_streams)
    app.add_routes(routes)
