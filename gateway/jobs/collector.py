"""Collection: bring a finished job's log, exit record and executed notebook back, then end it.

Runs for every job in ``collecting`` (also after a restart). Every read is capped (design.md §4):
the log's tail (``gateway.log_tail_bytes``), the exit record (:data:`EXIT_RECORD_LIMIT`), the
notebook (``gateway.max_result_bytes``, streamed to ``output.ipynb.part`` then renamed, never
held in memory). A missing file is no error (a job that failed early leaves none).

Only a cluster that can't be reached (:class:`ClusterUnavailable`) or a command that timed out
(:class:`CommandTimeout`) is retried, with backoff, until ``cluster.collect_deadline`` seconds
after the job entered ``collecting`` (from its events, so a restart does not reset the clock);
the job stays ``collecting`` meanwhile. Past the deadline, or at once for any other error (a
refused file: too large, not a regular file; a command that failed), the job ends ``failed``
with reason ``job_error`` and the error in its message. Otherwise the final state comes from
:func:`.outcome.decide`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.mount import MOUNT_DIR

from .. import untrusted
from ..config import ClusterConfig
from ..errors import ClusterUnavailable, CommandTimeout, GatewayError
from ..scheduler import SchedulerState
from ..spec import ResolvedSpec
from ..states import Reason, State
from ..timestamps import parse_timestamp
from ..transport import RemoteFileMissing, RemoteFileRefused, RemoteFileTooLarge, Transport
from .clusters import ClusterLink
from .context import JobContext
from .joblog import LOG_BASE, log_size, read_progress
from .outcome import decide
from .outputs import collect_outputs
from .pusher import push_outputs, pushes_of

log = logging.getLogger(__name__)
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
# The runner's exit record is a small JSON object; the error value in it is the only free text.
EXIT_RECORD_LIMIT = 64 * 1024
# What each cap is called in messages (the notebook's and the log's come from the config).
CAP_NAMES = {"output.ipynb": "gateway.max_result_bytes", "exit.json": "the gateway"}


@dataclass(frozen=True)
class Artifacts:
    record: dict[str, Any] | None
    log_tail: str
    has_notebook: bool
    # Listed outputs that did not come back, each "<path> (<why>)".
    missing_outputs: tuple[str, ...] = ()
    # The runner's last progress record (notebook runs), as the store keeps it.
    progress: str | None = None


NO_ARTIFACTS = Artifacts(record=None, log_tail="", has_notebook=False)


async def collect(ctx: JobContext, job_id: str) -> None:
    """Fetch the artifacts of ``job_id`` (retrying while the cluster is away, until the
    deadline) and end the job; a job not in ``collecting`` is left alone."""
    job = ctx.store.get_job(job_id)
    if job["state"] != State.COLLECTING:
        return
    link = ctx.clusters.get(job["cluster"])
    artifacts = NO_ARTIFACTS
    if link is not None:
        try:
            artifacts = await _fetch_until_deadline(
                ctx, job, link, _deadline(ctx, job, link.config))
        except GatewayError as exc:
            message = _failure_message(exc)
            log.warning("collecting job %s failed: %s", job_id, message)
            ctx.store.transition(job_id, State.FAILED, reason=Reason.JOB_ERROR,
                                     message=message, has_notebook=0)
            return
        except Exception:  # what the job left broke the gateway: never stuck in collecting
            log.exception("collecting job %s failed unexpectedly", job_id)
            ctx.store.transition(job_id, State.FAILED, reason=Reason.JOB_ERROR,
                                 message="its results could not be collected (the gateway's "
                                 "log says why)", has_notebook=0)
            return
    outcome = decide(
        SchedulerState(job["slurm_state"]) if job["slurm_state"] else None,
        artifacts.record,
        cancel_requested=bool(job["cancel_requested"]),
        log_tail=artifacts.log_tail,
        kind=job["kind"],
        stop_reason=job["stop_reason"],
    )
    final = {"progress": artifacts.progress} if artifacts.progress else {}
    ctx.store.transition(job_id, outcome.state, reason=outcome.reason,
                         message=_with_missing(outcome.message, artifacts.missing_outputs),
                         has_notebook=int(artifacts.has_notebook), **final)


def _with_missing(message: str | None, missing: tuple[str, ...]) -> str | None:
    """The outcome's message, saying which outputs did not come back (if any did not)."""
    if not missing:
        return message
    note = "outputs missing: " + ", ".join(missing)
    return f"{message}; {note}" if message else note


class CollectDeadlinePassed(GatewayError):
    """The cluster stayed unreachable (or its commands timed out) until the collect deadline."""

    type_slug = "collect-deadline"
    title = "Collection deadline passed"


def _deadline(ctx: JobContext, job: dict[str, Any], cluster: ClusterConfig) -> float:
    """When retrying must stop (epoch seconds): ``collect_deadline`` after the job's latest
    move into ``collecting`` (now, if the events don't show one)."""
    entered = [event["at"] for event in ctx.store.events(job["id"])
               if event["to_state"] == State.COLLECTING]
    start = parse_timestamp(entered[-1]).timestamp() if entered else time.time()
    return start + cluster.collect_deadline


