"""Job specifications: the request model (pydantic) and its check against a cluster's policy.

:class:`JobSpec` is what a client sends (unknown fields refused). :func:`resolve_spec` checks it
against the cluster's allowlists and limits and fills the defaults, collecting *every* failing
field into one :class:`ValidationFailed` (422) before anything reaches Slurm. The result,
:class:`ResolvedSpec`, only holds values that are safe to put in an ``#SBATCH`` line.
"""

from __future__ import annotations

import json
import keyword
import re
import unicodedata
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from yarl import URL

from .config import Config
from .errors import FieldError, ValidationFailed
from .plainwords import plain_errors
from .units import format_slurm_time, parse_memory_mb, parse_slurm_time
from .webhooks.addresses import MAX_URL_LENGTH, URL_PATTERN, check_url, literal_refusal

# A path on a storage server: absolute, printable, no '..' component, none of the characters
# scp/sftp would expand as a glob pattern or an escape (so it names exactly one file or directory).
STORAGE_PATH = re.compile(r"^/[^\x00-\x1f\x7f*?\[\]\\]{0,1023}\Z")
# The forms of a time limit and a memory size (gateway.units parses them; these patterns are
# also the OpenAPI document's, so a client knows the forms before it asks).
TIME_PATTERN = (r"^([0-9]{1,5}-[0-9]{1,4}(:[0-9]{1,4}(:[0-9]{1,4})?)?"
                r"|[0-9]{1,7}(:[0-9]{1,4}(:[0-9]{1,4})?)?)$")
MEMORY_PATTERN = r"^[0-9]{1,9}[KMGTkmgt]?[Bb]?$"
TIME_FORMS = "a Slurm time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
MEMORY_FORMS = "a size per node: 4G, 512M, 1024 (megabytes), 1T"


class InputSpec(BaseModel):
    """One input: a file or directory on a registered storage server, bound to a parameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parameter: str
    storage: str = Field(max_length=64)
    path: str
    mode: Literal["copy", "mount"] = "copy"
    # A mount is read-only unless asked; a copy is the job's own either way.
    writable: bool = False

    @field_validator("parameter")
    @classmethod
    def _parameter_name(cls, value: str) -> str:
        if not value.isidentifier() or keyword.iskeyword(value) or len(value) > 64:
            raise ValueError("must be a Python identifier (a papermill parameter)")
        return value

    @field_validator("path")
    @classmethod
    def _storage_path(cls, value: str) -> str:
        if not STORAGE_PATH.match(value) or ".." in value.split("/"):
            raise ValueError("an absolute path on the storage server, without '..', control "
                             "characters or any of * ? [ ] \\")
        return value


class OutputSpec(BaseModel):
    """A file or directory the notebook writes (relative to its work directory), brought back
    to the gateway when the job ends, or sent into directory ``dest`` of the user's storage
    server ``storage`` under its own name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    storage: str | None = Field(None, max_length=64)
    dest: str | None = None

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        value = value.rstrip("/")
        parts = value.split("/")
        if (not value or value.startswith("/") or ".." in parts or "." in parts or "" in parts
                or len(value) > 1024 or any(unicodedata.category(c).startswith("C")
                                            for c in value)):
            raise ValueError("a path relative to the job's work directory, without '.', '..', "
                             "empty components or control characters")
        return value

    @field_validator("dest")
    @classmethod
    def _storage_dest(cls, value: str | None) -> str | None:
        if value is not None and (not STORAGE_PATH.match(value) or ".." in value.split("/")):
            raise ValueError("an absolute directory on the storage server, without '..', "
                             "control characters or any of * ? [ ] \\")
        return value


