"""Middlewares: every error becomes problem+json; every non-public route needs a bearer token."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import GatewayError, Unauthorized
from .keys import STORE, USER_KEY

log = logging.getLogger(__name__)
PROBLEM_TYPE = "application/problem+json"
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json", "/api/v1/health"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(
    body: dict[str, object], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=int(str(body["status"])),
        body=json.dumps(body).encode(),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn GatewayError, aiohttp's HTTP errors and crashes into RFC 9457 problem bodies."""
    try:
        return await handler(request)
    except GatewayError as exc:
        headers = {"WWW-Authenticate": 'Bearer realm="hpcgw"'} if exc.status == 401 else None
        return problem_response(exc.problem(), headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response({
            "type": "about:blank", "title": exc.reason, "status": exc.status,
            "detail": exc.reason,
        })
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response({
            "type": "about:blank", "title": "Internal Server Error", "status": 500,
            "detail": "the gateway hit an unexpected error; it has been logged",
        })


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve ``Authorization: Bearer <token>`` to a user; 401 on every protected route without."""
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    user = request.app[STORE].user_for_token(token.strip())
    if user is None:
        raise Unauthorized("the token is not valid (unknown or revoked)")
    request[USER_KEY] = user
    return await handler(request)
