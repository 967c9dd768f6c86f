"""The pages that explain each problem type (``GET /problems/`` and ``/problems/{slug}``):
what a problem+json ``type`` points at. Public, generated from the error classes themselves
(:func:`gateway.errors.problem_types`: title, status, docstring), so they cannot drift."""

from __future__ import annotations

import inspect

from aiohttp import web

from ..errors import NotFound, problem_types
from .views import PAGES

routes = web.RouteTableDef()


def _explained() -> list[dict[str, object]]:
    return [{"slug": slug, "title": kind.title, "status": kind.status,
             "explanation": " ".join((inspect.getdoc(kind) or kind.title).split())}
            for slug, kind in sorted(problem_types().items())]


@routes.get("/problems/")
async def all_problems(request: web.Request) -> web.Response:
    page = PAGES.get_template("problems.html").render(
        heading="Problems the hpcgw API answers with", problems=_explained(), single=False)
    return web.Response(text=page, content_type="text/html")


@routes.get("/problems/{slug}")
async def one_problem(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    chosen = [problem for problem in _explained() if problem["slug"] == slug]
    if not chosen:
        raise NotFound(f"no problem type {slug!r}; /problems/ lists them")
    page = PAGES.get_template("problems.html").render(
        heading=f"Problem: {chosen[0]['title']}", problems=chosen, single=True)
    return web.Response(text=page, content_type="text/html")
