"""gateway/jobs/joblog.py: the runner's progress record read strictly, and the collected log's
windows keeping the offsets of the whole log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.jobs.joblog import LOG_BASE, collected_log, parse_progress


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"done": 0, "total": 0}', {"done": 0, "total": 0}),
    (b'{"done": 3, "total": 5}', {"done": 3, "total": 5}),
    (b'{"done": 6, "total": 5}', None),
    (b'{"done": -1, "total": 5}', None),
    (b'{"done": true, "total": 5}', None),
    (b'{"done": 1.0, "total": 5}', None),
    (b'{"done": 1, "total": 5, "x": 1}', None),
    (b'{"done": 1}', None),
    (b'[1, 5]', None),
    (b'{"done": 1, "total": 10000000}', None),
    (b'not json', None),
    (b'\xff\xfe', None),
])
def test_progress_is_read_strictly(raw: bytes, expected: dict[str, int] | None) -> None:
    assert parse_progress(raw) == expected


def test_a_collected_tail_keeps_the_offsets_of_the_whole_log(tmp_path: Path) -> None:
    whole = bytes(range(256)) * 40  # 10,240 bytes, of which the gateway kept the last 4,096
    (tmp_path / "job.log").write_bytes(whole[-4096:])
    (tmp_path / LOG_BASE).write_text(json.dumps({"offset": len(whole) - 4096}))
    chunk = collected_log(tmp_path, 1000, 9000)
    assert (chunk.start, chunk.data, chunk.next_offset) == (9000, whole[9000:10000], 10000)
    before = collected_log(tmp_path, 1000, 0)  # gone: from where the copy starts
    assert (before.start, before.data) == (6144, whole[6144:7144])
    assert collected_log(tmp_path, 1000, 20000).data == b""
    far = collected_log(tmp_path, 1000, 2**53 - 1)  # past any file a filesystem can hold
    assert (far.data, far.start, far.next_offset) == (b"", 2**53 - 1, 2**53 - 1)
    tail = collected_log(tmp_path, 100, None)
    assert (tail.start, tail.data) == (None, whole[-100:])


def test_a_whole_collected_log_starts_at_zero_and_a_missing_one_is_empty(tmp_path: Path) -> None:
    assert collected_log(tmp_path, 10, 0).data == b""
    (tmp_path / "job.log").write_bytes(b"0123456789")
    assert collected_log(tmp_path, 4, 3).data == b"3456"
    (tmp_path / LOG_BASE).write_text('{"offset": -5}')  # nonsense is ignored
    assert collected_log(tmp_path, 4, 0).start == 0
