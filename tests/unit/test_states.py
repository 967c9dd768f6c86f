"""The job state machine (design.md §3): one table, terminal states never change."""

from __future__ import annotations

import pytest

from gateway.states import (
    IN_SCHEDULER,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    State,
    check_transition,
    is_terminal,
)

# The lifecycle of design.md §3, written out by hand (not derived from the code's table):
# each state, then every state it may move to.
EXPECTED = """
accepted:   staging failed cancelled
staging:    pending running collecting failed cancelled timed_out
pending:    running collecting failed cancelled timed_out
running:    ready collecting failed cancelled timed_out
ready:      collecting failed cancelled timed_out
collecting: succeeded failed cancelled timed_out
succeeded:
failed:
cancelled:
timed_out:
"""
EXPECTED_MOVES = {
    State(old): {State(new) for new in targets.split()}
    for old, _, targets in (line.partition(":") for line in EXPECTED.strip().splitlines())
}
ALLOWED = sorted((old, new) for old, targets in EXPECTED_MOVES.items() for new in targets)
FORBIDDEN = sorted((old, new) for old in State for new in State
                   if new not in EXPECTED_MOVES[old])


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)
    assert {s.value for s in State} == {
        "accepted", "staging", "pending", "running", "ready", "collecting",
        "succeeded", "failed", "cancelled", "timed_out",
    }
    assert {s.value for s in TERMINAL} == {"succeeded", "failed", "cancelled", "timed_out"}


@pytest.mark.parametrize(("old", "new"), ALLOWED, ids=[f"{o}->{n}" for o, n in ALLOWED])
def test_every_listed_transition_is_allowed(old: State, new: State) -> None:
    check_transition(old, new)  # raises if not allowed


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_have_no_way_out(state: State) -> None:
    assert is_terminal(state)
    assert TRANSITIONS[state] == frozenset()
    for target in State:
        with pytest.raises(IllegalTransition):
            check_transition(state, target)


@pytest.mark.parametrize(("old", "new"), [
    (State.ACCEPTED, State.RUNNING),      # nothing was sent to Slurm yet
    (State.ACCEPTED, State.SUCCEEDED),
    (State.PENDING, State.ACCEPTED),      # no way back
    (State.RUNNING, State.PENDING),
    (State.PENDING, State.SUCCEEDED),     # success only after collecting
    (State.RUNNING, State.SUCCEEDED),
    (State.COLLECTING, State.RUNNING),
    (State.PENDING, State.READY),         # ready only after running
    (State.SUCCEEDED, State.FAILED),
    (State.CANCELLED, State.CANCELLED),
])
def test_illegal_moves_raise(old: State, new: State) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(old, new)
    assert (info.value.old, info.value.new) == (old, new)
    assert str(old) in str(info.value) and str(new) in str(info.value)


def test_the_table_is_the_designed_lifecycle() -> None:
    assert {old: set(targets) for old, targets in TRANSITIONS.items()} == EXPECTED_MOVES


@pytest.mark.parametrize(("old", "new"), FORBIDDEN, ids=[f"{o}->{n}" for o, n in FORBIDDEN])
def test_every_other_move_raises(old: State, new: State) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(old, new)


def test_non_terminal_states_can_always_fail() -> None:
    # Any live job can still be ended (a failure or a cancel), it never gets stuck.
    for state in set(State) - TERMINAL:
        assert not is_terminal(state)
        assert State.FAILED in TRANSITIONS[state]
        assert State.CANCELLED in TRANSITIONS[state]


def test_success_only_through_collecting() -> None:
    assert [old for old, new in ALLOWED if new is State.SUCCEEDED] == [State.COLLECTING]


def test_polled_states_are_the_slurm_ones() -> None:
    assert {State.PENDING, State.RUNNING, State.READY} == IN_SCHEDULER
