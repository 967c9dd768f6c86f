"""Job routes: submit, list, show, cancel, and a job's notebook, log and events."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import (
    BadRequest,
    Conflict,
    FieldError,
    LengthRequired,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from ..jobs.views import job_view
from ..listing import cursor_after, parse_query
from ..staging.sidefiles import MAX_SIDE_FILES
from .forms import read_capped
from .keys import CONFIG, SERVICE, current_user
from .models import EventList, Job, JobList, OutputFileList, json_answer

routes = web.RouteTableDef()
JOB = "/api/v1/jobs/{job_id:[0-9a-f]{16}}"
MAX_SPEC_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 200
UPLOAD_MARGIN = 16 * 1024  # boundaries and part headers of a notebook upload
SIDE_PART_MARGIN = 1024  # the boundary and headers of one side file (its name <= 128 chars)
MAX_JSON_DEPTH = 64  # a spec or lab request nested deeper is refused


def upload_limit(max_notebook_bytes: int, max_side_files_bytes: int = 0) -> int:
    """The most bytes a whole notebook upload may have: every part at its cap plus room for
    boundaries and part headers (of the side files too)."""
    side_margin = SIDE_PART_MARGIN * MAX_SIDE_FILES if max_side_files_bytes else 0
    return max_notebook_bytes + MAX_SPEC_BYTES + max_side_files_bytes + UPLOAD_MARGIN + side_margin


def parse_json(data: bytes, field: str) -> Any:
    """``data`` as JSON, or 400 (:class:`BadRequest`, naming ``field`` in ``fields``): not
    JSON, not UTF-8, nested deeper than :data:`MAX_JSON_DEPTH` (Python's parser would
    otherwise hit its recursion limit), or a string with a lone surrogate (``"\\ud800"`` is
    JSON, but no Unicode text: I-JSON, RFC 7493 §2.1, refuses it, and nothing downstream could
    store or send it on). What parses but does not fit is the callers' 422."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise BadRequest(f"{field}: JSON nested more than {MAX_JSON_DEPTH} levels deep",
                         fields=[field]) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest(f"{field} is not valid JSON: {exc}", fields=[field]) from None
    unfit = _unfit(value, MAX_JSON_DEPTH)
    if unfit:
        raise BadRequest(f"{field}: {unfit}", fields=[field])
    return value


