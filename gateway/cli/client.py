"""Client subcommands: talk to a running gateway over its HTTP API (HPCGW_URL, HPCGW_TOKEN)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from ..states import State
from ..timestamps import parse_timestamp
from .http import (
    EXIT_CANCELLED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_TIMED_OUT,
    EXIT_USAGE,
    Client,
    ClientError,
)
from .jobspec import spec_from_args

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
EXIT_FOR_STATE = {"succeeded": EXIT_OK, "failed": EXIT_JOB_FAILED, "cancelled": EXIT_CANCELLED,
                  "timed_out": EXIT_TIMED_OUT}
# Seconds between two reads of a followed log that had nothing new.
FOLLOW_INTERVAL = 1.0
ALL_STATES = {state.value for state in State}


def print_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(job, indent=2))
        return
    for key in ("id", "name", "state", "reason", "message", "pending_reason", "slurm_job_id",
                "node", "partition", "cpus", "memory", "gpus", "time", "image", "created_at",
                "started_at", "ended_at"):
        if job.get(key) is not None:
            print(f"{key:15} {job[key]}")
    if job.get("progress"):
        print(f"{'progress':15} {job['progress']['done']}/{job['progress']['total']} cells done")


async def wait_for_end(client: Client, job_id: str) -> dict[str, Any]:
    """Poll the job until it is terminal; a live status line on a terminal only. Interrupted
    (Ctrl-C), it says that the job goes on and how to cancel it."""
    try:
        return await wait_until(client, job_id, TERMINAL)
    except asyncio.CancelledError:
        print(f"\nhpcgw: stopped waiting; job {job_id} keeps running (hpcgw status {job_id}, "
              f"hpcgw cancel {job_id})", file=sys.stderr)
        raise


async def wait_until(client: Client, job_id: str, states: set[str]) -> dict[str, Any]:
    """Poll the job until its state is in ``states`` or terminal; a live status line on a
    terminal only."""
    progress = None
    if sys.stderr.isatty():
        from rich.console import Console

        progress = Console(stderr=True).status(f"job {job_id}: waiting")
        progress.start()
    started = time.monotonic()
    try:
        while True:
            job = await client.json("GET", f"/api/v1/jobs/{job_id}")
            if progress is not None:
                detail = job["pending_reason"] if job["state"] == "pending" else job["node"]
                cells = job.get("progress")
                progress.update(f"job {job_id}: {job['state']}"
                                + (f" ({detail})" if detail else "")
                                + (f", cell {cells['done']}/{cells['total']} done"
                                   if cells else "")
                                + f"  {time.monotonic() - started:.0f}s")
            if job["state"] in TERMINAL or job["state"] in states:
                return dict(job)
            await asyncio.sleep(0.5)
    finally:
        if progress is not None:
            progress.stop()


async def cmd_submit(args: argparse.Namespace) -> int:
    client = Client()
    notebook = Path(args.notebook)
    form = aiohttp.FormData(quote_fields=False)  # file names as they are, as browsers send them
    form.add_field("spec", json.dumps(spec_from_args(args, "notebook")),
                   content_type="application/json")
    form.add_field("notebook", notebook.read_bytes(), filename=notebook.name,
                   content_type="application/x-ipynb+json")
    for side in map(Path, args.file or []):
        form.add_field("file", side.read_bytes(), filename=side.name,
                       content_type="application/octet-stream")
    job = await client.json("POST", "/api/v1/jobs", data=form)
    if args.parsable:
        print(job["id"])
    elif not args.wait:
        print_job(job, True) if args.json else print(f"Submitted job {job['id']}")
    if not args.wait:
        return EXIT_OK
    if not args.parsable:
        print(f"Submitted job {job['id']}", file=sys.stderr)
    job = await wait_for_end(client, job["id"])
    if not args.parsable:
        print_job(job, args.json)
    return EXIT_FOR_STATE.get(job["state"], EXIT_JOB_FAILED)


async def cmd_lab(args: argparse.Namespace) -> int:
    """Ask for a JupyterLab; print its URL (the last line). With --wait, or on a terminal,
    wait with progress until it is ready; exit 0 only if it is."""
    client = Client()
    job = await client.json("POST", "/api/v1/jobs", json=spec_from_args(args, "lab"))
    url = client.url + job["lab_url"]
    if not (args.wait or sys.stdout.isatty()):
        print_job(job, True) if args.json else print(f"Lab {job['id']}: {url}")
        return 0
    print(f"Lab {job['id']} requested: {url}", file=sys.stderr)
    job = await wait_until(client, job["id"], {"ready"})
    if args.json:
        print_job(job, True)
    elif job["state"] == "ready":
        print(f"Lab {job['id']} is ready: {url}")
    else:
        print(f"Lab {job['id']} ended {job['state']} ({job['reason']}): {job['message']}")
    return 0 if job["state"] == "ready" else 1


# The columns `hpcgw queue` can show (--format), each a header and how to get it from a job.
COLUMNS: dict[str, tuple[str, Any]] = {
    "id": ("ID", lambda job: job["id"]),
    "name": ("NAME", lambda job: job["name"]),
    "kind": ("KIND", lambda job: job["kind"]),
    "state": ("STATE", lambda job: job["state"]),
    "partition": ("PARTITION", lambda job: job["partition"]),
    "slurm": ("SLURM", lambda job: job["slurm_job_id"] or "-"),
    "time": ("TIME", lambda job: elapsed(job)),
    "node": ("NODE", lambda job: job["node"] or "-"),
    "cells": ("CELLS", lambda job: (f"{job['progress']['done']}/{job['progress']['total']}"
                                    if job.get("progress") else "-")),
    "reason": ("REASON", lambda job: job["pending_reason"] or job["reason"] or ""),
}
DEFAULT_COLUMNS = "id,name,state,partition,slurm,time,node,reason"


def elapsed(job: dict[str, Any]) -> str:
    """How long the job has run (until now, or until it ended), as squeue's TIME shows it:
    ``M:SS``, ``H:MM:SS``, ``D-HH:MM:SS``; ``0:00`` before it started."""
    if not job.get("started_at"):
        return "0:00"
    start = parse_timestamp(job["started_at"])
    end = parse_timestamp(job["ended_at"]) if job.get("ended_at") else datetime.now(UTC)
    seconds = max(0, int((end - start).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02}:{minutes:02}:{seconds:02}"
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


async def cmd_queue(args: argparse.Namespace) -> int:
    """Your jobs, newest first (every page), optionally filtered, as a table or JSON."""
    columns = [c.strip() for c in (args.format or DEFAULT_COLUMNS).split(",") if c.strip()]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown or not columns:
        raise ClientError(f"--format: unknown column(s) {', '.join(unknown) or '(none)'}; "
                          f"columns: {', '.join(COLUMNS)}", exit=EXIT_USAGE)
    params = {key: value for key, value in (("state", args.state), ("name", args.name),
                                            ("kind", args.kind)) if value}
    jobs = await Client().all_jobs(params)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return EXIT_OK
    rows = [[str(COLUMNS[c][1](job)) for c in columns] for job in jobs]
    header = [COLUMNS[c][0] for c in columns]
    widths = [max([len(header[i]), *(len(row[i]) for row in rows)]) for i in range(len(columns))]
    lines = ([] if args.noheader else [header]) + rows
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
              .rstrip())
    return EXIT_OK


async def find_job(client: Client, ident: str) -> dict[str, Any]:
    """The caller's job by gateway id, or by Slurm job id (digits); ClientError saying it was
    not found, in words."""
    if ident.isdigit():
        found = await client.all_jobs({"slurm_job_id": ident})
        if not found:
            raise _not_found(f"no job of yours has Slurm job id {ident}")
        return found[0]
    try:
        job: dict[str, Any] = await client.json("GET", f"/api/v1/jobs/{quote(ident)}")
    except ClientError as exc:
        if exc.extra.get("status") == 404:
            raise _not_found(f"no job {ident} (of yours): hpcgw queue lists them") from None
        raise
    return job


def _not_found(detail: str) -> ClientError:
    """A 404 in the CLI's words (``--json`` shows it as the gateway's not-found problem)."""
    return ClientError(detail, status=404, problem={
        "type": "/problems/not-found", "title": "Not found", "status": 404, "detail": detail})


async def cmd_events(args: argparse.Namespace) -> int:
    """The job's state changes, oldest first: time, from -> to, reason, message."""
    client = Client()
    job = await find_job(client, args.job_id)
    events = (await client.json("GET", f"/api/v1/jobs/{job['id']}/events"))["events"]
    if args.json:
        print(json.dumps(events, indent=2))
        return EXIT_OK
    for event in events:
        moved = f"{event.get('from_state') or '-'} -> {event['to_state']}"
        if event.get("kind") == "webhook":  # a delivery attempt, not a state change
            moved = f"webhook ({event['to_state']})"
        detail = "  ".join(str(event[k]) for k in ("reason", "message") if event.get(k))
        print(f"{event['at']}  {moved:24}  {detail}".rstrip())
    return EXIT_OK