class PersistSpec(BaseModel):
    """Where a lab keeps its working directory between sessions: restored from this directory
    of the user's storage server at start (empty the first time), sent back when it stops."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str = Field(max_length=64)
    path: str

    @field_validator("path")
    @classmethod
    def _storage_dir(cls, value: str) -> str:
        value = value.rstrip("/")
        if not STORAGE_PATH.match(value) or ".." in value.split("/") or value.count("/") < 2:
            raise ValueError("an absolute directory below / on the storage server, without "
                             "'..', control characters or any of * ? [ ] \\")
        return value


class WebhookSpec(BaseModel):
    """Where the gateway POSTs each of the job's state changes, signed with the user's
    webhook secret (``GET /api/v1/webhook-secret``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(max_length=MAX_URL_LENGTH, json_schema_extra={
        "format": "uri", "pattern": URL_PATTERN}, description=(
        "http or https; no user name or password, no fragment. Unless the gateway allows "
        "it, only public addresses: not loopback, private or link-local ones"))

    @field_validator("url")
    @classmethod
    def _webhook_url(cls, value: str) -> str:
        return check_url(value)


# What a job's parameters may hold in all: every answer that shows the job parses, checks and
# writes them again (a list of 100 jobs of 60 KiB of [[],[],...] each took seconds).
MAX_PARAMETER_VALUES = 1_000
MAX_PARAMETERS_BYTES = 16 * 1024


def _json_values(value: Any) -> int:
    """How many JSON values ``value`` holds, itself and every one nested (iterative)."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


class JobSpec(BaseModel):
    """A job as a client asks for it (design.md §3, "A job spec")."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["notebook", "lab"] = "notebook"
    name: str | None = Field(None, max_length=256)
    cluster: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    reservation: str | None = None
    gpus: int = Field(0, ge=0, le=64)
    gpu_type: str | None = None
    # None: the partition's default_cpus (and memory its default_memory, lab_default_memory).
    cpus: int | None = Field(None, ge=1, le=4096)
    memory: str | None = Field(None, json_schema_extra={"pattern": MEMORY_PATTERN},
                               description=MEMORY_FORMS)
    time: str | None = Field(None, json_schema_extra={"pattern": TIME_PATTERN},
                             description=TIME_FORMS)
    image: str | None = Field(None, max_length=64)
    kernel: str = "python3"
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputSpec] = Field(default_factory=list, max_length=32)
    outputs: list[OutputSpec] = Field(default_factory=list, max_length=32)
    persist: PersistSpec | None = None
    webhook: WebhookSpec | None = None

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        if value is not None and any(unicodedata.category(c).startswith("C") for c in value):
            raise ValueError("must not contain control characters (newlines, tabs, ...)")
        return value

    @field_validator("time", "memory")
    @classmethod
    def _in_its_form(cls, value: str | None, info: ValidationInfo) -> str | None:
        pattern, forms = ((TIME_PATTERN, TIME_FORMS) if info.field_name == "time"
                          else (MEMORY_PATTERN, MEMORY_FORMS))
        if value is not None and not re.fullmatch(pattern[1:-1], value, re.ASCII):
            raise ValueError(forms)
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        # papermill writes `name = value` into the notebook: a name must be a plain identifier.
        bad = [k for k in value if not k.isidentifier() or keyword.iskeyword(k)]
        if bad:
            raise ValueError(f"parameter names must be Python identifiers: {bad!r}"[:300])
        if _json_values(value) > MAX_PARAMETER_VALUES or len(json.dumps(
                value, ensure_ascii=False, separators=(",", ":")).encode(
                "utf-8", "surrogatepass")) > MAX_PARAMETERS_BYTES:
            raise ValueError(
                f"at most {MAX_PARAMETER_VALUES} values and {MAX_PARAMETERS_BYTES // 1024} KiB "
                "in all: parameters are settings; send data as a side file or an input")
        return value


class ResolvedSpec(BaseModel):
    """A spec checked against its cluster, defaults filled in; every value is allowlisted."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["notebook", "lab"]
    name: str
    cluster: str
    partition: str
    account: str | None
    qos: str | None
    constraint: str | None
    reservation: str | None
    gpus: int
    gpu_type: str | None
    cpus: int
    memory_mb: int | None
    time_s: int
    image: str | None
    kernel: str
    parameters: dict[str, Any]
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    persist: PersistSpec | None = None
    webhook: WebhookSpec | None = None

    @property
    def time(self) -> str:
        return format_slurm_time(self.time_s)

    @property
    def gres(self) -> str | None:
        if not self.gpus:
            return None
        return f"gpu:{self.gpu_type}:{self.gpus}" if self.gpu_type else f"gpu:{self.gpus}"


def parse_spec(raw: Any) -> JobSpec:
    """Validate the shape of a spec; a 422 naming each failing field otherwise."""
    try:
        return JobSpec.model_validate(raw, strict=True)
    except ValidationError as exc:
        raise ValidationFailed(
            [FieldError(field, message) for field, message in plain_errors(exc, "spec")]
        ) from None


def _allowed(errors: list[FieldError], field: str, value: str | None, allowed: list[str]) -> None:
    if value is not None and value not in allowed:
        shown = ", ".join(allowed) if allowed else "none are configured"
        errors.append(FieldError(field, f"{value!r} is not allowed here (allowed: {shown})"))


def resolve_spec(spec: JobSpec, config: Config, default_name: str) -> ResolvedSpec:
    """Check ``spec`` against its cluster's policy and fill defaults; 422 with every failure."""
    errors: list[FieldError] = []
    cluster = config.cluster(spec.cluster)
    if cluster is None:
        known = ", ".join(c.name for c in config.clusters)
        raise ValidationFailed([FieldError("cluster", f"unknown cluster (known: {known})")])
    partition_name = spec.partition or cluster.default_partition
    partition = cluster.partitions.get(partition_name)
    if partition is None:
        errors.append(FieldError(
            "partition", f"unknown partition {partition_name!r} (known: "
            + ", ".join(cluster.partitions) + ")"))
    _allowed(errors, "account", spec.account, cluster.accounts)
    _allowed(errors, "qos", spec.qos, cluster.qos)
    _allowed(errors, "constraint", spec.constraint, cluster.constraints)
    _allowed(errors, "reservation", spec.reservation, cluster.reservations)
    image = spec.image if spec.image is not None else cluster.default_image
    if image is not None and image not in cluster.images:
        shown = ", ".join(cluster.images) or "this cluster offers none"
        errors.append(FieldError("image", f"{image!r} is not an image of cluster "
                                 f"{cluster.name} (allowed: {shown})"))
    _allowed(errors, "kernel", spec.kernel, cluster.kernels)
    _check_inputs(errors, spec)
    _check_outputs(errors, spec)
    _check_webhook(errors, spec, config)
    if spec.kind == "lab" and spec.parameters:
        errors.append(FieldError("parameters", "parameters are for notebook runs, not labs"))
    time_s = memory_mb = None
    try:
        time_s = parse_slurm_time(spec.time) if spec.time else None
    except ValueError:
        errors.append(FieldError("time", "use Slurm's HH:MM:SS or D-HH:MM:SS"))
    try:
        memory_mb = parse_memory_mb(spec.memory) if spec.memory else None
    except ValueError:
        errors.append(FieldError("memory", "use a size such as 512M or 4G"))
    cpus = spec.cpus
    if partition is not None:
        time_s = partition.default_time_s if time_s is None else time_s
        cpus = partition.default_cpus if cpus is None else cpus
        if memory_mb is None and spec.memory is None:
            memory_mb = partition.default_memory_mb(spec.kind)
        _check_limits(errors, spec, time_s, cpus, memory_mb, partition)
    if errors:
        raise ValidationFailed(errors)
    assert partition is not None and time_s is not None and cpus is not None
    return ResolvedSpec(
        kind=spec.kind, name=spec.name or default_name, cluster=cluster.name,
        partition=partition_name, account=spec.account, qos=spec.qos,
        constraint=spec.constraint, reservation=spec.reservation, gpus=spec.gpus,
        gpu_type=spec.gpu_type, cpus=cpus, memory_mb=memory_mb, time_s=time_s,
        image=image, kernel=spec.kernel, parameters=spec.parameters,
        inputs=tuple(spec.inputs), outputs=tuple(spec.outputs), persist=spec.persist,
        webhook=spec.webhook,
    )