def _unfit(value: Any, limit: int) -> str | None:
    """Why ``value`` cannot be taken (it nests lists/objects more than ``limit`` deep, or a
    string, key or value, holds a lone surrogate), None if it can; iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _is_text(item):
                return "a string holds a lone surrogate (\\ud800-\\udfff), which is no text"
        elif isinstance(item, dict | list):
            if depth > limit:
                return f"JSON nested more than {limit} levels deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def _is_text(string: str) -> bool:
    try:
        string.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _multipart(request: web.Request, limit: int) -> MultipartReader:
    """The body's multipart reader once its size is known to be within ``limit``.

    The whole body must declare its size (Content-Length, 411 without: every usual client sends
    it for a file upload) and be at most ``limit`` bytes (413 before anything is read); aiohttp
    then never reads past it. A Content-Type without a usable boundary is a 400.
    """
    size = request.content_length
    if size is None:
        raise LengthRequired("a notebook upload must carry Content-Length")
    if size > limit:
        raise PayloadTooLarge(f"a notebook upload is at most {limit} bytes")
    try:
        return await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise BadRequest(f"not a usable multipart/form-data body: {exc}") from None


async def _parts(reader: MultipartReader) -> AsyncIterator[BodyPartReader]:
    """The body's parts; malformed framing (no starting boundary, bad part headers, a body
    that ends early) is a 400."""
    while True:
        try:
            part = await reader.next()
        except (ValueError, AssertionError, HttpProcessingError, ConnectionError) as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from None
        if part is None:
            return
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart is not supported")
        yield part


@dataclass
class NotebookUpload:
    notebook: bytes
    spec: Any
    side_files: list[tuple[str, bytes]]  # (file name, content) in upload order, not checked
    filename: str | None = None  # the notebook part's file name, as the client sent it


async def read_notebook_upload(request: web.Request) -> NotebookUpload:
    """The ``notebook`` file part, the parsed ``spec`` part and any ``file`` parts (side
    files, by their file names), in any order.

    400: no boundary, malformed framing, a part without a name, a spec that is not JSON or is
    nested too deep (before any other check). 411/413: see
    :func:`_multipart`; 413 also for a part over its own cap (the notebook:
    ``max_notebook_bytes``; the spec: 64 KiB; the side files together:
    ``max_side_files_bytes``). 422: ``notebook`` or ``spec`` sent twice, an unknown part, a
    missing part, a ``file`` part without a file name. Side files' names are checked by the
    job service.
    """
    gateway = request.app[CONFIG].gateway
    reader = await _multipart(request, upload_limit(gateway.max_notebook_bytes,
                                                    gateway.max_side_files_bytes))
    found: dict[str, bytes] = {}
    filename: str | None = None
    side: list[tuple[str, bytes]] = []
    side_budget = gateway.max_side_files_bytes
    try:
        async for part in _parts(reader):
            name = part.name
            if not name:
                raise BadRequest("a form part without a name (Content-Disposition)")
            if name == "file":
                data = await _side_file(part, side_budget)
                side_budget -= len(data[1])
                side.append(data)
                continue
            if name not in ("notebook", "spec"):
                raise ValidationFailed([FieldError(name, "unknown form part")])
            if name in found:
                raise ValidationFailed([FieldError(name, "sent more than once")])
            if name == "notebook":
                filename = part.filename
            found[name] = await read_capped(
                functools.partial(part.read_chunk, 64 * 1024),
                gateway.max_notebook_bytes if name == "notebook" else MAX_SPEC_BYTES, name,
                fields=[name])
    except (ValueError, AssertionError, HttpProcessingError, ConnectionError) as exc:
        # framing broken inside a part, or the body ended early
        raise BadRequest(f"malformed multipart body: {exc}") from None
    spec = parse_json(found["spec"], "spec") if "spec" in found else None  # 400 first
    missing = [FieldError(n, "missing part") for n in ("notebook", "spec") if n not in found]
    if missing:
        raise ValidationFailed(missing)
    return NotebookUpload(found["notebook"], spec, side, filename)


async def _side_file(part: BodyPartReader, budget: int) -> tuple[str, bytes]:
    """One ``file`` part: (its file name, its content), at most ``budget`` bytes (413)."""
    if not part.filename:
        raise ValidationFailed([FieldError("file", "a side file needs a file name")])
    data = await read_capped(functools.partial(part.read_chunk, 64 * 1024), budget,
                             "the side files together", fields=["file"])
    return part.filename, data


async def read_json_body(request: web.Request, what: str) -> Any:
    """A JSON body (a lab request, a storage request) of at most 64 KiB (413 naming ``what``),
    parsed as :func:`parse_json` does."""
    if request.content_length is not None and request.content_length > MAX_SPEC_BYTES:
        raise PayloadTooLarge(f"{what} is at most {MAX_SPEC_BYTES} bytes")
    return parse_json(await read_capped(request.content.readany, MAX_SPEC_BYTES, what), "body")


@routes.post("/api/v1/jobs")
async def submit_job(request: web.Request) -> web.Response:
    user = current_user(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise ValidationFailed([FieldError("Idempotency-Key", "1 to 200 characters")])
    if request.content_type == "multipart/form-data":
        upload = await read_notebook_upload(request)
        job, created = await request.app[SERVICE].create_notebook_job(
            user, upload.spec, upload.notebook, key, side_files=upload.side_files,
            filename=upload.filename)
    elif request.content_type == "application/json":
        job, created = request.app[SERVICE].create_lab_job(
            user, await read_json_body(request, "a lab request"), key)
    else:
        raise UnsupportedMediaType(
            "send multipart/form-data (notebook + spec) for a notebook run, "
            "or application/json for a lab")
    headers = {"Location": f"/api/v1/jobs/{job['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _job_answer(job, 201, headers)


@routes.get("/api/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    """The caller's jobs, newest first, filtered and paged (:mod:`gateway.listing`); ``next``
    (also a ``Link: <...>; rel="next"`` header) is the next page's URL, null on the last."""
    query = parse_query(request.query)
    jobs = request.app[SERVICE].list_jobs(current_user(request), query)
    next_page, headers = next_page_of(request, jobs, query.limit)
    answer = JobList(jobs=[Job.model_validate(job_view(job)) for job in jobs], next=next_page)
    return json_answer(answer, headers=headers)


