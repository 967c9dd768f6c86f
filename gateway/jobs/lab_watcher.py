"""The lab watcher: makes labs ``ready`` when their server answers, and stops labs that idle or
never start (the rules are in :mod:`.labs`). Everything a cycle learns is written to the store,
so a restart loses nothing but the in-memory activity of the last seconds.

Each look at a lab runs in a task of its own, at most one per lab at a time, and the cycle does
not wait for them: a look reads ``lab.json`` and opens port forwards as the lab's owner, who
decides how long that takes (up to ``command_timeout``), so one user's slow lab delays only its
own next look, never other labs' (a red-team finding). A lab whose look is still under way is
passed over until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

from ..errors import GatewayError, LabUnavailable, LabUnproven
from ..states import IllegalTransition, State
from ..timestamps import format_timestamp, parse_timestamp, utcnow
from .clusters import ClusterLink
from .context import JobContext
from .keyedtasks import KeyedTasks
from .labs import (
    ACTIVITY_SAVE_GAP,
    STARTING_INTERVAL,
    WOKEN_GAP,
    LabProbe,
    forward_key,
    lab_route,
    last_activity,
    read_lab_port,
)

log = logging.getLogger(__name__)


class LabWatcher:
    """Owns the readiness checks, the start timeout and the idle cull of every lab."""

    def __init__(self, ctx: JobContext, probe: LabProbe) -> None:
        self.ctx = ctx
        self.probe = probe
        # job id -> why the server at the lab's reported address failed the identity proof
        self.unproven: dict[str, str] = {}
        # The looks at labs under way, by job id (at most one per lab); owned by :meth:`run`.
        self.looks = KeyedTasks("lab-look")

    async def run(self) -> None:
        """Run :meth:`check` forever: on every lab each ``labs.check_interval`` s, on the
        starting ones alone every STARTING_INTERVAL s while there are any, and as soon as one
        is asked for (``ctx.lab_wanted``), but never twice within WOKEN_GAP s. The looks
        still under way when it ends (cancelled) are cancelled with it."""
        every = self.ctx.config.labs.check_interval
        wanted = self.ctx.lab_wanted
        next_full = time.monotonic()
        try:
            while True:
                full = time.monotonic() >= next_full
                if full:
                    next_full = time.monotonic() + every
                try:
                    starting = self.check(ready_too=full)
                except Exception:  # e.g. the database busy: the next cycle tries again
                    log.exception("the lab check failed")
                    starting = False
                wait = STARTING_INTERVAL if starting else next_full - time.monotonic()
                await asyncio.sleep(WOKEN_GAP)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wanted.wait(), max(0.0, wait - WOKEN_GAP))
                wanted.clear()
        finally:
            await self.looks.close()

    def check(self, *, ready_too: bool = True) -> bool:
        """Start a look at every lab that may be up (only at those still starting, unless
        ``ready_too``), each in its own task, and return without waiting for them; a lab whose
        previous look is still under way is passed over. True if a lab is still starting (as
        the store says now: a look that makes one ready counts from the next cycle on).
        Forwards, connections and bookkeeping of labs that ended are dropped."""
        labs = self.ctx.store.live_labs()
        for job in labs:
            if ready_too or job["state"] == State.RUNNING:
                self.looks.start(job["id"], job["unix_user"],
                                 functools.partial(self._check_one, job))
        live = {job["id"] for job in labs}
        for job_id in self.unproven.keys() - live:
            del self.unproven[job_id]
        keep = {key for job in labs if (key := forward_key(self.ctx, job))}
        for name, link in self.ctx.clusters.items():
            link.transport.retain_forwards({key[1:] for key in keep if key[0] == name})
        self.probe.retain(live)
        return any(job["state"] == State.RUNNING for job in labs)

    async def _check_one(self, job: dict[str, Any]) -> None:
        """One look at ``job``: its readiness while starting, its idleness once ready. A look
        that fails is logged and skipped (the next one tries again), never raised."""
        try:
            if job["state"] == State.RUNNING:
                await self._check_starting(job)
            else:
                await self._check_idle(job)
        except (GatewayError, OSError, TimeoutError, ValueError) as exc:
            log.info("lab %s: check skipped: %s", job["id"], getattr(exc, "detail", repr(exc)))
        except Exception:
            log.exception("lab %s: check failed", job["id"])

    async def _check_starting(self, job: dict[str, Any]) -> bool:
        """Make a running lab ``ready`` once its server answers; True while still starting."""
        store, job_id = self.ctx.store, job["id"]
        link = self.ctx.clusters.get(job["cluster"])
        if link is None:
            return False
        if not job["lab_port"]:
            port = await read_lab_port(link, job)
            if port is not None:
                store.update_job(job_id, lab_port=port)
                job = {**job, "lab_port": port}
        if job["lab_port"] and await self._answers(job):
            try:
                store.transition(job_id, State.READY, last_activity=utcnow())
            except IllegalTransition:  # ended meanwhile
                return False
            self.probe.touch(job_id)
            self.ctx.record_ready(job)
            log.info("lab %s is ready", job_id)
            return False
        started = (parse_timestamp(job["started_at"]).timestamp() if job["started_at"]
                   else time.time())
        if time.time() - started > self.ctx.config.labs.start_timeout:
            await self.stop(link, job, "unproven" if job_id in self.unproven else "start_timeout")
            return False
        return True

    async def _answers(self, job: dict[str, Any]) -> bool:
        try:
            await self.probe.get(await lab_route(self.ctx, job), "api/status")
        except LabUnproven as exc:
            log.warning("lab %s: the server at port %s failed the identity proof: %s",
                        job["id"], job["lab_port"], exc.detail)
            self.unproven[job["id"]] = exc.detail
            self.ctx.store.update_job(job["id"], lab_port=None)  # read lab.json again
            return False
        except Exception as exc:  # connection refused, HTTP errors, timeouts: not up yet
            log.debug("lab %s not answering yet: %r", job["id"], exc)
            return False
        return True

    async def _check_idle(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        try:
            kernels = await self.probe.get(await lab_route(self.ctx, job), "api/kernels")
        except LabUnavailable:
            kernels = None
        except Exception as exc:  # unreachable right now: don't cull what we can't see
            log.info("lab %s: kernels unknown: %r", job_id, exc)
            return
        if kernels and any(k.get("execution_state") == "busy" for k in kernels):
            self.probe.touch(job_id)
        last = last_activity(self.probe, job)
        stored = (parse_timestamp(job["last_activity"]).timestamp() if job["last_activity"]
                  else 0.0)
        if last - stored > ACTIVITY_SAVE_GAP:
            self.ctx.store.update_job(job_id, last_activity=format_timestamp(last))
        if time.time() - last > self.ctx.config.labs.idle_timeout:
            link = self.ctx.clusters.get(job["cluster"])
            if link is not None:
                await self.stop(link, job, "idle")

    async def stop(self, link: ClusterLink, job: dict[str, Any], reason: str) -> None:
        """Cancel a lab as its owner, remembering why (the outcome says so).

        ``cancel_requested`` is set too, so the poller re-sends scancel if Slurm is away now.
        """
        log.info("lab %s: stopping (%s)", job["id"], reason)
        self.ctx.store.update_job(job["id"], stop_reason=reason, cancel_requested=1)
        await link.send_cancel(job)
        link.wake.set()
