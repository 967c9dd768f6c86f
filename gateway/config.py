"""The gateway's configuration: one TOML file, validated by pydantic.

``config.example.toml`` documents every key. A cluster section that fails validation disables that
cluster (recorded in :attr:`Config.cluster_errors`), not the service; a broken ``[gateway]`` section
is fatal. Users and tokens live in the store, never here.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError, ValidationFailed
from .plainwords import plain_errors
from .plugins import plugin_names
from .sso.settings import OIDCConfig
from .staging.hostkeys import pinned_host_keys
from .units import parse_memory_mb, parse_slurm_time

# Identifiers that reach sbatch options or paths must match this (design.md §4: allowlists).
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/{}+-]*\Z")
HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,253}\Z")


def schema_pattern(regex: re.Pattern[str]) -> str:
    """``regex`` (anchored ``^...\\Z``) as a JSON Schema / OpenAPI pattern (``^...$``), so a
    model field and the document check exactly what the gateway checks."""
    assert regex.pattern.startswith("^") and regex.pattern.endswith("\\Z"), regex.pattern
    return regex.pattern[:-2] + "$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _identifiers(values: list[str]) -> list[str]:
    for value in values:
        if not IDENTIFIER.match(value):
            raise ValueError(f"not a valid identifier: {value!r}")
    return values


class PartitionConfig(_Strict):
    """Limits a job on this partition must stay within (checked before anything reaches Slurm)."""

    max_time: str = "1-00:00:00"
    default_time: str = "01:00:00"
    max_cpus: int = Field(16, ge=1)
    max_memory: str = "16G"
    max_gpus: int = Field(0, ge=0)
    gpu_types: list[str] = Field(default_factory=list)
    # What a job that names none gets: CPUs, memory (None: Slurm's own default, DefMemPerCPU),
    # and for labs their own memory default (JupyterLab needs more than a small batch job).
    default_cpus: int = Field(1, ge=1)
    default_memory: str | None = None
    lab_default_memory: str | None = None

    @field_validator("max_time", "default_time")
    @classmethod
    def _time(cls, value: str) -> str:
        parse_slurm_time(value)
        return value

    @field_validator("max_memory", "default_memory", "lab_default_memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None:
            parse_memory_mb(value)
        return value

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> PartitionConfig:
        problems = []
        if self.default_time_s > self.max_time_s:
            problems.append(f"default_time {self.default_time} is over max_time {self.max_time}")
        if self.default_cpus > self.max_cpus:
            problems.append(f"default_cpus {self.default_cpus} is over max_cpus {self.max_cpus}")
        for name in ("default_memory", "lab_default_memory"):
            value = getattr(self, name)
            if value is not None and parse_memory_mb(value) > self.max_memory_mb:
                problems.append(f"{name} {value} is over max_memory {self.max_memory}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def default_memory_mb(self, kind: str) -> int | None:
        """The memory a job of ``kind`` that names none gets (MB); None: Slurm's default."""
        value = (self.lab_default_memory if kind == "lab" else None) or self.default_memory
        return parse_memory_mb(value) if value is not None else None

    @field_validator("gpu_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return _identifiers(value)

    @property
    def max_time_s(self) -> int:
        return parse_slurm_time(self.max_time)

    @property
    def default_time_s(self) -> int:
        return parse_slurm_time(self.default_time)

    @property
    def max_memory_mb(self) -> int:
        return parse_memory_mb(self.max_memory)


# A registry reference Apptainer pulls on the node: docker://[host[:port]/]name[:tag][@sha256:...]
REGISTRY_REFERENCE = re.compile(
    r"^(docker|oras|library)://[a-z0-9][a-z0-9._-]*(:[0-9]{1,5})?(/[a-z0-9][a-z0-9._-]*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[0-9a-f]{64})?\Z")
# Where a registry image can be run from a reference (the others need a file or directory).
PULLING_RUNTIMES = frozenset({"apptainer"})


class ImageConfig(_Strict):
    """A container image users may pick by name (``[clusters.images.NAME]``)."""

    # The runtime that runs it, by entry point name (group ``hpcgw.runtimes``): "apptainer",
    # "charliecloud", or "none" (the host's own environment, with this image's python).
    runtime: str = "apptainer"
    # Where it is on the nodes: a SIF file or a directory image, or for Apptainer a registry
    # reference (docker://...), pulled on the node into the user's own cache. Empty for "none".
    path: str = ""
    # The Python inside the image that has papermill, ipykernel and JupyterLab; by default
    # /usr/bin/python3 in an image, the cluster's python for runtime "none".
    python: str | None = None
    # Whether the image has GPU support (CUDA); shown to users, who pick it for GPU jobs.
    gpu: bool = False
    description: str = Field("", max_length=200)
    # Further host directories that must be at the same path inside (the job's own directory
    # always is): a shared software tree, a scratch file system.
    binds: list[str] = Field(default_factory=list, max_length=16)

    @field_validator("runtime")
    @classmethod
    def _runtime_installed(cls, value: str) -> str:
        known = plugin_names("hpcgw.runtimes")
        if value not in known:
            raise ValueError(f"unknown runtime {value!r} (installed: {', '.join(known)})")
        return value

    @field_validator("python")
    @classmethod
    def _python_path(cls, value: str | None) -> str | None:
        if value is not None and not SAFE_PATH.match(value):
            raise ValueError(f"must be an absolute path of [A-Za-z0-9._/+-]: {value!r}")
        return value

    @field_validator("binds")
    @classmethod
    def _bind_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not SAFE_PATH.match(path) or "{" in path or ".." in path.split("/") or path == "/":
                raise ValueError(f"a bind must be an absolute directory of [A-Za-z0-9._/+-] "
                                 f"other than /: {path!r}")
        return value

    @model_validator(mode="after")
    def _location(self) -> ImageConfig:
        if self.runtime == "none":
            if self.path:
                raise ValueError('runtime "none" runs on the host: give it no path')
            return self
        if REGISTRY_REFERENCE.match(self.path):
            if self.runtime not in PULLING_RUNTIMES:
                raise ValueError(f"runtime {self.runtime!r} needs a file or directory image, "
                                 "not a registry reference")
        elif not SAFE_PATH.match(self.path) or "{" in self.path or ".." in self.path.split("/"):
            raise ValueError("path: an absolute path of [A-Za-z0-9._/+-] (or, for apptainer, "
                             f"a docker:// reference): {self.path!r}")
        return self


class SSHConfig(_Strict):
    """How the gateway reaches a cluster's login host (``transport = "ssh"``)."""

    host: str
    port: int = Field(22, ge=1, le=65535)
    # OpenSSH known_hosts file with the login host's pinned key(s).
    known_hosts: Path | None = None
    # Turning verification off is an explicit choice, logged at every connection.
    verify_host_key: bool = True
    # unix user -> private key file the gateway logs in with as that user.
    keys: dict[str, Path]
    # The unix user whose login runs cluster-wide queries (squeue, sacct, sinfo).
    query_user: str
    # Preferred ciphers, most preferred first (asyncssh's defaults when unset).
    ciphers: list[str] | None = None
    connect_timeout: float = Field(10.0, gt=0)
    keepalive_interval: float = Field(2.0, gt=0)
    keepalive_count_max: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> SSHConfig:
        for user in self.keys:
            if not UNIX_USER.match(user):
                raise ValueError(f"keys: not a unix user name: {user!r}")
        if self.query_user not in self.keys:
            raise ValueError("query_user needs an entry in keys")
        if self.verify_host_key and self.known_hosts is None:
            raise ValueError("known_hosts is required unless verify_host_key = false")
        return self


class ClusterConfig(_Strict):
    """One Slurm cluster as the gateway reaches it."""

    name: str
    # How commands reach the cluster, by entry point name (group ``hpcgw.transports``): the
    # built-in "local" and "ssh", or a site's own.
    transport: str = "local"
    scheduler: str = "slurm"
    ssh: SSHConfig | None = None
    # Local transport: argv prefix that runs a command as the job's unix user; "{unix_user}" is
    # substituted. Empty = single-user gateway (everything runs as the gateway's own account).
    command_prefix: list[str] = Field(default_factory=list)
    # Where each job's directory is created on the cluster; "{unix_user}" is substituted.
    work_root: str = "/home/{unix_user}/.hpcgw/jobs"
    # The job-side Python that has papermill and ipykernel (readable by job users).
    python: str = "/usr/bin/python3"
    default_partition: str
    partitions: dict[str, PartitionConfig]
    accounts: list[str] = Field(default_factory=list)
    qos: list[str] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)
    reservations: list[str] = Field(default_factory=list)
    kernels: list[str] = Field(default_factory=lambda: ["python3"])
    # Container images by name ([clusters.images.NAME]); a job names one as its `image`, or gets
    # default_image (none: the host's own environment, `python` above).
    images: dict[str, ImageConfig] = Field(default_factory=dict)
    default_image: str | None = None
    command_timeout: float = Field(30.0, gt=0)
    # How long a submission may keep waiting for an unreachable scheduler before it fails.
    submit_deadline: float = Field(600.0, gt=0)
    # How long collection may keep retrying an unreachable cluster (or timed-out commands)
    # before the job ends failed; any other collection error ends it at once.
    collect_deadline: float = Field(3600.0, gt=0)
    # Labs: the address JupyterLab binds on its compute node, and the host the gateway (or, over
    # SSH, the login host) connects to; "{node}" is the job's Slurm node. The port always comes
    # from the server itself, the host never from the job or the URL.
    lab_bind: str = "0.0.0.0"  # noqa: S104 - the node's address; the lab still needs its token
    lab_host: str = "{node}"

    @field_validator("lab_bind", "lab_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if value != "{node}" and not HOST.match(value):
            raise ValueError(f"not a host name or address: {value!r}")
        return value

    @field_validator("transport", "scheduler")
    @classmethod
    def _plugin_name(cls, value: str, info: ValidationInfo) -> str:
        group = f"hpcgw.{info.field_name}s"
        known = plugin_names(group)
        if value not in known:
            raise ValueError(f"unknown {info.field_name} {value!r} (installed: "
                             f"{', '.join(known) or 'none'}; entry point group {group})")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError(f"cluster name must match {IDENTIFIER.pattern}")
        return value

    @field_validator("accounts", "qos", "constraints", "reservations", "kernels")
    @classmethod
    def _allowlists(cls, value: list[str]) -> list[str]:
        return _identifiers(value)

    @field_validator("work_root", "python")
    @classmethod
    def _paths(cls, value: str) -> str:
        if not SAFE_PATH.match(value):
            raise ValueError(f"must be an absolute path of [A-Za-z0-9._/+-]: {value!r}")
        return value

    @field_validator("images")
    @classmethod
    def _image_names(cls, value: dict[str, ImageConfig]) -> dict[str, ImageConfig]:
        _identifiers(list(value))
        return value

    @field_validator("partitions")
    @classmethod
    def _partition_names(cls, value: dict[str, PartitionConfig]) -> dict[str, PartitionConfig]:
        _identifiers(list(value))
        if not value:
            raise ValueError("at least one partition is needed")
        return value

    @model_validator(mode="after")
    def _default_partition_known(self) -> ClusterConfig:
        if self.default_partition not in self.partitions:
            raise ValueError(f"default_partition {self.default_partition!r} is not in partitions")
        if self.transport == "ssh" and self.ssh is None:
            raise ValueError('transport = "ssh" needs an [clusters.ssh] section')
        if self.default_image is not None and self.default_image not in self.images:
            raise ValueError(f"default_image {self.default_image!r} is not in images")
        return self

    def image_python(self, image: str | None) -> str:
        """The job-side Python for a job in ``image`` (a name in :attr:`images`, or None for
        the host's environment)."""
        if image is None:
            return self.python
        config = self.images[image]
        default = self.python if config.runtime == "none" else "/usr/bin/python3"
        return config.python or default


class PollConfig(_Strict):
    """How often the gateway asks Slurm about its jobs (one squeue per cluster per cycle)."""

    young_interval: float = Field(1.0, gt=0)
    old_interval: float = Field(10.0, gt=0)
    young_age: float = Field(600.0, ge=0)
    # A job Slurm no longer lists and that left no exit record is `lost` after this many seconds.
    lost_after: float = Field(60.0, ge=0)


class LabConfig(_Strict):
    """Interactive JupyterLab jobs."""

    # A lab with no proxied traffic and no busy kernel for this long is stopped (reason idle).
    idle_timeout: float = Field(3600.0, gt=0)
    # A lab whose server does not answer this long after its job started ends failed.
    start_timeout: float = Field(300.0, gt=0)
    # How often the gateway looks at each lab (readiness, idleness).
    check_interval: float = Field(5.0, gt=0)


class GatewayConfig(_Strict):
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    cookie_secret: Annotated[str, Field(min_length=32)]
    # Browser sessions: mark the cookie Secure (behind TLS), and how long a login lasts.
    cookie_secure: bool = False
    session_hours: float = Field(12.0, gt=0)
    # The origin browsers see (e.g. "https://gateway.example.org") when behind a TLS proxy;
    # by default the request's own scheme and Host. Cookie-authenticated WebSockets must match.
    public_origin: str | None = None
    max_notebook_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # All side files of one notebook run together (extra `file` parts of the upload: a helper
    # module, a small CSV); 0 refuses side files.
    max_side_files_bytes: int = Field(16 * 1024 * 1024, ge=0)
    log_tail_bytes: int = Field(1024 * 1024, ge=1024)
    # Largest executed notebook the gateway brings back (streamed to disk); a bigger one fails
    # the job with a message naming the file and this cap.
    max_result_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    # Largest archive of a job's listed outputs the gateway brings back; over it the outputs
    # are reported missing (the job's outcome stays).
    max_output_bytes: int = Field(1024**3, ge=1024)
    # Artifacts (notebooks, logs) of jobs that ended longer ago than this are removed daily;
    # 0 keeps them for ever.
    artifact_retention_days: float = Field(30.0, ge=0)
    # Seconds a client has to send a request's headers before the connection is closed.
    header_timeout: float = Field(10.0, gt=0)
    # A site directory of job templates: a file there (e.g. lab.sh.j2) replaces the built-in
    # template of that name, the others stay built in (gateway/templates.py). None: built-in only.
    template_dir: Path | None = None


class LimitsConfig(_Strict):
    """Per-user limits (per gateway user); over one, a request gets 429 naming it."""

    # Notebook runs not yet terminal.
    max_active_jobs: int = Field(100, ge=1)
    # Labs not yet terminal.
    max_active_labs: int = Field(3, ge=0)
    # New jobs (runs and labs) per rolling minute; idempotent replays don't count.
    max_submissions_per_minute: int = Field(60, ge=1)
    # Connections to labs held at once through the proxy: requests being answered and open
    # WebSockets (kernels, terminals, a lab's event stream), over all the user's labs.
    max_lab_connections: int = Field(256, ge=1)


class MetricsConfig(_Strict):
    """``GET /metrics`` (Prometheus): scrapers send ``token`` as a bearer token; without a
    token configured the endpoint does not exist (404)."""

    token: str | None = Field(None, min_length=32)


class StagingConfig(_Strict):
    """Data staging: what the admin pins for users' storage servers."""

    # Host keys the admin vouches for, as known_hosts lines (``[host]:port ssh-ed25519 AAAA...``
    # or ``host ssh-ed25519 ...`` for port 22). A storage server listed here gets this key,
    # whatever a user says; others are pinned on first contact, confirmed by the user.
    known_hosts: list[str] = Field(default_factory=list)
    # The most bytes one copied input may hold (checked before anything is copied).
    max_input_bytes: int = Field(100 * 1024**3, ge=1)
    # Seconds all of a job's copy inputs may take together before the job fails (reason staging).
    copy_timeout: float = Field(3600.0, gt=0)

    @field_validator("known_hosts")
    @classmethod
    def _known_hosts_lines(cls, lines: list[str]) -> list[str]:
        try:
            pinned_host_keys(lines)
        except ValidationFailed as exc:
            raise ValueError("; ".join(error["message"] for error in exc.errors)) from None
        return lines


class WebhooksConfig(_Strict):
    """Job webhooks (a spec's ``webhook.url``): where the gateway may deliver them, and how it
    retries (gateway.jobs.webhooks)."""

    # Deliver to loopback, private, link-local and other non-public addresses too. Off: a user
    # could otherwise make the gateway POST to services of its own host or network.
    allow_private: bool = False
    # Attempts per state change (the first included); then it is given up.
    max_attempts: int = Field(5, ge=1, le=20)
    # Seconds before the second attempt, doubling for each further one, at most max_backoff_s.
    backoff_s: float = Field(1.0, gt=0, le=3600)
    max_backoff_s: float = Field(60.0, gt=0, le=86400)
    # Seconds one attempt may take (connecting, sending, the answer's status and headers).
    timeout_s: float = Field(10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _cap_above_first(self) -> WebhooksConfig:
        if self.max_backoff_s < self.backoff_s:
            raise ValueError(f"max_backoff_s {self.max_backoff_s:g} is below backoff_s "
                             f"{self.backoff_s:g}")
        return self


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gateway: GatewayConfig
    poll: PollConfig = Field(default_factory=lambda: PollConfig.model_validate({}))
    labs: LabConfig = Field(default_factory=lambda: LabConfig.model_validate({}))
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig.model_validate({}))
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig.model_validate({}))
    staging: StagingConfig = Field(default_factory=lambda: StagingConfig.model_validate({}))
    webhooks: WebhooksConfig = Field(default_factory=lambda: WebhooksConfig.model_validate({}))
    oidc: OIDCConfig | None = None  # single sign-on for the portal; None: token login only
    clusters: list[ClusterConfig]
    cluster_errors: dict[str, str] = Field(default_factory=dict, exclude=True)

    def cluster(self, name: str | None) -> ClusterConfig | None:
        """The named cluster, or the first one when ``name`` is None; None if unknown/disabled."""
        if name is None:
            return self.clusters[0] if self.clusters else None
        return next((c for c in self.clusters if c.name == name), None)


