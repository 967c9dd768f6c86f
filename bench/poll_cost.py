"""Poll cost: the gateway's CPU per poll cycle for N tracked jobs, against one real ``squeue``.

design.md §5: "one squeue per poll cycle whatever the number of jobs; parsing and updating 10,000
tracked jobs (from recorded squeue output) costs < 50 ms of gateway CPU per cycle".

For N = 10, 1,000 and 10,000 tracked jobs this builds a store (gateway.store.Store on a temp dir)
with N jobs in ``pending``/``running`` and a recorded ``squeue -h -a -t all -o "%i|%T|%r|%N|%u|%S"``
text listing them (plus recently COMPLETED gateway jobs and other users' jobs, as a real queue
has). A fake transport answers squeue with that text instantly (sacct: empty) and counts every
scheduler command, so what is measured is the gateway's own work. One cycle is what
``gateway.jobs.poller.poll_cycle`` does: ``runtime.tracked.refresh`` (the store rows changed
since the previous cycle), ``poll_once`` (``backend.status_many`` parsing, evaluating the changed
statuses, the batched transitions and field writes) and the young/old check. Between cycles ~1%
of the jobs change in the recorded queue (pending reason flips, pending -> running, running ->
COMPLETED); completed jobs are replaced by new pending ones (outside the timed region) so N stays
constant. The first cycle (a full read of the store, every status evaluated, as after a start)
is a warm-up, reported on its own, as is one cycle at the end with a full read of the store
(``TrackedJobs.invalidate``: what follows a failed cycle).

Reference, same run: the wall time of one real ``squeue`` with the same arguments on the dev
cluster (median of 20).

Cycles are ``young_interval`` of the dev config apart (the shortest the poller keeps them), or
``--gap`` seconds (0: back to back, which makes each cycle re-read every row written within
``gateway.jobs.tracked.MARGIN``, so more than the poller ever does).

Run: .venv/bin/python bench/poll_cost.py [--sizes 10,1000,10000] [--cycles 15] [--gap S]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import load_config_with_data_dir, table, wall_median_ms

from gateway.errors import CommandFailed
from gateway.jobs.clusters import ClusterLink
from gateway.jobs.context import JobContext
from gateway.jobs.poller import next_interval, poll_once
from gateway.jobs.tracked import TrackedJobs
from gateway.scheduler import load_backend
from gateway.scheduler.slurm_output import SQUEUE_ENV, SQUEUE_FORMAT, parse_squeue
from gateway.spec import parse_spec, resolve_spec
from gateway.states import State
from gateway.store import Store
from gateway.templates import make_environment
from gateway.transport import RemoteFileMissing
from gateway.transport.base import CommandResult

SQUEUE_ARGV = ["env", SQUEUE_ENV, "squeue", "-h", "-a", "-t", "all", "-o", SQUEUE_FORMAT]
CHANGE_FRACTION = 0.01
WARMUP_CYCLES = 2


class RecordedTransport:
    """Answers squeue with recorded text, sacct with nothing; counts every command."""

    def __init__(self) -> None:
        self.squeue_text = b""
        self.calls: Counter[str] = Counter()

    async def run(
        self, argv: Sequence[str], *, user: str | None, stdin: bytes | None = None,
        timeout: float | None = None, check: bool = True,
    ) -> CommandResult:
        name = argv[2] if argv[0] == "env" else argv[0]  # env SLURM_TIME_FORMAT=%s squeue
        self.calls[name] += 1
        out = self.squeue_text if name == "squeue" else b""
        return CommandResult(list(argv), 0, out, "")

    async def put_files(self, directory: str, files: Mapping[str, bytes], *, user: str) -> None:
        raise CommandFailed(["put_files"], 1, "not in this benchmark")

    async def read_file(self, path: str, *, user: str, limit: int, tail: bool = False) -> bytes:
        raise RemoteFileMissing(["cat", path], 1, "No such file")

    async def close(self) -> None:
        return None


class TimedBackend:
    """Delegates to the real backend; records the CPU time of each ``status_many``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.cpu: list[float] = []

    async def status_many(self, job_ids: Any) -> Any:
        started = time.process_time()
        try:
            return await self._inner.status_many(job_ids)
        finally:
            self.cpu.append(time.process_time() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def handed_to_collector(ctx: JobContext) -> int:
    """How many jobs the poller handed to the collector (not run here), taken off its queue."""
    count = ctx.collect_queue.qsize()
    for _ in range(count):
        ctx.collect_queue.get_nowait()
    return count


class Fleet:
    """The jobs as Slurm lists them, and the store rows that track them."""

    def __init__(self, store: Store, user_ids: dict[str, int], spec_json: str, cluster: str,
                 rng: random.Random) -> None:
        self.store, self.user_ids, self.spec_json = store, user_ids, spec_json
        self.cluster, self.rng = cluster, rng
        self.next_slurm_id = 100_000
        # slurm id -> [squeue state, reason, node, user]
        self.queue: dict[str, list[str]] = {}
        self.tracked: dict[str, str] = {}  # slurm id -> gateway job id (pending/running)
        self.completed: list[str] = []  # slurm ids listed as COMPLETED, oldest first

    def _slurm_id(self) -> str:
        self.next_slurm_id += 1
        return str(self.next_slurm_id)

    def add_tracked(self, count: int, *, old: bool) -> None:
        """``count`` new gateway jobs in pending (60%) / running (40%), in store and queue."""
        rows = []
        for _ in range(count):
            job_id, slurm_id = secrets.token_hex(8), self._slurm_id()
            user = self.rng.choice(("alice", "bob"))
            self.store.insert_job({
                "id": job_id, "user_id": self.user_ids[user], "unix_user": user,
                "kind": "notebook", "name": f"bench-{slurm_id}", "cluster": self.cluster,
                "spec": self.spec_json, "workdir": f"/home/{user}/.hpcgw/jobs/{job_id}",
                "idempotency_key": None,
            })
            if self.rng.random() < 0.6:
                reason = self.rng.choice(("Priority", "Resources"))
                self.queue[slurm_id] = ["PENDING", reason, "", user]
                rows.append((State.PENDING.value, slurm_id, reason, None, None, job_id))
            else:
                self.queue[slurm_id] = ["RUNNING", "None", "vm", user]
                rows.append((State.RUNNING.value, slurm_id, None, "vm",
                             "2026-11-21T10:00:00.000Z", job_id))
            self.tracked[slurm_id] = job_id
        # The states are set directly (setup speed); the poll reads them like any other row.
        with self.store._transaction():
            self.store.db.conn.executemany(
                "UPDATE jobs SET state = ?, slurm_job_id = ?, pending_reason = ?, node = ?, "
                "started_at = ? WHERE id = ?", rows)
            if old:  # submitted (and last written) an hour or two ago
                self.store.db.conn.executemany(
                    "UPDATE jobs SET created_at = ?1, updated_at = ?1 WHERE id = ?2",
                    [(f"2026-11-21T0{8 + i * 2 // count}:{i % 60:02d}:00.000Z", row[-1])
                     for i, row in enumerate(rows)])

    def add_completed(self, count: int) -> None:
        """Gateway jobs that ended (stored as succeeded) and that squeue still lists."""
        for _ in range(count):
            slurm_id = self._slurm_id()
            user = self.rng.choice(("alice", "bob"))
            self.queue[slurm_id] = ["COMPLETED", "None", "vm", user]
            self.completed.append(slurm_id)

    def add_foreign(self, count: int) -> None:
        """Other people's jobs, not submitted through the gateway (no tag)."""
        for _ in range(count):
            state = self.rng.choice(("PENDING", "RUNNING", "COMPLETED"))
            reason = self.rng.choice(("Priority", "Resources")) if state == "PENDING" else "None"
            node = "" if state == "PENDING" else "vm"
            self.queue[self._slurm_id()] = [state, reason, node, "carol"]

    def squeue_text(self) -> bytes:
        lines = [f"{sid}|{s}|{r}|{n}|{u}|N/A" for sid, (s, r, n, u) in self.queue.items()]
        return ("\n".join(lines) + "\n").encode()

    def change(self, fraction: float) -> int:
        """Change ~``fraction`` of the tracked jobs in the queue; how many changed."""
        count = max(1, round(len(self.tracked) * fraction))
        for slurm_id in self.rng.sample(sorted(self.tracked), count):
            line = self.queue[slurm_id]
            if line[0] == "PENDING" and self.rng.random() < 0.5:
                line[1] = "Resources" if line[1] == "Priority" else "Priority"
            elif line[0] == "PENDING":
                line[:3] = ["RUNNING", "None", "vm"]
            else:
                line[:3] = ["COMPLETED", "None", "vm"]
        return count

    def settle(self) -> int:
        """After a cycle: end what the gateway moved to collecting, refill to keep N constant."""
        ended = [sid for sid, line in self.queue.items()
                 if line[0] == "COMPLETED" and sid in self.tracked]
        with self.store._transaction():
            for slurm_id in ended:
                self.store.db.execute(
                    "UPDATE jobs SET state = 'succeeded', reason = 'completed' WHERE id = ? "
                    "AND state = 'collecting'", [self.tracked.pop(slurm_id)])
                self.completed.append(slurm_id)
        if ended:
            self.add_tracked(len(ended), old=False)
        while len(self.completed) > max(1, len(self.tracked) // 10):
            self.queue.pop(self.completed.pop(0))
        return len(ended)


async def measure(size: int, cycles: int, seed: int, gap: float | None) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="hpcgw-bench-poll-") as tmp:
        config = load_config_with_data_dir(Path(tmp) / "data")
        cluster = config.clusters[0]
        store = Store(Path(tmp) / "data" / "hpcgw.db")
        transport = RecordedTransport()
        backend = TimedBackend(load_backend(cluster, transport))
        runtime = ClusterLink(cluster, transport, backend)
        ctx = JobContext(config, store, {cluster.name: runtime}, make_environment())
        user_ids = {u: store.users.add_user(u, u).id for u in ("alice", "bob")}
        spec_json = resolve_spec(parse_spec({"name": "bench", "time": "00:10:00"}), config,
                                 default_name="notebook").model_dump_json()

        setup_started = time.perf_counter()
        fleet = Fleet(store, user_ids, spec_json, cluster.name, rng)
        fleet.add_tracked(size, old=True)
        fleet.add_completed(max(1, size // 10))
        fleet.add_foreign(max(1, size // 20))
        setup_s = time.perf_counter() - setup_started

        read_ms, status_ms, apply_ms, age_ms, cycle_ms, wall_ms = [], [], [], [], [], []
        calls, changed, tracked, lines, first_ms = [], [], [], [], 0.0
        poll = config.poll
        for number in range(WARMUP_CYCLES + cycles):
            changes = fleet.change(CHANGE_FRACTION)
            transport.squeue_text = fleet.squeue_text()
            before = sum(transport.calls.values())
            backend.cpu.clear()

            wall0, cpu0 = time.perf_counter(), time.process_time()
            # -- one iteration of poll_forever (its sleep excluded) --
            runtime.tracked.refresh(store, runtime.name)
            cpu1 = time.process_time()
            await poll_once(ctx, runtime)
            cpu2 = time.process_time()
            next_interval(runtime.tracked.newest_created_at(), poll)
            cpu3, wall3 = time.process_time(), time.perf_counter()

            if number == 0:
                first_ms = (cpu3 - cpu0) * 1000
            if number >= WARMUP_CYCLES:
                read_ms.append((cpu1 - cpu0) * 1000)
                status_ms.append(sum(backend.cpu) * 1000)
                apply_ms.append((cpu2 - cpu1 - sum(backend.cpu)) * 1000)
                age_ms.append((cpu3 - cpu2) * 1000)
                cycle_ms.append((cpu3 - cpu0) * 1000)
                wall_ms.append((wall3 - wall0) * 1000)
                calls.append(sum(transport.calls.values()) - before)
                changed.append(changes)
                tracked.append(len(runtime.tracked.jobs))
                lines.append(transport.squeue_text.count(b"\n"))
            fleet.settle()
            await asyncio.sleep(poll.young_interval if gap is None else gap)

        # A cycle with a full read of the tracked rows (after a failed cycle, say).
        fleet.change(CHANGE_FRACTION)
        transport.squeue_text = fleet.squeue_text()
        runtime.tracked.invalidate()
        cpu0 = time.process_time()
        runtime.tracked.refresh(store, runtime.name)
        await poll_once(ctx, runtime)
        next_interval(runtime.tracked.newest_created_at(), poll)
        full_read_ms = (time.process_time() - cpu0) * 1000
        fleet.settle()

        parse_cpu = []
        text = transport.squeue_text.decode()
        for _ in range(5):
            started = time.process_time()
            parse_squeue(text)
            parse_cpu.append((time.process_time() - started) * 1000)
        runtime.tracked.refresh(store, runtime.name)
        consistent = tracked_matches_store(runtime.tracked, store, cluster.name)
        store.close()
    return {
        "size": size, "setup_s": setup_s, "cycle_ms": statistics.median(cycle_ms),
        "cycle_max_ms": max(cycle_ms), "wall_ms": statistics.median(wall_ms),
        "read_ms": statistics.median(read_ms), "status_ms": statistics.median(status_ms),
        "apply_ms": statistics.median(apply_ms), "age_ms": statistics.median(age_ms),
        "parse_ms": statistics.median(parse_cpu), "calls": max(calls), "calls_min": min(calls),
        "by_command": dict(transport.calls), "changed": statistics.median(changed),
        "tracked": statistics.median(tracked), "lines": statistics.median(lines),
        "cycles": len(cycle_ms), "collectors": handed_to_collector(ctx), "first_ms": first_ms,
        "full_read_ms": full_read_ms,
        "consistent": consistent,
    }


def tracked_matches_store(tracked: TrackedJobs, store: Store, cluster: str) -> bool:
    """Whether the poller's in-memory jobs equal a full read of the store (a sanity check)."""
    return {row["id"]: row for row in store.tracked_jobs(cluster)} == tracked.jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--cycles", type=int, default=15)
    parser.add_argument("--squeue-runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gap", type=float, default=None,
                        help="seconds between cycles (default: the poller's own interval)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    squeue_ms, outputs = wall_median_ms(SQUEUE_ARGV, args.squeue_runs)
    real_lines = outputs[-1].count("\n")
    print(f"reference: real `{' '.join(SQUEUE_ARGV)}` on the dev cluster: "
          f"{squeue_ms:.1f} ms wall (median of {args.squeue_runs}; {real_lines} lines listed)")

    results = []
    for size in sizes:
        result = asyncio.run(measure(size, args.cycles, args.seed, args.gap))
        results.append(result)
        print(f"N={size}: setup {result['setup_s']:.1f}s, {result['cycles']} measured cycles, "
              f"{result['lines']:.0f} squeue lines, ~{result['changed']:.0f} jobs changed/cycle, "
              f"commands over the run {result['by_command']}, "
              f"collectors spawned {result['collectors']}, CPU of the first cycle "
              f"{result['first_ms']:.1f} ms and of a later cycle with a full read "
              f"{result['full_read_ms']:.1f} ms, in-memory jobs match the store: "
              f"{result['consistent']}", flush=True)

    print()
    print(table(
        ["N tracked", "gateway CPU ms/cycle (median)", "max", "scheduler calls/cycle",
         "real squeue ms", "ratio CPU/squeue", "target < 50 ms @10k"],
        [[f"{r['size']:,}", f"{r['cycle_ms']:.2f}", f"{r['cycle_max_ms']:.2f}",
          f"{r['calls']}" if r["calls"] == r["calls_min"] else f"{r['calls_min']}-{r['calls']}",
          f"{squeue_ms:.1f}", f"{r['cycle_ms'] / squeue_ms:.2f}x",
          ("met" if r["cycle_ms"] < 50 else "MISSED") if r["size"] >= 10_000 else "-"]
         for r in results],
    ))
    print()
    print("breakdown, CPU ms per cycle (median):")
    print(table(
        ["N tracked", "store read (refresh)", "status_many (squeue parse)", "apply + writes",
         "young/old check", "parse_squeue alone", "wall ms/cycle"],
        [[f"{r['size']:,}", f"{r['read_ms']:.2f}", f"{r['status_ms']:.2f}",
          f"{r['apply_ms']:.2f}", f"{r['age_ms']:.2f}", f"{r['parse_ms']:.2f}",
          f"{r['wall_ms']:.2f}"] for r in results],
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
