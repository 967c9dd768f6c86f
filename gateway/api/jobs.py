"""Job routes: submit, list, show, cancel, and a job's notebook, log and events."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import BodyPartReader, web

from ..errors import (
    BadRequest,
    Conflict,
    FieldError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from ..jobs.service import job_view
from .keys import CONFIG, SERVICE, current_user

routes = web.RouteTableDef()
JOB = "/api/v1/jobs/{job_id:[0-9a-f]{16}}"
MAX_SPEC_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 200


async def _read_part(part: BodyPartReader, limit: int, field: str) -> bytes:
    """A multipart part's bytes, refusing (413) as soon as it grows past ``limit``."""
    chunks, size = [], 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{field} is larger than {limit} bytes", fields=[field])
        chunks.append(chunk)
    return b"".join(chunks)


async def read_notebook_upload(request: web.Request) -> tuple[bytes, Any]:
    """The ``notebook`` file part and the parsed ``spec`` part, in any order."""
    limit = request.app[CONFIG].gateway.max_notebook_bytes
    reader = await request.multipart()
    notebook: bytes | None = None
    spec: Any = None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart is not supported")
        if part.name == "notebook":
            notebook = await _read_part(part, limit, "notebook")
        elif part.name == "spec":
            try:
                spec = json.loads(await _read_part(part, MAX_SPEC_BYTES, "spec"))
            except ValueError as exc:
                raise ValidationFailed([FieldError("spec", f"not valid JSON: {exc}")]) from None
        else:
            raise ValidationFailed([FieldError(str(part.name), "unknown form part")])
    missing = [FieldError(n, "missing part") for n, v in (("notebook", notebook), ("spec", spec))
               if v is None]
    if missing:
        raise ValidationFailed(missing)
    assert notebook is not None
    return notebook, spec


async def _json_body(request: web.Request) -> Any:
    body = await request.content.read(MAX_SPEC_BYTES + 1)
    if len(body) > MAX_SPEC_BYTES:
        raise PayloadTooLarge(f"a lab request is at most {MAX_SPEC_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ValidationFailed([FieldError("body", f"not valid JSON: {exc}")]) from None


@routes.post("/api/v1/jobs")
async def submit_job(request: web.Request) -> web.Response:
    user = current_user(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise ValidationFailed([FieldError("Idempotency-Key", "1 to 200 characters")])
    if request.content_type == "multipart/form-data":
        notebook, spec = await read_notebook_upload(request)
        job, created = request.app[SERVICE].create_notebook_job(user, spec, notebook, key)
    elif request.content_type == "application/json":
        job, created = request.app[SERVICE].create_lab_job(user, await _json_body(request), key)
    else:
        raise UnsupportedMediaType(
            "send multipart/form-data (notebook + spec) for a notebook run, "
            "or application/json for a lab")
    headers = {"Location": f"/api/v1/jobs/{job['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return web.json_response(job_view(job), status=201, headers=headers)


@routes.get("/api/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    jobs = request.app[SERVICE].store.list_jobs(current_user(request).id)
    return web.json_response({"jobs": [job_view(job) for job in jobs]})


@routes.get(JOB)
async def show_job(request: web.Request) -> web.Response:
    job = request.app[SERVICE].store.get_job(request.match_info["job_id"], current_user(request).id)
    return web.json_response(job_view(job))


@routes.post(JOB + "/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    job, accepted = await request.app[SERVICE].cancel(
        current_user(request), request.match_info["job_id"])
    return web.json_response(job_view(job), status=202 if accepted else 200)


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


@routes.get(JOB + "/log")
async def job_log(request: web.Request) -> web.Response:
    text = await request.app[SERVICE].job_log(current_user(request), request.match_info["job_id"])
    return web.Response(body=text, content_type="text/plain", charset="utf-8")


@routes.get(JOB + "/events")
async def job_events(request: web.Request) -> web.Response:
    service, job_id = request.app[SERVICE], request.match_info["job_id"]
    service.store.get_job(job_id, current_user(request).id)
    return web.json_response({"events": service.store.events(job_id)})
