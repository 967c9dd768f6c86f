"""What `hpcgw serve` does for itself as a process, on the dev cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import own_gateway


def open_files_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) "Max open files" of a running process, as the kernel shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit for {pid}")


def test_serve_raises_its_open_files_limit_to_the_hard_one(
        dev_config: Path, tmp_path: Path) -> None:
    """If this fails, a gateway started with the usual soft limit (1,024) stops accepting
    browsers after a few hundred open lab WebSockets (two descriptors each)."""
    with own_gateway(dev_config, tmp_path, wrapper=["prlimit", "--nofile=512:"]) as gateway:
        soft, hard = open_files_limits(gateway.process.pid)
        if hard <= 512:
            pytest.fail(f"the hard limit here ({hard}) leaves nothing to raise")
        assert soft == hard
    events = [json.loads(line)["event"] for line in gateway.log_path.read_text().splitlines()
              if line.startswith("{")]
    assert f"open files limit raised from 512 to {hard}" in events
