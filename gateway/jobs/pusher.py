"""Stage-out to storage servers when the job ends: outputs with ``storage`` and ``dest``, and a
lab's persisted working directory.

Like stage-in (:mod:`.stager`), the transfer runs on the cluster's login side as the job's own
user (gateway/jobside/stage.py ``--push``): the job's directory goes straight to the storage
server, never through the gateway. Each output lands in a temporary directory beside ``dest``,
every file is checked there by SHA-256, then it is renamed to ``dest/<its name>``; a name
already taken there is refused, never overwritten. The storage keys reach the cluster as 0600
files in ``<workdir>/.stage`` and are removed when the push ends. Called by the collector while
the job is ``collecting``; an output that could not be sent is reported (the job's message
names it and the cause), the job's outcome stays.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from .. import untrusted
from ..errors import GatewayError
from ..spec import ResolvedSpec
from ..transport import Transport
from .context import JobContext
from .stager import key_files, run_stager

PUSH_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Push:
    """One tree to send: ``path`` (relative to the work directory, ``exclude`` left out) to
    ``dest/<name>`` on storage server ``storage``; ``replace``: a lab's persisted directory
    (the previous copy is replaced once the new one is checked), else a name already taken
    is refused."""

    path: str
    storage: str
    dest: str
    name: str
    replace: bool = False
    exclude: str | None = None


def pushes_of(spec: ResolvedSpec) -> list[Push]:
    """What ``spec`` sends to storage servers when the job ends."""
    pushes = [Push(o.path, o.storage, o.dest, posixpath.basename(o.path))
              for o in spec.outputs if o.storage is not None and o.dest is not None]
    if spec.persist is not None:
        pushes.append(Push("work", spec.persist.storage, posixpath.dirname(spec.persist.path),
                           posixpath.basename(spec.persist.path), replace=True,
                           exclude="work/inputs"))
    return pushes


def push_files(ctx: JobContext, job: dict[str, Any], pushes: list[Push]) -> dict[str, bytes]:
    """What goes into ``<workdir>/.stage`` for a push (besides the stager): the plan, one
    private key per push (``key-<n>``), the pinned host keys."""
    files, transfers = key_files(
        ctx, job, {f"key-{number}": push.storage for number, push in enumerate(pushes)})
    plan = []
    for number, push in enumerate(pushes):
        transfer = transfers[f"key-{number}"]
        plan.append({"path": push.path, "dest": push.dest, "name": push.name,
                     "replace": push.replace, "exclude": push.exclude, "host": transfer.host,
                     "port": transfer.port, "user": transfer.user, "key": f"key-{number}"})
    files["plan.json"] = json.dumps({"outputs": plan}).encode()
    return files


async def push_outputs(ctx: JobContext, transport: Transport, python: str,
                       job: dict[str, Any], pushes: list[Push]) -> list[str]:
    """Send ``pushes`` to their storage servers; each one not sent as ``"<path> (<why>)"``.
    Cluster errors (unreachable, timeout) are raised: the collector retries them."""
    try:
        files = push_files(ctx, job, pushes)
    except GatewayError as exc:  # a storage server removed since the job was accepted
        return [f"{push.path} ({exc.detail})" for push in pushes]
    answer, _ = await run_stager(transport, python, job, files, "--push", timeout=PUSH_TIMEOUT)
    return _not_sent(answer, pushes)


def _not_sent(stdout: bytes, pushes: list[Push]) -> list[str]:
    """The outputs the stager's (untrusted) answer does not report as sent, with its cause."""
    try:
        report = untrusted.loads(stdout)
    except ValueError:
        report = {}
    pushed = report.get("pushed", {}) if isinstance(report, dict) else {}
    failed = report.get("failed", {}) if isinstance(report, dict) else {}
    missing = []
    for push in pushes:
        if isinstance(pushed, dict) and push.path in pushed:
            continue
        why = failed.get(push.path) if isinstance(failed, dict) else None
        missing.append(f"{push.path} (to {push.storage}: "
                       f"{str(why)[:300] if why else 'not sent'})")
    return missing