async def cmd_webhook_secret(args: argparse.Namespace) -> int:
    """Print the caller's webhook secret (``--json``: ``{"secret": ...}``)."""
    answer = await Client().json("GET", "/api/v1/webhook-secret")
    print(json.dumps(answer, indent=2) if args.json else answer["secret"])
    return EXIT_OK


async def cmd_status(args: argparse.Namespace) -> int:
    print_job(await find_job(Client(), args.job_id), args.json)
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel the jobs named (gateway or Slurm ids), or those of yours that match --state /
    --name; says "cancel requested" for each (Slurm then ends it), or how it already ended."""
    client = Client()
    if not args.job_ids and not (args.state or args.name):
        raise ClientError("name the jobs to cancel (IDs), or filter them with --state/--name",
                          exit=EXIT_USAGE)
    jobs = [await find_job(client, ident) for ident in args.job_ids]
    if args.state or args.name:
        params = {"state": args.state or ",".join(sorted(TERMINAL ^ ALL_STATES)),
                  **({"name": args.name} if args.name else {})}
        jobs += await client.all_jobs(params)
    results = []
    for job in {job["id"]: job for job in jobs}.values():
        done = await client.json("POST", f"/api/v1/jobs/{job['id']}/cancel")
        results.append(done)
        if not args.json:
            what = (f"already {done['state']}" if done["state"] in TERMINAL and
                    job["state"] in TERMINAL else "cancel requested")
            print(f"job {done['id']}: {what}")
    if args.json:
        print(json.dumps(results, indent=2))
    return EXIT_OK


async def fetch_outputs(client: Client, job_id: str, directory: Path) -> int:
    """Download every collected output file of ``job_id`` under ``directory``; how many.
    A path that would land outside ``directory`` is refused (the answer is not trusted)."""
    files = (await client.json("GET", f"/api/v1/jobs/{job_id}/files"))["files"]
    root = directory.resolve()
    for entry in files:
        target = (root / entry["path"]).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ClientError(f"refusing output path {entry['path']!r}")
        _, body, _ = await client.request(
            "GET", f"/api/v1/jobs/{job_id}/files/{quote(entry['path'])}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    print(f"wrote {len(files)} output file(s) under {directory}", file=sys.stderr)
    return len(files)


async def cmd_fetch(args: argparse.Namespace) -> int:
    if args.outputs is not None:
        await fetch_outputs(Client(), args.job_id, Path(args.outputs))
        return 0
    _, body, _ = await Client().request("GET", f"/api/v1/jobs/{args.job_id}/notebook")
    if args.output == "-":
        sys.stdout.buffer.write(body)
        return 0
    target = Path(args.output or f"{args.job_id}.ipynb")
    target.write_bytes(body)
    print(f"wrote {target}", file=sys.stderr)
    return 0


async def cmd_log(args: argparse.Namespace) -> int:
    """Print the job's log (its tail); with ``-f``, all of it from the start and then what is
    added, until the job ended (exit status as ``submit --wait``: 0 only if it succeeded)."""
    client = Client()
    if not args.follow:
        _, body, _ = await client.request("GET", f"/api/v1/jobs/{args.job_id}/log")
        sys.stdout.buffer.write(body)
        return 0
    offset = 0
    while True:
        body, offset, state = await client.log_from(args.job_id, offset)
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
        if body:
            continue  # there may be more right away
        if state in TERMINAL:
            return EXIT_FOR_STATE.get(state, EXIT_JOB_FAILED)
        await asyncio.sleep(FOLLOW_INTERVAL)
