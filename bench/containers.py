"""Jobs in a container against the same jobs on the host: what the Charliecloud runtime adds.

Issue "Jobs in containers": "time a notebook run adds inside Charliecloud against the same run
with runtime none, in the same run (target <= 0.3 s extra); lab time to ready inside and outside
a container".

- Notebook: ``hpcgw serve --port 0`` on a copy of the dev config renders two warm-up jobs of the
  same small notebook, one in the dev image ``bookworm-jupyter`` (runtime charliecloud), one
  without an image (runtime none, the host's job environment). Their job scripts, with only the
  work directory changed, are then run directly as alice (``sudo -n -u alice -- bash job.sh``
  in a directory staged beforehand, untimed), so the figure is the script's own time, from its
  start to its end, with no scheduler in it (Slurm's start times have a one-second grain).
  Everything the script does is in it: collecting the environment, ``env -i``, ``ch-run``,
  the image's Python starting papermill, the kernel, the notebook, the exit record. ROUNDS
  alternating pairs (which goes first flips every round) after one unmeasured pair; medians and
  the median of the per-round differences.
- Lab: ``POST /api/v1/jobs`` (kind lab, cpu partition) in the image and without one, alternating,
  timed until the job turns ``ready`` (its event time: JupyterLab answered through the gateway's
  probe), polled every 0.1 s; each lab is cancelled before the next starts.

Needs `scripts/dev-cluster up` (which builds the image); run as root or as a user who may
``sudo -n -u alice``.

Run: .venv/bin/python bench/containers.py [--rounds 7] [--lab-rounds 3]
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
from pathlib import Path
from typing import Any

import aiohttp
from _common import DEV_CONFIG, ServedGateway, served_gateway, table
from notebook_e2e import as_user, epoch, get_json, notebook, read_as_user, stage

IMAGE = "bookworm-jupyter"
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
DEADLINE_S = 300.0
TARGET_EXTRA_S = 0.3


async def submit_and_wait(session: aiohttp.ClientSession, book: bytes,
                          image: str | None) -> dict[str, Any]:
    """One notebook job through the API, waited for; the job (it must succeed)."""
    form = aiohttp.FormData()
    spec = {"name": "bench-containers", "time": "00:10:00", **({"image": image} if image else {})}
    form.add_field("spec", json.dumps(spec), content_type="application/json")
    form.add_field("notebook", book, filename="c.ipynb", content_type="application/x-ipynb+json")
    async with session.post("/api/v1/jobs", data=form) as reply:
        if reply.status != 201:
            raise SystemExit(f"POST /api/v1/jobs: {reply.status} {await reply.text()}")
        job_id = (await reply.json())["id"]
    deadline = time.monotonic() + DEADLINE_S
    while (job := await get_json(session, f"/api/v1/jobs/{job_id}"))["state"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} not ended after {DEADLINE_S} s")
        await asyncio.sleep(0.1)
    if job["state"] != "succeeded":
        raise SystemExit(f"job {job_id} ({image or 'host'}) ended {job['state']}: "
                         f"{job['message']}")
    return dict(job)


def script_run(directory: str) -> float:
    """Run ``directory``/job.sh as alice, from there; its wall time in seconds."""
    started = time.perf_counter()
    done = subprocess.run(as_user("bash", "-c", f"cd {directory} && exec bash job.sh"),
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    record = json.loads(read_as_user(f"{directory}/exit.json"))
    if done.returncode != 0 or record.get("status") != "ok":
        raise SystemExit(f"{directory}/job.sh: exit {done.returncode}, {record}\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


async def notebook_rounds(served: ServedGateway, rounds: int, work_root: str,
                          bare_root: str) -> dict[str, list[float]]:
    """Per variant ("image", "host"): the script's wall time of each measured round."""
    headers = {"Authorization": f"Bearer {served.token}"}
    book = notebook()
    scripts: dict[str, tuple[str, dict[str, bytes]]] = {}
    async with aiohttp.ClientSession(served.url, headers=headers) as session:
        for variant, image in (("image", IMAGE), ("host", None)):
            job = await submit_and_wait(session, book, image)
            workdir = f"{work_root}/{job['id']}"
            scripts[variant] = (workdir, {name: read_as_user(f"{workdir}/{name}") for name in (
                "job.sh", "input.ipynb", "parameters.json", "runner.py")})
    times: dict[str, list[float]] = {"image": [], "host": []}
    for number in range(rounds + 1):
        order = ("image", "host") if number % 2 else ("host", "image")
        for variant in order:
            workdir, files = scripts[variant]
            directory = f"{bare_root}/{variant}-{number}"
            script = files["job.sh"].decode().replace(workdir, directory).encode()
            stage(directory, {**files, "job.sh": script})
            elapsed = await asyncio.to_thread(script_run, directory)
            if number > 0:
                times[variant].append(elapsed)
    return times


