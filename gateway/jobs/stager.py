"""Stage-in: a job's inputs, copied from storage servers into its work directory (``copy``) or
probed to be mounted by the job (``mount``), and a lab's persisted working directory restored
into ``work/``, before sbatch.

Where the transfer runs: on the cluster's login side, through the cluster's transport, as the
job's own user (gateway/jobside/stage.py, with scp). The data goes from the storage server to
the cluster directly, never through the gateway, and lands on the file system the job reads;
the job is in ``staging`` meanwhile and only goes to Slurm once every input is there and
checked, so no Slurm job waits for data, and a failed input ends the job ``failed`` with reason
``staging`` and a message naming the input and the cause. The storage keys and the pinned host
keys reach the cluster as 0600 files in ``<workdir>/.stage`` (0700), removed when the stager
ends, however it ends (and by the collector's cleanup should the gateway die meanwhile: the
next staging attempt replaces them).

Each job's staging runs as a task of its own (the service starts one per job on the
``stage_queue``), so a long copy never holds a submitter: other users' submissions go on. A
gateway restart mid-staging starts the job's staging again from the start (the stager's
temporary names make that safe); nothing was sent to Slurm yet, so nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

from connectors import StorageTarget, load_connector

from .. import untrusted
from ..errors import ClusterUnavailable, CommandTimeout, GatewayError
from ..spec import InputSpec, ResolvedSpec
from ..staging.credentials import Transfer
from ..states import IllegalTransition, Reason, State
from ..timestamps import parse_timestamp
from ..transport import Transport
from ..transport.base import mkdir_argv
from .clusters import ClusterLink
from .context import JobContext

log = logging.getLogger(__name__)
STAGE_DIR = ".stage"
REPORT_LIMIT = 64 * 1024  # the stager prints one small JSON object (and errors before it)
MAX_BACKOFF = 30.0


class StagingFailed(GatewayError):
    """An input could not be staged; ``detail`` names the input and the cause."""

    type_slug = "staging"
    title = "Staging failed"


def needs_staging(job: dict[str, Any]) -> bool:
    """Whether ``job`` has inputs (or a lab's persisted directory) not staged yet."""
    spec = ResolvedSpec.model_validate_json(job["spec"])
    return bool(spec.inputs or spec.persist) and job["staged_inputs"] is None


def staged_parameters(job: dict[str, Any]) -> dict[str, str]:
    """The local path of each staged input, by parameter (empty before staging)."""
    staged: dict[str, str] = json.loads(job["staged_inputs"] or "{}").get("parameters", {})
    return staged


def staged_mounts(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The mounts the job's script makes: parameter, remote directory, input number."""
    mounts: list[dict[str, Any]] = json.loads(job["staged_inputs"] or "{}").get("mounts", [])
    return mounts


async def stage_job(ctx: JobContext, job_id: str) -> None:
    """Stage ``job_id``'s inputs (copied, or probed for a mount) and a lab's persisted
    directory, then hand it back to the submitters; or end it
    ``failed``/``staging``. A cluster that can't be reached is retried with backoff until the
    cluster's ``submit_deadline``. A job no longer in ``staging`` (cancelled) is left alone."""
    job = ctx.store.get_job(job_id)
    link = ctx.clusters.get(job["cluster"])
    if job["state"] != State.STAGING or job["staged_inputs"] is not None or link is None:
        return
    deadline = parse_timestamp(job["created_at"]).timestamp() + link.config.submit_deadline
    backoff = 1.0
    while True:
        try:
            staged = await _stage(ctx, link, job)
            break
        except (ClusterUnavailable, CommandTimeout) as exc:
            if isinstance(exc, CommandTimeout) or time.time() + backoff > deadline:
                _fail(ctx, job_id, f"staging did not finish: {exc.detail}")
                return
            log.warning("job %s: staging waits for the cluster: %s", job_id, exc.detail)
        except GatewayError as exc:
            _fail(ctx, job_id, exc.detail)
            return
        except Exception:  # what the stager answered broke the gateway: never stuck in staging
            log.exception("job %s: staging failed unexpectedly", job_id)
            _fail(ctx, job_id, "staging failed (the gateway's log says why)")
            return
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)
    ctx.store.update_job(job_id, staged_inputs=json.dumps(staged))
    ctx.submit_later(job_id)


def _fail(ctx: JobContext, job_id: str, message: str) -> None:
    log.info("job %s: staging failed: %s", job_id, message)
    with contextlib.suppress(IllegalTransition):  # cancelled meanwhile
        job = ctx.store.transition(job_id, State.FAILED, reason=Reason.STAGING,
                                   message=message)
        ctx.metrics.staging_failures.labels(job["cluster"]).inc()


def key_files(ctx: JobContext, job: dict[str, Any],
              storages: Mapping[str, str]) -> tuple[dict[str, bytes], dict[str, Transfer]]:
    """For each ``key file name -> storage server name`` of the job's user: the private key as
    that file, plus ``known_hosts`` pinning each server's host key (what the job-side stager
    and the mount script give ssh); and the unsealed transfers by key file name."""
    assert ctx.credentials is not None
    transfers = {key: ctx.credentials.for_transfer(job["user_id"], storage)
                 for key, storage in storages.items()}
    files = {key: transfer.private_key for key, transfer in transfers.items()}
    files["known_hosts"] = "".join(f"[{t.host}]:{t.port} {t.host_key}\n"
                                   for t in transfers.values()).encode()
    return files, transfers


def stage_files(ctx: JobContext,
                job: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Transfer]]:
    """What goes into ``<workdir>/.stage``: the stager, its plan, the pinned host keys and one
    private key per input (``key-<n>``) and for a persisted lab directory (``key-persist``);
    and the transfers by key file name."""
    spec = ResolvedSpec.model_validate_json(job["spec"])
    storages = {f"key-{number}": binding.storage for number, binding in enumerate(spec.inputs)}
    if spec.persist is not None:
        storages["key-persist"] = spec.persist.storage
    files, transfers = key_files(ctx, job, storages)
    plan = []
    for number, binding in enumerate(spec.inputs):
        transfer = transfers[f"key-{number}"]
        target = StorageTarget(transfer.host, transfer.port, transfer.user, f"key-{number}")
        plan.append(load_connector(binding.mode).plan(binding, target))
    if spec.persist is not None:
        transfer = transfers["key-persist"]
        plan.append({"parameter": "persist", "persist": True, "host": transfer.host,
                     "port": transfer.port, "user": transfer.user, "key": "key-persist",
                     "path": spec.persist.path})
    files["plan.json"] = json.dumps({"inputs": plan,
                                     "max_bytes": ctx.config.staging.max_input_bytes}).encode()
    return files, transfers


