"""Parsing what Slurm's CLI prints (squeue, also incrementally; sacct, sinfo) and its state
words."""

from __future__ import annotations

import random

import pytest

from gateway.errors import SchedulerError
from gateway.scheduler import SchedulerState, SchedulerStatus
from gateway.scheduler.slurm import (
    SQUEUE_FORMAT,
    SqueueCache,
    map_state,
    parse_sacct,
    parse_sinfo,
    parse_squeue,
)

SQUEUE = """\
2|RUNNING|None|vm|alice|hpcgw:0123456789abcdef
7|PENDING|Resources|(null)|bob|(null)
8|PENDING|Priority||carol|
11|COMPLETING|None|vm|alice|hpcgw:fedcba9876543210
12|RUNNING|None|vm|dave|my own comment | with pipes|and more
"""


def test_squeue_format_is_the_one_parsed() -> None:
    assert SQUEUE_FORMAT == "%i|%T|%r|%N|%u|%k"


def test_parse_squeue_realistic_lines() -> None:
    statuses = parse_squeue(SQUEUE)
    assert list(statuses) == ["2", "7", "8", "11", "12"]
    assert statuses["2"] == SchedulerStatus(
        job_id="2", state=SchedulerState.RUNNING, raw_state="RUNNING", pending_reason=None,
        node="vm", tag="0123456789abcdef", user="alice")
    assert statuses["7"] == SchedulerStatus(
        job_id="7", state=SchedulerState.PENDING, raw_state="PENDING",
        pending_reason="Resources", node=None, tag=None, user="bob")
    assert statuses["8"].pending_reason == "Priority"
    assert statuses["8"].node is None and statuses["8"].tag is None
    assert statuses["11"].state is SchedulerState.RUNNING  # still completing
    assert statuses["11"].tag == "fedcba9876543210"


def test_parse_squeue_comment_with_pipes_stays_in_the_last_field() -> None:
    status = parse_squeue(SQUEUE)["12"]
    assert status.user == "dave"
    assert status.state is SchedulerState.RUNNING
    assert status.tag is None


def test_parse_squeue_tag_only_from_our_prefix() -> None:
    statuses = parse_squeue("3|RUNNING|None|vm|eve|xhpcgw:0123456789abcdef\n"
                            "4|RUNNING|None|vm|eve|hpcgw:00000000aaaaaaaa|x\n")
    assert statuses["3"].tag is None
    assert statuses["4"].tag == "00000000aaaaaaaa|x"


def test_parse_squeue_only_wanted_jobs() -> None:
    text = SQUEUE + "99|SOME_NEW_STATE|None|vm|zed|(null)\n"
    statuses = parse_squeue(text, wanted={"2", "12", "404"})
    assert set(statuses) == {"2", "12"}
    assert statuses["2"].tag == "0123456789abcdef"
    # Lines of jobs the gateway does not track are not even parsed (an odd state there is fine).
    with pytest.raises(SchedulerError):
        parse_squeue(text)


def test_parse_squeue_empty_output() -> None:
    assert parse_squeue("") == {}
    assert parse_squeue("\n\n") == {}


@pytest.mark.parametrize("line", ["2|RUNNING|None|vm", "garbage", "2|RUNNING"])
def test_parse_squeue_refuses_short_lines(line: str) -> None:
    with pytest.raises(SchedulerError):
        parse_squeue(line + "\n")


def test_parse_squeue_unknown_state_is_an_error() -> None:
    with pytest.raises(SchedulerError, match="WIBBLE"):
        parse_squeue("2|WIBBLE|None|vm|alice|(null)\n")


def test_parse_sacct() -> None:
    statuses = parse_sacct(
        "3|FAILED|3:0|vm\n"
        "2|CANCELLED by 1001|0:0|vm\n"
        "9|OUT_OF_MEMORY|0:125|vm\n"
        "10|COMPLETED|0:0|vm\n"
        "13|TIMEOUT|0:0|None assigned\n"
        "14|NODE_FAIL|1:0|(null)\n"
    )
    assert statuses["3"] == SchedulerStatus(
        job_id="3", state=SchedulerState.FAILED, raw_state="FAILED", node="vm", exit_code=3)
    assert statuses["2"].state is SchedulerState.CANCELLED
    assert statuses["2"].raw_state == "CANCELLED by 1001"
    assert statuses["2"].exit_code == 0
    assert statuses["9"].state is SchedulerState.OUT_OF_MEMORY
    assert statuses["9"].exit_code is None  # killed by a signal: no exit code
    assert statuses["10"].state is SchedulerState.COMPLETED
    assert statuses["10"].exit_code == 0
    assert statuses["13"].state is SchedulerState.TIMEOUT
    assert statuses["14"].state is SchedulerState.NODE_FAIL
    assert statuses["14"].node is None


