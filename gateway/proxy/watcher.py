"""The lab watcher: notices when a lab's server answers, and stops labs that idle or never start.

Every cycle looks at each lab in ``running`` or ``ready``:

- ``running``: read the port the server reported (``lab.json`` in the job's directory, written
  by jupyter_server once it listens, at most 4 KiB, a regular file) and ask the server's
  ``api/status`` through the proxy's own path, over a connection on which the server first
  proved it holds the lab's token (:mod:`.identity`); an answer makes the lab ``ready``. A
  server that fails the proof gets nothing, and the port is read again from ``lab.json`` next
  time. No answer within ``labs.start_timeout`` of the job's start: the job is cancelled and
  ends ``failed`` (``launch_failed``, saying whether a server failed the proof, with the log's
  tail).
- ``ready``: a busy kernel counts as activity; with no proxied traffic and no busy kernel for
  ``labs.idle_timeout`` the job is cancelled and ends ``cancelled`` with reason ``idle``.
  Activity is saved in the store, so idle time survives a gateway restart.

The cycle runs fast while a lab is starting (readiness is what a user waits for) and slowly
otherwise. Everything a cycle learns is already in the store, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from ..errors import GatewayError, LabUnavailable
from ..jobs.runtime import ClusterRuntime
from ..states import IllegalTransition, State
from ..timestamps import format_timestamp, parse_timestamp, utcnow
from ..transport import RemoteFileMissing
from .identity import LabNotProven
from .labs import LabProxy

log = logging.getLogger(__name__)
STARTING_INTERVAL = 0.25
ACTIVITY_SAVE_GAP = 10.0  # seconds of new activity before the stamp is written again


async def watch_labs(proxy: LabProxy) -> None:
    """Run :func:`check_labs` forever."""
    while True:
        starting = await check_labs(proxy)
        await asyncio.sleep(STARTING_INTERVAL if starting else
                            proxy.service.config.labs.check_interval)


async def check_labs(proxy: LabProxy) -> bool:
    """One look at every lab that may be up; True if one is still starting."""
    labs = proxy.service.store.lab_jobs()
    results = await asyncio.gather(*(_check_one(proxy, job) for job in labs))
    live = {job["id"] for job in labs}
    for job_id in [j for j in proxy.activity if j not in live]:
        proxy.activity.pop(job_id, None)
    for job_id in [j for j in proxy.unproven if j not in live]:
        proxy.unproven.pop(job_id, None)
    keep = {key for job in labs if (key := proxy.forward_key(job))}
    for name, runtime in proxy.service.clusters.items():  # an ended lab's forward is closed
        runtime.transport.retain_forwards({key[1:] for key in keep if key[0] == name})
    proxy.sessions.retain(live)
    return any(results)


async def _check_one(proxy: LabProxy, job: dict[str, Any]) -> bool:
    try:
        if job["state"] == State.RUNNING:
            return await _check_starting(proxy, job)
        await _check_idle(proxy, job)
    except (GatewayError, OSError, TimeoutError, ValueError) as exc:
        log.info("lab %s: check skipped: %s", job["id"], getattr(exc, "detail", repr(exc)))
    except Exception:
        log.exception("lab %s: check failed", job["id"])
    return bool(job["state"] == State.RUNNING)


async def read_lab_port(runtime: ClusterRuntime, job: dict[str, Any]) -> int | None:
    """The port the lab's server reported in ``lab.json``, or None before it listens."""
    try:
        raw = await runtime.transport.read_file(f"{job['workdir']}/lab.json",
                                                user=job["unix_user"], limit=4096)
    except RemoteFileMissing:
        return None
    port = json.loads(raw).get("port")
    if not isinstance(port, int) or not 1024 <= port <= 65535:
        raise ValueError(f"lab.json holds no usable port: {port!r}")
    return port


async def _check_starting(proxy: LabProxy, job: dict[str, Any]) -> bool:
    """Make a running lab ``ready`` once its server answers; True while it is still starting."""
    service, job_id = proxy.service, job["id"]
    runtime = service.clusters.get(job["cluster"])
    if runtime is None:
        return False
    if not job["lab_port"]:
        port = await read_lab_port(runtime, job)
        if port is not None:
            service.store.update_job(job_id, lab_port=port)
            job = {**job, "lab_port": port}
    if job["lab_port"] and await _answers(proxy, job):
        try:
            service.store.transition(job_id, State.READY, last_activity=utcnow())
        except IllegalTransition:  # ended meanwhile
            return False
        proxy.touch(job_id)
        log.info("lab %s is ready", job_id)
        return False
    started = parse_timestamp(job["started_at"]).timestamp() if job["started_at"] else time.time()
    if time.time() - started > service.config.labs.start_timeout:
        await stop_lab(proxy, runtime, job,
                       "unproven" if job_id in proxy.unproven else "start_timeout")
        return False
    return True


async def _answers(proxy: LabProxy, job: dict[str, Any]) -> bool:
    try:
        await proxy.get(job, "api/status")
    except LabNotProven as exc:
        log.warning("lab %s: the server at port %s failed the identity proof: %s", job["id"],
                    job["lab_port"], exc)
        proxy.unproven[job["id"]] = str(exc)
        proxy.service.store.update_job(job["id"], lab_port=None)  # read lab.json again
        return False
    except (GatewayError, OSError, TimeoutError) as exc:
        log.debug("lab %s not answering yet: %r", job["id"], exc)
        return False
    except Exception as exc:  # aiohttp's ClientResponseError etc.: not up yet
        log.debug("lab %s not answering yet: %r", job["id"], exc)
        return False
    return True


async def _check_idle(proxy: LabProxy, job: dict[str, Any]) -> None:
    service, job_id = proxy.service, job["id"]
    try:
        kernels = await proxy.get(job, "api/kernels")
    except LabUnavailable:
        kernels = None
    except Exception as exc:  # unreachable right now: don't cull what we can't see
        log.info("lab %s: kernels unknown: %r", job_id, exc)
        return
    if kernels and any(k.get("execution_state") == "busy" for k in kernels):
        proxy.touch(job_id)
    last = proxy.last_activity(job)
    stored = parse_timestamp(job["last_activity"]).timestamp() if job["last_activity"] else 0.0
    if last - stored > ACTIVITY_SAVE_GAP:
        service.store.update_job(job_id, last_activity=format_timestamp(last))
    if time.time() - last > service.config.labs.idle_timeout:
        runtime = service.clusters.get(job["cluster"])
        if runtime is not None:
            await stop_lab(proxy, runtime, job, "idle")


async def stop_lab(proxy: LabProxy, runtime: ClusterRuntime, job: dict[str, Any],
                   reason: str) -> None:
    """Cancel a lab on the gateway's own account, remembering why (the outcome says so).

    ``cancel_requested`` is set too, so the poller re-sends scancel if Slurm is away now.
    """
    log.info("lab %s: stopping (%s)", job["id"], reason)
    proxy.service.store.update_job(job["id"], stop_reason=reason, cancel_requested=1)
    await runtime.send_cancel(job)
    runtime.wake.set()
