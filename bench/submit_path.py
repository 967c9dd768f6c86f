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

With ``--ssh`` all of it goes over SSH to the dev cluster's login sshd (127.0.0.1:2222): the
gateway uses the dev SSH config (gateway-ssh.toml: SSHTransport, one pooled asyncssh connection
per user, opened in the unmeasured first round), and the references are OpenSSH ``ssh -p 2222
alice@127.0.0.1 sbatch --parsable -o /dev/null --wrap true`` with the dev cluster's key and
pinned known_hosts, twice: over one master connection kept open for the run (ControlMaster, the
counterpart of the gateway's pooled connection; overheads are against this one) and with a
fresh login each time (what a user's ``ssh host sbatch`` costs). (c)'s reference is the first.

Run: .venv/bin/python bench/submit_path.py [--runs 20] [--jobs 500] [--concurrency 20]
     [--skip-api] [--ssh]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import nbformat
from _common import (
    DEV_CONFIG,
    DEV_SSH_CONFIG,
    DEV_SSH_PORT,
    dev_ssh_options,
    load_config_with_data_dir,
    served_gateway,
    table,
)

from gateway.jobs.clusters import ClusterLink, make_cluster_link
from gateway.jobs.service import JobService
from gateway.jobs.submitter import submit_job
from gateway.scheduler import load_backend
from gateway.store import Store
from gateway.transport.base import CommandResult

UNIX_USER = "alice"
SBATCH = ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true"]
BARE_SBATCH = ["sudo", "-n", "-u", UNIX_USER, "--", *SBATCH]
LOGIN = f"{UNIX_USER}@127.0.0.1"
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

    async def read_file(self, path: str, *, user: str, limit: int, tail: bool = False) -> bytes:
        data: bytes = await self._inner.read_file(path, user=user, limit=limit, tail=tail)
        return data

    async def fetch_to(self, path: str, local_path: str | os.PathLike[str], *, user: str,
                       limit: int) -> int:
        size: int = await self._inner.fetch_to(path, local_path, user=user, limit=limit)
        return size

    async def close(self) -> None:
        await self._inner.close()


# -- (a) + (b) ----------------------------------------------------------------------------------

def ssh_sbatch(control_path: Path | None = None) -> list[str]:
    """OpenSSH running the reference sbatch as alice on the dev login sshd: over the master
    connection at ``control_path``, or with a login of its own."""
    mux = ["-S", str(control_path), "-o", "ControlMaster=no"] if control_path else []
    return ["ssh", "-p", DEV_SSH_PORT, *dev_ssh_options(UNIX_USER), *mux, LOGIN,
            shlex.join(SBATCH)]


@contextlib.contextmanager
def ssh_master(control_path: Path) -> Iterator[None]:
    """An OpenSSH master connection (``ssh -M -N``) listening at ``control_path`` while the
    block runs; then asked to exit (``-O exit``), and terminated by its pid if it does not."""
    argv = ["ssh", "-p", DEV_SSH_PORT, *dev_ssh_options(UNIX_USER), "-S", str(control_path)]
    master = subprocess.Popen([*argv, "-M", "-N", LOGIN], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not control_path.exists():
            if master.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the OpenSSH master connection did not start ({master.poll()})")
            time.sleep(0.05)
        yield
    finally:
        subprocess.run([*argv, "-O", "exit", LOGIN], capture_output=True, check=False)
        try:
            master.wait(timeout=10)
        except subprocess.TimeoutExpired:
            master.terminate()
            master.wait()


def bare_submission(argv: Sequence[str], slurm_ids: list[str]) -> float:
    """Wall ms of one reference sbatch (its Slurm job id goes to ``slurm_ids``)."""
    started = time.perf_counter()
    done = subprocess.run(list(argv), capture_output=True, text=True, check=True)
    elapsed = (time.perf_counter() - started) * 1000
    slurm_ids.append(done.stdout.strip().split(";")[0])
    return elapsed


async def gateway_submission(service: JobService, timed: TimedTransport, user: Any,
                             notebook: bytes, slurm_ids: list[str],
                             workdirs: list[str]) -> dict[str, float]:
    """One job stored (create_notebook_job) and submitted by hand (submit_job: staging, sbatch),
    then scancelled: its wall ms in all and per part, its CPU ms."""
    cpu0 = time.process_time()
    job, _ = service.create_notebook_job(user, SPEC, notebook)
    accept = (time.process_time() - cpu0) * 1000
    service.ctx.submit_queue.get_nowait()  # no worker runs here; we submit by hand
    workdirs.append(job["workdir"])
    timed.wall.clear()
    cpu0, started = time.process_time(), time.perf_counter()
    await submit_job(service.ctx, job["id"])
    total = (time.perf_counter() - started) * 1000
    cpu = (time.process_time() - cpu0) * 1000
    stored = service.get_job(user, job["id"])
    if stored["state"] not in ("pending", "running"):
        raise SystemExit(f"submission failed: {stored['state']} {stored['message']}")
    slurm_ids.append(stored["slurm_job_id"])
    scancel(UNIX_USER, [stored["slurm_job_id"]])  # no papermill pile-up
    staging = sum(timed.wall["put_files"]) * 1000
    sbatch = sum(timed.wall["sbatch"]) * 1000
    return {"total": total, "staging": staging, "sbatch": sbatch,
            "rest": total - staging - sbatch, "cpu": cpu, "accept": accept}


async def submit_overhead(runs: int, source: Path,
                          references: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """(a)+(b): ``runs`` rounds after an unmeasured one (caches, the SSH connection), each
    running every reference once, then one gateway submission."""
    notebook = tiny_notebook()
    bare_ms: dict[str, list[float]] = {label: [] for label in references}
    rows: list[dict[str, float]] = []
    slurm_ids: list[str] = []
    workdirs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hpcgw-bench-submit-") as tmp:
        config = load_config_with_data_dir(Path(tmp) / "data", source)
        cluster = config.clusters[0]
        timed = TimedTransport(make_cluster_link(cluster).transport)
        runtime = ClusterLink(cluster, timed, load_backend(cluster, timed))
        store = Store(Path(tmp) / "data" / "hpcgw.db")
        service = JobService(config, store, {cluster.name: runtime})
        user = store.users.add_user("bench-alice", UNIX_USER)
        try:
            for number in range(runs + 1):
                for label, argv in references.items():
                    bare = bare_submission(argv, slurm_ids)
                    if number:
                        bare_ms[label].append(bare)
                row = await gateway_submission(service, timed, user, notebook, slurm_ids,
                                               workdirs)
                if number:
                    rows.append(row)
        finally:
            scancel(UNIX_USER, slurm_ids)
            await service.stop()
            store.close()
            _remove_workdirs(UNIX_USER, workdirs)
    return summarize(bare_ms, rows)


def summarize(bare_ms: Mapping[str, list[float]], rows: list[dict[str, float]]) -> dict[str, Any]:
    """Medians (and p95s) of (a)+(b); overheads against the first reference."""
    def column(key: str) -> list[float]:
        return [row[key] for row in rows]

    reference = median(next(iter(bare_ms.values())))
    total_med = median(column("total"))
    return {
        "runs": len(rows), "bare": {label: (median(v), p95(v)) for label, v in bare_ms.items()},
        "bare_ms": reference, "total_ms": total_med, "total_p95": p95(column("total")),
        "staging_ms": median(column("staging")), "sbatch_ms": median(column("sbatch")),
        "rest_ms": median(column("rest")), "cpu_ms": median(column("cpu")),
        "accept_cpu_ms": median(column("accept")), "overhead_ms": total_med - reference,
        "overhead_no_staging_ms": median([r["total"] - r["staging"] for r in rows]) - reference,
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


async def api_rate(jobs: int, concurrency: int, source: Path) -> dict[str, Any]:
    notebook = tiny_notebook()
    with (tempfile.TemporaryDirectory(prefix="hpcgw-bench-api-") as tmp,
          served_gateway(Path(tmp), source, UNIX_USER) as served):
        return await _drive(served.url, served.token, served.pid, notebook, jobs, concurrency)


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


def print_overhead(sub: dict[str, Any], labels: Sequence[str]) -> None:
    print(f"(a)+(b): {sub['runs']} submissions each, bare and gateway alternating; "
          f"gateway accept (create_notebook_job) CPU {sub['accept_cpu_ms']:.2f} ms/job")
    rows = [[f"{label} (reference)" if number == 0 else label, f"{med:.1f}", f"{top:.1f}",
             "-", f"{med / sub['bare_ms']:.2f}x"]
            for number, (label, (med, top)) in enumerate(sub["bare"].items())]
    rows.append(["hpcgw submit_job (staging + sbatch)", f"{sub['total_ms']:.1f}",
                 f"{sub['total_p95']:.1f}",
                 f"staging {sub['staging_ms']:.1f}, sbatch {sub['sbatch_ms']:.1f}, "
                 f"other {sub['rest_ms']:.1f}", f"{sub['total_ms'] / sub['bare_ms']:.2f}x"])
    print(table(["path", "median ms", "p95 ms", "of which", "ratio to reference"], rows))
    print(f"overhead = hpcgw - {labels[0]}: {sub['overhead_ms']:.1f} ms in all; "
          f"{sub['overhead_no_staging_ms']:.1f} ms without staging "
          f"(target <= 20 ms plus staging); staging {sub['staging_ms']:.1f} ms; "
          f"gateway process CPU {sub['cpu_ms']:.1f} ms/submission")
    for label in labels[1:]:
        print(f"hpcgw - {label}: {sub['total_ms'] - sub['bare'][label][0]:+.1f} ms")


def print_api(api: dict[str, Any], label: str, bare_ms: float) -> None:
    print()
    print(f"(c): {api['jobs']} POST /api/v1/jobs, concurrency {api['concurrency']}: "
          f"answers {api['statuses']} in {api['elapsed_s']:.2f} s; latency median "
          f"{api['lat_med']:.1f} ms, p95 {api['lat_p95']:.1f} ms; server CPU "
          f"{api['server_cpu_ms']:.2f} ms/job (+ {api['children_cpu_ms']:.2f} ms in reaped "
          f"sudo/sbatch children); {api['in_slurm_after_burst']} jobs reached Slurm during the "
          f"burst")
    reference = 1000 / bare_ms
    print(table(
        ["path", "submissions/s", "ratio", "target"],
        [[f"{label}, one after another (reference)", f"{reference:.1f}",
          "1.00x", "-"],
         ["hpcgw API, 201 answers", f"{api['rate']:.1f}", f"{api['rate'] / reference:.2f}x",
          ">= 100/s " + ("met" if api["rate"] >= 100 else "MISSED")]],
    ))
    print(f"cleanup: cancel answers {api['cancel_statuses']}, {api['slurm_jobs']} Slurm jobs "
          f"had been created, final states {api['final_states']} after {api['cleanup_s']:.1f} s"
          + (f"; {api['unfinished']} STILL UNFINISHED" if api["unfinished"] else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="submissions measured in (a)/(b)")
    parser.add_argument("--jobs", type=int, default=500, help="API POSTs in (c)")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--ssh", action="store_true",
                        help="over SSH: gateway-ssh.toml and OpenSSH references")
    args = parser.parse_args()
    source = DEV_SSH_CONFIG if args.ssh else DEV_CONFIG
    with (tempfile.TemporaryDirectory(prefix="hpcgw-bench-ssh-") as tmp,
          contextlib.ExitStack() as stack):
        if args.ssh:
            control = Path(tmp) / "master"
            stack.enter_context(ssh_master(control))
            references = {"bare ssh+sbatch, one OpenSSH connection": ssh_sbatch(control),
                          "bare ssh+sbatch, a login each": ssh_sbatch()}
        else:
            references = {"bare sudo+sbatch --wrap": BARE_SBATCH}
        sub = asyncio.run(submit_overhead(args.runs, source, references))
    print(f"gateway config {source.name}")
    print_overhead(sub, list(references))
    if args.skip_api:
        return 0

    api = asyncio.run(api_rate(args.jobs, args.concurrency, source))
    print_api(api, next(iter(references)), sub["bare_ms"])
    _remove_workdirs(UNIX_USER, api["workdirs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
