"""The webhook deliverer: POSTs each state change of a job whose spec has a webhook.

It follows the store's events table (:meth:`WebhookEvents.changes_since`), from the newest row
at startup on, every :data:`POLL_INTERVAL` seconds. Each state change becomes one delivery:
a JSON body ``{"event_id", "job_id", "state", "previous_state", "reason", "time"}`` signed
with the job owner's webhook secret (:mod:`gateway.webhooks.signing`), tried up to
``[webhooks] max_attempts`` times with a doubling backoff (:mod:`gateway.webhooks.delivery`).
The deliveries of one job go out one after another, in the order of its state changes (a
delivery being retried holds back the next ones of its job, never another job's); different
jobs' deliveries run side by side, at most :data:`MAX_IN_FLIGHT` at a time.

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

import aiohttp
from aiohttp.abc import AbstractResolver

from ..store.webhooks import StateChange
from ..webhooks.addresses import shown
from ..webhooks.delivery import Attempt, backoff, make_session, post_once
from ..webhooks.signing import webhook_secret
from .context import JobContext

log = logging.getLogger(__name__)
POLL_INTERVAL = 0.5  # seconds between two looks at the events table
MAX_IN_FLIGHT = 32  # POSTs at the same time, all jobs together


def payload(change: StateChange) -> bytes:
    """The body of the delivery of ``change`` (compact JSON, UTF-8)."""
    return json.dumps({
        "event_id": change.event_id, "job_id": change.job_id, "state": change.to_state,
        "previous_state": change.from_state, "reason": change.reason, "time": change.at,
    }, separators=(",", ":")).encode()


class WebhookDeliverer:
    """Delivers the state changes of jobs with a webhook; :meth:`run` until cancelled.

    ``resolver`` resolves receivers' names (default: the system's, through a thread); the
    address policy is applied to whatever it answers. ``poll_interval`` is for tests.
    """

    def __init__(self, ctx: JobContext, resolver: AbstractResolver | None = None,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self._ctx = ctx
        self._settings = ctx.config.webhooks
        self._resolver = resolver
        self._poll_interval = poll_interval
        self._pending: dict[str, deque[StateChange]] = {}  # job id -> its deliveries to make
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def run(self) -> None:
        """Follow the events table from its newest row on; cancel to stop (deliveries under
        way are dropped, their session closed)."""
        store = self._ctx.store
        watermark = store.last_event_id()
        resolver = self._resolver or aiohttp.ThreadedResolver()
        async with make_session(resolver, self._settings.allow_private, MAX_IN_FLIGHT) as session, \
                asyncio.TaskGroup() as group:
            while True:
                try:
                    watermark, changes = store.webhooks.changes_since(watermark)
                except Exception:  # a busy database, say: look again next time
                    log.exception("webhook deliverer: reading the events failed")
                    changes = []
                for change in changes:
                    self._enqueue(group, session, change)
                await asyncio.sleep(self._poll_interval)

    def _enqueue(self, group: asyncio.TaskGroup, session: aiohttp.ClientSession,
                 change: StateChange) -> None:
        """Queue ``change`` behind its job's pending deliveries; start the job's delivery
        task if it has none running."""
        queue = self._pending.get(change.job_id)
        if queue is not None:
            queue.append(change)
            return
        self._pending[change.job_id] = deque([change])
        group.create_task(self._deliver_job(session, change.job_id),
                          name=f"webhook-{change.job_id}")

    async def _deliver_job(self, session: aiohttp.ClientSession, job_id: str) -> None:
        """Deliver the job's queued changes in order, until none is left."""
        queue = self._pending[job_id]
        try:
            while queue:
                try:
                    await self._deliver(session, queue[0])
                except Exception:  # a bug must not stop the job's later deliveries
                    log.exception("webhook delivery failed", extra={"job_id": job_id})
                queue.popleft()
        finally:
            del self._pending[job_id]

    async def _deliver(self, session: aiohttp.ClientSession, change: StateChange) -> None:
        """One delivery: attempts until one succeeds, the address is refused, or
        ``max_attempts`` have failed; each attempt recorded."""
        settings = self._settings
        body = payload(change)
        secret = webhook_secret(self._ctx.config.gateway.cookie_secret, change.user_id)
        for number in range(1, settings.max_attempts + 1):
            async with self._in_flight:
                attempt = await post_once(session, change.url, body, secret,
                                          timeout=settings.timeout_s,
                                          allow_private=settings.allow_private)
            last = attempt.delivered or attempt.refused or number == settings.max_attempts
            wait = None if last else backoff(number, settings.backoff_s, settings.max_backoff_s)
            self._record(change, number, attempt, wait)
            if wait is None:
                return
            await asyncio.sleep(wait)

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
