"""A cluster's sections: ``[[clusters]]`` with its partitions, images and SSH login.

A cluster that fails validation is disabled by :func:`gateway.config.parse_config`, not fatal.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..plugins import plugin_names
from ..units import parse_memory_mb, parse_slurm_time
from .base import HOST, IDENTIFIER, SAFE_PATH, UNIX_USER, Strict, identifiers


class PartitionConfig(Strict):
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
        return identifiers(value)

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


class ImageConfig(Strict):
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


class SSHConfig(Strict):
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


class ClusterConfig(Strict):
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
        return identifiers(value)

    @field_validator("work_root", "python")
    @classmethod
    def _paths(cls, value: str) -> str:
        if not SAFE_PATH.match(value):
            raise ValueError(f"must be an absolute path of [A-Za-z0-9._/+-]: {value!r}")
        return value

    @field_validator("images")
    @classmethod
    def _image_names(cls, value: dict[str, ImageConfig]) -> dict[str, ImageConfig]:
        identifiers(list(value))
        return value

    @field_validator("partitions")
    @classmethod
    def _partition_names(cls, value: dict[str, PartitionConfig]) -> dict[str, PartitionConfig]:
        identifiers(list(value))
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

