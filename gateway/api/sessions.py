"""Browser sessions: the login page, the session cookie and the XSRF double-submit check.

A browser logs in once with a gateway token (or single sign-on) and then carries
``hpcgw_session``: HttpOnly, SameSite=Lax, signed with the config's ``cookie_secret``
(HMAC-SHA256) and naming a *session* kept in the store, which logout ends and which ends with
the token it was made from. The cookie never holds the token.
Cookie-authenticated requests that change state must send ``X-XSRFToken`` equal to an XSRF
cookie (``hpcgw_xsrf`` for the gateway's API, the lab's own ``_xsrf`` under ``/labs/``):
another site can make the browser send cookies, but cannot read them. The login and logout
forms themselves are checked by :mod:`.forms` (Origin, and a double-submitted form token).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlencode

from aiohttp import web

from ..errors import Forbidden
from .forms import (
    FORM_COOKIE,
    FORM_FIELD,
    check_same_origin,
    double_submitted,
    form_token_ok,
    make_form_token,
    read_form,
    set_form_cookie,
)
from .keys import ACCOUNTS, CONFIG
from .views import page

SESSION_COOKIE = "hpcgw_session"
XSRF_COOKIE = "hpcgw_xsrf"
# Never sent upstream to a lab (the proxy strips them).
GATEWAY_COOKIES = frozenset({SESSION_COOKIE, XSRF_COOKIE, FORM_COOKIE})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
XSRF_HEADER = "X-XSRFToken"

routes = web.RouteTableDef()


def _signature(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def make_session(secret: str, token_id: int, lifetime_s: float, now: float | None = None) -> str:
    payload = f"{token_id}.{int((now or time.time()) + lifetime_s)}"
    return f"{payload}.{_signature(secret, payload)}"


def read_session(secret: str, value: str, now: float | None = None) -> int | None:
    """The token id a session cookie names, or None if it is forged, malformed or expired."""
    if not value.isascii():  # hmac.compare_digest raises TypeError on non-ASCII str
        return None
    payload, _, signature = value.rpartition(".")
    if not hmac.compare_digest(_signature(secret, payload), signature):
        return None
    token_id, _, expires = payload.partition(".")
    if not (token_id.isdigit() and expires.isdigit()) or int(expires) < (now or time.time()):
        return None
    return int(token_id)


def check_xsrf(request: web.Request) -> None:
    """Refuse (403) a cookie-authenticated state change without the double-submitted token."""
    if request.method in SAFE_METHODS:
        return
    cookie = XSRF_COOKIE if not request.path.startswith("/labs/") else "_xsrf"
    expected = request.cookies.get(cookie, "")
    sent = request.headers.get(XSRF_HEADER, "")
    if not double_submitted(expected, sent):
        raise Forbidden(f"a browser session must send the {XSRF_HEADER} header "
                        f"(the value of the {cookie} cookie) to change anything")


def safe_next(target: str | None) -> str:
    """Where to go after login: a same-origin relative path, else ``/``.

    Refuses absolute and scheme-relative URLs (``//host``), backslashes (browsers read ``/\\``
    as ``//``) and control characters.
    """
    if (not target or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)):
        return "/"
    return target


def login_response(request: web.Request, next_path: str, status: int = 200,
                   error: str = "") -> web.Response:
    """The login page (the token form, and single sign-on's link where it is configured) with
    a fresh form token (cookie and hidden field), and ``error`` said at the top."""
    gateway = request.app[CONFIG].gateway
    token = make_form_token(gateway.cookie_secret)
    oidc = request.app[CONFIG].oidc
    response = page("login.html", status, user=None, xsrf="", next_path=next_path,
                    form_field=FORM_FIELD,
                    form_token=token, error=error,
                    sso_label=oidc.label if oidc else "",
                    sso_query=urlencode({"next": next_path}))
    set_form_cookie(response, request, token)
    return response


def start_session(request: web.Request, response: web.StreamResponse, token_id: int) -> None:
    """Put the session cookie (naming ``token_id``) and a fresh XSRF cookie on ``response``;
    the login form's cookie goes."""
    gateway = request.app[CONFIG].gateway
    lifetime = gateway.session_hours * 3600
    response.set_cookie(SESSION_COOKIE, make_session(gateway.cookie_secret, token_id, lifetime),
                        max_age=int(lifetime), path="/", httponly=True, samesite="Lax",
                        secure=gateway.cookie_secure)
    response.set_cookie(XSRF_COOKIE, secrets.token_urlsafe(24), max_age=int(lifetime), path="/",
                        samesite="Strict", secure=gateway.cookie_secure)
    response.del_cookie(FORM_COOKIE, path="/login")


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    return login_response(request, safe_next(request.query.get("next")))


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    """Check the token from the form; set the session and XSRF cookies and go to ``next``.

    Refused before the token is even looked at: another site's Origin/Referer (403 problem),
    a body over 8 KiB (413), a form token missing, expired or not matching its cookie (403, the
    login page again with a fresh token). A bad gateway token: 401, the login page again.
    """
    check_same_origin(request)
    form = await read_form(request)
    next_path = safe_next(form.get("next", "/"))
    gateway = request.app[CONFIG].gateway
    if not form_token_ok(gateway.cookie_secret, request.cookies.get(FORM_COOKIE, ""),
                         form.get(FORM_FIELD, "")):
        return login_response(request, next_path, 403, "This login form has expired or was "
                               "not sent by this gateway's page; please log in again.")
    found = request.app[ACCOUNTS].authenticate(form.get("token", "").strip())
    if found is None:
        return login_response(request, next_path, 401, "That token is not valid.")
    token_id, user = found
    lifetime = gateway.session_hours * 3600
    response = web.HTTPSeeOther(next_path)
    start_session(request, response,
                  request.app[ACCOUNTS].start_session(user, lifetime, parent_id=token_id))
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    """End the browser session: clear the gateway's cookies, end the session on the server
    (a copy of its cookie no longer works) and go to the login page.

    Another site's Origin/Referer: 403. With a session cookie, the form must carry the
    ``hpcgw_xsrf`` cookie's value as ``xsrf`` (the portal's logout form does), else 403 and the
    session stays. Without a session cookie there is nothing to end: straight to the login page.
    """
    check_same_origin(request)
    form = await read_form(request)
    sent = form.get(FORM_FIELD, "")
    if SESSION_COOKIE in request.cookies and not double_submitted(
            request.cookies.get(XSRF_COOKIE, ""), sent):
        raise Forbidden(f"log out with the gateway's own form (the {FORM_FIELD} field must "
                        f"carry the {XSRF_COOKIE} cookie's value)")
    token_id = read_session(request.app[CONFIG].gateway.cookie_secret,
                            request.cookies.get(SESSION_COOKIE, ""))
    if token_id is not None:  # the session ends for good, wherever its cookie was copied
        request.app[ACCOUNTS].end_session(token_id)
    response = web.HTTPSeeOther("/login")
    for name in GATEWAY_COOKIES:
        response.del_cookie(name, path="/login" if name == FORM_COOKIE else "/")
    raise response