def _format_errors(error: ValidationError) -> str:
    return "; ".join(
        f"{field}: {message}" for field, message in plain_errors(error, "(top)")
    )


def parse_config(raw: dict[str, Any]) -> Config:
    """Validate a parsed TOML document. Broken clusters are disabled and reported, not fatal."""
    raw = dict(raw)
    clusters: list[ClusterConfig] = []
    errors: dict[str, str] = {}
    sections = raw.pop("clusters", [])
    if not isinstance(sections, list):
        raise ConfigError("clusters: write each cluster as a [[clusters]] table")
    for index, section in enumerate(sections):
        if not isinstance(section, dict):
            errors[f"clusters[{index}]"] = "not a table"
            continue
        label = str(section.get("name", f"clusters[{index}]"))
        try:
            cluster = ClusterConfig.model_validate(section)
        except ValidationError as exc:
            errors[label] = _format_errors(exc)
            continue
        if any(c.name == cluster.name for c in clusters):
            errors[f"{label} (clusters[{index}])"] = "another cluster already has this name"
            continue
        clusters.append(cluster)
    try:
        config = Config.model_validate({**raw, "clusters": clusters})
    except ValidationError as exc:
        # ``problems``: each one on its own, the clusters' too (check-config lists them all).
        problems = [f"{field}: {message}" for field, message in plain_errors(exc, "(top)")]
        problems += [f"cluster {name}: disabled: {error}" for name, error in errors.items()]
        raise ConfigError(_format_errors(exc), problems=problems) from exc
    config.cluster_errors = errors
    if not clusters:
        errors.setdefault("(clusters)", "no usable cluster is configured")
    return config


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read the config from ``path``, else ``$HPCGW_CONFIG``; ConfigError if neither is usable."""
    location = path or os.environ.get("HPCGW_CONFIG")
    if not location:
        raise ConfigError("no config file: pass --config FILE or set HPCGW_CONFIG")
    try:
        raw = tomllib.loads(Path(location).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {location}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{location} is not valid TOML: {exc}") from exc
    return parse_config(raw)
