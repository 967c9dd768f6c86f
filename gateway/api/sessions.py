"""Browser sessions: the login page, the session cookie and the XSRF double-submit check.

A browser logs in once with a gateway token and then carries ``hpcgw_session``: HttpOnly,
SameSite=Lax, signed with the config's ``cookie_secret`` (HMAC-SHA256) and naming the *token*
it was made from, so revoking the token ends the session. The cookie never holds the token.
Cookie-authenticated requests that change state must send ``X-XSRFToken`` equal to an XSRF
cookie (``hpcgw_xsrf`` for the gateway's API, the lab's own ``_xsrf`` under ``/labs/``):
another site can make the browser send cookies, but cannot read them.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import time

from aiohttp import web

from ..errors import Forbidden
from .keys import CONFIG, STORE

SESSION_COOKIE = "hpcgw_session"
XSRF_COOKIE = "hpcgw_xsrf"
GATEWAY_COOKIES = frozenset({SESSION_COOKIE, XSRF_COOKIE})
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
    if not expected or not hmac.compare_digest(expected.encode(), sent.encode()):
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


def _login_page(next_path: str, error: str = "") -> str:
    problem = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hpcgw: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>Log in to hpcgw</h1>{problem}
<form method="post" action="/login">
<input type="hidden" name="next" value="{html.escape(next_path)}">
<label>Gateway token <input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Log in</button>
</form><p>Your token comes from <code>hpcgw user add</code> (ask your administrator).</p>
</main></body></html>
"""


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    return web.Response(text=_login_page(safe_next(request.query.get("next"))),
                        content_type="text/html", headers={"Cache-Control": "no-store"})


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    """Check the token from the form; set the session and XSRF cookies and go to ``next``."""
    form = await request.post()
    next_path = safe_next(str(form.get("next", "/")))
    found = request.app[STORE].authenticate(str(form.get("token", "")).strip())
    if found is None:
        return web.Response(status=401, text=_login_page(next_path, "That token is not valid."),
                            content_type="text/html", headers={"Cache-Control": "no-store"})
    gateway = request.app[CONFIG].gateway
    lifetime = gateway.session_hours * 3600
    response = web.HTTPSeeOther(next_path)
    response.set_cookie(SESSION_COOKIE, make_session(gateway.cookie_secret, found[0], lifetime),
                        max_age=int(lifetime), path="/", httponly=True, samesite="Lax",
                        secure=gateway.cookie_secure)
    response.set_cookie(XSRF_COOKIE, secrets.token_urlsafe(24), max_age=int(lifetime), path="/",
                        samesite="Strict", secure=gateway.cookie_secure)
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/login")
    for name in GATEWAY_COOKIES:
        response.del_cookie(name, path="/")
    raise response
