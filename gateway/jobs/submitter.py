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
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable, GatewayError
from ..spec import ResolvedSpec
from ..states import TERMINAL, IllegalTransition, Reason, State
from ..templates import render
from ..timestamps import parse_timestamp
from ..tokens import lab_token
from ..transport import RemoteFileMissing, RemoteFileRefused
from .collector import collect
from .runtime import ClusterRuntime

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0
# Files only a Slurm job that started writes into its work directory (job_templates/notebook.sh.j2).
TRACES = ("job.log", "exit.json")


async def submit_worker(service: JobService) -> None:
    """Take job ids off the queue forever and submit each."""
    while True:
        job_id = await service.submit_queue.get()
        try:
            await submit_job(service, job_id)
        except Exception:
            log.exception("submission of job %s failed unexpectedly", job_id)


def render_script(service: JobService, job: dict[str, Any], runtime: ClusterRuntime) -> str:
    """The batch script of ``job``: ``notebook.sh.j2`` or ``lab.sh.j2`` by its kind."""
    spec = ResolvedSpec.model_validate_json(job["spec"])
    return render(
        service.templates,
        f"{spec.kind}.sh.j2",
        job_id=job["id"],
        workdir=job["workdir"],
        python=runtime.config.python,
        slurm_name=slurm_job_name(spec.name),
        spec=spec,
        lab_bind=runtime.config.lab_bind,
    )


