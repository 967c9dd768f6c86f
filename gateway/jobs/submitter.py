"""Submission: stage a job's files on the cluster and hand its script to the scheduler.

A job moves ``accepted -> staging -> pending``. An unreachable scheduler keeps it in ``staging``
(retried with backoff) until the cluster's ``submit_deadline``, then it fails ``launch_failed``.
``submit_attempts`` is stored *before* sbatch runs: a job that has been attempted is first looked
for by its tag, so an sbatch whose answer was lost (timeout, gateway killed) is adopted, never
repeated. A Slurm job that already ended and aged out of ``squeue`` (``MinJobAge``) before the
retry is no longer found by its tag; it is recognised by what it left in its work directory
(``job.log``, ``exit.json``) and the gateway job goes on to ``collecting`` instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from importlib import resources
from typing import Any

from connectors.mount import MOUNT_DIR

from ..errors import ClusterUnavailable, GatewayError
from ..spec import ResolvedSpec
from ..staging.sidefiles import SIDE_DIR
from ..states import TERMINAL, IllegalTransition, Reason, State
from ..timestamps import parse_timestamp
from ..tokens import lab_token
from ..transport import RemoteFileMissing, RemoteFileRefused
from .clusters import ClusterLink
from .context import JobContext
from .scripts import render_script, submit_options
from .stager import key_files, needs_staging, staged_mounts, staged_parameters

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0
# Files only a Slurm job that started writes into its work directory (Slurm's output, the
# runner's exit record: gateway/job_templates/).
TRACES = ("job.log", "exit.json")


async def submit_worker(ctx: JobContext) -> None:
    """Take job ids off the queue forever and submit each."""
    while True:
        owner, job_id = await ctx.submit_queue.get()
        try:
            await submit_job(ctx, job_id)
        except Exception:
            log.exception("submission of job %s failed unexpectedly", job_id)
        finally:
            ctx.submit_queue.done(owner)


async def submit_job(ctx: JobContext, job_id: str) -> None:
    """Bring one job from ``accepted``/``staging`` into the scheduler, or to a terminal state.

    While the scheduler is known to be unreachable the job waits in ``accepted`` (nothing is
    sent); the cluster is probed with backoff until it answers or the deadline passes.
    """
    store = ctx.store
    job = store.get_job(job_id)
    link = ctx.clusters.get(job["cluster"])
    if State(job["state"]) in TERMINAL:
        return
    if link is None:
        _fail(ctx, job_id, f"cluster {job['cluster']} is disabled")
        return
    deadline = parse_timestamp(job["created_at"]).timestamp() + link.config.submit_deadline
    backoff = 1.0
    while True:
        try:
            await _enter_staging(ctx, link, job_id)
            await _attempt(ctx, link, store.get_job(job_id))
            return
        except IllegalTransition:  # cancelled meanwhile
            return
        except ClusterUnavailable as exc:
            link.reachable, link.last_error = False, exc.detail
            store.update_job(job_id, scheduler_reachable=0, message=exc.detail)
            if time.time() + backoff > deadline:
                _fail(ctx, job_id, f"scheduler unreachable until the deadline: {exc.detail}")
                return
        except GatewayError as exc:
            _fail(ctx, job_id, exc.detail)
            return
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)


async def _enter_staging(ctx: JobContext, link: ClusterLink, job_id: str) -> None:
    if ctx.store.get_job(job_id)["state"] != State.ACCEPTED:
        return
    if link.reachable is False:
        await link.backend.cluster_info()  # raises ClusterUnavailable while still down
        link.reachable = True
    ctx.store.transition(job_id, State.STAGING)


def _fail(ctx: JobContext, job_id: str, message: str) -> None:
    """End a job that never reached the scheduler as ``failed``/``launch_failed``."""
    job = ctx.store.transition(job_id, State.FAILED, reason=Reason.LAUNCH_FAILED,
                               message=message)
    ctx.metrics.submit_failures.labels(job["cluster"]).inc()


async def _attempt(ctx: JobContext, link: ClusterLink, job: dict[str, Any]) -> None:
    store = ctx.store
    if job["cancel_requested"] and not job["submit_attempts"]:
        store.transition(job["id"], State.CANCELLED, reason=Reason.USER_CANCELLED,
                         message="cancelled before submission")
        return
    if job["submit_attempts"] and await _resume_earlier_attempt(ctx, link, job):
        return
    if needs_staging(job):  # copied by a task of its own, then queued here again
        ctx.stage_later(job["id"])
        return
    script = render_script(ctx.templates, job, link.config, link.runtimes)
    options = submit_options(job, link.config)
    await stage_inputs(ctx, link, job, script)
    store.update_job(job["id"], submit_attempts=job["submit_attempts"] + 1)
    slurm_job_id = await link.backend.submit(script, options)
    _entered_scheduler(ctx, link, job["id"], slurm_job_id)


async def _resume_earlier_attempt(
    ctx: JobContext, link: ClusterLink, job: dict[str, Any]
) -> bool:
    """Look for what an earlier ``sbatch`` of ``job`` may have created; True if the job was
    moved on from it (so nothing may be submitted), False if a new submission is due.

    First the scheduler's queue (by tag): a listed job is adopted. Then the work directory: a
    ``job.log`` or ``exit.json`` there means the Slurm job ran and has already left the queue,
    so the job goes to ``collecting`` (or to ``cancelled`` if a cancel was asked for meanwhile).
    Without either, a requested cancel ends the job here instead of submitting it again.
    """
    store, job_id = ctx.store, job["id"]
    found = await link.backend.find_by_tag(job_id, user=job["unix_user"])
    if found is not None:
        log.info("job %s: adopting Slurm job %s", job_id, found.job_id)
        store.update_job(job_id, slurm_job_id=found.job_id)
        _entered_scheduler(ctx, link, job_id, found.job_id)
        return True
    ran = await _left_traces(link, job)
    if job["cancel_requested"]:
        store.transition(job_id, State.CANCELLED, reason=Reason.USER_CANCELLED,
                         message="cancelled" + (" after an earlier submission had run"
                                                if ran else " before submission"))
        return True
    if not ran:
        return False
    log.info("job %s: an earlier submission already ran (left %s); collecting", job_id, ran)
    store.transition(job_id, State.COLLECTING, scheduler_reachable=1)
    store.update_job(job_id, message=None)
    ctx.collect_later(job_id)
    return True


async def _left_traces(link: ClusterLink, job: dict[str, Any]) -> str | None:
    """The name of the first file a started Slurm job writes into its work directory that
    exists there (``job.log``: Slurm's output, ``exit.json``: the runner's record), or None.

    Reads at most one byte of each. A trace that is there but refused (not a regular file)
    still counts as there: the collector then fails the job, naming the file.
    Raises ClusterUnavailable (retried by the caller) when the cluster can't be asked.
    """
    for name in TRACES:
        try:
            await link.transport.read_file(
                f"{job['workdir']}/{name}", user=job["unix_user"], limit=1, tail=True)
        except RemoteFileMissing:
            continue
        except RemoteFileRefused:
            pass
        return name
    return None


def _entered_scheduler(
    ctx: JobContext, link: ClusterLink, job_id: str, slurm_job_id: str
) -> None:
    ctx.store.transition(job_id, State.PENDING, slurm_job_id=slurm_job_id,
                             scheduler_reachable=1)
    ctx.store.update_job(job_id, message=None)  # clear an earlier "unreachable" message
    link.wake.set()


async def stage_inputs(
    ctx: JobContext, link: ClusterLink, job: dict[str, Any], script: str
) -> None:
    """Create the job's private directory on the cluster and put its inputs (and, for the
    record, the batch ``script`` as submitted) there; the keys of its mounts go into its
    private ``.mounts`` directory (the script removes it when the job ends)."""
    transport, user, workdir = link.transport, job["unix_user"], job["workdir"]
    await transport.put_files(workdir, {**job_files(ctx, job), "job.sh": script.encode()},
                              user=user)
    keys = mount_keys(ctx, job)
    if keys:
        await transport.put_files(f"{workdir}/{MOUNT_DIR}", keys, user=user)


def mount_keys(ctx: JobContext, job: dict[str, Any]) -> dict[str, bytes]:
    """``key-<input number>`` and ``known_hosts`` for the job's mounts (none: empty)."""
    mounts = staged_mounts(job)
    if not mounts:
        return {}
    spec = ResolvedSpec.model_validate_json(job["spec"])
    return key_files(ctx, job, {f"key-{mount['input']}": spec.inputs[mount["input"]].storage
                                for mount in mounts})[0]


def job_files(ctx: JobContext, job: dict[str, Any]) -> dict[str, bytes]:
    """What a job needs in its directory: the notebook, its side files (next to it), its
    parameters and the runner for a notebook run; the launcher and the server token (0600,
    like every staged file) for a lab. Side files' names were checked when the job was
    stored; the gateway's own files come last, so none can be replaced anyway."""
    jobside = resources.files("gateway.jobside")
    if job["kind"] == "lab":
        return {"lab.py": jobside.joinpath("lab.py").read_bytes(),
                "lab.token": lab_token(ctx.config.gateway.cookie_secret, job["id"]).encode()}
    spec = ResolvedSpec.model_validate_json(job["spec"])
    local = ctx.job_dir(job["id"])
    side = sorted((local / SIDE_DIR).iterdir()) if (local / SIDE_DIR).is_dir() else []
    return {
        **{path.name: path.read_bytes() for path in side},
        "input.ipynb": (local / "input.ipynb").read_bytes(),
        "parameters.json": json.dumps(
            {**spec.parameters, **staged_parameters(job)}).encode(),
        "runner.py": jobside.joinpath("runner.py").read_bytes(),
    }
