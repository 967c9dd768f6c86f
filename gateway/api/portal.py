"""The portal page: a logged-in browser's list of its labs, with links to open them."""

from __future__ import annotations

import html

from aiohttp import web

from ..listing import JobQuery
from .forms import FORM_FIELD
from .keys import SERVICE, current_user
from .sessions import XSRF_COOKIE

routes = web.RouteTableDef()


@routes.get("/")
async def portal(request: web.Request) -> web.Response:
    """The caller's 50 newest jobs; a logout form carrying the ``hpcgw_xsrf`` cookie's value
    (what ``POST /logout`` checks). Everything user-controlled is HTML-escaped."""
    user = current_user(request)
    jobs = request.app[SERVICE].list_jobs(user, JobQuery(limit=50))
    xsrf = request.cookies.get(XSRF_COOKIE, "")
    rows = "\n".join(
        f"<tr><td>{html.escape(job['name'])}</td><td>{html.escape(job['kind'])}</td>"
        f"<td>{html.escape(job['state'])}</td><td>"
        + (f'<a href="/labs/{job["id"]}/lab">open</a>' if job["state"] == "ready" else "")
        + "</td></tr>"
        for job in jobs
    )
    return web.Response(content_type="text/html", headers={"Cache-Control": "no-store"}, text=f"""\
<!doctype html><html lang="en"><head><meta charset="utf-8"><title>hpcgw</title></head>
<body><main><h1>hpcgw: {html.escape(user.name)}</h1>
<table><thead><tr><th>name</th><th>kind</th><th>state</th><th></th></tr></thead>
<tbody>{rows}</tbody></table>
<form method="post" action="/logout">
<input type="hidden" name="{FORM_FIELD}" value="{html.escape(xsrf)}">
<button type="submit">Log out</button></form>
</main></body></html>
""")