async def _fetch_until_deadline(
    ctx: JobContext, job: dict[str, Any], link: ClusterLink, deadline: float
) -> Artifacts:
    """:func:`_fetch_artifacts`, retried with backoff while the cluster is unreachable or a
    command times out; raises :class:`CollectDeadlinePassed` once waiting more would pass
    ``deadline``, and any other error at once."""
    backoff = FIRST_BACKOFF
    while True:
        try:
            return await _fetch_artifacts(ctx, job, link)
        except (ClusterUnavailable, CommandTimeout) as exc:
            if time.time() + backoff > deadline:
                raise CollectDeadlinePassed(
                    "the job's outputs could not be collected before the cluster's "
                    f"collect_deadline: {exc.detail}") from exc
            log.warning("collecting job %s: %s (retrying in %.0fs)", job["id"], exc.detail,
                        backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)


def _failure_message(exc: GatewayError) -> str:
    """What a job's ``message`` says when collecting it failed: the file and its cap."""
    if isinstance(exc, RemoteFileRefused):
        name = Path(exc.path).name
        too_large = isinstance(exc, RemoteFileTooLarge) and name in CAP_NAMES
        return f"{name} not collected: {exc.detail}" + (
            f" (set by {CAP_NAMES[name]})" if too_large else "")
    if isinstance(exc, CollectDeadlinePassed):
        return exc.detail
    return f"collecting the job's outputs failed: {exc.detail}"


async def _read(transport: Transport, path: str, user: str, limit: int,
                tail: bool = False) -> bytes | None:
    try:
        return await transport.read_file(path, user=user, limit=limit, tail=tail)
    except RemoteFileMissing:
        return None


async def _fetch_artifacts(
    ctx: JobContext, job: dict[str, Any], link: ClusterLink
) -> Artifacts:
    """Bring back the log's tail, the exit record and the notebook of ``job`` (in that order)
    into its data directory, then its outputs; what is missing on the cluster is simply
    absent."""
    user, workdir, local = job["unix_user"], job["workdir"], ctx.job_dir(job["id"])
    gateway, transport = ctx.config.gateway, link.transport
    log_bytes = await _read(transport, f"{workdir}/job.log", user, gateway.log_tail_bytes,
                            tail=True) or b""
    record_bytes = await _read(transport, f"{workdir}/exit.json", user, EXIT_RECORD_LIMIT)
    local.mkdir(parents=True, exist_ok=True)
    (local / "job.log").write_bytes(log_bytes)
    if len(log_bytes) >= gateway.log_tail_bytes:  # a tail: say where it starts in the log
        size = await log_size(transport, job)
        if size is not None:
            (local / LOG_BASE).write_text(json.dumps({"offset": max(0, size - len(log_bytes))}))
    progress = await read_progress(transport, job) if job["kind"] == "notebook" else None
    has_notebook = await _fetch_notebook(transport, f"{workdir}/output.ipynb", user, local,
                                         gateway.max_result_bytes)
    if json.loads(job.get("staged_inputs") or "{}").get("mounts"):
        # The script removes its mount keys; a job killed outright (SIGKILL) could not.
        await transport.run(["rm", "-rf", "--", f"{workdir}/{MOUNT_DIR}"], user=user,
                            check=False)
    missing = await _outputs(ctx, job, link, local)
    try:
        record = untrusted.loads(record_bytes) if record_bytes else None
    except ValueError:
        record = None
    return Artifacts(
        record=record if isinstance(record, dict) else None,
        log_tail=log_bytes[-4096:].decode(errors="replace"),
        has_notebook=has_notebook,
        missing_outputs=tuple(missing),
        progress=json.dumps(progress) if progress is not None else None,
    )


async def _outputs(ctx: JobContext, job: dict[str, Any], link: ClusterLink,
                   local: Path) -> list[str]:
    """Bring the job's listed outputs back (:mod:`.outputs`) and send those bound for storage
    servers (:mod:`.pusher`); what did not arrive, each with why."""
    raw = json.loads(job["spec"])
    if "outputs" not in raw and "persist" not in raw:  # a row from before staging existed
        return []
    spec = ResolvedSpec.model_validate(raw)
    home = [output.path for output in spec.outputs if output.storage is None]
    missing = await collect_outputs(link.transport, job["workdir"], job["unix_user"], home,
                                    local, ctx.config.gateway.max_output_bytes) if home else []
    away = pushes_of(spec)
    if away:
        missing += await push_outputs(ctx, link.transport, link.config.python, job, away)
    return missing


async def _fetch_notebook(transport: Transport, path: str, user: str, local: Path,
                          limit: int) -> bool:
    """Stream ``path`` into ``local/output.ipynb`` (through ``output.ipynb.part``, so a
    partial copy is never served); False if the job left none. On any error the part file is
    removed and the error raised."""
    part = local / "output.ipynb.part"
    try:
        await transport.fetch_to(path, part, user=user, limit=limit)
    except RemoteFileMissing:
        part.unlink(missing_ok=True)
        return False
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(local / "output.ipynb")
    return True