async def run_stager(transport: Transport, python: str, job: dict[str, Any],
                     files: dict[str, bytes], *args: str, timeout: float) -> tuple[bytes, str]:
    """Put ``files`` and the job-side stager in ``<workdir>/.stage`` and run it there as the
    job's user with ``args``; the directory, keys and all, is removed afterwards, however the
    run ends. Returns its answer (the last line it printed) and what it printed before (its
    errors).

    The job's user could replace the stager before it runs: what it prints is cut on the
    cluster at :data:`REPORT_LIMIT` bytes (``head -c``), so the gateway never holds more; an
    answer over that is no answer.
    """
    user, workdir = job["unix_user"], job["workdir"]
    stager = resources.files("gateway.jobside").joinpath("stage.py").read_bytes()
    try:
        await transport.put_files(f"{workdir}/{STAGE_DIR}", {**files, "stage.py": stager},
                                  user=user)
        result = await transport.run(
            ["sh", "-c", f'"$@" 2>&1 | head -c {REPORT_LIMIT + 1}', "sh",
             python, "-I", f"{workdir}/{STAGE_DIR}/stage.py", "--workdir", workdir, *args],
            user=user, timeout=timeout, check=False)
    finally:
        await remove_stage_dir(transport, workdir, user)
    if len(result.stdout) > REPORT_LIMIT:
        return b"", f"the stager printed more than {REPORT_LIMIT} bytes"
    earlier, _, answer = result.stdout.rstrip(b"\n").rpartition(b"\n")
    return answer, earlier.decode(errors="replace")


