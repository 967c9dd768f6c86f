"""``copy``: the input is copied (scp) into the job's work directory before sbatch, checked."""

from __future__ import annotations

from typing import Any

from gateway.spec import InputSpec

from .base import StorageTarget


class CopyConnector:
    mode = "copy"

    def plan(self, binding: InputSpec, target: StorageTarget) -> dict[str, Any]:
        """One entry of ``plan.json``: where to fetch from, with which key file, for which
        parameter (the stager copies to ``inputs/<parameter>``)."""
        return {"parameter": binding.parameter, "host": target.host, "port": target.port,
                "user": target.user, "key": target.key, "path": binding.path}
