"""The browser pages' jinja2 environment (autoescape, StrictUndefined) and their responses.

Every page the gateway serves to a browser is a template under ``gateway/api/pages``; pages
extend ``base.html`` (the header with the user and the logout form). Nothing builds HTML from
strings.
"""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web

PAGES = jinja2.Environment(loader=jinja2.PackageLoader("gateway.api", "pages"),
                           autoescape=True, undefined=jinja2.StrictUndefined)


def render(template: str, **context: Any) -> str:
    """``template`` rendered with ``context`` (a missing name is an error, never blank)."""
    return PAGES.get_template(template).render(**context)


def page(template: str, status: int = 200, headers: dict[str, str] | None = None,
         **context: Any) -> web.Response:
    """A page as a ``text/html`` response, never cached (pages show the user's own data)."""
    return web.Response(status=status, text=render(template, **context),
                        content_type="text/html",
                        headers={"Cache-Control": "no-store", **(headers or {})})
