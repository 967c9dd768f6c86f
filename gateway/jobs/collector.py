"""Collection: bring a finished job's executed notebook, log and exit record back, then end it.

Runs for every job in ``collecting`` (also after a restart). Transfers that fail because the
cluster can't be reached are retried with backoff; the job stays ``collecting`` meanwhile and is
never failed for it. The final state comes from :func:`.outcome.decide`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable, CommandFailed
from ..scheduler import SchedulerState
from ..states import State
from ..transport import RemoteFileMissing, Transport
from .outcome import decide

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0


async def _fetch(
    transport: Transport, path: str, user: str, tail: int | None = None
) -> bytes | None:
    try:
        return await transport.read_file(path, user=user, tail_bytes=tail)
    except RemoteFileMissing:
        return None


async def collect(service: JobService, job_id: str) -> None:
    """Fetch the artifacts of ``job_id`` (retrying while the cluster is away) and end the job."""
    job = service.store.get_job(job_id)
    if job["state"] != State.COLLECTING:
        return
    runtime = service.clusters.get(job["cluster"])
    backoff = 1.0
    while runtime is not None:
        try:
            artifacts = await _fetch_artifacts(service, job, runtime.transport)
            break
        except (ClusterUnavailable, CommandFailed) as exc:
            log.warning("collecting job %s: %s (retrying in %.0fs)", job_id, exc.detail, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
    else:
        artifacts = {"record": None, "log_tail": "", "has_notebook": False}
    outcome = decide(
        SchedulerState(job["slurm_state"]) if job["slurm_state"] else None,
        artifacts["record"],
        cancel_requested=bool(job["cancel_requested"]),
        log_tail=artifacts["log_tail"],
        kind=job["kind"],
        stop_reason=job["stop_reason"],
    )
    service.store.transition(job_id, outcome.state, reason=outcome.reason,
                             message=outcome.message, has_notebook=int(artifacts["has_notebook"]))


async def _fetch_artifacts(
    service: JobService, job: dict[str, Any], transport: Transport
) -> dict[str, Any]:
    user, workdir, local = job["unix_user"], job["workdir"], service.job_dir(job["id"])
    record_bytes = await _fetch(transport, f"{workdir}/exit.json", user)
    notebook = await _fetch(transport, f"{workdir}/output.ipynb", user)
    log_bytes = await _fetch(transport, f"{workdir}/job.log", user,
                             service.config.gateway.log_tail_bytes) or b""
    local.mkdir(parents=True, exist_ok=True)
    if notebook is not None:
        (local / "output.ipynb.part").write_bytes(notebook)
        (local / "output.ipynb.part").replace(local / "output.ipynb")
    (local / "job.log").write_bytes(log_bytes)
    try:
        record = json.loads(record_bytes) if record_bytes else None
    except ValueError:
        record = None
    return {
        "record": record if isinstance(record, dict) else None,
        "log_tail": log_bytes[-4096:].decode(errors="replace"),
        "has_notebook": notebook is not None,
    }
