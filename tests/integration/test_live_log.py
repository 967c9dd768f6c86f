"""A running notebook's own output on the real dev cluster, both transports: each cell's stdout
and stderr reach the log while it runs (``hpcgw log -f`` prints them as they come, each once,
and the failing cell's traceback), and the job shows its progress in cells."""

from __future__ import annotations

import asyncio
import subprocess

from .conftest import HPCGW, Api, Gateway, make_notebook

CELLS = (
    "import sys, time\nprint('first cell says', alpha)\nprint('to stderr', file=sys.stderr)",
    "import os\n"
    "while not os.path.exists('release'):\n    time.sleep(0.2)\nprint('second cell released')",
    "print('third cell')\n1 / 0",
    "print('never printed')",
)


async def test_log_follow_prints_each_cells_output_once_as_it_runs(
        gateway: Gateway, alice: Api) -> None:
    status, job = await alice.submit(make_notebook(*CELLS), {"name": "live log",
                                                             "parameters": {"alpha": 7}})
    assert status == 201, job
    follower = subprocess.Popen([*HPCGW, "log", "-f", job["id"]], env=gateway.env("alice"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # While the second cell waits: the first cell's output is in the log, and the job shows
        # 3 of 6 code cells done (the parameters cell, papermill's injected one, the first).
        running = await alice.wait_for(
            job["id"], lambda j: j["progress"] is not None and j["progress"]["done"] == 3, 120,
            "three cells done")
        assert running["state"] == "running" and running["progress"]["total"] == 6
        _, log = await alice.call("GET", f"/api/v1/jobs/{job['id']}/log")
        assert b"first cell says 7\n" in log and b"to stderr\n" in log
        assert b"second cell released" not in log
        workdir = f"/home/alice/.hpcgw/jobs/{job['id']}"
        release = subprocess.run(["sudo", "-n", "-u", "alice", "touch", f"{workdir}/release"],
                                 capture_output=True)
        assert release.returncode == 0, release.stderr
        ended = await alice.wait_terminal(job["id"], 120)
        assert (ended["state"], ended["reason"]) == ("failed", "notebook_error"), ended
        assert ended["progress"] == {"done": 4, "total": 6}
        out, err = await asyncio.to_thread(follower.communicate, timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 1, err  # as submit --wait: the job failed
    text = out.decode()
    for line in ("hpcgw: cell 1/6", "first cell says 7", "to stderr", "second cell released",
                 "\nthird cell\n", "ZeroDivisionError: division by zero",
                 "hpcgw: the notebook raised in cell [", "hpcgw: notebook run ended"):
        assert text.count(line) == 1, (line, text)
    assert "never printed" not in text and "\x1b[" not in text  # no colour codes either
    assert text.index("first cell says") < text.index("second cell released") < text.index(
        "ZeroDivisionError")
    _, whole = await alice.call("GET", f"/api/v1/jobs/{job['id']}/log")
    assert out == whole  # -f printed exactly the log: nothing twice, nothing lost
