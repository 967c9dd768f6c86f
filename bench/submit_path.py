"""Submit path: the gateway's overhead per submission over a bare sbatch, and API acceptance rate.

design.md §5: "gateway overhead per submission <= 20 ms plus staging; >= 100 submissions/s
accepted by the API (stored, answered 201), Slurm submission following asynchronously".

(a) Reference: ``sudo -n -u alice -- sbatch --parsable -o /dev/null --wrap true`` (wall).
(b) Gateway: ``gateway.jobs.submitter.submit_job`` for a stored job (staging: mkdir + tar as the
    user; then sbatch with the rendered script on stdin) against the dev cluster with the real
    LocalTransport, one at a time. Bare and gateway runs alternate so both see the same load.
    Every Slurm job made here is cancelled right after it is measured (so no notebook runs pile
    up on the 2 cores), and its work directory is removed at the end.
(c) API: ``hpcgw serve --port 0`` in a subprocess (config copy with a temp data_dir), a user made
    with ``hpcgw user add``, then JOBS multipart ``POST /api/v1/jobs`` (tiny notebook, spec
    ``time: 00:01:00``) from an aiohttp client with CONCURRENCY connections: 201 answers per
    second. The gateway's own submitter runs meanwhile, as in production. Afterwards every job is
    cancelled through the API and the run waits (at most 120 s) until none is left unfinished.

Run: .venv/bin/python bench/submit_path.py [--runs 20] [--jobs 500] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import nbformat
from _common import REPO, config_copy, load_config_with_data_dir, table

from gateway.jobs.runtime import ClusterRuntime, make_runtime
from gateway.jobs.service import JobService
from gateway.jobs.submitter import submit_job
from gateway.scheduler import load_backend
from gateway.store import Store
from gateway.transport.base import CommandResult

HPCGW = str(REPO / ".venv" / "bin" / "hpcgw")
UNIX_USER = "alice"
BARE_SBATCH = ["sudo", "-n", "-u", UNIX_USER, "--", "sbatch", "--parsable", "-o", "/dev/null",
               "--wrap", "true"]
SPEC = {"name": "bench", "time": "00:01:00"}
WORKDIR = re.compile(r"/home/[a-z_][a-z0-9_-]*/\.hpcgw/jobs/[0-9a-f]{16}")
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
CANCEL_DEADLINE_S = 120.0


def tiny_notebook() -> bytes:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell("x = 1")]
    return nbformat.writes(notebook).encode()


def as_user(user: str, *argv: str) -> list[str]:
    return ["sudo", "-n", "-u", user, "--", *argv]


def scancel(user: str, slurm_ids: Sequence[str]) -> None:
    if slurm_ids:
        subprocess.run(as_user(user, "scancel", *slurm_ids), capture_output=True, check=False)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] if ordered else float("nan")


class TimedTransport:
    """Delegates to the real transport; records the wall time of put_files and of each command."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.wall: dict[str, list[float]] = defaultdict(list)

    async def run(self, argv: Sequence[str], *, user: str | None, stdin: bytes | None = None,
                  timeout: float | None = None, check: bool = True) -> CommandResult:
        started = time.perf_counter()
        try:
            result: CommandResult = await self._inner.run(
                argv, user=user, stdin=stdin, timeout=timeout, check=check)
            return result
        finally:
            self.wall[argv[0]].append(time.perf_counter() - started)

    async def put_files(self, directory: str, files: Mapping[str, bytes], *, user: str) -> None:
        started = time.perf_counter()
        try:
            await self._inner.put_files(directory, files, user=user)
        finally:
            self.wall["put_files"].append(time.perf_counter() - started)

    async def read_file(self, path: str, *, user: str, tail_bytes: int | None = None) -> bytes:
        data: bytes = await self._inner.read_file(path, user=user, tail_bytes=tail_bytes)
        return data

    async def close(self) -> None:
        await self._inner.close()


# -- (a) + (b) ----------------------------------------------------------------------------------

