"""Parsing what Slurm's CLI prints (squeue, also incrementally and as JSON; sacct, sinfo) and
its state words, with hostile output: forged lines, repeated ids, odd fields."""

from __future__ import annotations

import json
import logging
import random

import pytest

from gateway.errors import SchedulerError
from gateway.scheduler import SchedulerState, SchedulerStatus
from gateway.scheduler.slurm_output import (
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    SqueueCache,
    find_tagged,
    map_state,
    parse_sacct,
    parse_sinfo,
    parse_squeue,
)

SQUEUE = """\
2|RUNNING|None|vm|alice|1796224620
7|PENDING|Resources|(null)|bob|1796228220
8|PENDING|Priority||carol|N/A
11|COMPLETING|None|vm|alice|1796224000
12|RUNNING|None|vm|dave|1796224000
"""


def test_formats_hold_no_user_set_field() -> None:
    # %k (comment) and %j (name) are set by users and printed raw, newlines included.
    assert SQUEUE_FORMAT == "%i|%T|%r|%N|%u|%S"
    assert SACCT_FIELDS == "JobID,State,ExitCode,NodeList,User"


def test_parse_squeue_realistic_lines() -> None:
    statuses = parse_squeue(SQUEUE)
    assert list(statuses) == ["2", "7", "8", "11", "12"]
    assert statuses["2"] == SchedulerStatus(
        job_id="2", state=SchedulerState.RUNNING, raw_state="RUNNING", pending_reason=None,
        node="vm", user="alice")
    assert statuses["7"] == SchedulerStatus(
        job_id="7", state=SchedulerState.PENDING, raw_state="PENDING",
        pending_reason="Resources", node=None, user="bob",
        expected_start="2026-12-02T16:17:00.000Z")  # only a pending job's start is expected
    assert statuses["8"].pending_reason == "Priority"
    assert statuses["8"].node is None
    assert statuses["11"].state is SchedulerState.RUNNING  # still completing


def test_a_reason_that_is_a_phrase_is_slurms_own_word() -> None:
    # Seen on the dev cluster right after slurmctld restarted: the job must stay listed.
    line = ("740|PENDING|Nodes required for job are DOWN, DRAINED or reserved for jobs in "
            "higher priority partitions||alice|N/A\n")
    status = parse_squeue(line)["740"]
    assert status.pending_reason is not None and status.pending_reason.startswith("Nodes required")


def test_parse_squeue_only_wanted_jobs() -> None:
    text = SQUEUE + "99|SOME_NEW_STATE|None|vm|zed|N/A\n"
    statuses = parse_squeue(text, wanted={"2", "12", "404"})
    assert set(statuses) == {"2", "12"}
    assert set(parse_squeue(text)) == {"2", "7", "8", "11", "12"}  # the odd line is skipped


def test_parse_squeue_empty_output() -> None:
    assert parse_squeue("") == {}
    assert parse_squeue("\n\n") == {}


