"""A new job, once its request is valid: its row and its files kept, then handed to the
submitters. The job service (:mod:`.service`) validates a request and calls these."""

from __future__ import annotations

import secrets
import shutil
from typing import Any

from ..errors import Conflict, FieldError
from ..spec import ResolvedSpec
from ..store import User
from .context import JobContext
from .idempotency import replayed_job

JOB_ID_BYTES = 8


def unknown_storage(ctx: JobContext, user: User, spec: ResolvedSpec) -> list[FieldError]:
    """An error for each input or output naming a storage server ``user`` has not
    registered (another user's server is unknown too)."""
    credentials = ctx.credentials
    known = credentials.known if credentials else (lambda _user, _name: False)
    named = [(f"inputs.{n}.storage", b.storage) for n, b in enumerate(spec.inputs)]
    named += [(f"outputs.{n}.storage", o.storage) for n, o in enumerate(spec.outputs)
              if o.storage is not None]
    if spec.persist is not None:
        named.append(("persist.storage", spec.persist.storage))
    return [FieldError(field, f"no storage server {name!r} (hpcgw storage list)")
            for field, name in named if not known(user, name)]


def store_new_job(
    ctx: JobContext, user: User, resolved: ResolvedSpec, idempotency_key: str | None,
    files: dict[str, bytes], **extra: Any,
) -> tuple[dict[str, Any], bool]:
    """Keep ``files`` in the job's data directory, insert the row (``extra``: more of its
    columns), queue the submission; ``(job, created)``. The row is made first, and the
    directory removed again if anything fails before the row is in: no upload stays on the
    gateway's disk without a job that retention prunes and the limits count. A parallel
    request with the same ``idempotency_key`` that stored its job first: that job, False."""
    cluster = ctx.config.cluster(resolved.cluster)
    assert cluster is not None  # resolve_spec checked it
    job_id = secrets.token_hex(JOB_ID_BYTES)
    row = {
        "id": job_id,
        "user_id": user.id,
        "unix_user": user.unix_user,
        "kind": resolved.kind,
        "name": resolved.name,
        "cluster": resolved.cluster,
        "spec": resolved.model_dump_json(),
        "workdir": f"{cluster.work_root.replace('{unix_user}', user.unix_user)}/{job_id}",
        "idempotency_key": idempotency_key,
        **extra,
    }
    directory = ctx.job_dir(job_id)
    try:
        directory.mkdir(parents=True, mode=0o700)
        for name, data in files.items():
            (directory / name).parent.mkdir(mode=0o700, exist_ok=True)
            (directory / name).write_bytes(data)
        job = ctx.store.insert_job(row)
    except Conflict:  # the same key raced in from a parallel request: its job answers
        shutil.rmtree(directory, ignore_errors=True)
        existing = replayed_job(ctx.store, user.id, idempotency_key,
                                extra.get("request_hash", ""))
        assert existing is not None
        return existing, False
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    ctx.submit_later(job_id)
    return job, True
