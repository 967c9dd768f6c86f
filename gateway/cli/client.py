"""Client subcommands: talk to a running gateway over its HTTP API (HPCGW_URL, HPCGW_TOKEN)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import yaml

from ..errors import GatewayError
from ..states import State
from ..timestamps import parse_timestamp

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
# Exit statuses (README, `hpcgw --help`): how a job ended, or why the command could not tell.
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_TIMED_OUT = 0, 1, 2, 3, 4
EXIT_HTTP_ERROR, EXIT_UNREACHABLE = 5, 6
EXIT_FOR_STATE = {"succeeded": EXIT_OK, "failed": EXIT_JOB_FAILED, "cancelled": EXIT_CANCELLED,
                  "timed_out": EXIT_TIMED_OUT}
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=300, connect=10)
# Seconds between two reads of a followed log that had nothing new.
FOLLOW_INTERVAL = 1.0
ALL_STATES = {state.value for state in State}
_GRES = re.compile(r"^gpu(?::(?P<type>[A-Za-z0-9._+-]*[A-Za-z._+-][A-Za-z0-9._+-]*))?"
                   r"(?::(?P<count>\d+))?$")


class ClientError(GatewayError):
    """The gateway answered with a problem (``status`` in its extras), or could not be
    reached."""

    @property
    def exit_status(self) -> int:
        if "exit" in self.extra:
            return int(self.extra["exit"])
        return EXIT_HTTP_ERROR if "status" in self.extra else EXIT_UNREACHABLE


class Client:
    """A thin async client of the gateway's HTTP API."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("HPCGW_URL") or "http://127.0.0.1:8000").rstrip("/")
        if not re.match(r"^https?://[^/\s]+", self.url):
            raise ClientError(f"HPCGW_URL must be the gateway's http:// or https:// URL, e.g. "
                              f"http://gateway.example.org:8000, not {self.url!r}",
                              exit=EXIT_USAGE)
        token = token or os.environ.get("HPCGW_TOKEN")
        if not token:
            raise ClientError("set HPCGW_TOKEN to your gateway token", exit=EXIT_USAGE)
        self._headers = {"Authorization": f"Bearer {token}"}

    async def all_jobs(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every job of the caller that matches ``params`` (the list's filters), all pages."""
        jobs: list[dict[str, Any]] = []
        query = "?" + urlencode({**params, "limit": "500"})
        while True:
            page = await self.json("GET", "/api/v1/jobs" + query)
            jobs += page["jobs"]
            if not page.get("next"):
                return jobs
            query = "?" + page["next"].split("?", 1)[1]

    async def log_from(self, job_id: str, offset: int) -> tuple[bytes, int, str]:
        """The job's log from byte ``offset`` (as much as one answer holds): ``(bytes, the
        offset to ask next, the job's state)``."""
        _, body, _, headers = await self._send(
            "GET", f"/api/v1/jobs/{quote(job_id)}/log", params={"offset": str(offset)})
        next_offset = headers.get("Hpcgw-Log-Next", "")
        state = headers.get("Hpcgw-Job-State", "")
        if not next_offset.isdigit() or not state:
            raise ClientError(f"{self.url} did not answer as an hpcgw gateway does (no log "
                              "offset in its answer)")
        return body, int(next_offset), state

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes, str]:
        """``(status, body, content_type)``; a problem answer raises ClientError."""
        status, body, content_type, _ = await self._send(method, path, **kwargs)
        return status, body, content_type

    async def _send(self, method: str, path: str,
                    **kwargs: Any) -> tuple[int, bytes, str, Mapping[str, str]]:
        """:meth:`request`, with the answer's headers too (names case-insensitive)."""
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session, \
                    session.request(method, self.url + path, headers=headers, **kwargs) as reply:
                body = await reply.read()
                if reply.status >= 400:
                    if not _problem(body):
                        raise ClientError(
                            f"{self.url} did not answer as an hpcgw gateway does (HTTP "
                            f"{reply.status} {reply.content_type} for {method} {path}): is "
                            "HPCGW_URL the gateway's address?", status=reply.status)
                    raise ClientError(_problem_text(reply.status, body), status=reply.status,
                                      problem=_problem(body))
                return reply.status, body, reply.content_type, reply.headers.copy()
        except aiohttp.ClientError as exc:
            raise ClientError(f"cannot reach the gateway at {self.url}: {exc}") from exc

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a request; ClientError saying so when the server at HPCGW_URL
        does not answer JSON (it is not an hpcgw gateway)."""
        _, body, content_type = await self.request(method, path, **kwargs)
        try:
            if content_type != "application/json":
                raise ValueError(content_type)
            return json.loads(body)
        except ValueError:
            raise ClientError(f"{self.url} did not answer as an hpcgw gateway does ({method} "
                              f"{path} gave {content_type or 'no content type'}, not JSON): "
                              "is HPCGW_URL the gateway's address?") from None


def _problem(body: bytes) -> dict[str, Any]:
    """The problem+json object of an error answer; empty if it is none."""
    try:
        problem = json.loads(body)
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}


def _problem_text(status: int, body: bytes) -> str:
    problem = _problem(body)
    if not problem:
        return f"HTTP {status}"
    text = f"{problem.get('title', 'error')} ({status}): {problem.get('detail', '')}"
    for error in problem.get("errors", []):
        text += f"\n  {error.get('field')}: {error.get('message')}"
    return text


def parse_parameter(text: str) -> tuple[str, Any]:
    """``name=value``: the value is JSON if it parses as JSON, else the literal string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ClientError(f"-P wants name=value, got {text!r}", exit=EXIT_USAGE)
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def spec_from_args(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The job spec the sbatch-style flags describe (unset flags are left to the server)."""
    spec: dict[str, Any] = {"kind": kind}
    for flag, field in (("cluster", "cluster"), ("partition", "partition"),
                        ("account", "account"), ("qos", "qos"), ("constraint", "constraint"),
                        ("reservation", "reservation"), ("cpus", "cpus"), ("mem", "memory"),
                        ("time", "time"), ("job_name", "name"), ("image", "image"),
                        ("kernel", "kernel")):
        if getattr(args, flag, None) is not None:
            spec[field] = getattr(args, flag)
    if getattr(args, "gpus", None) is not None:
        spec["gpus"] = args.gpus
    if args.gres:
        match = _GRES.match(args.gres)
        if not match:
            raise ClientError(f"--gres wants gpu[:TYPE][:COUNT], got {args.gres!r}",
                              exit=EXIT_USAGE)
        spec["gpus"] = int(match["count"] or 1)
        if match["type"]:
            spec["gpu_type"] = match["type"]
    parameters = notebook_parameters(args)
    if parameters:
        spec["parameters"] = parameters
    return spec


def notebook_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters papermill's forms give, merged in papermill's order (a later form wins
    for a name): ``-f`` files and ``-y`` YAML mappings, ``--parameters NAME VALUE`` (the value
    typed as papermill types it), ``-r NAME VALUE`` (a string, as given), then ``-P
    name=value`` (JSON if it parses, else a string)."""
    parameters: dict[str, Any] = {}
    for source, text in [*((f, _read_text(f)) for f in getattr(args, "parameters_file", None)
                           or []),
                         *(("-y", y) for y in getattr(args, "parameters_yaml", None) or [])]:
        parameters.update(_yaml_mapping(source, text))
    for name, value in getattr(args, "parameters", None) or []:
        parameters[name] = papermill_value(value)
    for name, value in getattr(args, "parameters_raw", None) or []:
        parameters[name] = value
    for text in getattr(args, "parameter", None) or []:
        name, value = parse_parameter(text)
        parameters[name] = value
    return parameters


def papermill_value(text: str) -> Any:
    """A ``-p`` value as papermill reads it: True, False, None, an int, a float, else the
    string."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _yaml_mapping(source: str, text: str) -> dict[str, Any]:
    """``text`` as a YAML mapping of parameters (``source`` names it in errors)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClientError(f"{source}: not YAML: {exc}".splitlines()[0],
                          exit=EXIT_USAGE) from None
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ClientError(f"{source}: parameters must be a YAML mapping of names to values",
                          exit=EXIT_USAGE)
    return value


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
        detail = "  ".join(str(event[k]) for k in ("reason", "message") if event.get(k))
        print(f"{event['at']}  {moved:24}  {detail}".rstrip())
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
