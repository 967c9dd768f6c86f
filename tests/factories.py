"""Builders shared by the unit and integration tests: job rows, put in a state the way the
gateway would put them there (along the transition table, so each step is a recorded event),
and the workers' :class:`JobContext`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config import Config
from gateway.jobs.clusters import ClusterLink
from gateway.jobs.context import JobContext
from gateway.states import Reason, State
from gateway.store import Store
from gateway.templates import make_environment
from gateway.users import User

# How a job reaches each state from ``accepted``: the steps after it, in order.
_BEFORE_SCHEDULER = [State.STAGING, State.PENDING, State.RUNNING]
STEPS: dict[State, list[State]] = {
    State.ACCEPTED: [],
    State.STAGING: [State.STAGING],
    State.PENDING: [State.STAGING, State.PENDING],
    State.RUNNING: _BEFORE_SCHEDULER,
    State.READY: [*_BEFORE_SCHEDULER, State.READY],
    State.COLLECTING: [*_BEFORE_SCHEDULER, State.COLLECTING],
    State.SUCCEEDED: [*_BEFORE_SCHEDULER, State.COLLECTING, State.SUCCEEDED],
}
# What a step needs besides the state (a terminal state needs its reason).
STEP_FIELDS: dict[State, dict[str, Any]] = {State.SUCCEEDED: {"reason": Reason.COMPLETED}}


def job_row(user: User, job_id: str, *, kind: str = "notebook", name: str = "nb",
            cluster: str = "dev", spec: str = "{}", workdir: str | None = None,
            **columns: Any) -> dict[str, Any]:
    """The row :meth:`Store.insert_job` takes for a job of ``user``; the work directory is
    ``/home/<unix user>/.hpcgw/jobs/<id>`` unless given."""
    return {"id": job_id, "user_id": user.id, "unix_user": user.unix_user, "kind": kind,
            "name": name, "cluster": cluster, "spec": spec,
            "workdir": workdir or f"/home/{user.unix_user}/.hpcgw/jobs/{job_id}",
            "idempotency_key": None, **columns}


def add_job(store: Store, user: User, job_id: str, *, state: State = State.ACCEPTED,
            at: Mapping[State, Mapping[str, Any]] | None = None,
            **columns: Any) -> dict[str, Any]:
    """Insert a job (see :func:`job_row` for ``columns``) and move it to ``state`` step by
    step; ``at[step]`` are the fields written with that step (``slurm_job_id`` at ``pending``,
    ``node`` at ``running``, ...). The row as it is then."""
    store.insert_job(job_row(user, job_id, **columns))
    for step in STEPS[state]:
        store.transition(job_id, step, **{**STEP_FIELDS.get(step, {}), **(at or {}).get(step, {})})
    return store.get_job(job_id)


def job_context(config: Config, store: Store,
                clusters: dict[str, ClusterLink] | None = None) -> JobContext:
    """What the lifecycle's workers get, with the built-in job templates."""
    return JobContext(config, store, clusters or {}, make_environment())
