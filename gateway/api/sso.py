"""Single sign-on: ``GET /login/oidc`` sends the browser to the provider, and
``GET /login/oidc/callback`` takes it back, turning the provider's answer into a session.

Between the two, the login attempt (state, nonce, PKCE verifier, where to go after) is kept in
the ``hpcgw_oidc`` cookie: HttpOnly, SameSite=Lax (it must come back on the provider's
top-level redirect), path ``/login/oidc``, signed with the config's ``cookie_secret`` under
a label of its own and valid for :data:`ATTEMPT_LIFETIME_S` seconds; it is cleared by the
callback whatever the outcome. A callback whose ``state`` does not match that cookie (another
site's forged callback, an old tab) is refused, as is one naming another issuer (RFC 9207
``iss``). The first SSO login binds the gateway user to the provider's issuer and ``sub``;
a later login under the same name with another ``sub`` is refused (a name claim can be
renamed or reused at the provider). The session is a token of its own
(:meth:`Accounts.start_session`), which logout revokes; a disabled or unknown user gets the
login page with the reason, never a session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import shlex
import time
from typing import Any

from aiohttp import web

from ..config import IDENTIFIER, UNIX_USER
from ..sso.client import LoginAttempt, SSOError
from .forms import own_origin
from .keys import ACCOUNTS, CONFIG, OIDC, SERVICE
from .sessions import login_response, safe_next, start_session

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
ATTEMPT_COOKIE = "hpcgw_oidc"
ATTEMPT_PATH = "/login/oidc"
ATTEMPT_LIFETIME_S = 600
CALLBACK = "/login/oidc/callback"
_LABEL = b"hpcgw oidc attempt v1\0"


def _sign(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), _LABEL + payload, hashlib.sha256).hexdigest()


def seal_attempt(secret: str, attempt: LoginAttempt, next_path: str,
                 now: float | None = None) -> str:
    """The cookie value that keeps ``attempt`` (and where to go after) until the callback."""
    payload = json.dumps({**attempt.__dict__, "next": next_path,
                          "exp": int((now or time.time()) + ATTEMPT_LIFETIME_S)}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _sign(secret, payload)


def open_attempt(secret: str, value: str,
                 now: float | None = None) -> tuple[LoginAttempt, str] | None:
    """The attempt and next path a cookie holds; None if forged, malformed or expired."""
    encoded, _, signature = value.rpartition(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        if not hmac.compare_digest(_sign(secret, payload), signature):
            return None
        held = json.loads(payload)
        if held["exp"] < (now or time.time()):
            return None
        return (LoginAttempt(held["state"], held["nonce"], held["verifier"],
                             held["redirect_uri"]), safe_next(held["next"]))
    except (ValueError, TypeError, KeyError):
        return None


def _client(request: web.Request) -> Any:
    if OIDC not in request.app:
        raise web.HTTPNotFound(text="single sign-on is not configured on this gateway")
    return request.app[OIDC]


def _redirect_uri(request: web.Request) -> str:
    configured = request.app[CONFIG].oidc
    if configured is not None and configured.redirect_url:
        return configured.redirect_url
    return f"{own_origin(request)}{CALLBACK}"


@routes.get(ATTEMPT_PATH)
async def start_login(request: web.Request) -> web.Response:
    """Send the browser to the provider's login (a 303), keeping the attempt in a cookie."""
    client = _client(request)
    next_path = safe_next(request.query.get("next"))
    try:
        url, attempt = await client.start(_redirect_uri(request))
    except SSOError as exc:
        return login_response(request, next_path, 502, str(exc))
    response = web.HTTPSeeOther(url)
    gateway = request.app[CONFIG].gateway
    response.set_cookie(ATTEMPT_COOKIE, seal_attempt(gateway.cookie_secret, attempt, next_path),
                        max_age=ATTEMPT_LIFETIME_S, path=ATTEMPT_PATH, httponly=True,
                        samesite="Lax", secure=gateway.cookie_secure)
    response.headers["Cache-Control"] = "no-store"
    raise response


