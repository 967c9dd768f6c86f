"""The browser pages' jinja2 environment (templates in ``gateway/api/pages/``: autoescaped,
StrictUndefined) and the one function that answers with a rendered page."""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web

PAGES = jinja2.Environment(loader=jinja2.PackageLoader("gateway.api", "pages"),
                           autoescape=True, undefined=jinja2.StrictUndefined)


def page(template: str, status: int = 200, **context: Any) -> web.Response:
    """``template`` rendered with ``context``, as an uncached HTML answer."""
    return web.Response(status=status, text=PAGES.get_template(template).render(**context),
                        content_type="text/html", headers={"Cache-Control": "no-store"})