@pytest.mark.parametrize("line", [
    "2|RUNNING|None|vm|alice", "garbage", "2|RUNNING", "2|RUNNING|None|vm|alice|N/A|extra",
    "2|WIBBLE|None|vm|alice|N/A", "x2|RUNNING|None|vm|alice|N/A",
    "2|RUNNING|None|vm|Alice Smith|N/A", "2|RUNNING|None|evil host|alice|N/A",
    "2|RUNNING|None|vm[1-3]|alice|N/A",
    "40|PENDING|a\x1b[2Jb||alice|N/A",  # a reason with a control character
    "2|PENDING|Priority||alice|tomorrow", "2|PENDING|Priority||alice|-5",
    "2|PENDING|Priority||alice|2026-12-02T16:17:00",  # local time: SLURM_TIME_FORMAT unset
])
def test_parse_squeue_skips_bad_lines_and_logs_them(
        line: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        statuses = parse_squeue(SQUEUE + line + "\n")
    lost = {"2"} if line.startswith("2|") else set()  # job 2's good line is now ambiguous
    assert set(statuses) == {"2", "7", "8", "11", "12"} - lost
    assert "skipped line" in caplog.text


def test_a_job_id_on_two_lines_is_believed_on_neither() -> None:
    # What a newline in a comment printed with %k used to give: a second line for job 2.
    statuses = parse_squeue(SQUEUE + "2|TIMEOUT|None|vm|alice|N/A\n")
    assert "2" not in statuses
    assert statuses["7"].user == "bob"


def test_parse_sacct() -> None:
    statuses = parse_sacct(
        "3|FAILED|3:0|vm|alice\n"
        "2|CANCELLED by 1001|0:0|vm|alice(1001)\n"
        "9|OUT_OF_MEMORY|0:125|vm|bob\n"
        "10|COMPLETED|0:0|vm|bob\n"
        "13|TIMEOUT|0:0|None|bob\n"
        "14|NODE_FAIL|1:0|(null)|bob\n"
    )
    assert statuses["3"] == SchedulerStatus(
        job_id="3", state=SchedulerState.FAILED, raw_state="FAILED", node="vm", exit_code=3,
        user="alice")
    assert statuses["2"].state is SchedulerState.CANCELLED
    assert statuses["2"].raw_state == "CANCELLED by 1001"
    assert statuses["2"].exit_code == 0
    assert statuses["2"].user == "alice"  # sacct -c prints "alice(1001)"
    assert statuses["9"].state is SchedulerState.OUT_OF_MEMORY
    assert statuses["9"].exit_code is None  # killed by a signal: no exit code
    assert statuses["10"].state is SchedulerState.COMPLETED
    assert statuses["10"].exit_code == 0
    assert statuses["13"].state is SchedulerState.TIMEOUT
    assert statuses["14"].state is SchedulerState.NODE_FAIL
    assert statuses["14"].node is None


def test_parse_sacct_skips_noise() -> None:
    assert parse_sacct("\nsacct: something\n|COMPLETED|0:0|vm|alice\n3||||bob(1002)\n") == {}


def test_parse_sacct_of_a_forged_jobcomp_record() -> None:
    # Reproduced on the dev cluster: a job name holding a newline and a whole jobcomp record
    # makes `sacct -c` print a record for a job id of the attacker's choosing (77, as alice),
    # and the rest of the attacker's own record as a broken line. With the real record of job
    # 77 also there, the id is on two lines and neither is believed.
    forged = ("3||||bob(1002)\n"
              "77|TIMEOUT|0:0|vm|alice(1001)\n")
    assert set(parse_sacct(forged)) == {"77"}  # alone, the user check is the poller's
    assert parse_sacct(forged + "77|COMPLETED|0:0|vm|alice(1001)\n") == {}


def _squeue_json(*jobs: dict[str, object]) -> str:
    return json.dumps({"meta": {}, "errors": [], "jobs": list(jobs)})


def _json_job(job_id: int, comment: str, user: str, state: str = "RUNNING") -> dict[str, object]:
    return {"job_id": job_id, "job_state": state, "state_reason": "None", "nodes": "vm",
            "user_name": user, "comment": comment}


def test_find_tagged_reads_the_comment_as_one_string() -> None:
    tag = "0123456789abcdef"
    document = _squeue_json(
        _json_job(5, f"hpcgw:{tag}", "alice", "PENDING"),
        _json_job(9, f"hpcgw:{tag}", "alice"),
        # bob copies alice's tag, and tries to print a line of his own after it
        _json_job(11, f"hpcgw:{tag}", "bob"),
        _json_job(12, f"hpcgw:{tag}\n13|RUNNING|None|vm|alice", "bob"),
    )
    found = find_tagged(document, tag, "alice")
    assert found is not None and found.job_id == "9" and found.user == "alice"
    assert found.tag == tag and found.node == "vm"
    assert find_tagged(document, tag, "carol") is None
    assert find_tagged(document, "fedcba9876543210", "alice") is None


@pytest.mark.parametrize("document", ["", "[]", '{"jobs": 3}', '{"nope": []}', "[" * 100_000])
def test_find_tagged_refuses_what_is_not_squeue_json(document: str) -> None:
    with pytest.raises(SchedulerError):
        find_tagged(document, "0123456789abcdef", "alice")


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
    assert (partitions["cpu"]["cpus_per_node"], partitions["cpu"]["memory_per_node_mb"]) == (
        16, 64000)


def test_parse_sinfo_counts_are_numbers_or_null() -> None:
    """Nodes that differ print ``64+`` (the smallest); anything else is no number at all."""
    partitions = parse_sinfo("mixed|up|1:00:00|3|(null)|64+|2000+|idle\n"
                             "odd|up|1:00:00|1|(null)|n/a|-5|idle\n")
    assert (partitions["mixed"]["cpus_per_node"], partitions["mixed"]["memory_per_node_mb"]) == (
        64, 2000)
    assert (partitions["odd"]["cpus_per_node"], partitions["odd"]["memory_per_node_mb"]) == (
        None, None)


def test_squeue_cache_agrees_with_parse_squeue_over_changing_outputs() -> None:
    rng = random.Random(7)
    states = ["PENDING|Priority|", "PENDING|Resources|", "RUNNING|None|vm", "COMPLETED|None|vm",
              "WIBBLE|None|vm"]
    queue = {str(100 + n): rng.choice(states) for n in range(60)}
    cache = SqueueCache()
    for _ in range(40):
        for job_id in rng.sample(sorted(queue), 6):  # some change, some leave, some arrive
            if rng.random() < 0.2:
                del queue[job_id]
            else:
                queue[job_id] = rng.choice(states)
        queue[str(200 + len(queue) + rng.randrange(1000))] = rng.choice(states)
        lines = [f"{j}|{s}|alice|N/A\n" for j, s in queue.items()]
        lines += [f"{j}|RUNNING|None|vm|alice|N/A\n"
                  for j in rng.sample(sorted(queue), 2)]  # repeats
        text = "".join(lines)
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


def test_squeue_cache_skips_bad_and_repeated_lines_of_wanted_jobs_and_recovers(
        caplog: pytest.LogCaptureFixture) -> None:
    cache = SqueueCache()
    with caplog.at_level(logging.WARNING):
        assert set(cache.update(SQUEUE + "40|WIBBLE|None|vm|eve|N/A\n", {"2", "40"})) == {"2"}
        assert "WIBBLE" in caplog.text
        forged = SQUEUE + "7|TIMEOUT|None|vm|bob|N/A\n"
        assert set(cache.update(forged, {"2", "7"})) == {"2"}
        assert "job 7 is on 2 lines" in caplog.text
    assert set(cache.update(SQUEUE, {"2", "7"})) == {"2", "7"}  # the extra line went
    assert cache.update(SQUEUE, {"2", "7"})["7"].state is SchedulerState.PENDING
