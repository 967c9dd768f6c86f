"""Admin routes: every user's jobs (``GET /api/v1/admin/jobs``); 403 for other users."""

from __future__ import annotations

from aiohttp import web

from ..jobs.oversight import admin_view
from ..listing import parse_query
from .jobs import next_page_of
from .keys import SERVICE, current_user
from .models import AdminJob, AdminJobList, json_answer

routes = web.RouteTableDef()


@routes.get("/api/v1/admin/jobs")
async def admin_jobs(request: web.Request) -> web.Response:
    """Every user's jobs, newest first, with the job list's filters and pages plus ``user``
    (the owner's name); each job carries its owner as ``user`` (:func:`admin_view`: a
    webhook shows only its URL's origin)."""
    service, caller = request.app[SERVICE], current_user(request)
    service.require_admin(caller)
    query = parse_query(request.query, admin=True)
    jobs = service.admin_jobs(caller, query)
    next_page, headers = next_page_of(request, jobs, query.limit)
    answer = AdminJobList(jobs=[AdminJob.model_validate(admin_view(job)) for job in jobs],
                          next=next_page)
    return json_answer(answer, headers=headers)
