"""A job as the API shows it (design.md §3): the one function that turns a job row into the
view every answer, page and event stream gives (the API's models validate it)."""

from __future__ import annotations

import json
from typing import Any

from ..states import State
from ..units import format_slurm_time


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the API returns it (design.md §3)."""
    spec = json.loads(job["spec"])
    view = {
        key: job[key]
        for key in ("id", "kind", "name", "cluster", "state", "pending_reason", "reason",
                    "message", "slurm_job_id", "node", "exit_code", "created_at", "started_at",
                    "ended_at", "updated_at", "artifacts_removed_at")
    }
    view.update(
        {key: spec[key] for key in ("partition", "account", "qos", "constraint", "reservation",
                                    "cpus", "gpus", "gpu_type", "image", "kernel", "parameters")}
    )
    view["inputs"] = spec.get("inputs", [])
    view["outputs"] = spec.get("outputs", [])
    view["persist"] = spec.get("persist")
    view["webhook"] = spec.get("webhook")
    view["memory"] = f"{spec['memory_mb']}M" if spec["memory_mb"] else None
    view["time"] = format_slurm_time(spec["time_s"])
    view["progress"] = json.loads(job["progress"]) if job.get("progress") else None
    if job.get("warning"):  # kept whatever the job's later states say
        view["message"] = "; ".join(filter(None, [job["message"], job["warning"]]))
    view["expected_start"] = job["expected_start"] if job["state"] == State.PENDING else None
    view["scheduler_reachable"] = bool(job["scheduler_reachable"])
    view["notebook_available"] = bool(job["has_notebook"])
    view["last_activity"] = None
    if job["kind"] == "lab":
        view["lab_url"] = f"/labs/{job['id']}/lab"
        stamps = [job[key] for key in ("last_activity", "started_at") if job.get(key)]
        view["last_activity"] = max(stamps) if stamps else None  # same-format stamps
    return view