@routes.get(CALLBACK)
async def finish_login(request: web.Request) -> web.Response:
    """The provider's answer: a session and a redirect to where the login started, or the
    login page saying what went wrong (400 for a broken or forged answer, 403 for a user
    this gateway does not let in, 502 when the provider misbehaves)."""
    client = _client(request)
    secret = request.app[CONFIG].gateway.cookie_secret
    kept = open_attempt(secret, request.cookies.get(ATTEMPT_COOKIE, ""))
    status, error, next_path = 400, "", "/"
    try:
        if kept is None:
            raise SSOError("this sign-on has expired or was not started here; please try "
                           "again", 400)
        attempt, next_path = kept
        code = _checked_answer(request, attempt, client.settings.issuer)
        claims = await client.finish(code, attempt)
        token_id = await _session_for(request, claims)
    except SSOError as exc:
        status, error = exc.status, str(exc)
    except web.HTTPForbidden as exc:
        status, error = 403, exc.text or "forbidden"
    if error:
        log.warning("single sign-on refused: %s", error)
        response = login_response(request, next_path, status, error)
        response.del_cookie(ATTEMPT_COOKIE, path=ATTEMPT_PATH)
        return response
    redirect = web.HTTPSeeOther(next_path)
    start_session(request, redirect, token_id)
    redirect.del_cookie(ATTEMPT_COOKIE, path=ATTEMPT_PATH)
    raise redirect


def _checked_answer(request: web.Request, attempt: LoginAttempt, issuer: str) -> str:
    """The authorization code, once the answer is this attempt's and this issuer's."""
    query = request.query
    if not hmac.compare_digest(query.get("state", ""), attempt.state):
        raise SSOError("this sign-on answer does not belong to the login this browser "
                       "started", 400)
    if "iss" in query and query["iss"] != issuer:
        raise SSOError("this sign-on answer comes from another provider", 400)
    if "error" in query:
        description = query.get("error_description") or query["error"]
        raise SSOError(f"the sign-on provider refused: {description[:120]}", 400)
    if not query.get("code"):
        raise SSOError("the sign-on answer carries no code", 400)
    return query["code"]


async def _session_for(request: web.Request, claims: dict[str, Any]) -> int:
    """The session token id for the user the claims name (created if the config says so);
    HTTPForbidden with the reason for a user this gateway does not let in."""
    settings = request.app[CONFIG].oidc
    assert settings is not None
    accounts = request.app[ACCOUNTS]
    name = claims.get(settings.username_claim)
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise web.HTTPForbidden(text=f"the sign-on provider gave no usable "
                                     f"{settings.username_claim} for you")
    user = accounts.user_named(name)
    if user is None and accounts.exists(name):
        raise web.HTTPForbidden(text=f"the account {name} is disabled")
    if user is None and settings.create_users:
        unix_user = claims.get(settings.unix_user_claim or settings.username_claim)
        if not isinstance(unix_user, str) or not UNIX_USER.match(unix_user):
            raise web.HTTPForbidden(text=f"no unix account is known for {name}")
        uids = range(settings.min_uid, settings.max_uid + 1)
        person = await request.app[SERVICE].person_account(unix_user, uids)
        user = accounts.create_user(name, unix_user) if person else None
        if user is None:
            raise web.HTTPForbidden(text=f"{name} cannot be created with the unix account "
                                         "the sign-on provider names; ask an administrator")
        log.warning("single sign-on created user %s (unix user %s)", name, unix_user)
    if user is None:
        raise web.HTTPForbidden(text=f"{name} has no account on this gateway; ask an "
                                     "administrator")
    # A name claim may be reused or renamed at the provider: the first SSO login binds the
    # user to the provider's stable identity (issuer and sub), and only that one logs in later.
    subject = f"{settings.issuer} {claims['sub']}"
    if not accounts.signs_on_as(user, subject):
        if user.admin:
            raise web.HTTPForbidden(text=f"{name} is an administrator: the gateway's operator "
                                         f"binds this sign-on identity first (hpcgw user set "
                                         f"{name} --sso-subject {shlex.quote(subject)})")
        raise web.HTTPForbidden(text=f"the account {name} belongs to another sign-on "
                                     "identity; ask an administrator")
    lifetime = request.app[CONFIG].gateway.session_hours * 3600
    return accounts.start_session(user, lifetime)
