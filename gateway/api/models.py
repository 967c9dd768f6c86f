"""The API's answers as pydantic models.

Every JSON answer of the API is built through one of these models (:func:`json_answer`), and
the OpenAPI document's schemas are generated from the same classes (:mod:`.openapi`), so the
document cannot drift from what the handlers send. The models forbid unknown fields: a view
that grows a field the model lacks fails at once (in the unit tests) instead of going out
undocumented.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ..spec import InputSpec, OutputSpec, PersistSpec, WebhookSpec
from ..states import Reason, State

Stamp = Annotated[str, Field(json_schema_extra={"format": "date-time"},
                             examples=["2026-12-02T01:49:17.677Z"])]
JOB_ID_PATTERN = "^[0-9a-f]{16}$"


class _Answer(BaseModel):
    # Every field is always sent, so the schema marks those with defaults required too.
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class Progress(_Answer):
    """Code cells of a notebook run: executed so far, and in all."""

    done: int = Field(ge=0)
    total: int = Field(ge=0)


class Job(_Answer):
    """A job as the API shows it (design.md §3): what was asked, resolved with the cluster's
    defaults, and where it stands."""

    id: str = Field(pattern=JOB_ID_PATTERN)
    kind: Literal["notebook", "lab"]
    name: str
    cluster: str
    state: State
    pending_reason: str | None = Field(description="Slurm's reason while the job is pending")
    expected_start: Stamp | None = Field(
        description="while pending: when Slurm expects the job to start, if it knows")
    reason: Reason | None = Field(description="why the job reached its terminal state")
    message: str | None = Field(description="a sentence about the last state change")
    slurm_job_id: str | None
    node: str | None
    exit_code: int | None = Field(description="the batch script's exit code as Slurm reported it")
    partition: str
    account: str | None
    qos: str | None
    constraint: str | None
    reservation: str | None
    cpus: int
    gpus: int
    gpu_type: str | None
    memory: str | None = Field(description="per node, with a unit (2048M); null: Slurm's default")
    time: str = Field(description="the time limit, as Slurm writes it (D-HH:MM:SS)")
    image: str | None = Field(description="the container image; null: the host's environment")
    kernel: str
    parameters: dict[str, Any]
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    persist: PersistSpec | None = None
    webhook: WebhookSpec | None = Field(None, description="where the job's state changes are "
                                        "POSTed")
    progress: Progress | None = Field(description="notebook runs: cells done and in all")
    scheduler_reachable: bool
    notebook_available: bool = Field(description="whether GET .../notebook has a notebook")
    last_activity: Stamp | None = Field(
        description="labs: the last traffic or busy kernel the gateway recorded (to within "
        "seconds); the lab is stopped lab_idle_timeout seconds after it")
    lab_url: str | None = Field(None, description="labs: where the browser opens the lab")
    created_at: Stamp
    updated_at: Stamp
    started_at: Stamp | None
    ended_at: Stamp | None
    artifacts_removed_at: Stamp | None = Field(
        description="when retention removed the job's notebook, log and outputs")


class JobList(_Answer):
    jobs: list[Job]
    next: str | None = Field(description="the next page's URL (also in a Link header); null on "
                             "the last page")


class AdminJob(Job):
    """A job in the admin's listing: with its owner."""

    user: str = Field(description="the gateway user who owns the job")


class AdminJobList(_Answer):
    jobs: list[AdminJob]
    next: str | None = Field(description="the next page's URL (also in a Link header); null on "
                             "the last page")


class Event(_Answer):
    """One state change of a job (``kind`` ``state``), or one attempt to deliver one to the
    job's webhook (``kind`` ``webhook``: ``to_state`` is the state announced, ``from_state``
    and ``reason`` are null, ``message`` says how the attempt went)."""

    at: Stamp
    kind: Literal["state", "webhook"]
    from_state: State | None
    to_state: State
    reason: Reason | None
    message: str | None


class EventList(_Answer):
    events: list[Event]


class OutputFile(_Answer):
    path: str = Field(description="relative to the job's outputs")
    size: int = Field(ge=0, description="bytes")


class OutputFileList(_Answer):
    files: list[OutputFile]


class ClusterHealth(_Answer):
    reachable: bool | None = Field(description="null: not checked yet (just started)")
    error: str | None = Field(None, description="why the cluster is unreachable")


class Health(_Answer):
    status: Literal["ok"]
    clusters: dict[str, ClusterHealth]


class SchedulerPartition(_Answer):
    """A partition as ``sinfo`` last described it."""

    available: bool
    time_limit: str
    nodes: int = Field(ge=0)
    gres: str
    cpus_per_node: int | None = Field(description="null: sinfo gave no number")
    memory_per_node_mb: int | None = Field(description="null: sinfo gave no number")
    node_states: dict[str, int]


class Partition(_Answer):
    """A partition's limits and defaults (the gateway's policy) and what Slurm says of it."""

    max_time: str
    default_time: str
    max_cpus: int
    max_memory: str
    max_gpus: int
    gpu_types: list[str]
    default_cpus: int
    default_memory: str | None
    lab_default_memory: str | None
    scheduler: SchedulerPartition | None = Field(
        description="null until the gateway's first look at the cluster, or if Slurm does not "
        "list the partition")


class Image(_Answer):
    name: str
    runtime: str
    gpu: bool
    description: str


class Cluster(_Answer):
    name: str
    reachable: bool | None
    default_partition: str
    partitions: dict[str, Partition]
    accounts: list[str]
    qos: list[str]
    constraints: list[str]
    reservations: list[str]
    kernels: list[str]
    images: list[Image]
    default_image: str | None
    lab_idle_timeout: float = Field(
        description="seconds without traffic or a busy kernel after which a lab is stopped")


class ClusterList(_Answer):
    clusters: list[Cluster]


class Storage(_Answer):
    """A registered storage server (never its private key)."""

    name: str
    host: str
    port: int
    user: str
    host_key: str
    host_key_fingerprint: str
    public_key: str = Field(description="to put in the storage account's authorized_keys")
    created_at: Stamp


class StorageList(_Answer):
    storage: list[Storage]


class WebhookSecret(_Answer):
    """The caller's webhook secret: the key of the ``Hpcgw-Signature`` on deliveries of their
    jobs' webhooks (``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``)."""

    secret: str


class FieldProblem(_Answer):
    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem. Besides the standard members, a problem may carry data of its
    type (``errors`` and ``fields`` of a 422, ``limit`` of a 429, ``job_id``, ...)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="a page of the gateway that explains the problem, or "
                      "about:blank")
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None
    fields: list[str] | None = None


def json_answer(answer: BaseModel, status: int = 200,
                headers: dict[str, str] | None = None) -> web.Response:
    """``answer`` as a JSON response."""
    return web.json_response(answer.model_dump(mode="json"), status=status, headers=headers)
