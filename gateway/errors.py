"""The gateway's exception tree.

Every error a client can see is a :class:`GatewayError` with a status, a stable ``type`` slug and a
human ``detail``. One middleware (``gateway.api.middleware``) turns it into RFC 9457
``application/problem+json``; the CLI prints ``detail``. Internal failures (a command that failed,
a scheduler that timed out) carry their data as fields so logs and problems can say what happened
without string parsing. No field ever holds a secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Where the gateway explains each problem type (a page it serves: gateway/api/problems.py); a
# problem's ``type`` is this path and the type's slug, a URI reference resolved against the
# request's URL (RFC 9457).
PROBLEM_BASE = "/problems/"


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    status = 500
    type_slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        """The problem+json body for this error (no secrets, nothing from the environment)."""
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.type_slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extra)
        return body

    def headers(self) -> dict[str, str]:
        """Response headers that go with this problem (none unless a subclass says so)."""
        return {}


class BadRequest(GatewayError):
    status = 400
    type_slug = "bad-request"
    title = "Bad request"


class Unauthorized(GatewayError):
    status = 401
    type_slug = "unauthorized"
    title = "Authentication required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="hpcgw"'}


class Forbidden(GatewayError):
    status = 403
    type_slug = "forbidden"
    title = "Forbidden"


class LabUnavailable(GatewayError):
    """The lab exists but its server can't be reached (starting, or the link is down)."""

    status = 503
    type_slug = "lab-unavailable"
    title = "Lab unavailable"


class LabUnproven(LabUnavailable):
    """The server at a lab's reported address failed the identity proof (gateway.proxy.identity):
    it is not the lab's own server, so it gets nothing."""

    type_slug = "lab-unproven"
    title = "Lab server failed its identity proof"


class NotFound(GatewayError):
    status = 404
    type_slug = "not-found"
    title = "Not found"


class Conflict(GatewayError):
    status = 409
    type_slug = "conflict"
    title = "Conflict"


class Gone(GatewayError):
    """Something that existed has been removed for good (a pruned job's artifacts)."""

    status = 410
    type_slug = "gone"
    title = "Gone"


class RequestTimeout(GatewayError):
    """The client stopped sending a request body it had begun: nothing more of it came for
    ``gateway.body_timeout`` seconds while the gateway was ready to read it. The request ends
    here and the connection is closed; the lab got part of the request at most."""

    status = 408
    type_slug = "request-timeout"
    title = "Request timeout"

    def __init__(self, detail: str = "no more of the request's body came in time",
                 **extra: Any) -> None:
        super().__init__(detail, **extra)


class LengthRequired(GatewayError):
    status = 411
    type_slug = "length-required"
    title = "Length required"


class PayloadTooLarge(GatewayError):
    status = 413
    type_slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type_slug = "unsupported-media-type"
    title = "Unsupported media type"


class TooManyRequests(GatewayError):
    """A per-user limit (``[limits]``) would be exceeded. ``limit`` names the config key;
    ``retry_after`` (seconds) is sent as ``Retry-After`` when waiting helps (the submission
    rate, the user's own open streams and lab connections)."""

    status = 429
    type_slug = "limit-exceeded"
    title = "Limit exceeded"

    def __init__(self, detail: str, *, limit: str, value: int,
                 retry_after: int | None = None) -> None:
        super().__init__(detail, limit=limit, value=value)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class FieldError(dict[str, str]):
    """One failing field: ``{"field": "partition", "message": "..."}``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field=field, message=message)


class ValidationFailed(GatewayError):
    """A request that parsed but names values outside the schema or the cluster's policy."""

    status = 422
    type_slug = "validation"
    title = "Invalid job specification"

    def __init__(self, errors: Sequence[FieldError], detail: str | None = None) -> None:
        fields = sorted({e["field"] for e in errors})
        super().__init__(
            detail or "invalid fields: " + ", ".join(fields), errors=list(errors), fields=fields
        )
        self.errors = list(errors)


class IdempotencyKeyReused(GatewayError):
    """An ``Idempotency-Key`` already used for a different request (the IETF draft's 422)."""

    status = 422
    type_slug = "idempotency-key-reused"
    title = "Idempotency key reused for another request"


class ClusterUnavailable(GatewayError):
    status = 503
    type_slug = "cluster-unavailable"
    title = "Cluster unavailable"


class ConfigError(GatewayError):
    type_slug = "config"
    title = "Configuration error"


class CommandFailed(GatewayError):
    """A command on the cluster exited non-zero (or could not start).

    ``argv`` is the command as run (never containing secrets: secrets go on stdin or in files),
    ``returncode`` is None when the command could not be started at all.
    """

    status = 502
    type_slug = "command-failed"
    title = "Cluster command failed"

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        super().__init__(
            f"{argv[0] if argv else '?'} exited {returncode}: {stderr.strip()[-500:]}"
        )
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class CommandTimeout(CommandFailed):
    """A command did not finish within its timeout; it has been killed."""

    type_slug = "command-timeout"
    title = "Cluster command timed out"

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(argv, None, f"timed out after {timeout:g}s")
        self.timeout = timeout


class SchedulerError(GatewayError):
    """The scheduler answered, but not in a way the backend understands."""

    status = 502
    type_slug = "scheduler"
    title = "Scheduler error"


def problem_types() -> dict[str, type[GatewayError]]:
    """Every problem type the gateway answers with, by slug (the first class of each)."""
    found: dict[str, type[GatewayError]] = {}
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        kind = pending.pop(0)
        found.setdefault(kind.type_slug, kind)
        pending += kind.__subclasses__()
    return found