async def submit_overhead(runs: int) -> dict[str, Any]:
    notebook = tiny_notebook()
    bare_ms: list[float] = []
    bare_ids: list[str] = []
    total_ms, staging_ms, sbatch_ms, rest_ms, cpu_ms, accept_cpu_ms = [], [], [], [], [], []
    workdirs: list[str] = []
    slurm_ids: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hpcgw-bench-submit-") as tmp:
        config = load_config_with_data_dir(Path(tmp) / "data")
        cluster = config.clusters[0]
        real = make_runtime(cluster)
        timed = TimedTransport(real.transport)
        runtime = ClusterRuntime(cluster, timed, load_backend(cluster, timed))
        store = Store(Path(tmp) / "data" / "hpcgw.db")
        service = JobService(config, store, {cluster.name: runtime})
        user = store.add_user("bench-alice", UNIX_USER)
        try:
            for number in range(runs + 1):  # the first pair warms caches, it is not counted
                started = time.perf_counter()
                done = subprocess.run(BARE_SBATCH, capture_output=True, text=True, check=True)
                bare = (time.perf_counter() - started) * 1000
                bare_ids.append(done.stdout.strip().split(";")[0])

                cpu0 = time.process_time()
                job, _ = service.create_notebook_job(user, SPEC, notebook)
                accept = (time.process_time() - cpu0) * 1000
                service.submit_queue.get_nowait()  # no worker runs here; we submit by hand
                workdirs.append(job["workdir"])
                timed.wall.clear()
                cpu0, started = time.process_time(), time.perf_counter()
                await submit_job(service, job["id"])
                total = (time.perf_counter() - started) * 1000
                cpu = (time.process_time() - cpu0) * 1000
                stored = store.get_job(job["id"])
                if stored["state"] not in ("pending", "running"):
                    raise SystemExit(f"submission failed: {stored['state']} {stored['message']}")
                slurm_ids.append(stored["slurm_job_id"])
                scancel(UNIX_USER, [stored["slurm_job_id"]])  # no papermill pile-up
                if number == 0:
                    continue
                staging = sum(timed.wall["put_files"]) * 1000
                sbatch = sum(timed.wall["sbatch"]) * 1000
                bare_ms.append(bare)
                total_ms.append(total)
                staging_ms.append(staging)
                sbatch_ms.append(sbatch)
                rest_ms.append(total - staging - sbatch)
                cpu_ms.append(cpu)
                accept_cpu_ms.append(accept)
        finally:
            scancel(UNIX_USER, slurm_ids + bare_ids)
            await service.stop()
            store.close()
            _remove_workdirs(UNIX_USER, workdirs)
    bare_med, total_med, staging_med = median(bare_ms), median(total_ms), median(staging_ms)
    return {
        "runs": len(total_ms), "bare_ms": bare_med, "bare_p95": p95(bare_ms),
        "total_ms": total_med, "total_p95": p95(total_ms), "staging_ms": staging_med,
        "sbatch_ms": median(sbatch_ms), "rest_ms": median(rest_ms), "cpu_ms": median(cpu_ms),
        "accept_cpu_ms": median(accept_cpu_ms),
        "overhead_ms": total_med - bare_med,
        "overhead_no_staging_ms": median([t - s for t, s in zip(total_ms, staging_ms,
                                                                strict=True)]) - bare_med,
    }


def _remove_workdirs(user: str, workdirs: Sequence[str]) -> None:
    mine = [w for w in workdirs if WORKDIR.fullmatch(w)]
    if mine:
        time.sleep(1.0)  # let cancelled jobs' steps finish writing their logs
        subprocess.run(as_user(user, "rm", "-rf", "--", *mine), capture_output=True, check=False)


# -- (c) ----------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return ((int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick)


