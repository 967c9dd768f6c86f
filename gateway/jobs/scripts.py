"""What the submitter hands to the scheduler for one job: its batch script and its options.

Both are built from the job's store row (keys ``id``, ``kind``, ``spec`` — the JSON of a
:class:`gateway.spec.ResolvedSpec` —, ``workdir`` and ``unix_user``) and its cluster's config. The
script (:func:`render_script`) carries no scheduler option; those are :func:`submit_options`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jinja2

from connectors.base import StorageTarget
from connectors.mount import MountConnector

from ..config import ClusterConfig
from ..runtimes import ContainerRuntime
from ..runtimes.base import PASSED_VARIABLES, SYSTEM_PATH, ContainerJob
from ..scheduler.options import InvalidSubmitOptions, SubmitOptions
from ..spec import ResolvedSpec
from ..templates import ScriptRenderError, ShellVariable, Word, render

# Slurm's output file in the job's directory (also a trace that the job ran: see submitter.py).
JOB_LOG = "job.log"


def slurm_job_name(name: str) -> str:
    """The job name as Slurm shows it: the gateway name reduced to safe characters."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    return ("hpcgw-" + cleaned)[:64]


def render_script(
    templates: jinja2.Environment,
    job: Mapping[str, Any],
    cluster: ClusterConfig,
    runtimes: Mapping[str, ContainerRuntime],
) -> str:
    """The batch script of ``job``: ``notebook.sh.j2`` or ``lab.sh.j2`` (by the spec's kind) from
    ``templates``, its command run through the runtime of its image (``runtimes`` by name; the
    host's environment, ``none``, without an image).

    Template context: ``job_id``, ``workdir``, ``python`` (the image's, else the cluster's),
    ``slurm_name``, ``spec`` (the ResolvedSpec), ``lab_bind`` (the cluster's), ``runtime`` and
    ``container`` (the :class:`ContainerJob` it runs for). Raises
    :class:`gateway.templates.ScriptRenderError` for an unsafe value or a broken template, or
    an image or runtime the cluster no longer has (its config changed since the job was
    accepted).
    """
    spec = ResolvedSpec.model_validate_json(job["spec"])
    image = cluster.images.get(spec.image) if spec.image is not None else None
    runtime = runtimes.get(image.runtime if image is not None else "none")
    if runtime is None or (spec.image is not None and image is None):
        raise ScriptRenderError(f"image {spec.image!r} is no longer offered by cluster "
                                f"{cluster.name}")
    python = cluster.image_python(spec.image)
    return render(
        templates,
        f"{spec.kind}.sh.j2",
        job_id=job["id"],
        workdir=job["workdir"],
        python=python,
        slurm_name=slurm_job_name(spec.name),
        spec=spec,
        lab_bind=cluster.lab_bind,
        runtime=runtime,
        container=ContainerJob(
            image=image.path if image is not None else "",
            workdir=job["workdir"],
            binds=tuple(image.binds) if image is not None else (),
            gpus=spec.gpus,
            env=container_environment(job, spec, python),
        ),
        passed_variables=PASSED_VARIABLES,
        mounts=mount_commands(job, spec),
        lab_root=(f"{job['workdir']}/work" if spec.kind == "lab" and (spec.inputs or spec.persist)
                  else None),
    )


def container_environment(job: Mapping[str, Any], spec: ResolvedSpec,
                          python: str) -> tuple[tuple[str, Word], ...]:
    """The variables a job's command gets in a container (besides Slurm's and the GPU
    selection, which the script passes on): the user's ``HOME`` and ``USER``, a ``PATH`` that
    starts at the image's Python, a UTF-8 locale, the job's private Jupyter runtime directory
    and the job's id and name. The lab's token is not among them: ``lab.py`` reads it from its
    0600 file."""
    return (
        ("HOME", ShellVariable("HOME")),
        ("USER", ShellVariable("USER")),
        ("PATH", f"{python.rsplit('/', 1)[0]}:{SYSTEM_PATH}"),
        ("LANG", "C.UTF-8"),
        ("JUPYTER_RUNTIME_DIR", ShellVariable("JUPYTER_RUNTIME_DIR")),
        ("HPCGW_JOB_ID", str(job["id"])),
        ("HPCGW_JOB_NAME", spec.name),
    )


def mount_commands(job: Mapping[str, Any], spec: ResolvedSpec) -> list[dict[str, Any]]:
    """The job's SSHFS mounts (``staged_inputs``, from the stager): for each, its mount point
    and the sshfs argv, run on the host (a container gets the mount bound in)."""
    staged = json.loads(job.get("staged_inputs") or "{}")
    connector = MountConnector()
    commands = []
    for mount in staged.get("mounts", []):
        binding = spec.inputs[mount["input"]]
        target = StorageTarget(mount["host"], mount["port"], mount["user"],
                               f"key-{mount['input']}")
        commands.append({"point": f"{job['workdir']}/inputs/{binding.parameter}",
                         "argv": connector.sshfs_argv(binding, target, mount["remote"],
                                                      job["workdir"])})
    return commands


def submit_options(job: Mapping[str, Any], cluster: ClusterConfig) -> SubmitOptions:
    """The scheduler options of ``job`` on ``cluster``: its spec's resources, run as its unix
    user in its work directory with Slurm's output appended to ``job.log`` there, tagged with
    the job id, which is also in its environment as ``HPCGW_JOB_ID``.

    Raises :class:`gateway.scheduler.options.InvalidSubmitOptions` (a GatewayError: the job
    fails) when a value is unsafe, or when the job's spec names another cluster.
    """
    spec = ResolvedSpec.model_validate_json(job["spec"])
    if spec.cluster != cluster.name:
        raise InvalidSubmitOptions(
            f"job {job['id']} is for cluster {spec.cluster!r}, not {cluster.name!r}")
    workdir = str(job["workdir"])
    return SubmitOptions(
        user=job["unix_user"],
        job_name=slurm_job_name(spec.name),
        partition=spec.partition,
        time_s=spec.time_s,
        cpus=spec.cpus,
        memory_mb=spec.memory_mb,
        gpus=spec.gpus,
        gpu_type=spec.gpu_type,
        account=spec.account,
        qos=spec.qos,
        constraint=spec.constraint,
        reservation=spec.reservation,
        workdir=workdir,
        output=f"{workdir}/{JOB_LOG}",
        tag=job["id"],
        environment={"HPCGW_JOB_ID": job["id"]},
    )
