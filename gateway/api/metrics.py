"""``GET /metrics``: the gateway's Prometheus metrics, for a scraper holding ``[metrics] token``.

Not a user's route: users' tokens and browser sessions get nothing here (401), and without a
token configured the endpoint does not exist (404), so a gateway never publishes its figures
by accident. The token is compared in constant time.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import NotFound, Unauthorized
from .keys import CONFIG, METRICS, PROXY

routes = web.RouteTableDef()
PATH = "/metrics"


@routes.get(PATH)
async def metrics(request: web.Request) -> web.Response:
    token = request.app[CONFIG].metrics.token
    if token is None:
        raise NotFound("metrics are off: set [metrics] token in the config to turn them on")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             token.encode()):
        raise Unauthorized("send Authorization: Bearer <the [metrics] token>")
    if PROXY in request.app:
        request.app[PROXY].fast.flush()  # the lab proxy's counts kept since its last write
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