async def api_rate(jobs: int, concurrency: int) -> dict[str, Any]:
    notebook = tiny_notebook()
    with tempfile.TemporaryDirectory(prefix="hpcgw-bench-api-") as tmp:
        config = config_copy(Path(tmp) / "gateway.toml", Path(tmp) / "data")
        added = subprocess.run([HPCGW, "--config", str(config), "user", "add", "bench-api",
                                "--unix-user", UNIX_USER], capture_output=True, text=True,
                               check=True)
        token = added.stdout.strip().splitlines()[-1]
        log_path = Path(tmp) / "gateway.log"
        with log_path.open("w") as log_file:
            server = subprocess.Popen([HPCGW, "--config", str(config), "serve", "--port", "0"],
                                      stdout=subprocess.PIPE, stderr=log_file, text=True,
                                      cwd=REPO)
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            match = re.search(r"serving on (http://\S+)", line)
            if not match:
                raise SystemExit(f"hpcgw serve did not start: {line!r}\n"
                                 f"{log_path.read_text()[-2000:]}")
            return await _drive(match[1], token, server.pid, notebook, jobs, concurrency)
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            errors = [ln for ln in log_path.read_text().splitlines() if " ERROR " in ln]
            if errors:
                print(f"gateway log: {len(errors)} ERROR lines, first: {errors[0][:300]}")


async def _drive(url: str, token: str, pid: int, notebook: bytes, jobs: int,
                 concurrency: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    job_ids: list[str] = []
    spec = json.dumps(SPEC)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector,
                                     timeout=timeout) as session:
        async def post(queue: asyncio.Queue[int]) -> None:
            while not queue.empty():
                queue.get_nowait()
                form = aiohttp.FormData()
                form.add_field("spec", spec, content_type="application/json")
                form.add_field("notebook", notebook, filename="tiny.ipynb",
                               content_type="application/x-ipynb+json")
                started = time.perf_counter()
                async with session.post("/api/v1/jobs", data=form) as reply:
                    body = await reply.read()
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[reply.status] += 1
                if reply.status == 201:
                    job_ids.append(json.loads(body)["id"])

        async def burst(count: int) -> float:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for number in range(count):
                queue.put_nowait(number)
            started = time.perf_counter()
            await asyncio.gather(*(post(queue) for _ in range(concurrency)))
            return time.perf_counter() - started

        await burst(concurrency)  # warm-up: connections, first-request costs; not counted
        statuses.clear()
        latencies.clear()
        own0, children0 = cpu_seconds(pid)
        elapsed = await burst(jobs)
        own1, children1 = cpu_seconds(pid)
        accepted = statuses[201]
        result: dict[str, Any] = {
            "jobs": jobs, "concurrency": concurrency, "accepted": accepted,
            "statuses": dict(statuses), "elapsed_s": elapsed, "rate": accepted / elapsed,
            "lat_med": median(latencies), "lat_p95": p95(latencies),
            "server_cpu_ms": (own1 - own0) * 1000 / max(1, accepted),
            "children_cpu_ms": (children1 - children0) * 1000 / max(1, accepted),
        }
        async with session.get("/api/v1/jobs") as reply:
            listed = (await reply.json())["jobs"]
        result["in_slurm_after_burst"] = sum(1 for j in listed if j["slurm_job_id"])

        # Clean up: cancel everything through the API, wait for all to finish.
        cancel_started = time.perf_counter()
        cancel_queue: asyncio.Queue[str] = asyncio.Queue()
        for job_id in job_ids:
            cancel_queue.put_nowait(job_id)
        cancel_statuses: Counter[int] = Counter()

        async def cancel() -> None:
            while not cancel_queue.empty():
                job_id = cancel_queue.get_nowait()
                async with session.post(f"/api/v1/jobs/{job_id}/cancel") as reply:
                    await reply.read()
                    cancel_statuses[reply.status] += 1

        await asyncio.gather(*(cancel() for _ in range(concurrency)))
        deadline = time.monotonic() + CANCEL_DEADLINE_S
        slurm_ids: set[str] = set()
        while True:
            listed = await _all_jobs(session, job_ids)
            slurm_ids.update(j["slurm_job_id"] for j in listed if j["slurm_job_id"])
            unfinished = [j for j in listed if j["state"] not in TERMINAL]
            if not unfinished or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        result.update({
            "cancel_statuses": dict(cancel_statuses), "unfinished": len(unfinished),
            "cleanup_s": time.perf_counter() - cancel_started,
            "slurm_jobs": len(slurm_ids), "final_states": dict(Counter(j["state"]
                                                                       for j in listed)),
            "workdirs": [f"/home/{UNIX_USER}/.hpcgw/jobs/{j['id']}" for j in listed],
        })
        # Belt and braces: anything Slurm still has of ours goes.
        scancel(UNIX_USER, sorted(slurm_ids))
    return result