async def lab_rounds(served: ServedGateway, rounds: int) -> dict[str, list[float]]:
    """Per variant: seconds from POST to ``ready`` of each lab."""
    headers = {"Authorization": f"Bearer {served.token}"}
    times: dict[str, list[float]] = {"image": [], "host": []}
    async with aiohttp.ClientSession(served.url, headers=headers) as session:
        for number in range(rounds):
            order = ("image", "host") if number % 2 else ("host", "image")
            for variant in order:
                spec = {"kind": "lab", "time": "00:10:00",
                        **({"image": IMAGE} if variant == "image" else {})}
                started = time.time()
                async with session.post("/api/v1/jobs", json=spec) as reply:
                    if reply.status != 201:
                        raise SystemExit(f"lab: {reply.status} {await reply.text()}")
                    job_id = (await reply.json())["id"]
                deadline = time.monotonic() + DEADLINE_S
                while (job := await get_json(session, f"/api/v1/jobs/{job_id}"))["state"] \
                        != "ready":
                    if job["state"] in TERMINAL or time.monotonic() > deadline:
                        raise SystemExit(f"lab {job_id} ({variant}): {job['state']} "
                                         f"{job['message']}")
                    await asyncio.sleep(0.1)
                events = (await get_json(session, f"/api/v1/jobs/{job_id}/events"))["events"]
                ready = next(epoch(e["at"]) for e in events if e["to_state"] == "ready")
                times[variant].append(ready - started)
                async with session.post(f"/api/v1/jobs/{job_id}/cancel"):
                    pass
                while (await get_json(session, f"/api/v1/jobs/{job_id}"))["state"] not in \
                        TERMINAL:
                    await asyncio.sleep(0.2)
    return times


def report(scripts: dict[str, list[float]], labs: dict[str, list[float]]) -> None:
    def row(name: str, values: list[float]) -> list[str]:
        return [name, f"{statistics.median(values):.3f}",
                f"{min(values):.3f}-{max(values):.3f}", str(len(values))]

    print("notebook job script run directly as alice (no scheduler), seconds")
    print(table(["variant", "median s", "range", "runs"],
                [row(f"{IMAGE} (charliecloud)", scripts["image"]),
                 row("host (runtime none)", scripts["host"])]))
    extra = statistics.median(scripts["image"]) - statistics.median(scripts["host"])
    paired = statistics.median(i - h for i, h in zip(scripts["image"], scripts["host"],
                                                     strict=True))
    verdict = "met" if extra <= TARGET_EXTRA_S else "MISSED"
    print(f"extra in the container: {extra:+.3f} s (median of per-round differences "
          f"{paired:+.3f} s); target <= {TARGET_EXTRA_S} s: {verdict}")
    if labs["image"]:
        print("\nlab: POST until ready through the gateway, seconds")
        print(table(["variant", "median s", "range", "labs"],
                    [row(f"{IMAGE} (charliecloud)", labs["image"]),
                     row("host (runtime none)", labs["host"])]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--lab-rounds", type=int, default=3)
    args = parser.parse_args()
    bare_root = f"/home/alice/.hpcgw/bench-containers-{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(prefix="hpcgw-bench-containers-") as tmp, \
                served_gateway(Path(tmp), DEV_CONFIG, "alice") as served:
            scripts = asyncio.run(notebook_rounds(served, args.rounds,
                                                  "/home/alice/.hpcgw/jobs", bare_root))
            labs = asyncio.run(lab_rounds(served, args.lab_rounds))
    finally:
        subprocess.run(as_user("rm", "-rf", "--", bare_root), check=False)
    report(scripts, labs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