def _check_outputs(errors: list[FieldError], spec: JobSpec) -> None:
    """Each output once; to a storage server with both ``storage`` and ``dest``; notebook
    runs only."""
    seen: set[str] = set()
    for number, given in enumerate(spec.outputs):
        if given.path in seen:
            errors.append(FieldError(f"outputs.{number}.path", "listed twice"))
        seen.add(given.path)
        if (given.storage is None) != (given.dest is None):
            errors.append(FieldError(f"outputs.{number}.dest",
                                     "an output to a storage server needs storage and dest"))
    if spec.outputs and spec.kind == "lab":
        errors.append(FieldError("outputs", "outputs are for notebook runs"))


def _check_webhook(errors: list[FieldError], spec: JobSpec, config: Config) -> None:
    """Unless ``[webhooks] allow_private``, refuse a webhook URL whose host is itself refused
    (an IP address that is not public, localhost); a DNS name is checked at delivery."""
    if spec.webhook is None or config.webhooks.allow_private:
        return
    host = URL(spec.webhook.url).raw_host or ""
    why = literal_refusal(host)
    if why is not None:
        errors.append(FieldError("webhook.url", f"{host} is {why}: this gateway delivers "
                                 "webhooks only to public addresses"))


def _check_inputs(errors: list[FieldError], spec: JobSpec) -> None:
    """Each input's parameter bound once, and not also given a value in ``parameters``;
    ``writable`` only for a mount; ``persist`` only for a lab."""
    bound: set[str] = set()
    for number, given in enumerate(spec.inputs):
        field = f"inputs.{number}"
        if given.parameter in bound:
            errors.append(FieldError(f"{field}.parameter", "bound by another input too"))
        elif given.parameter in spec.parameters:
            errors.append(FieldError(f"{field}.parameter", "also given a value in parameters"))
        bound.add(given.parameter)
        if given.writable and given.mode != "mount":
            errors.append(FieldError(f"{field}.writable", "only a mount can be writable"))
    if spec.kind != "lab" and spec.persist is not None:
        errors.append(FieldError("persist", "a lab keeps its working directory; a notebook "
                                 "run lists outputs"))


def _check_limits(
    errors: list[FieldError], spec: JobSpec, time_s: int, cpus: int, memory_mb: int | None,
    partition: Any,
) -> None:
    if time_s > partition.max_time_s:
        errors.append(FieldError("time", f"over the partition's limit of {partition.max_time}"))
    if time_s < 60:
        errors.append(FieldError("time", "at least one minute"))
    if cpus > partition.max_cpus:
        errors.append(FieldError("cpus", f"at most {partition.max_cpus} on this partition"))
    if memory_mb is not None and memory_mb > partition.max_memory_mb:
        errors.append(FieldError("memory", f"at most {partition.max_memory} on this partition"))
    if spec.gpus > partition.max_gpus:
        errors.append(FieldError("gpus", f"at most {partition.max_gpus} on this partition"))
    if spec.gpu_type is not None:
        if not spec.gpus:
            errors.append(FieldError("gpu_type", "needs gpus >= 1"))
        elif spec.gpu_type not in partition.gpu_types:
            shown = ", ".join(partition.gpu_types) or "none are configured"
            errors.append(FieldError("gpu_type", f"unknown GPU type (allowed: {shown})"))