async def _all_jobs(session: aiohttp.ClientSession, job_ids: Sequence[str]) -> list[Any]:
    """Every job in ``job_ids``: the list call (newest 500), then one GET for each older one."""
    async with session.get("/api/v1/jobs") as reply:
        listed: list[Any] = (await reply.json())["jobs"]
    seen = {job["id"] for job in listed}
    for job_id in job_ids:
        if job_id not in seen:
            async with session.get(f"/api/v1/jobs/{job_id}") as reply:
                listed.append(await reply.json())
    return listed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="submissions measured in (a)/(b)")
    parser.add_argument("--jobs", type=int, default=500, help="API POSTs in (c)")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--skip-api", action="store_true")
    args = parser.parse_args()
    sub = asyncio.run(submit_overhead(args.runs))
    print(f"(a)+(b): {sub['runs']} submissions each, bare and gateway alternating; "
          f"gateway accept (create_notebook_job) CPU {sub['accept_cpu_ms']:.2f} ms/job")
    print(table(
        ["path", "median ms", "p95 ms", "of which", "ratio to bare"],
        [["bare sudo+sbatch --wrap (reference)", f"{sub['bare_ms']:.1f}",
          f"{sub['bare_p95']:.1f}", "-", "1.00x"],
         ["hpcgw submit_job (staging + sbatch)", f"{sub['total_ms']:.1f}",
          f"{sub['total_p95']:.1f}",
          f"staging {sub['staging_ms']:.1f}, sbatch {sub['sbatch_ms']:.1f}, "
          f"other {sub['rest_ms']:.1f}", f"{sub['total_ms'] / sub['bare_ms']:.2f}x"]],
    ))
    print(f"overhead = hpcgw - bare: {sub['overhead_ms']:.1f} ms in all; "
          f"{sub['overhead_no_staging_ms']:.1f} ms without staging "
          f"(target <= 20 ms plus staging); staging {sub['staging_ms']:.1f} ms; "
          f"gateway process CPU {sub['cpu_ms']:.1f} ms/submission")
    if args.skip_api:
        return 0

    api = asyncio.run(api_rate(args.jobs, args.concurrency))
    print()
    print(f"(c): {api['jobs']} POST /api/v1/jobs, concurrency {api['concurrency']}: "
          f"answers {api['statuses']} in {api['elapsed_s']:.2f} s; latency median "
          f"{api['lat_med']:.1f} ms, p95 {api['lat_p95']:.1f} ms; server CPU "
          f"{api['server_cpu_ms']:.2f} ms/job (+ {api['children_cpu_ms']:.2f} ms in reaped "
          f"sudo/sbatch children); {api['in_slurm_after_burst']} jobs reached Slurm during the "
          f"burst")
    reference = 1000 / sub["bare_ms"]
    print(table(
        ["path", "submissions/s", "ratio", "target"],
        [["bare sbatch, one after another (reference)", f"{reference:.1f}", "1.00x", "-"],
         ["hpcgw API, 201 answers", f"{api['rate']:.1f}", f"{api['rate'] / reference:.2f}x",
          ">= 100/s " + ("met" if api["rate"] >= 100 else "MISSED")]],
    ))
    print(f"cleanup: cancel answers {api['cancel_statuses']}, {api['slurm_jobs']} Slurm jobs "
          f"had been created, final states {api['final_states']} after {api['cleanup_s']:.1f} s"
          + (f"; {api['unfinished']} STILL UNFINISHED" if api["unfinished"] else ""))
    _remove_workdirs(UNIX_USER, api["workdirs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