def test_parse_sacct_skips_noise() -> None:
    assert parse_sacct("\nsacct: something\n|COMPLETED|0:0|vm\n") == {}


@pytest.mark.parametrize(("raw", "state"), [
    ("PENDING", SchedulerState.PENDING),
    ("REQUEUED", SchedulerState.PENDING),
    ("CONFIGURING", SchedulerState.RUNNING),
    ("RUNNING", SchedulerState.RUNNING),
    ("COMPLETING", SchedulerState.RUNNING),
    ("SUSPENDED", SchedulerState.RUNNING),
    ("COMPLETED", SchedulerState.COMPLETED),
    ("FAILED", SchedulerState.FAILED),
    ("CANCELLED", SchedulerState.CANCELLED),
    ("CANCELLED by 1001", SchedulerState.CANCELLED),
    ("CANCELLED+", SchedulerState.CANCELLED),
    ("TIMEOUT", SchedulerState.TIMEOUT),
    ("DEADLINE", SchedulerState.TIMEOUT),
    ("OUT_OF_MEMORY", SchedulerState.OUT_OF_MEMORY),
    ("NODE_FAIL", SchedulerState.NODE_FAIL),
    ("PREEMPTED", SchedulerState.PREEMPTED),
    ("BOOT_FAIL", SchedulerState.LAUNCH_FAILED),
])
def test_map_state(raw: str, state: SchedulerState) -> None:
    assert map_state(raw) is state


@pytest.mark.parametrize("raw", ["", "  ", "UNKNOWN", "running", "DONE", "CANCELED"])
def test_map_state_refuses_unknown_words(raw: str) -> None:
    with pytest.raises(SchedulerError):
        map_state(raw)


def test_ended_states() -> None:
    assert not SchedulerState.PENDING.ended
    assert not SchedulerState.RUNNING.ended
    assert all(s.ended for s in SchedulerState
               if s not in (SchedulerState.PENDING, SchedulerState.RUNNING))


def test_parse_sinfo_adds_node_counts() -> None:
    partitions = parse_sinfo(
        "cpu|up|1-00:00:00|2|(null)|16|64000|idle\n"
        "cpu|up|1-00:00:00|1|(null)|16|64000|mixed\n"
        "gpu|down|2-00:00:00|1|gpu:a100:2|32|128000|drained\n"
    )
    assert partitions["cpu"]["nodes"] == 3
    assert partitions["cpu"]["node_states"] == {"idle": 2, "mixed": 1}
    assert partitions["cpu"]["available"] is True
    assert partitions["gpu"]["available"] is False
    assert partitions["gpu"]["gres"] == "gpu:a100:2"


def test_squeue_cache_agrees_with_parse_squeue_over_changing_outputs() -> None:
    rng = random.Random(7)
    states = ["PENDING|Priority|", "PENDING|Resources|", "RUNNING|None|vm", "COMPLETED|None|vm"]
    queue = {str(100 + n): rng.choice(states) for n in range(60)}
    cache = SqueueCache()
    for _ in range(40):
        for job_id in rng.sample(sorted(queue), 6):  # some change, some leave, some arrive
            if rng.random() < 0.2:
                del queue[job_id]
            else:
                queue[job_id] = rng.choice(states)
        queue[str(200 + len(queue) + rng.randrange(1000))] = rng.choice(states)
        text = "".join(f"{j}|{s}|alice|hpcgw:0123456789abcdef\n" for j, s in queue.items())
        wanted = set(rng.sample(sorted(queue), 30)) | {"99999"}  # and one Slurm never listed
        assert cache.update(text, set(wanted)) == parse_squeue(text, wanted)


def test_squeue_cache_parses_only_changed_lines_and_keeps_their_statuses() -> None:
    cache = SqueueCache()
    first = cache.update(SQUEUE, {"2", "7", "11"})
    second = cache.update(SQUEUE.replace("7|PENDING|Resources", "7|RUNNING|None"), {"2", "7"})
    assert second["2"] is first["2"]  # the same line: not parsed again
    assert second["7"].state is SchedulerState.RUNNING
    assert set(second) == {"2", "7"}
    third = cache.update(SQUEUE, {"8", "12"})  # wanted now: already-listed lines count too
    assert set(third) == {"8", "12"} and third["12"].user == "dave"


def test_squeue_cache_skips_other_jobs_odd_lines_but_not_a_wanted_one() -> None:
    cache = SqueueCache()
    text = SQUEUE + "40|WIBBLE|None|vm|eve|(null)\n"
    assert set(cache.update(text, {"2"})) == {"2"}
    with pytest.raises(SchedulerError, match="WIBBLE"):
        cache.update(text, {"2", "40"})
    assert set(cache.update(SQUEUE, {"2", "7"})) == {"2", "7"}
