"""Job states, terminal reasons and the one transition table (design.md §3).

States are a closed set. ``TRANSITIONS[a]`` lists every state a job may move to from ``a``;
terminal states have no way out. The store checks every move with :func:`check_transition`
in the transaction that writes it and its event (``Store.transition``), so an illegal move is a
bug that raises, never a silent overwrite.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    ACCEPTED = "accepted"
    STAGING = "staging"
    PENDING = "pending"
    RUNNING = "running"
    READY = "ready"
    COLLECTING = "collecting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class Reason(StrEnum):
    """Why a job reached its terminal state."""

    COMPLETED = "completed"
    NOTEBOOK_ERROR = "notebook_error"
    JOB_ERROR = "job_error"
    LAUNCH_FAILED = "launch_failed"
    OUT_OF_MEMORY = "out_of_memory"
    NODE_FAILURE = "node_failure"
    PREEMPTED = "preempted"
    TIME_LIMIT = "time_limit"
    USER_CANCELLED = "user_cancelled"
    IDLE = "idle"
    USER_DISABLED = "user_disabled"
    STAGING = "staging"
    LOST = "lost"


TERMINAL: frozenset[State] = frozenset(
    {State.SUCCEEDED, State.FAILED, State.CANCELLED, State.TIMED_OUT}
)
_ENDINGS = {State.FAILED, State.CANCELLED}
_SLURM_ENDINGS = {State.COLLECTING, State.FAILED, State.CANCELLED, State.TIMED_OUT}

TRANSITIONS: dict[State, frozenset[State]] = {
    State.ACCEPTED: frozenset({State.STAGING, *_ENDINGS}),
    # A fast job can be running, or already over, by the time sbatch returns.
    State.STAGING: frozenset({State.PENDING, State.RUNNING, *_SLURM_ENDINGS}),
    State.PENDING: frozenset({State.RUNNING, *_SLURM_ENDINGS}),
    State.RUNNING: frozenset({State.READY, *_SLURM_ENDINGS}),
    State.READY: frozenset(_SLURM_ENDINGS),
    State.COLLECTING: frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED, State.TIMED_OUT}),
    **{state: frozenset() for state in TERMINAL},
}

# States in which a Slurm job may exist and must be polled.
IN_SCHEDULER: frozenset[State] = frozenset({State.PENDING, State.RUNNING, State.READY})


class IllegalTransition(RuntimeError):
    def __init__(self, old: State, new: State) -> None:
        super().__init__(f"illegal job state transition {old} -> {new}")
        self.old = old
        self.new = new


def check_transition(old: State, new: State) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is in the table."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(old, new)


def is_terminal(state: State) -> bool:
    return state in TERMINAL
