"""``mount``: the input is mounted with SSHFS on the node for the life of the job.

Before sbatch the stager only probes it (the host key, the key, that the path exists, file or
directory); the job's script then mounts its directory (a file's parent directory) at
``inputs/<parameter>``, read-only unless the input is ``writable``, with ``reconnect`` and
keepalives so a network blip does not hang the notebook, and unmounts it when the job ends,
however it ends (gateway/job_templates/notebook.sh.j2).
"""

from __future__ import annotations

from typing import Any

from gateway.spec import InputSpec

from .base import StorageTarget

MOUNT_DIR = ".mounts"  # the job's private directory of mount keys, removed when it ends


class MountConnector:
    mode = "mount"

    def plan(self, binding: InputSpec, target: StorageTarget) -> dict[str, Any]:
        """One entry of ``plan.json``: probe only."""
        return {"parameter": binding.parameter, "host": target.host, "port": target.port,
                "user": target.user, "key": target.key, "path": binding.path, "mode": "mount"}

    def sshfs_argv(self, binding: InputSpec, target: StorageTarget, remote: str,
                   workdir: str) -> list[str]:
        """The command that mounts ``remote`` (a directory on ``target``) at
        ``<workdir>/inputs/<parameter>``; ``target.key`` is the key's file name in
        ``<workdir>/``:data:`MOUNT_DIR`. Every path is absolute: sshfs runs ssh again from
        ``/`` when it reconnects. ``workdir`` has no comma (config.SAFE_PATH)."""
        keys = f"{workdir}/{MOUNT_DIR}"
        options = [
            f"IdentityFile={keys}/{target.key}", f"UserKnownHostsFile={keys}/known_hosts",
            "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes", "BatchMode=yes",
            "IdentitiesOnly=yes", "reconnect", "ServerAliveInterval=15", "ServerAliveCountMax=3",
            f"port={target.port}", *([] if binding.writable else ["ro"]),
        ]
        return ["sshfs", "-o", ",".join(options), f"{target.user}@{target.host}:{remote}",
                f"{workdir}/inputs/{binding.parameter}"]
