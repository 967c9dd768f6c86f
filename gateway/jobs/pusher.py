"""Stage-out to storage servers: outputs with ``storage`` and ``dest``, sent when the job ends.

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
from importlib import resources
from typing import Any

from ..errors import GatewayError
from ..spec import OutputSpec
from ..transport import Transport
from .context import JobContext
from .stager import REPORT_LIMIT, STAGE_DIR, remove_stage_dir

PUSH_TIMEOUT = 3600.0


def push_files(ctx: JobContext, job: dict[str, Any],
               outputs: list[OutputSpec]) -> dict[str, bytes]:
    """What goes into ``<workdir>/.stage`` for a push: the plan, keys, pinned host keys."""
    assert ctx.credentials is not None
    files: dict[str, bytes] = {}
    plan, known_hosts = [], []
    for number, output in enumerate(outputs):
        assert output.storage is not None and output.dest is not None
        transfer = ctx.credentials.for_transfer(job["user_id"], output.storage)
        files[f"key-{number}"] = transfer.private_key
        known_hosts.append(f"[{transfer.host}]:{transfer.port} {transfer.host_key}")
        plan.append({"path": output.path, "dest": output.dest, "host": transfer.host,
                     "port": transfer.port, "user": transfer.user, "key": f"key-{number}"})
    files["known_hosts"] = ("\n".join(known_hosts) + "\n").encode()
    files["plan.json"] = json.dumps({"outputs": plan}).encode()
    files["stage.py"] = resources.files("gateway.jobside").joinpath("stage.py").read_bytes()
    return files


async def push_outputs(ctx: JobContext, transport: Transport, python: str,
                       job: dict[str, Any], outputs: list[OutputSpec]) -> list[str]:
    """Send ``outputs`` to their storage servers; each one not sent as ``"<path> (<why>)"``.
    Cluster errors (unreachable, timeout) are raised: the collector retries them."""
    user, workdir = job["unix_user"], job["workdir"]
    try:
        files = push_files(ctx, job, outputs)
    except GatewayError as exc:  # a storage server removed since the job was accepted
        return [f"{output.path} ({exc.detail})" for output in outputs]
    try:
        await transport.put_files(f"{workdir}/{STAGE_DIR}", files, user=user)
        result = await transport.run(
            [python, "-I", f"{workdir}/{STAGE_DIR}/stage.py", "--workdir", workdir, "--push"],
            user=user, timeout=PUSH_TIMEOUT, check=False)
    finally:
        await remove_stage_dir(transport, workdir, user)
    return _not_sent(result.stdout[:REPORT_LIMIT], outputs)


def _not_sent(stdout: bytes, outputs: list[OutputSpec]) -> list[str]:
    """The outputs the stager's (untrusted) answer does not report as sent, with its cause."""
    try:
        report = json.loads(stdout)
    except ValueError:
        report = {}
    pushed = report.get("pushed", {}) if isinstance(report, dict) else {}
    failed = report.get("failed", {}) if isinstance(report, dict) else {}
    missing = []
    for output in outputs:
        if isinstance(pushed, dict) and output.path in pushed:
            continue
        why = failed.get(output.path) if isinstance(failed, dict) else None
        missing.append(f"{output.path} (to {output.storage}: "
                       f"{str(why)[:300] if why else 'not sent'})")
    return missing
