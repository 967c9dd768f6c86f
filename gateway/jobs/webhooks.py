"""The webhook deliverer: POSTs each state change of a job whose spec has a webhook.

It follows the store's events table (:meth:`WebhookEvents.changes_since`), from the newest row
at startup on, every :data:`POLL_INTERVAL` seconds. Each state change becomes one delivery:
a JSON body ``{"event_id", "job_id", "state", "previous_state", "reason", "time"}`` signed
with the job owner's webhook secret (:mod:`gateway.webhooks.signing`), tried up to
``[webhooks] max_attempts`` times with a doubling backoff (:mod:`gateway.webhooks.delivery`).
The deliveries of one job go out one after another, in the order of its state changes (a
delivery being retried holds back the next ones of its job, never another job's).

:data:`MAX_IN_FLIGHT` workers make the attempts, taking jobs from a :class:`.FairQueue` keyed
by the job owner's gateway user: users take turns, and at most :data:`PER_USER` attempts for
one user's jobs are under way at once (a job waiting out its backoff holds none). A user whose
receiver is slow or never answers (each attempt then takes ``[webhooks] timeout_s``) holds at
most that many of the workers, so other users' deliveries still find one free (a red-team's
finding: with one first-come pool, one user's silent receiver took every slot); their own
deliveries queue behind.

Every attempt is logged (fields ``job_id``, ``to_state``, ``attempt``, ``outcome``,
``webhook``: the URL's origin only), counted (``hpcgw_webhook_attempts``) and recorded as a
``kind = 'webhook'`` row of the job's events, which no reader of state changes takes for one.

A receiver may get a delivery twice (an answer lost after it was handled): ``event_id`` is
the same in both. Deliveries still pending when the gateway stops are not resumed when it
starts again (it starts from the newest events row): a receiver that must not miss a state
can read the job (``GET /api/v1/jobs/{id}``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass, field

import aiohttp
from aiohttp.abc import AbstractResolver

from ..store.webhooks import StateChange
from ..webhooks.addresses import shown
from ..webhooks.delivery import Attempt, backoff, make_session, post_once
from ..webhooks.signing import webhook_secret
from .context import JobContext
from .fairqueue import FairQueue

log = logging.getLogger(__name__)
POLL_INTERVAL = 0.5  # seconds between two looks at the events table
MAX_IN_FLIGHT = 32  # POSTs at the same time, all users together (the workers)
PER_USER = 4  # POSTs at the same time for the jobs of one user


def payload(change: StateChange) -> bytes:
    """The body of the delivery of ``change`` (compact JSON, UTF-8)."""
    return json.dumps({
        "event_id": change.event_id, "job_id": change.job_id, "state": change.to_state,
        "previous_state": change.from_state, "reason": change.reason, "time": change.at,
    }, separators=(",", ":")).encode()


@dataclass
class _Job:
    """A job's deliveries still to make: ``changes[0]`` is the one being attempted, after
    ``attempts`` attempts of it so far."""

    owner: str  # the job owner's gateway user id, the fair queue's key
    changes: deque[StateChange] = field(default_factory=deque)
    attempts: int = 0


class WebhookDeliverer:
    """Delivers the state changes of jobs with a webhook; :meth:`run` until cancelled.

    ``resolver`` resolves receivers' names (default: the system's, through a thread); the
    address policy is applied to whatever it answers. ``poll_interval`` is for tests.

    A job with deliveries to make is in exactly one place at a time: waiting in the fair
    queue, with a worker for one attempt, or waiting out its backoff; that is what keeps its
    deliveries in order.
    """

    def __init__(self, ctx: JobContext, resolver: AbstractResolver | None = None,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self._ctx = ctx
        self._settings = ctx.config.webhooks
        self._resolver = resolver
        self._poll_interval = poll_interval
        self._pending: dict[str, _Job] = {}  # job id -> its deliveries to make
        self._queue = FairQueue(PER_USER)  # (owner, job id) of jobs due for an attempt

    async def run(self) -> None:
        """Follow the events table from its newest row on; cancel to stop (deliveries under
        way or pending are dropped, their session closed)."""
        store = self._ctx.store
        watermark = store.last_event_id()
        resolver = self._resolver or aiohttp.ThreadedResolver()
        async with make_session(resolver, self._settings.allow_private, MAX_IN_FLIGHT) as session, \
                asyncio.TaskGroup() as group:
            for number in range(MAX_IN_FLIGHT):
                group.create_task(self._work(group, session), name=f"webhooks-{number}")
            while True:
                try:
                    watermark, changes = store.webhooks.changes_since(watermark)
                except Exception:  # a busy database, say: look again next time
                    log.exception("webhook deliverer: reading the events failed")
                    changes = []
                for change in changes:
                    self._enqueue(change)
                await asyncio.sleep(self._poll_interval)

    def _enqueue(self, change: StateChange) -> None:
        """Queue ``change`` behind its job's pending deliveries; a job that had none joins
        the fair queue under its owner."""
        job = self._pending.get(change.job_id)
        if job is not None:  # queued, under way or backing off: it comes to this one later
            job.changes.append(change)
            return
        job = self._pending[change.job_id] = _Job(str(change.user_id), deque([change]))
        self._queue.put_nowait(job.owner, change.job_id)

    async def _work(self, group: asyncio.TaskGroup, session: aiohttp.ClientSession) -> None:
        """One worker: take the next job due (users in turn), make one attempt of its first
        delivery, then send the job on (:meth:`_after`); until cancelled."""
        while True:
            owner, job_id = await self._queue.get()
            try:
                wait = await self._attempt(session, job_id, self._pending[job_id])
            finally:
                self._queue.done(owner)
            self._after(group, job_id, wait)

    def _after(self, group: asyncio.TaskGroup, job_id: str, wait: float | None) -> None:
        """After an attempt: with ``wait``, the job rejoins the queue once it has passed;
        without, its first delivery is over and the job rejoins at once for its next one,
        or leaves if it has none."""
        job = self._pending[job_id]
        if wait is not None:
            group.create_task(self._retry_after(wait, job_id, job), name=f"webhook-{job_id}")
            return
        job.changes.popleft()
        job.attempts = 0
        if job.changes:
            self._queue.put_nowait(job.owner, job_id)
        else:
            del self._pending[job_id]

    async def _retry_after(self, wait: float, job_id: str, job: _Job) -> None:
        """The job rejoins the queue, behind its owner's others, ``wait`` s from now."""
        await asyncio.sleep(wait)
        self._queue.put_nowait(job.owner, job_id)

    async def _attempt(self, session: aiohttp.ClientSession, job_id: str,
                       job: _Job) -> float | None:
        """One attempt of the job's first delivery, recorded; the backoff to wait before the
        next attempt, or None when the delivery is over (delivered, the address refused,
        ``max_attempts`` failed, or a bug here: logged, and the job's next delivery goes)."""
        settings = self._settings
        change = job.changes[0]
        job.attempts += 1
        try:
            secret = webhook_secret(self._ctx.config.gateway.cookie_secret, change.user_id)
            attempt = await post_once(session, change.url, payload(change), secret,
                                      timeout=settings.timeout_s,
                                      allow_private=settings.allow_private)
            last = (attempt.delivered or attempt.refused
                    or job.attempts >= settings.max_attempts)
            wait = None if last else backoff(job.attempts, settings.backoff_s,
                                             settings.max_backoff_s)
            self._record(change, job.attempts, attempt, wait)
        except Exception:  # a bug must not stop the job's later deliveries
            log.exception("webhook delivery failed", extra={"job_id": job_id})
            return None
        return wait

    def _record(self, change: StateChange, number: int, attempt: Attempt,
                wait: float | None) -> None:
        """Log, count and store (as a delivery row of the job's events) one attempt."""
        total = self._settings.max_attempts
        if attempt.delivered:
            outcome, then = "delivered", ""
        elif attempt.refused:
            outcome, then = "refused", "; not retried"
        elif wait is not None:
            outcome, then = "retrying", f", retrying in {wait:g} s"
        else:
            outcome, then = "failed", "; giving up"
        target = shown(change.url)
        message = (f"webhook delivery {number}/{total} of {change.to_state} to {target}: "
                   f"{attempt.detail}{then}")
        self._ctx.metrics.webhook_attempts.labels(outcome).inc()
        log.log(logging.INFO if attempt.delivered else logging.WARNING, "job %s: %s",
                change.job_id, message, extra={
                    "job_id": change.job_id, "to_state": change.to_state, "attempt": number,
                    "outcome": outcome, "webhook": target})
        self._ctx.store.webhooks.record(change.job_id, change.to_state, message[:500])
