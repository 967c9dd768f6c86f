"""Idempotent job creation: a request repeated with the same ``Idempotency-Key`` returns the job
the first one created; the same key with a different request is refused (the IETF
httpapi-idempotency-key draft's 422), so a client that reuses keys by mistake learns it
instead of silently getting another request's job."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ..errors import IdempotencyKeyReused
from ..store import Store


def request_hash(kind: str, raw_spec: Any, notebook: bytes = b"",
                 side_files: Sequence[tuple[str, bytes]] = ()) -> str:
    """A SHA-256 of everything a job request holds: its kind, its spec (as canonical JSON),
    its notebook and side files, in order."""
    digest = hashlib.sha256()
    for part in (kind.encode(), json.dumps(raw_spec, sort_keys=True).encode(), notebook,
                 *(piece for name, data in side_files for piece in (name.encode(), data))):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def replayed_job(store: Store, user_id: int, idempotency_key: str | None,
                 fingerprint: str) -> dict[str, Any] | None:
    """The job ``idempotency_key`` already created for the user, if any (a replay), when the
    request (``fingerprint``, :func:`request_hash`) is the same; :class:`IdempotencyKeyReused`
    (422) when it is not. A job stored before requests were hashed replays as before."""
    if not idempotency_key:
        return None
    existing = store.job_by_idempotency_key(user_id, idempotency_key)
    if existing and existing["request_hash"] not in (None, fingerprint):
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used for a different request (another spec, "
            f"notebook or side files); it created job {existing['id']}: use a new key for a "
            "new request", job_id=existing["id"])
    return existing