def next_page_of(request: web.Request, jobs: list[dict[str, Any]],
                 limit: int) -> tuple[str | None, dict[str, str]]:
    """The next page's URL (None on the last page: fewer than ``limit`` jobs) and its
    ``Link`` header."""
    if len(jobs) < limit:
        return None, {}
    next_page = str(request.rel_url.with_query({**request.query,
                                                "cursor": cursor_after(jobs[-1])}))
    return next_page, {"Link": f'<{next_page}>; rel="next"'}


@routes.get(JOB)
async def show_job(request: web.Request) -> web.Response:
    job = await request.app[SERVICE].current_job(current_user(request),
                                                 request.match_info["job_id"])
    return _job_answer(job)


@routes.post(JOB + "/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    job, accepted = await request.app[SERVICE].cancel(
        current_user(request), request.match_info["job_id"])
    return _job_answer(job, 202 if accepted else 200)


def _job_answer(job: dict[str, Any], status: int = 200,
                headers: dict[str, str] | None = None) -> web.Response:
    return json_answer(Job.model_validate(job_view(job)), status, headers)


@routes.get(JOB + "/notebook")
async def executed_notebook(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    path = request.app[SERVICE].output_notebook(current_user(request), job_id)
    if path is None:
        raise Conflict("the job has no executed notebook (yet)", job_id=job_id)
    return web.FileResponse(path, headers={
        "Content-Type": "application/x-ipynb+json",
        "Content-Disposition": f'attachment; filename="{job_id}.ipynb"',
    })


@routes.get(JOB + "/files")
async def output_files(request: web.Request) -> web.Response:
    files = await request.app[SERVICE].output_files(current_user(request),
                                                    request.match_info["job_id"])
    return json_answer(OutputFileList.model_validate({"files": files}))


@routes.get(JOB + "/files/{path:.+}")
async def output_file(request: web.Request) -> web.StreamResponse:
    path = request.app[SERVICE].output_file(
        current_user(request), request.match_info["job_id"], request.match_info["path"])
    return web.FileResponse(path, headers={
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(path.name)}",
    })


# The headers of a log answer: where its bytes start in the job's log, where a reader that
# follows it asks next (both only with ?offset=), and the job's state when it was read.
LOG_START, LOG_NEXT, JOB_STATE = "Hpcgw-Log-Start", "Hpcgw-Log-Next", "Hpcgw-Job-State"
MAX_OFFSET = 2**53


@routes.get(JOB + "/log")
async def job_log(request: web.Request) -> web.Response:
    """The job's log: its tail, or with ``?offset=N`` the bytes from byte N on (at most
    ``gateway.log_tail_bytes``), with :data:`LOG_START` and :data:`LOG_NEXT` so that a client
    following the log (``hpcgw log -f``) never gets a byte twice; :data:`JOB_STATE` tells it
    when to stop (a terminal state and an empty answer: the whole log was read)."""
    offset = _offset(request.query.get("offset"))
    chunk, job = await request.app[SERVICE].job_log(
        current_user(request), request.match_info["job_id"], offset)
    headers = {JOB_STATE: job["state"]}
    if chunk.start is not None and chunk.next_offset is not None:
        headers.update({LOG_START: str(chunk.start), LOG_NEXT: str(chunk.next_offset)})
    return web.Response(body=chunk.data, content_type="text/plain", charset="utf-8",
                        headers=headers)


def _offset(raw: str | None) -> int | None:
    """The ``offset`` query parameter: a byte position (0 or more), or absent."""
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) >= MAX_OFFSET:
        raise ValidationFailed([FieldError("offset", "a byte position: a whole number >= 0")])
    return int(raw)


@routes.get(JOB + "/events")
async def job_events(request: web.Request) -> web.Response:
    events = request.app[SERVICE].events(current_user(request), request.match_info["job_id"])
    return json_answer(EventList.model_validate({"events": events}))
