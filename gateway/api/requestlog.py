"""Each request's place in the logs: an id of its own (sent back as ``X-Request-Id``) on every
record logged while it is served, and one access event when it is done
(:mod:`gateway.logs`)."""

from __future__ import annotations

import secrets

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..logs import log_context, masked_path
from .keys import USER_KEY
from .middleware import Handler

REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_ID_HEADER = "X-Request-Id"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (the gateway's own: a client's header is not trusted into the
    logs) and log everything done for it with that id."""
    request_id = secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    with log_context(request_id=request_id):
        return await handler(request)


async def request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: tell the client its request's id (to quote in a report)."""
    if REQUEST_ID in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]


class AccessLog(AbstractAccessLogger):
    """aiohttp's access log as one event per request (logger ``hpcgw.access``); query
    parameters that look like credentials are masked."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = masked_path(request.path_qs)
        user = request.get(USER_KEY)
        self.logger.info(
            "%s %s %s", request.method, path, response.status,
            extra={"method": request.method, "path": path, "status": response.status,
                   "bytes": response.body_length, "seconds": round(time, 6),
                   "remote": request.remote, "request_id": request.get(REQUEST_ID),
                   "user": user.name if user is not None else None})
