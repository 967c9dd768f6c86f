"""Notebook run end to end: a job through the gateway's API against the same papermill command
in a bare sbatch job.

design.md §5: "notebook run end to end: the same papermill command in a bare sbatch job, <= 1 s
extra".

- hpcgw: ``hpcgw serve --port 0`` on a copy of the dev config (temp data dir, the config's poll
  settings), one user. Timed from just before the multipart ``POST /api/v1/jobs`` (small
  notebook, spec ``time: 00:10:00``) until the job's ``succeeded`` transition (its event time in
  ``GET /api/v1/jobs/ID/events``; the job is polled every 0.1 s to see it end, which does not
  move the figure). Taken apart: "in Slurm" (POST -> ``pending``: accept, staging, sbatch),
  "exit.json written" (the runner's last act, its mtime on the cluster), "+ end seen" (from then
  to ``collecting``: the job's exit, Slurm completing it, the poller's next squeue) and
  "+ collected" (``collecting`` -> ``succeeded``: three reads, the final transition).
- Reference: the same job script the gateway rendered for its warm-up job (``job.sh`` in its work
  directory: the line that runs ``$python -I runner.py ...``, papermill, and waits for it),
  with only the work directory changed, in a directory staged as alice beforehand (untimed)
  with the same input.ipynb, parameters.json and runner.py. Timed from just before ``sudo -n -u
  alice -- sbatch --parsable job.sh`` until the runner's final ``exit.json`` (written
  atomically as its last act, replacing the ``started`` record of its first) was written: its
  mtime, seen by polling every 25 ms. Its "in Slurm" is sbatch's return.
- ROUNDS rounds after one unmeasured warm-up pair; which goes first flips every round, and the
  next starts only when both have ended (one job at a time on the 2 cores). Medians, and the
  median of the per-round differences. Every Slurm job is scancelled at the end (no-op when it
  ended), the work directories removed.

Needs `scripts/dev-cluster up`, run as root or as a user who may ``sudo -n -u alice``.

Run: .venv/bin/python bench/notebook_e2e.py [--rounds 5] [--ssh]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import nbformat
from _common import (
    DEV_CONFIG,
    DEV_SSH_CONFIG,
    ServedGateway,
    load_config_with_data_dir,
    served_gateway,
    table,
)

from gateway.transport.base import tar_archive

USER = "alice"
SPEC = {"name": "bench-e2e", "time": "00:10:00"}
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
JOB_DEADLINE_S = 300.0
TARGET_S = 1.0


@dataclass
class Run:
    """One measured run; times in seconds from its submission start."""

    total: float  # until the result existed (bare: exit.json written; hpcgw: succeeded)
    in_slurm: float  # bare: sbatch returned; hpcgw: the job became pending
    notebook_done: float  # exit.json written
    collecting: float  # hpcgw: the poller saw the Slurm job end (bare: = total)
    slurm_id: str


@dataclass
class Made:
    """What the benchmark created, for the cleanup (filled in as it goes)."""

    slurm_ids: list[str]
    workdirs: list[str]


def as_user(*argv: str) -> list[str]:
    return ["sudo", "-n", "-u", USER, "--", *argv]


def notebook() -> bytes:
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    parameters = nbformat.v4.new_code_cell("n = 100000")
    parameters.metadata["tags"] = ["parameters"]
    book.cells = [parameters, nbformat.v4.new_code_cell("total = sum(range(n))\nprint(total)")]
    return nbformat.writes(book).encode()


def mtime(path: str) -> float | None:
    """The mtime of ``path`` on the cluster side (this machine), None while it is missing."""
    if os.geteuid() == 0:
        try:
            return os.stat(path).st_mtime
        except FileNotFoundError:
            return None
    done = subprocess.run(as_user("stat", "-c", "%.9Y", "--", path), capture_output=True,
                          text=True, check=False)
    return float(done.stdout) if done.returncode == 0 else None


def read_as_user(path: str) -> bytes:
    return subprocess.run(as_user("cat", "--", path), capture_output=True, check=True).stdout


def stage(directory: str, files: dict[str, bytes]) -> None:
    """``directory`` (mode 0700) with ``files`` (0600) in it, made as alice, untimed."""
    subprocess.run(as_user("mkdir", "-p", "-m", "700", "--", directory), check=True)
    subprocess.run(as_user("tar", "-x", "-m", "--no-same-owner", "-C", directory, "-f", "-"),
                   input=tar_archive(files), check=True)


def bare_run(directory: str, made: Made) -> Run:
    """Submit ``directory``/job.sh with a bare sbatch; wait until its exit.json is written."""
    started = time.time()
    done = subprocess.run(as_user("sbatch", "--parsable", f"{directory}/job.sh"),
                          capture_output=True, text=True, check=True)
    in_slurm = time.time() - started
    slurm_id = done.stdout.strip().split(";")[0]
    made.slurm_ids.append(slurm_id)
    deadline = time.monotonic() + JOB_DEADLINE_S
    while True:
        if (written := mtime(f"{directory}/exit.json")) is not None:
            record = json.loads(read_as_user(f"{directory}/exit.json"))
            if record.get("status") != "started":  # the runner's first record, not its last
                break
        if time.monotonic() > deadline:
            raise SystemExit(f"bare job {slurm_id}: no final exit.json after {JOB_DEADLINE_S} s")
        time.sleep(0.025)
    if record.get("status") != "ok":
        raise SystemExit(f"bare job {slurm_id} did not succeed: {record}")
    return Run(written - started, in_slurm, written - started, written - started, slurm_id)


async def gateway_run(session: aiohttp.ClientSession, book: bytes, work_root: str,
                      made: Made) -> tuple[Run, str]:
    """Submit ``book`` through the API; wait until it ends. The run and its work directory."""
    form = aiohttp.FormData()
    form.add_field("spec", json.dumps(SPEC), content_type="application/json")
    form.add_field("notebook", book, filename="e2e.ipynb",
                   content_type="application/x-ipynb+json")
    started = time.time()
    async with session.post("/api/v1/jobs", data=form) as reply:
        if reply.status != 201:
            raise SystemExit(f"POST /api/v1/jobs: {reply.status} {await reply.text()}")
        job_id = (await reply.json())["id"]
    workdir = f"{work_root}/{job_id}"
    made.workdirs.append(workdir)
    deadline = time.monotonic() + JOB_DEADLINE_S
    while (job := await get_json(session, f"/api/v1/jobs/{job_id}"))["state"] not in TERMINAL:
        if job["slurm_job_id"] and job["slurm_job_id"] not in made.slurm_ids:
            made.slurm_ids.append(job["slurm_job_id"])
        if time.monotonic() > deadline:
            raise SystemExit(f"gateway job {job_id}: not ended after {JOB_DEADLINE_S} s: {job}")
        await asyncio.sleep(0.1)
    if job["state"] != "succeeded":
        raise SystemExit(f"gateway job {job_id} ended {job['state']}: {job['message']}")
    events = (await get_json(session, f"/api/v1/jobs/{job_id}/events"))["events"]
    at = {event["to_state"]: epoch(event["at"]) for event in events}
    written = mtime(f"{workdir}/exit.json")
    assert written is not None, workdir
    run = Run(at["succeeded"] - started, at["pending"] - started, written - started,
              at["collecting"] - started, job["slurm_job_id"])
    return run, workdir


async def get_json(session: aiohttp.ClientSession, path: str) -> Any:
    async with session.get(path) as reply:
        reply.raise_for_status()
        return await reply.json()


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def measure(served: ServedGateway, rounds: int, work_root: str, bare_root: str,
                  made: Made) -> tuple[list[Run], list[Run]]:
    """A warm-up pair, then ``rounds`` alternating pairs: (bare runs, hpcgw runs)."""
    book = notebook()
    bare: list[Run] = []
    ours: list[Run] = []
    headers = {"Authorization": f"Bearer {served.token}"}
    async with aiohttp.ClientSession(served.url, headers=headers) as session:
        _, workdir = await gateway_run(session, book, work_root, made)
        script = read_as_user(f"{workdir}/job.sh").decode()
        files = {"input.ipynb": read_as_user(f"{workdir}/input.ipynb"),
                 "parameters.json": read_as_user(f"{workdir}/parameters.json"),
                 "runner.py": read_as_user(f"{workdir}/runner.py")}
        for number in range(rounds + 1):
            directory = f"{bare_root}/{number}"
            stage(directory, {**files, "job.sh": script.replace(workdir, directory).encode()})
            order = ("bare", "hpcgw") if number % 2 else ("hpcgw", "bare")
            for which in order:
                if which == "bare":
                    run = await asyncio.to_thread(bare_run, directory, made)
                else:
                    run, _ = await gateway_run(session, book, work_root, made)
                if number > 0:  # round 0 warms the bare path up too
                    (bare if which == "bare" else ours).append(run)
    return bare, ours


def report(bare: list[Run], ours: list[Run], poll_interval: float, source: Path) -> None:
    def med(runs: list[Run], field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in runs))

    print(f"notebook end to end, {len(bare)} rounds alternating after a warm-up pair "
          f"(config {source.name}, young_interval {poll_interval} s); seconds, medians")
    rows = []
    for name, runs in (("bare sbatch (reference)", bare), ("hpcgw API", ours)):
        seen = statistics.median(r.collecting - r.notebook_done for r in runs)
        collected = statistics.median(r.total - r.collecting for r in runs)
        rows.append([name, f"{med(runs, 'total'):.2f}",
                     f"{min(r.total for r in runs):.2f}-{max(r.total for r in runs):.2f}",
                     f"{med(runs, 'in_slurm'):.3f}", f"{med(runs, 'notebook_done'):.2f}",
                     f"{seen:.2f}" if runs is ours else "-",
                     f"{collected:.2f}" if runs is ours else "-"])
    print(table(["path", "median s", "range", "in Slurm", "exit.json written",
                 "+ end seen", "+ collected"], rows))
    for name, runs in (("bare", bare), ("hpcgw", ours)):
        print(f"  {name:5} per round (total / exit.json): "
              + ", ".join(f"{r.total:.2f}/{r.notebook_done:.2f}" for r in runs))
    extra = med(ours, "total") - med(bare, "total")
    paired = statistics.median(o.total - b.total for o, b in zip(ours, bare, strict=True))
    verdict = "met" if extra <= TARGET_S else "MISSED"
    print(f"extra = hpcgw - bare: {extra:+.2f} s (median of per-round differences "
          f"{paired:+.2f} s); ratio {med(ours, 'total') / med(bare, 'total'):.2f}x; "
          f"target <= {TARGET_S:.0f} s extra: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ssh", action="store_true",
                        help="the gateway reaches the cluster over SSH (gateway-ssh.toml)")
    args = parser.parse_args()
    source = DEV_SSH_CONFIG if args.ssh else DEV_CONFIG
    with tempfile.TemporaryDirectory(prefix="hpcgw-bench-e2e-") as tmp:
        config = load_config_with_data_dir(Path(tmp) / "unused", source)
        cluster = config.clusters[0]
        work_root = cluster.work_root.replace("{unix_user}", USER)
        bare_root = f"/home/{USER}/.hpcgw/bench-e2e-{os.getpid()}"
        made = Made([], [bare_root])
        try:
            with served_gateway(Path(tmp), source, USER) as served:
                bare, ours = asyncio.run(measure(served, args.rounds, work_root, bare_root, made))
        finally:
            if made.slurm_ids:
                subprocess.run(as_user("scancel", *made.slurm_ids), capture_output=True,
                               check=False)
            subprocess.run(as_user("rm", "-rf", "--", *made.workdirs), check=False)
    report(bare, ours, config.poll.young_interval, source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
