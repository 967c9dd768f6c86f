"""Middlewares: every error becomes problem+json; every non-public route needs a user (a bearer
token, or a browser session cookie); the gateway's own responses carry strict browser headers."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from ..accounts import Accounts
from ..errors import GatewayError, Unauthorized
from ..logs import log_context
from ..pageheaders import SECURITY_HEADERS
from ..proxy.fastpath import Caller, header
from ..proxy.http1 import RequestHead
from ..users import User
from .forms import double_submitted
from .keys import ACCOUNTS, CONFIG, USER_KEY, VIA_COOKIE
from .sessions import SAFE_METHODS, SESSION_COOKIE, XSRF_HEADER, check_xsrf, read_session

log = logging.getLogger(__name__)
PROBLEM_TYPE = "application/problem+json"
# /metrics checks its own token (gateway/api/metrics.py), not a user's.
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json", "/api/v1/health", "/login", "/logout",
                          "/login/oidc", "/login/oidc/callback", "/metrics", "/favicon.ico"})
# Paths under which every page is public (the explanations of problem types, the portal's
# scripts and style sheet).
PUBLIC_PREFIXES = ("/problems/", "/static/")
LAB_PREFIX = "/labs/"  # responses under it are the labs' own (see security_headers)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(
    body: dict[str, object], headers: dict[str, str] | None = None
) -> web.Response:
    """A problem+json response, with :data:`SECURITY_HEADERS` (also under ``/labs/``: a
    problem is the gateway's own answer, never the lab's)."""
    return web.Response(
        status=int(str(body["status"])),
        body=json.dumps(body).encode(),
        content_type=PROBLEM_TYPE,
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: add :data:`SECURITY_HEADERS` to every response outside
    ``/labs/`` (where responses are the lab's own, relayed with JupyterLab's policy)."""
    if request.path.startswith(LAB_PREFIX):
        return
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn GatewayError, aiohttp's HTTP errors and crashes into RFC 9457 problem bodies."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return problem_response(exc.problem(), exc.headers())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return problem_response({
            "type": "about:blank", "title": exc.reason, "status": exc.status,
            "detail": exc.reason,
        }, allow)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response({
            "type": "about:blank", "title": "Internal Server Error", "status": 500,
            "detail": "the gateway hit an unexpected error; it has been logged",
        })


def _bearer_user(request: web.Request) -> User | None:
    """The user of ``Authorization: Bearer``; None without one; 401 for a bad one."""
    if "Authorization" not in request.headers:
        return None
    scheme, _, token = request.headers["Authorization"].partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    user = request.app[ACCOUNTS].user_for_token(token.strip())
    if user is None:
        raise Unauthorized("the token is not valid (unknown or revoked)")
    return user


def _session_user(request: web.Request) -> User | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    token_id = read_session(request.app[CONFIG].gateway.cookie_secret, cookie)
    return request.app[ACCOUNTS].user_for_token_id(token_id) if token_id is not None else None


def caller_now(request: web.Request) -> User | None:
    """Who the request's credential (bearer token, else session cookie) names *now*, or None
    if it no longer authenticates: for a long-lived answer (the job stream) that must stop
    when the token is revoked, the session ended or the user disabled."""
    try:
        return _bearer_user(request) or _session_user(request)
    except Unauthorized:
        return None


def lab_caller(accounts: Accounts, cookie_secret: str) -> Caller:
    """The lab fast path's version of :func:`auth_middleware` and :func:`check_xsrf`, on a
    parsed head: ``(user, via cookie)`` when the credential clearly names a user (a valid
    bearer token; else a valid session cookie, with the lab's ``_xsrf`` pair for a state
    change), None for anything else (the API then answers it, with its 401, login or 403)."""

    def caller(head: RequestHead) -> tuple[User, bool] | None:
        authorization = header(head, "authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            user = accounts.user_for_token(token.strip())
            return (user, False) if user is not None else None
        cookies = _cookies(head)
        token_id = read_session(cookie_secret, cookies.get(SESSION_COOKIE, ""))
        found = accounts.user_for_token_id(token_id) if token_id is not None else None
        if found is None:
            return None
        if head.method not in SAFE_METHODS and not double_submitted(
                cookies.get("_xsrf", ""), header(head, XSRF_HEADER.lower()) or ""):
            return None
        return found, True

    return caller


def _cookies(head: RequestHead) -> dict[str, str]:
    """The request's cookies by name (the first of a repeated name, the most specific path's
    as browsers send them)."""
    found: dict[str, str] = {}
    for name, value in head.headers:
        if name.lower() == "cookie":
            for pair in value.split(";"):
                key, _, cookie = pair.strip().partition("=")
                found.setdefault(key, cookie)
    return found


def _wants_page(request: web.Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the caller: ``Authorization: Bearer <token>``, else a browser session cookie.

    Anonymous: a browser page request outside the API goes to the login page (302), anything
    else gets 401. A cookie-authenticated state change needs the XSRF header.
    """
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    user = _bearer_user(request)
    via_cookie = user is None
    if user is None:
        user = _session_user(request)
    if user is None:
        if _wants_page(request) and not request.path.startswith("/api/"):
            raise web.HTTPFound("/login?" + urlencode({"next": request.rel_url.raw_path_qs}))
        raise Unauthorized("send Authorization: Bearer <token>, or log in at /login")
    if via_cookie:
        check_xsrf(request)
    request[USER_KEY] = user
    request[VIA_COOKIE] = via_cookie
    with log_context(user=user.name):
        return await handler(request)
