"""The browser portal's pages: ``/`` (the notebook and lab forms, the caller's jobs and labs
updated live), ``/jobs/{id}`` (one job), ``/jobs/{id}/notebook.html`` (its executed notebook,
rendered and sandboxed), ``/admin`` (every user's jobs, admins only) and the page a browser
gets for a lab that ended or does not exist.

The pages are jinja2 templates (:mod:`.views`); what they show of jobs comes from the public
API and the job event stream, read by the page's own scripts under ``/static/`` (no inline
script: the CSP allows only ``script-src 'self'``). Anonymous browsers go to the login page
(the auth middleware); another user's job is the same 404 page as a missing one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import NotFound, TooManyRequests
from ..jobs.limits import PerUserCount
from ..offload import WorkFailed
from ..pageheaders import SECURITY_HEADERS
from ..users import User
from .keys import SERVICE, current_user
from .rendered import CSP as NOTEBOOK_CSP
from .rendered import cached_page, rendered_page, too_big_page
from .sessions import XSRF_COOKIE
from .views import page

routes = web.RouteTableDef()
STATIC = Path(__file__).with_name("static")
JOB_PAGE = "/jobs/{job_id:[0-9a-f]{16}}"
# Notebook pages being rendered or waiting their turn, per user (each may take seconds and
# memory; users take turns at the renderer: gateway/offload.py).
PAGE_RENDERS = web.AppKey("page_renders", PerUserCount)
MAX_PAGE_RENDERS = 4


def _frame(request: web.Request, user: User) -> dict[str, Any]:
    """What ``base.html`` needs: the user (name, admin) and the logout form's XSRF value."""
    return {"user": user, "xsrf": request.cookies.get(XSRF_COOKIE, "")}


@routes.get("/")
async def dashboard(request: web.Request) -> web.Response:
    """The dashboard. ``after`` is the newest event when the page was made: the page's
    script lists the jobs, then streams every change after it, so none falls in between."""
    user = current_user(request)
    return page("dashboard.html", **_frame(request, user), everyone=False,
                after=request.app[SERVICE].event_watermark())


@routes.get("/admin")
async def admin(request: web.Request) -> web.Response:
    """Every user's jobs, live (the admin API and ``?all=1`` stream); 403 page otherwise."""
    user = current_user(request)
    if not user.admin:
        return message_page(request, user, 403, "Not allowed",
                            ["Only administrators see every user's jobs."])
    return page("dashboard.html", **_frame(request, user), everyone=True,
                after=request.app[SERVICE].event_watermark())


@routes.get(JOB_PAGE)
async def job_page(request: web.Request) -> web.Response:
    """One of the caller's jobs, live; a missing or another user's job is a 404 page."""
    user, job_id = current_user(request), request.match_info["job_id"]
    try:
        request.app[SERVICE].get_job(user, job_id)
    except NotFound:
        return message_page(request, user, 404, "No such job",
                            [f"There is no job {job_id} of yours."])
    return page("job.html", **_frame(request, user), job_id=job_id,
                after=request.app[SERVICE].event_watermark())


@routes.get(JOB_PAGE + "/notebook.html")
async def notebook_page(request: web.Request) -> web.Response:
    """The executed notebook as HTML (:mod:`.rendered`), sandboxed by its CSP; 404 while
    there is none (as a problem: it is shown in a frame of the job page)."""
    user, job_id = current_user(request), request.match_info["job_id"]
    service = request.app[SERVICE]
    path = service.output_notebook(user, job_id)
    if path is None:
        raise NotFound("the job has no executed notebook (yet)", job_id=job_id)
    name = service.get_job(user, job_id)["name"]
    html = cached_page(path)
    if html is None:
        html = await _render(request, user, path, name)
    return web.Response(text=html, content_type="text/html",
                        headers={"Content-Security-Policy": NOTEBOOK_CSP,
                                 "Cache-Control": "no-store"})


async def _render(request: web.Request, user: User, path: Path, name: str) -> str:
    """The notebook's page rendered off the loop (a big notebook in a process of its own),
    at most :data:`MAX_PAGE_RENDERS` of a user's at once (429 past that); the too-big page
    if the renderer gives up on it."""
    renders = request.app[PAGE_RENDERS]
    if not renders.take(user.id):
        raise TooManyRequests(
            f"at most {renders.limit} notebook pages of a user's are rendered at once",
            limit="notebook_pages", value=renders.limit, retry_after=1)
    try:
        return await request.app[SERVICE].offload.run(path.stat().st_size, rendered_page,
                                                       path, name, owner=user.id)
    except WorkFailed:
        return too_big_page(name)
    finally:
        renders.give_back(user.id)


def message_page(request: web.Request, user: User | None, status: int, heading: str,
                 lines: list[str], refresh: int = 0,
                 headers: dict[str, str] | None = None) -> web.Response:
    """A page that says what happened, with a link back to the dashboard; ``refresh``: the
    page reloads itself after that many seconds. It carries the gateway's own security
    headers also under ``/labs/`` (where the middleware leaves responses to the labs)."""
    frame: dict[str, Any] = (_frame(request, user) if user is not None
                             else {"user": None, "xsrf": ""})
    return page("message.html", status=status, headers={**SECURITY_HEADERS, **(headers or {})},
                **frame, heading=heading,
                lines=lines, back="/", back_text="Back to your jobs", refresh=refresh)


def lab_starting_page(request: web.Request, user: User, detail: str) -> web.Response:
    """What a browser gets at ``/labs/{id}/...`` while the lab is not ready: a 503 page
    that says why (the job's state) and reloads itself every 2 s."""
    return message_page(request, user, 503, "Your lab is not ready yet",
                        [detail, "This page reloads by itself."], refresh=2,
                        headers={"Retry-After": "2"})


def lab_gone_page(request: web.Request, user: User, job_id: str) -> web.Response:
    """What a browser gets at ``/labs/{id}/...`` for a lab that ended, is no lab, or does not
    exist (another user's lab is one that does not exist): a page, never a JSON problem."""
    try:
        job = request.app[SERVICE].get_job(user, job_id)
    except NotFound:
        return message_page(request, user, 404, "No such lab",
                            [f"There is no lab {job_id} of yours. It may have belonged to "
                             "someone else, or the link is wrong."])
    if job["kind"] != "lab":
        lines = [f"Job {job_id} ({job['name']}) is a notebook run, not a lab."]
    else:
        lines = [f"The lab {job['name']} has ended: it is {job['state']}"
                 + (f" ({job['reason']})." if job["reason"] else ".")]
        if job["message"]:
            lines.append(job["message"])
        lines.append("Start a new lab from the dashboard.")
    return message_page(request, user, 404, "This lab is not running", lines)


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.FileResponse:
    """The icon browsers ask for on every page (the login page's too), public."""
    return web.FileResponse(STATIC / "favicon.svg", headers={
        "Content-Type": "image/svg+xml", "Cache-Control": "max-age=86400"})


def setup(app: web.Application) -> None:
    """Add the portal's pages and its static files to ``app``."""
    app[PAGE_RENDERS] = PerUserCount(MAX_PAGE_RENDERS)
    app.add_routes(routes)
    add_static(app)


def add_static(app: web.Application) -> None:
    """Serve the portal's scripts and style sheet under ``/static/`` (public: nothing in
    them is secret, and the login page may use the style sheet)."""
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