async def _stage(ctx: JobContext, link: ClusterLink, job: dict[str, Any]) -> dict[str, Any]:
    """Run the stager on the cluster; what ``staged_inputs`` records: ``{"parameters":
    {parameter: local path}, "mounts": [{"parameter", "remote", "input", "host", "port",
    "user"}], "persist": bool}``. StagingFailed naming the input and the cause when an input
    could not be staged."""
    files, transfers = stage_files(ctx, job)
    await link.transport.run(mkdir_argv(job["workdir"]), user=job["unix_user"])  # 0700 first
    answer, errors = await run_stager(link.transport, link.config.python, job, files,
                                      timeout=ctx.config.staging.copy_timeout)
    spec = ResolvedSpec.model_validate_json(job["spec"])
    staged = _report(answer, errors, job["workdir"], spec.inputs, spec.persist is not None)
    for mount in staged["mounts"]:  # where the job's script connects (no secret)
        transfer = transfers[f"key-{mount['input']}"]
        mount.update(host=transfer.host, port=transfer.port, user=transfer.user)
    return staged


async def remove_stage_dir(transport: Transport, workdir: str, user: str) -> None:
    """Remove the keys and the plan from the cluster; a failure is logged (the next staging
    attempt or the job's collection removes them)."""
    try:
        await transport.run(["rm", "-rf", "--", f"{workdir}/{STAGE_DIR}"], user=user)
    except GatewayError as exc:
        log.warning("could not remove %s/%s: %s", workdir, STAGE_DIR, exc.detail)


def _report(stdout: bytes, stderr: str, workdir: str,
            inputs: tuple[InputSpec, ...], persist: bool = False) -> dict[str, Any]:
    """The stager's answer, checked (it comes from the cluster): for each input a local path
    inside ``<workdir>/inputs/<parameter>``, for each mount input the directory to mount (its
    path, or a file's parent directory), and ``<workdir>/work`` for a lab's persisted
    directory; or StagingFailed for its error."""
    try:
        report = untrusted.loads(stdout)
    except ValueError:
        printed = (stderr + "\n" + stdout.decode(errors="replace")).strip().splitlines()
        raise StagingFailed("the stager gave no answer: "
                            + (printed or ["(no output)"])[-1][:300]) from None
    if not isinstance(report, dict):
        raise StagingFailed("the stager's answer is malformed")
    error = report.get("error")
    if isinstance(error, dict):
        raise StagingFailed(f"input {str(error.get('parameter'))[:64]}: "
                            f"{str(error.get('cause'))[:64]}: {str(error.get('message'))[:300]}")
    paths, remotes = report.get("inputs"), report.get("mounts", {})
    if not isinstance(paths, dict) or not isinstance(remotes, dict) \
            or set(paths) != {binding.parameter for binding in inputs} \
            or set(remotes) != {b.parameter for b in inputs if b.mode == "mount"} \
            or report.get("persist") != (f"{workdir}/work" if persist else None):
        raise StagingFailed("the stager's answer is malformed")
    mounts = []
    for number, binding in enumerate(inputs):
        if not _expected_path(paths[binding.parameter], workdir, binding,
                              remotes.get(binding.parameter)):
            raise StagingFailed("the stager's answer is malformed")
        if binding.mode == "mount":
            mounts.append({"parameter": binding.parameter, "input": number,
                           "remote": remotes[binding.parameter]})
    return {"parameters": paths, "mounts": mounts, "persist": persist}


def _expected_path(path: Any, workdir: str, binding: InputSpec, remote: Any) -> bool:
    """Whether the stager's ``path`` (and ``remote``, for a mount) are where this input goes."""
    point = f"{workdir}/inputs/{binding.parameter}"
    if not isinstance(path, str) or ".." in path.split("/") or \
            not (path + "/").startswith(point + "/"):
        return False
    if binding.mode != "mount":
        return True
    source = binding.path.rstrip("/") or "/"
    as_dir = remote == source and path == point
    as_file = (remote == posixpath.dirname(source)
               and path == f"{point}/{posixpath.basename(source)}")
    return isinstance(remote, str) and (as_dir or as_file)
