"""The gateway-wide sections: ``[gateway]``, ``[poll]``, ``[labs]``, ``[limits]``,
``[metrics]``, ``[staging]`` and ``[webhooks]``. Each has defaults but ``[gateway]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from ..errors import ValidationFailed
from ..staging.hostkeys import pinned_host_keys
from .base import Strict


class PollConfig(Strict):
    """How often the gateway asks Slurm about its jobs (one squeue per cluster per cycle)."""

    young_interval: float = Field(1.0, gt=0)
    old_interval: float = Field(10.0, gt=0)
    young_age: float = Field(600.0, ge=0)
    # A job Slurm no longer lists and that left no exit record is `lost` after this many seconds.
    lost_after: float = Field(60.0, ge=0)


class LabConfig(Strict):
    """Interactive JupyterLab jobs."""

    # A lab with no proxied traffic and no busy kernel for this long is stopped (reason idle).
    idle_timeout: float = Field(3600.0, gt=0)
    # A lab whose server does not answer this long after its job started ends failed.
    start_timeout: float = Field(300.0, gt=0)
    # How often the gateway looks at each lab (readiness, idleness).
    check_interval: float = Field(5.0, gt=0)


class GatewayConfig(Strict):
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
    # Largest archive of a job's listed outputs the gateway brings back (and what it unpacks,
    # each file or directory counted 512 bytes besides its size); over it the outputs are
    # reported missing (the job's outcome stays). Entries: jobs.outputs.MAX_OUTPUT_ENTRIES.
    max_output_bytes: int = Field(1024**3, ge=1024)
    # Artifacts (notebooks, logs) of jobs that ended longer ago than this are removed daily;
    # 0 keeps them for ever.
    artifact_retention_days: float = Field(30.0, ge=0)
    # Seconds a client has to send a request's headers before the connection is closed.
    header_timeout: float = Field(10.0, gt=0)
    # Seconds a client may send nothing of a lab request's body it has begun, while the gateway
    # is ready to read it (nginx's client_body_timeout); then 408 and the request ends.
    body_timeout: float = Field(60.0, gt=0)
    # A site directory of job templates: a file there (e.g. lab.sh.j2) replaces the built-in
    # template of that name, the others stay built in (gateway/templates.py). None: built-in only.
    template_dir: Path | None = None


class LimitsConfig(Strict):
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


class MetricsConfig(Strict):
    """``GET /metrics`` (Prometheus): scrapers send ``token`` as a bearer token; without a
    token configured the endpoint does not exist (404)."""

    token: str | None = Field(None, min_length=32)


class StagingConfig(Strict):
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


class WebhooksConfig(Strict):
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

