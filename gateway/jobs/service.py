"""The job service: the one owner of the job lifecycle.

It is the only way the API, the CLI's server and the lab proxy reach jobs: every public call
takes the caller and answers 404 (:class:`NotFound`) for another user's job, exactly as for a
missing one. Requests only ever touch the store and the data directory (a POST is checked, its
notebook in a thread: :mod:`.uploads`; stored by :mod:`.intake` and answered 201 at once);
everything that talks to the cluster runs in background tasks the service owns: the submitters
(:mod:`.submitter`, taking jobs in turn by user: :mod:`.fairqueue`), one staging per job with
inputs (:mod:`.stager`), one poller per cluster (:mod:`.poller`), one collection per finished
job (:mod:`.collector`), the lab watcher (:mod:`.lab_watcher`), artifact retention
(:mod:`.retention`) and the webhook deliverer (:mod:`.webhooks`). The workers share a
:class:`JobContext`, never the service, and hand jobs on through its queues. All of them resume
from the store after a restart, so the gateway can be killed at any moment (webhook deliveries
under way are the exception: see :mod:`.webhooks`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import jinja2

from ..config import Config
from ..errors import (
    FieldError,
    GatewayError,
    Gone,
    NotFound,
    ValidationFailed,
)
from ..listing import JobQuery
from ..metrics import GatewayMetrics, JobCount
from ..offload import Offload, WorkFailed
from ..spec import parse_spec, resolve_spec
from ..staging.credentials import StorageCredentials
from ..staging.sidefiles import SIDE_DIR, side_file_errors
from ..states import TERMINAL, IllegalTransition, Reason, State
from ..store import Store, private_dir
from ..store.stamped import StampedCache
from ..templates import make_environment
from ..users import User
from .clusters import ClusterLink
from .collector import collect
from .context import SUBMITTERS, JobContext
from .idempotency import replayed_job, request_hash
from .intake import store_new_job, unknown_storage
from .joblog import (
    PROGRESS_EVERY,
    LiveReads,
    LogChunk,
    collected_log,
    live_log,
    read_progress,
)
from .lab_watcher import LabWatcher
from .labs import LabProbe, LabRoute, open_lab
from .limits import check_limits
from .outputs import list_outputs, output_file
from .oversight import admin_jobs, require_admin
from .poller import poll_forever
from .retention import prune_daily
from .stager import stage_job
from .submitter import submit_worker
from .uploads import NotebookChecks, name_of_file
from .webhooks import WebhookDeliverer

log = logging.getLogger(__name__)
# A worker's per-job entry point (stage_job, collect).
JobWork = Callable[[JobContext, str], Coroutine[Any, Any, None]]



class JobService:
    def __init__(
        self,
        config: Config,
        store: Store,
        clusters: dict[str, ClusterLink],
        templates: jinja2.Environment | None = None,
        credentials: StorageCredentials | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.config = config
        self.clusters = clusters
        self._store = store
        templates = templates or make_environment(config.gateway.template_dir)
        self.ctx = JobContext(config, store, clusters, templates, credentials,
                              metrics=metrics or GatewayMetrics())
        private_dir(self.ctx.data_dir / "jobs")
        self._tasks: set[asyncio.Task[Any]] = set()
        # Job id -> loop time its progress was last read from the cluster.
        self._progress_read: dict[str, float] = {}
        self._live_reads = LiveReads()  # log reads under way on the cluster, per user
        # Big documents users wrote are worked on in a process of its own (the checks here,
        # the portal's notebook pages): one for the whole gateway.
        self.offload = Offload()
        self._notebook_checks = NotebookChecks(self.offload)
        # (user id, job id) -> the route to that user's ready lab, while the store is unchanged.
        self._lab_routes: StampedCache[tuple[int, str], LabRoute] = store.stamped_cache()

    # -- background work ------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coroutine`` in the background; the service cancels it on stop."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def _stop_task(self, name: str) -> bool:
        """Cancel the background task called ``name`` (its commands are killed and its
        cleanup runs); whether there was one."""
        found = [task for task in self._tasks if task.get_name() == name and not task.done()]
        for task in found:
            task.cancel()
        return bool(found)

    async def _run_each(self, queue: asyncio.Queue[str], work: JobWork, name: str) -> None:
        """One task of ``work`` for each job id put on ``queue``: stagings and collections may
        take minutes each, so they run side by side, not from a pool."""
        while True:
            job_id = await queue.get()
            self._spawn(work(self.ctx, job_id), f"{name}-{job_id}")

    async def start(self, lab_probe: LabProbe | None = None) -> None:
        """Start the submitters, the pollers, the collections, the daily artifact retention
        pass, the webhook deliverer and, given the lab proxy's ``lab_probe``, the lab watcher;
        resume unfinished jobs."""
        ctx = self.ctx
        for job in self._store.jobs_in({State.ACCEPTED, State.STAGING}):
            ctx.submit_later(job["id"])
        for job in self._store.jobs_in({State.COLLECTING}):
            ctx.collect_later(job["id"])
        for number in range(SUBMITTERS):
            self._spawn(submit_worker(ctx), f"submitter-{number}")
        for link in self.clusters.values():
            self._spawn(poll_forever(ctx, link), f"poller-{link.name}")
        self._spawn(self._run_each(ctx.stage_queue, stage_job, "stage"), "stagings")
        self._spawn(self._run_each(ctx.collect_queue, collect, "collect"), "collections")
        self._spawn(prune_daily(ctx), "artifact-retention")
        self._spawn(WebhookDeliverer(ctx).run(), "webhooks")
        if lab_probe is not None:
            self._spawn(LabWatcher(ctx, lab_probe).run(), "lab-watcher")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.offload.close()
        for link in self.clusters.values():
            await link.transport.close()

    # -- requests ---------------------------------------------------------------------------

    def get_job(self, user: User, job_id: str) -> dict[str, Any]:
        """``user``'s job ``job_id`` (a store row); NotFound for a missing or another's job."""
        return self._store.get_job(job_id, user.id)

    async def current_job(self, user: User, job_id: str) -> dict[str, Any]:
        """:meth:`get_job`, with a running notebook's progress read from the cluster first
        (at most every :data:`.joblog.PROGRESS_EVERY` seconds; a failed read keeps the last)."""
        job = self._store.get_job(job_id, user.id)
        link = self.clusters.get(job["cluster"])
        now = asyncio.get_running_loop().time()
        if (job["kind"] != "notebook" or job["state"] != State.RUNNING or link is None
                or now - self._progress_read.get(job_id, -PROGRESS_EVERY) < PROGRESS_EVERY):
            return job
        self._progress_read[job_id] = now
        try:
            progress = await read_progress(link.transport, job)
        except GatewayError as exc:
            log.info("progress of job %s not read: %s", job_id, exc.detail)
            return job
        if progress is not None and json.dumps(progress) != job["progress"]:
            self._store.update_job(job_id, progress=json.dumps(progress))
            job = self._store.get_job(job_id, user.id)
        return job

    def list_jobs(self, user: User, query: JobQuery | None = None) -> list[dict[str, Any]]:
        """``user``'s jobs that match ``query`` (:mod:`gateway.listing`), newest first."""
        return self._store.query_jobs(user.id, query or JobQuery())

    def require_admin(self, caller: User) -> None:
        """403 unless ``caller`` is an admin (an admin route checks it before its input)."""
        require_admin(caller)

    def admin_jobs(self, caller: User, query: JobQuery) -> list[dict[str, Any]]:
        """Every user's jobs, for an admin (:func:`.oversight.admin_jobs`; 403 otherwise)."""
        return admin_jobs(self._store, caller, query)

    def event_watermark(self) -> int:
        """The newest events row id: where a job stream asking for no earlier change starts."""
        return self._store.last_event_id()

    def job_changes(self, caller: User, after: int, *, everyone: bool = False,
                    limit: int = 200) -> list[tuple[int, dict[str, Any]]]:
        """``(events row id, job row with its owner as "user")`` for each state change after
        events row ``after`` of ``caller``'s jobs (``everyone``: every user's; 403 unless an
        admin), oldest first, at most ``limit``. The job is as it is now: one that moved twice
        shows its current state twice."""
        if everyone:
            require_admin(caller)
        items = self._store.feed.changes_since(after, None if everyone else caller.id, limit)
        rows = {item.job_id: self._store.get_job(item.job_id) for item in items}
        return [(item.event_id, {**rows[item.job_id], "user": item.user}) for item in items]

    def job_counts(self) -> list[JobCount]:
        """Every job, grouped for ``hpcgw_jobs`` (the metrics endpoint reads it per scrape)."""
        return [JobCount(*row) for row in self._store.job_counts()]

    def reachability(self) -> dict[str, bool | None]:
        """Each cluster's reachability as the poller last saw it (None: not looked yet)."""
        return {name: link.reachable for name, link in self.clusters.items()}

    def events(self, user: User, job_id: str) -> list[dict[str, Any]]:
        """Every state change of ``user``'s job and every attempt to deliver one to its
        webhook, oldest first (``kind`` tells them apart); NotFound as :meth:`get_job`."""
        self._store.get_job(job_id, user.id)
        return self._store.events(job_id, deliveries=True)

    async def open_lab(self, user: User, job_id: str) -> LabRoute:
        """The route to ``user``'s ready lab (see :func:`.labs.open_lab`). The answer is kept
        until the store next changes (a lab that ends changes it) or :meth:`lab_unreachable`."""
        return await self._lab_routes.lookup_async(
            (user.id, job_id), lambda: open_lab(self.ctx, user.id, job_id))

    def cached_lab(self, user: User, job_id: str) -> LabRoute | None:
        """What :meth:`open_lab` answered for ``user``'s ``job_id`` if the store has not
        changed since; None otherwise (ask :meth:`open_lab`)."""
        return self._lab_routes.peek((user.id, job_id))

    async def person_account(self, unix_user: str, uids: range) -> bool:
        """Whether ``unix_user`` is a person's account on every cluster (:meth:`ClusterLink.
        person_account`), for a user single sign-on would create."""
        for link in self.clusters.values():
            if not await link.person_account(unix_user, uids):
                return False
        return bool(self.clusters)

    def lab_unreachable(self, user: User, job_id: str) -> None:
        """The route :meth:`open_lab` gave did not answer (a port forward that went down):
        the next request works it out again."""
        self._lab_routes.discard((user.id, job_id))

    async def create_notebook_job(
        self, user: User, raw_spec: Any, notebook: bytes, idempotency_key: str | None = None,
        side_files: Sequence[tuple[str, bytes]] = (), filename: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Validate and store a notebook run, with its ``side_files`` ((name, content) pairs,
        :mod:`gateway.staging.sidefiles`); ``(job, created)``. A spec without a name gets the
        notebook's ``filename`` without ``.ipynb`` (as sbatch names a job after its script).

        A repeated ``idempotency_key`` of the same user returns the first job and False, even
        over a limit. Otherwise :class:`TooManyRequests` (429) if the user is at
        ``max_active_jobs`` or ``max_submissions_per_minute`` (checked before the upload is
        parsed, so that a refused request costs no validation, and again once the notebook is
        checked, so that parallel uploads cannot pass a limit together) or already has
        uploads being checked (:class:`.uploads.NotebookChecks`); then ValidationFailed (422)
        naming every bad field, the notebook included.
        """
        fingerprint = request_hash("notebook", raw_spec, notebook, side_files)
        existing = replayed_job(self._store, user.id, idempotency_key, fingerprint)
        if existing:
            return existing, False
        check_limits(self._store, self.config.limits, user, "notebook")
        spec = parse_spec(raw_spec)
        errors: list[FieldError] = []
        try:
            checked, words = await self._notebook_checks.checked(user.id, notebook,
                                                                 spec.parameters)
        except WorkFailed as exc:
            checked, words = None, str(exc)
        if checked is None:
            errors.append(FieldError("notebook", f"not a valid Jupyter notebook: {words}"[:300]))
        errors += side_file_errors([name for name, _ in side_files])
        try:
            resolved = resolve_spec(spec, self.config, default_name=name_of_file(filename))
        except ValidationFailed as exc:
            raise ValidationFailed(errors + exc.errors) from None
        if resolved.kind != "notebook":
            errors.append(FieldError("kind", "a lab is asked for with a JSON body, not a form"))
        errors += unknown_storage(self.ctx, user, resolved)
        if errors:
            raise ValidationFailed(errors)
        # After the wait: a retry with the same key (sent while the first was checked) gets
        # its job even over a limit, and parallel uploads cannot pass a limit together.
        existing = replayed_job(self._store, user.id, idempotency_key, fingerprint)
        if existing:
            return existing, False
        check_limits(self._store, self.config.limits, user, "notebook")
        assert checked is not None
        files = {"input.ipynb": checked,
                 **{f"{SIDE_DIR}/{name}": data for name, data in side_files}}
        return store_new_job(self.ctx, user, resolved, idempotency_key, files,
                             request_hash=fingerprint, warning=words)

    def create_lab_job(
        self, user: User, raw_spec: Any, idempotency_key: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Validate and store a lab request (``kind: "lab"``); ``(job, created)`` as above,
        with ``max_active_labs`` in place of ``max_active_jobs``.

        The lab's server token is never stored: :func:`gateway.tokens.lab_token` derives it
        when the submitter puts it on the cluster as a 0600 file and when the proxy injects it.
        """
        fingerprint = request_hash("lab", raw_spec)
        existing = replayed_job(self._store, user.id, idempotency_key, fingerprint)
        if existing:
            return existing, False
        check_limits(self._store, self.config.limits, user, "lab")
        spec = parse_spec(raw_spec)
        if spec.kind != "lab":
            raise ValidationFailed([FieldError(
                "kind", 'a JSON body asks for a lab ("kind": "lab"); send a notebook run as '
                "multipart/form-data")])
        resolved = resolve_spec(spec, self.config, default_name="lab")
        errors = unknown_storage(self.ctx, user, resolved)
        if errors:
            raise ValidationFailed(errors)
        return store_new_job(self.ctx, user, resolved, idempotency_key, {},
                             request_hash=fingerprint)

    async def cancel(self, user: User, job_id: str) -> tuple[dict[str, Any], bool]:
        """Cancel a job; ``(job, accepted)``. Idempotent; a terminal job is returned unchanged.

        A job not yet in Slurm is cancelled at once, its staging stopped if it is copying
        inputs. Otherwise ``scancel`` is sent now if the scheduler answers, else by the poller
        as soon as it does; the state follows Slurm.
        """
        job = self._store.get_job(job_id, user.id)
        if State(job["state"]) in TERMINAL:
            return job, False
        self._store.update_job(job_id, cancel_requested=1)
        staging = job["state"] == State.STAGING and self._stop_task(f"stage-{job_id}")
        if job["state"] == State.ACCEPTED or staging:
            try:
                return self._store.transition(
                    job_id, State.CANCELLED, reason=Reason.USER_CANCELLED,
                    message="cancelled during staging" if staging
                    else "cancelled before submission"), True
            except IllegalTransition:  # the submitter picked it up meanwhile
                job = self._store.get_job(job_id)
        link = self.clusters.get(job["cluster"])
        if job["slurm_job_id"] and link:
            await link.send_cancel(job)
            link.wake.set()
        return self._store.get_job(job_id), True

    def output_notebook(self, user: User, job_id: str) -> Path | None:
        """The executed notebook's path; None while there is none (yet). Raises
        :class:`Gone` (410) once retention removed the job's artifacts: that is for good."""
        job = _with_artifacts(self._store.get_job(job_id, user.id))
        path = self.ctx.job_dir(job_id) / "output.ipynb"
        return path if job["has_notebook"] and path.exists() else None

    async def output_files(self, user: User, job_id: str) -> list[dict[str, Any]]:
        """The job's collected output files (path, size); empty before it ended or without
        outputs. :class:`Gone` once retention removed them. The walk runs in a thread."""
        _with_artifacts(self._store.get_job(job_id, user.id))
        return await asyncio.to_thread(list_outputs, self.ctx.job_dir(job_id))

    def output_file(self, user: User, job_id: str, path: str) -> Path:
        """One collected output file; NotFound for a path that is not one (no link is
        followed, nothing outside the job's outputs), :class:`Gone` after retention."""
        _with_artifacts(self._store.get_job(job_id, user.id))
        found = output_file(self.ctx.job_dir(job_id), path)
        if found is None:
            raise NotFound(f"no output file {path[:200]!r}", job_id=job_id)
        return found

    async def job_log(self, user: User, job_id: str,
                      offset: int | None = None) -> tuple[LogChunk, dict[str, Any]]:
        """The job's output log and the job: read live from the cluster until it ended, the
        collected copy after (:mod:`.joblog`). Without ``offset`` its last
        ``gateway.log_tail_bytes``; with one, at most that many bytes from there on.

        Empty while there is none. A live log that is not a regular file raises
        :class:`RemoteFileRefused` (502, naming the file), never a read of whatever it leads
        to. :class:`Gone` (410) once retention removed the job's artifacts.
        """
        job = _with_artifacts(self._store.get_job(job_id, user.id))
        limit = self.config.gateway.log_tail_bytes
        link = self.clusters.get(job["cluster"])
        if State(job["state"]) in TERMINAL or not job["slurm_job_id"] or link is None:
            return collected_log(self.ctx.job_dir(job_id), limit, offset), job
        with self._live_reads.reading(user.id):
            return await live_log(link.transport, job, limit, offset), job


def _with_artifacts(job: dict[str, Any]) -> dict[str, Any]:
    """``job``, unless retention removed its artifacts: then :class:`Gone` (410), for good."""
    if job["artifacts_removed_at"]:
        raise Gone(f"the job's artifacts were removed at {job['artifacts_removed_at']} "
                   "(artifact retention)", job_id=job["id"],
                   artifacts_removed_at=job["artifacts_removed_at"])
    return job
