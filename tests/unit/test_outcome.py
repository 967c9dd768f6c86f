"""How a job ended: Slurm's final state combined with the job's own exit record."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.jobs.outcome import decide
from gateway.scheduler import SchedulerState as S
from gateway.states import Reason, State

OK = {"status": "ok"}
NB_ERROR = {"status": "notebook_error", "ename": "ZeroDivisionError",
            "evalue": "division by zero", "cell": 3}
RUNNER_ERROR = {"status": "error", "ename": "DeadKernelError", "evalue": "Kernel died"}
# The launcher's first record (it runs); replaced by its outcome at the end.
STARTED = {"status": "started"}
# Written by the job script when the launcher never ran (launch.sh.j2).
LAUNCH_ERROR = {"status": "launch_error", "exit_status": 1}


def end(
    scheduler: S | None, record: dict[str, Any] | None, *, cancel: bool = False, log: str = ""
) -> tuple[State, Reason]:
    outcome = decide(scheduler, record, cancel_requested=cancel, log_tail=log)
    return outcome.state, outcome.reason


@pytest.mark.parametrize(("scheduler", "record", "expected"), [
    (S.COMPLETED, OK, (State.SUCCEEDED, Reason.COMPLETED)),
    (S.FAILED, OK, (State.SUCCEEDED, Reason.COMPLETED)),     # the record explains the rest
    (None, OK, (State.SUCCEEDED, Reason.COMPLETED)),          # Slurm forgot: the record speaks
    (S.FAILED, NB_ERROR, (State.FAILED, Reason.NOTEBOOK_ERROR)),
    (S.COMPLETED, NB_ERROR, (State.FAILED, Reason.NOTEBOOK_ERROR)),
    (None, NB_ERROR, (State.FAILED, Reason.NOTEBOOK_ERROR)),
    (S.FAILED, RUNNER_ERROR, (State.FAILED, Reason.JOB_ERROR)),
    (S.TIMEOUT, None, (State.TIMED_OUT, Reason.TIME_LIMIT)),
    (S.TIMEOUT, OK, (State.TIMED_OUT, Reason.TIME_LIMIT)),    # the scheduler's word wins
    (S.OUT_OF_MEMORY, None, (State.FAILED, Reason.OUT_OF_MEMORY)),
    (S.OUT_OF_MEMORY, NB_ERROR, (State.FAILED, Reason.OUT_OF_MEMORY)),
    (S.CANCELLED, None, (State.CANCELLED, Reason.USER_CANCELLED)),
    (S.CANCELLED, OK, (State.CANCELLED, Reason.USER_CANCELLED)),
    (S.NODE_FAIL, None, (State.FAILED, Reason.NODE_FAILURE)),
    (S.PREEMPTED, None, (State.FAILED, Reason.PREEMPTED)),
    (S.LAUNCH_FAILED, None, (State.FAILED, Reason.LAUNCH_FAILED)),
    (None, None, (State.FAILED, Reason.LOST)),
    (S.FAILED, None, (State.FAILED, Reason.JOB_ERROR)),
    (S.COMPLETED, None, (State.FAILED, Reason.JOB_ERROR)),   # exit 0 but no record: not ok
    (S.COMPLETED, {"status": "???"}, (State.FAILED, Reason.JOB_ERROR)),
    (S.FAILED, STARTED, (State.FAILED, Reason.JOB_ERROR)),    # the runner died mid-run
    (None, STARTED, (State.FAILED, Reason.LOST)),             # ... and Slurm forgot it
    (S.FAILED, LAUNCH_ERROR, (State.FAILED, Reason.LAUNCH_FAILED)),
    (None, LAUNCH_ERROR, (State.FAILED, Reason.LAUNCH_FAILED)),
    (S.CANCELLED, LAUNCH_ERROR, (State.CANCELLED, Reason.USER_CANCELLED)),
    (S.TIMEOUT, LAUNCH_ERROR, (State.TIMED_OUT, Reason.TIME_LIMIT)),
])
def test_decide(
    scheduler: S | None, record: dict[str, Any] | None, expected: tuple[State, Reason]
) -> None:
    assert end(scheduler, record) == expected


def test_notebook_error_message_names_the_error() -> None:
    outcome = decide(S.FAILED, NB_ERROR, cancel_requested=False)
    assert outcome.message == "ZeroDivisionError: division by zero"


def test_runner_error_message_names_the_error() -> None:
    assert decide(S.FAILED, RUNNER_ERROR, cancel_requested=False).message == (
        "DeadKernelError: Kernel died")


def test_notebook_error_without_details() -> None:
    outcome = decide(S.FAILED, {"status": "notebook_error"}, cancel_requested=False)
    assert (outcome.state, outcome.reason) == (State.FAILED, Reason.NOTEBOOK_ERROR)
    assert outcome.message.startswith("Error")


@pytest.mark.parametrize("log", [
    "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=5.batch.",
    "Killed process 123 (python) total-vm: ... Out of memory",
    "slurmstepd: error: Job 5 exceeded memory limit (9000 > 8192), being killed",
])
def test_failed_without_record_but_oom_in_log(log: str) -> None:
    outcome = decide(S.FAILED, None, cancel_requested=False, log_tail="started\n" + log)
    assert (outcome.state, outcome.reason) == (State.FAILED, Reason.OUT_OF_MEMORY)


def test_oom_in_log_does_not_hide_a_successful_run() -> None:
    assert end(S.COMPLETED, OK, log="print('oom-kill is a word')") == (
        State.SUCCEEDED, Reason.COMPLETED)


def test_job_error_message_carries_the_log_tail() -> None:
    log = "\n".join(f"line {n}" for n in range(10)) + "\n"
    outcome = decide(S.FAILED, None, cancel_requested=False, log_tail=log)
    assert outcome.reason is Reason.JOB_ERROR
    assert "line 9" in outcome.message and "line 5" in outcome.message
    assert "line 4" not in outcome.message


def test_cancel_message_says_who() -> None:
    assert "on request" in decide(S.CANCELLED, None, cancel_requested=True).message
    assert "outside" in decide(S.CANCELLED, None, cancel_requested=False).message


@pytest.mark.parametrize("kind", ["notebook", "lab"])
def test_a_launch_error_quotes_the_logs_last_line(kind: str) -> None:
    log = ("hpcgw: job 0123 on vm at 2026-12-02T07:00:00+00:00\n"
           "ch-run[4242]: error: can't stat: /images/x: No such file or directory (ch_core.c:255 2)"
           "\n\n  \n")
    outcome = decide(S.FAILED, LAUNCH_ERROR, cancel_requested=False, log_tail=log, kind=kind)
    assert (outcome.state, outcome.reason) == (State.FAILED, Reason.LAUNCH_FAILED)
    assert outcome.message == ("the job's command could not start: ch-run[4242]: error: can't "
                               "stat: /images/x: No such file or directory (ch_core.c:255 2)")
    assert decide(S.FAILED, LAUNCH_ERROR, cancel_requested=False).message == (
        "the job's command could not start")
    long = decide(S.FAILED, LAUNCH_ERROR, cancel_requested=False, log_tail="x" * 5000).message
    assert long == "the job's command could not start: " + "x" * 400


def test_a_runner_that_stopped_after_it_started_says_so() -> None:
    assert decide(S.FAILED, STARTED, cancel_requested=False).message == (
        "the notebook runner stopped before it recorded how the run ended")


def test_lost_message() -> None:
    message = decide(None, None, cancel_requested=False).message
    assert "no exit record" in message


@pytest.mark.parametrize("scheduler", [*S, None])
def test_every_outcome_is_terminal(scheduler: S | None) -> None:
    for record in (None, OK, NB_ERROR, RUNNER_ERROR, STARTED, LAUNCH_ERROR):
        state, _ = end(scheduler, record)
        assert state in {State.SUCCEEDED, State.FAILED, State.CANCELLED, State.TIMED_OUT}


@pytest.mark.parametrize(("scheduler", "stop_reason", "cancel", "expected"), [
    (S.CANCELLED, None, True, (State.CANCELLED, Reason.USER_CANCELLED)),
    (S.CANCELLED, "idle", True, (State.CANCELLED, Reason.IDLE)),
    (None, "idle", True, (State.CANCELLED, Reason.IDLE)),       # Slurm forgot it already
    (S.CANCELLED, "start_timeout", True, (State.FAILED, Reason.LAUNCH_FAILED)),
    (S.TIMEOUT, None, False, (State.TIMED_OUT, Reason.TIME_LIMIT)),
    (S.TIMEOUT, "idle", True, (State.TIMED_OUT, Reason.TIME_LIMIT)),  # the limit came first
    (S.COMPLETED, None, False, (State.SUCCEEDED, Reason.COMPLETED)),  # shut down from the lab
    (S.FAILED, None, False, (State.FAILED, Reason.JOB_ERROR)),
    (None, None, False, (State.FAILED, Reason.LOST)),
])
def test_how_a_lab_ends(scheduler: S | None, stop_reason: str | None, cancel: bool,
                        expected: tuple[State, Reason]) -> None:
    outcome = decide(scheduler, None, cancel_requested=cancel, kind="lab",
                     stop_reason=stop_reason, log_tail="ModuleNotFoundError: jupyter_server\n")
    assert (outcome.state, outcome.reason) == expected
    if expected[1] in (Reason.JOB_ERROR, Reason.LAUNCH_FAILED):
        assert "ModuleNotFoundError: jupyter_server" in outcome.message