def slurm_job_name(name: str) -> str:
    """The job name as Slurm shows it: the gateway name reduced to safe characters."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    return ("hpcgw-" + cleaned)[:64]


async def submit_job(service: JobService, job_id: str) -> None:
    """Bring one job from ``accepted``/``staging`` into the scheduler, or to a terminal state.

    While the scheduler is known to be unreachable the job waits in ``accepted`` (nothing is
    sent); the cluster is probed with backoff until it answers or the deadline passes.
    """
    store = service.store
    job = store.get_job(job_id)
    runtime = service.clusters.get(job["cluster"])
    if State(job["state"]) in TERMINAL:
        return
    if runtime is None:
        _fail(service, job_id, f"cluster {job['cluster']} is disabled")
        return
    deadline = parse_timestamp(job["created_at"]).timestamp() + runtime.config.submit_deadline
    backoff = 1.0
    while True:
        try:
            await _enter_staging(service, runtime, job_id)
            await _attempt(service, runtime, store.get_job(job_id))
            return
        except IllegalTransition:  # cancelled meanwhile
            return
        except ClusterUnavailable as exc:
            runtime.reachable, runtime.last_error = False, exc.detail
            store.update_job(job_id, scheduler_reachable=0, message=exc.detail)
            if time.time() + backoff > deadline:
                _fail(service, job_id, f"scheduler unreachable until the deadline: {exc.detail}")
                return
        except GatewayError as exc:
            _fail(service, job_id, exc.detail)
            return
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)


async def _enter_staging(service: JobService, runtime: ClusterRuntime, job_id: str) -> None:
    if service.store.get_job(job_id)["state"] != State.ACCEPTED:
        return
    if runtime.reachable is False:
        await runtime.backend.cluster_info()  # raises ClusterUnavailable while still down
        runtime.reachable = True
    service.store.transition(job_id, State.STAGING)


def _fail(service: JobService, job_id: str, message: str) -> None:
    """End a job that never reached the scheduler as ``failed``/``launch_failed``."""
    service.store.transition(job_id, State.FAILED, reason=Reason.LAUNCH_FAILED, message=message)


async def _attempt(service: JobService, runtime: ClusterRuntime, job: dict[str, Any]) -> None:
    store = service.store
    if job["cancel_requested"] and not job["submit_attempts"]:
        store.transition(job["id"], State.CANCELLED, reason=Reason.USER_CANCELLED,
                         message="cancelled before submission")
        return
    if job["submit_attempts"] and await _resume_earlier_attempt(service, runtime, job):
        return
    script = render_script(service, job, runtime)
    await stage_inputs(service, runtime, job, script)
    store.update_job(job["id"], submit_attempts=job["submit_attempts"] + 1)
    slurm_job_id = await runtime.backend.submit(script, user=job["unix_user"], tag=job["id"])
    _entered_scheduler(service, runtime, job["id"], slurm_job_id)


async def _resume_earlier_attempt(
    service: JobService, runtime: ClusterRuntime, job: dict[str, Any]
) -> bool:
    """Look for what an earlier ``sbatch`` of ``job`` may have created; True if the job was
    moved on from it (so nothing may be submitted), False if a new submission is due.

    First the scheduler's queue (by tag): a listed job is adopted. Then the work directory: a
    ``job.log`` or ``exit.json`` there means the Slurm job ran and has already left the queue,
    so the job goes to ``collecting`` (or to ``cancelled`` if a cancel was asked for meanwhile).
    Without either, a requested cancel ends the job here instead of submitting it again.
    """
    store, job_id = service.store, job["id"]
    found = await runtime.backend.find_by_tag(job_id, user=job["unix_user"])
    if found is not None:
        log.info("job %s: adopting Slurm job %s", job_id, found.job_id)
        store.update_job(job_id, slurm_job_id=found.job_id)
        _entered_scheduler(service, runtime, job_id, found.job_id)
        return True
    ran = await _left_traces(runtime, job)
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
    service.spawn(collect(service, job_id), f"collect-{job_id}")
    return True


async def _left_traces(runtime: ClusterRuntime, job: dict[str, Any]) -> str | None:
    """The name of the first file a started Slurm job writes into its work directory that
    exists there (``job.log``: Slurm's output, ``exit.json``: the runner's record), or None.

    Reads at most one byte of each. A trace that is there but refused (not a regular file)
    still counts as there: the collector then fails the job, naming the file.
    Raises ClusterUnavailable (retried by the caller) when the cluster can't be asked.
    """
    for name in TRACES:
        try:
            await runtime.transport.read_file(
                f"{job['workdir']}/{name}", user=job["unix_user"], limit=1, tail=True)
        except RemoteFileMissing:
            continue
        except RemoteFileRefused:
            pass
        return name
    return None


def _entered_scheduler(
    service: JobService, runtime: ClusterRuntime, job_id: str, slurm_job_id: str
) -> None:
    service.store.transition(job_id, State.PENDING, slurm_job_id=slurm_job_id,
                             scheduler_reachable=1)
    service.store.update_job(job_id, message=None)  # clear an earlier "unreachable" message
    runtime.wake.set()


async def stage_inputs(
    service: JobService, runtime: ClusterRuntime, job: dict[str, Any], script: str
) -> None:
    """Create the job's private directory on the cluster and put its inputs (and, for the
    record, the batch ``script`` as submitted) there."""
    transport, user, workdir = runtime.transport, job["unix_user"], job["workdir"]
    await transport.put_files(workdir, {**job_files(service, job), "job.sh": script.encode()},
                              user=user)


def job_files(service: JobService, job: dict[str, Any]) -> dict[str, bytes]:
    """What a job needs in its directory: the notebook, its parameters and the runner for a
    notebook run; the launcher and the server token (0600, like every staged file) for a lab."""
    jobside = resources.files("gateway.jobside")
    if job["kind"] == "lab":
        return {"lab.py": jobside.joinpath("lab.py").read_bytes(),
                "lab.token": lab_token(service.config.gateway.cookie_secret, job["id"]).encode()}
    spec = ResolvedSpec.model_validate_json(job["spec"])
    return {
        "input.ipynb": (service.job_dir(job["id"]) / "input.ipynb").read_bytes(),
        "parameters.json": json.dumps(spec.parameters).encode(),
        "runner.py": jobside.joinpath("runner.py").read_bytes(),
    }
