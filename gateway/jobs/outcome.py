"""How a job ended: the scheduler's final state and the job's own exit record, combined.

Pure functions, so every combination is unit-tested without a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..scheduler import SchedulerState
from ..states import Reason, State

_OOM_IN_LOG = re.compile(r"oom[-_ ]kill|out of memory|exceeded (job )?memory limit", re.I)


@dataclass(frozen=True)
class Outcome:
    state: State
    reason: Reason
    message: str


_BY_SCHEDULER: dict[SchedulerState, tuple[State, Reason, str]] = {
    SchedulerState.TIMEOUT: (State.TIMED_OUT, Reason.TIME_LIMIT, "the job reached its time limit"),
    SchedulerState.OUT_OF_MEMORY: (
        State.FAILED, Reason.OUT_OF_MEMORY, "the job was killed for exceeding its memory"),
    SchedulerState.NODE_FAIL: (State.FAILED, Reason.NODE_FAILURE, "the job's node failed"),
    SchedulerState.PREEMPTED: (State.FAILED, Reason.PREEMPTED, "the job was preempted"),
    SchedulerState.LAUNCH_FAILED: (
        State.FAILED, Reason.LAUNCH_FAILED, "the scheduler could not launch the job"),
}


# The most characters of a log line a message quotes.
LINE_LIMIT = 400
DISABLED_STOP = "disabled"  # the stop_reason of a disabled user's labs (gateway.jobs.oversight)


def _tail(log_tail: str) -> str:
    lines = log_tail.strip().splitlines()[-5:]
    return ": " + " | ".join(lines) if lines else ""


def last_line(log_tail: str) -> str:
    """The last non-blank line of the log, trimmed to :data:`LINE_LIMIT` characters; empty if
    there is none."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    return lines[-1][:LINE_LIMIT] if lines else ""


def decide(
    scheduler_state: SchedulerState | None,
    record: dict[str, Any] | None,
    *,
    cancel_requested: bool,
    log_tail: str = "",
    kind: str = "notebook",
    stop_reason: str | None = None,
) -> Outcome:
    """The terminal state of a job.

    ``scheduler_state`` is None when the scheduler forgot the job; then only the exit record
    speaks, and without one (or with only the launcher's first record, ``started``) the job is
    ``lost``. The scheduler's word wins for time limits,
    memory, node failures and cancellation; the exit record explains the rest. A lab has no
    exit record: its end is the scheduler's word, or why the gateway stopped it
    (``stop_reason``: ``idle``; ``disabled`` when its user was disabled; ``start_timeout``
    when its server never answered; ``unproven`` when a server answered at the reported
    address but failed the identity proof). A record ``launch_error`` (the command never
    started: its runtime, its image or its Python failed) ends the job ``launch_failed`` with
    the log's last line, the runtime's own error.
    """
    return (_stopped_by_gateway(stop_reason, scheduler_state, log_tail)
            or _scheduler_word(scheduler_state, cancel_requested)
            or _without_a_result(scheduler_state, record, kind, log_tail)
            or _from_record(record or {}, kind, log_tail))


def _stopped_by_gateway(stop_reason: str | None, scheduler_state: SchedulerState | None,
                        log_tail: str) -> Outcome | None:
    """Why the gateway stopped a lab, once the scheduler agrees it was cancelled (or forgot
    it); a lab that never started fails however the scheduler ended it."""
    if stop_reason == "start_timeout":
        return Outcome(State.FAILED, Reason.LAUNCH_FAILED,
                       "the lab's server never answered" + _tail(log_tail))
    if stop_reason == "unproven":
        return Outcome(State.FAILED, Reason.LAUNCH_FAILED,
                       "no server at the address the lab reported proved it holds the lab's "
                       "token; the gateway sent it nothing" + _tail(log_tail))
    if scheduler_state not in (SchedulerState.CANCELLED, None):
        return None
    if stop_reason == "idle":
        return Outcome(State.CANCELLED, Reason.IDLE, "stopped by the gateway: the lab was idle")
    if stop_reason == DISABLED_STOP:
        return Outcome(State.CANCELLED, Reason.USER_DISABLED,
                       "stopped by the gateway: an administrator disabled the account")
    return None


def _scheduler_word(scheduler_state: SchedulerState | None,
                    cancel_requested: bool) -> Outcome | None:
    """Cancellation, time limits, memory, node failures, preemption: as the scheduler says."""
    if scheduler_state is SchedulerState.CANCELLED:
        who = "on request" if cancel_requested else "outside the gateway"
        return Outcome(State.CANCELLED, Reason.USER_CANCELLED, f"cancelled {who}")
    if scheduler_state in _BY_SCHEDULER:
        return Outcome(*_BY_SCHEDULER[scheduler_state])
    return None


def _without_a_result(scheduler_state: SchedulerState | None, record: dict[str, Any] | None,
                      kind: str, log_tail: str) -> Outcome | None:
    """A job whose command never started, a lab whose server was shut down, or a job Slurm
    forgot that left no exit record (or only the launcher's ``started``)."""
    if record is not None and record.get("status") == "launch_error":
        line = last_line(log_tail)
        return Outcome(State.FAILED, Reason.LAUNCH_FAILED, "the job's command could not start"
                       + (f": {line}" if line else ""))
    if kind == "lab" and scheduler_state is SchedulerState.COMPLETED:
        return Outcome(State.SUCCEEDED, Reason.COMPLETED, "the lab's server was shut down")
    if scheduler_state is None and (record is None or record.get("status") == "started"):
        return Outcome(State.FAILED, Reason.LOST,
                       "Slurm no longer knows the job and it left no exit record")
    return None


def _from_record(record: dict[str, Any], kind: str, log_tail: str) -> Outcome:
    """What the job's exit record says (``{}``: none); an OOM kill in the log outranks a
    staging or job error, and no known status is a job error quoting the log's tail."""
    status = record.get("status")
    if status == "ok":
        return Outcome(State.SUCCEEDED, Reason.COMPLETED, "the notebook ran to the end")
    error = f"{record.get('ename', 'Error')}: {record.get('evalue', '')}".strip()
    if status == "notebook_error":
        return Outcome(State.FAILED, Reason.NOTEBOOK_ERROR, error)
    if _OOM_IN_LOG.search(log_tail):
        return Outcome(State.FAILED, Reason.OUT_OF_MEMORY,
                       "the job was killed for exceeding its memory")
    if status == "staging_error":  # the script could not mount an input (notebook.sh.j2)
        return Outcome(State.FAILED, Reason.STAGING, error)
    if status == "error":
        return Outcome(State.FAILED, Reason.JOB_ERROR, error)
    what = ("the lab's server stopped" if kind == "lab" else
            "the notebook runner stopped before it recorded how the run ended"
            if status == "started" else "the job ended without an exit record")
    return Outcome(State.FAILED, Reason.JOB_ERROR, what + _tail(log_tail))
