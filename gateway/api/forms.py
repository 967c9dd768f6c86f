"""Same-origin checks for the gateway's own HTML forms (login, logout) and capped bodies.

The login and logout forms are posted without a session, so the usual XSRF header cannot protect
them. Two independent checks do instead (each one alone stops a cross-site page):

- **Origin**: the POST's ``Origin`` must be the gateway's own (``gateway.public_origin`` when
  set, else the request's ``scheme://Host``). Without ``Origin``, a ``Referer`` from another
  origin is refused; a request with neither passes this check (non-browser clients, privacy
  settings) and still needs the form token.
- **Form token** (double submit): the login page sets a short-lived cookie
  (``hpcgw_form``, HttpOnly, SameSite=Strict, path ``/login``) and a hidden field ``xsrf``
  with the same value; the POST must carry both, equal. The value is signed with the
  ``cookie_secret`` and carries its expiry, so an old or invented value fails too.

Request bodies here are read with a hard cap (:func:`read_capped`), never whole.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from yarl import URL

from ..errors import BadRequest, Forbidden, PayloadTooLarge, UnsupportedMediaType
from .keys import CONFIG

FORM_COOKIE = "hpcgw_form"
FORM_FIELD = "xsrf"
FORM_LIFETIME_S = 30 * 60
FORM_BODY_LIMIT = 8 * 1024
URLENCODED = "application/x-www-form-urlencoded"


def _origin(value: str | None) -> str | None:
    """``scheme://host:port`` (port explicit, host lower-case) of an absolute http(s) URL, or
    None for anything else (``null``, a relative or malformed URL)."""
    if not value:
        return None
    try:
        url = URL(value)
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return f"{url.scheme}://{url.host.lower()}:{url.port}"


def own_origin(request: web.Request) -> str | None:
    """The gateway's origin as browsers see it (normalised as :func:`_origin` does)."""
    configured = request.app[CONFIG].gateway.public_origin
    return _origin(configured or f"{request.scheme}://{request.host}")


def check_same_origin(request: web.Request) -> None:
    """Refuse (403) a form POST whose ``Origin`` is another site's (``null`` included), or,
    without ``Origin``, whose ``Referer`` is another site's. Neither header: allowed here."""
    own = own_origin(request)
    if "Origin" in request.headers:
        sent, what = request.headers["Origin"], "Origin"
    elif "Referer" in request.headers:
        sent, what = request.headers["Referer"], "Referer"
    else:
        return
    if own is None or _origin(sent) != own:
        raise Forbidden(f"this form must be posted from the gateway's own pages "
                        f"({what} is another site)")


def _signature(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), f"form:{payload}".encode(), hashlib.sha256).hexdigest()


def make_form_token(secret: str, now: float | None = None) -> str:
    """A new random form token, signed, valid for :data:`FORM_LIFETIME_S` seconds."""
    payload = f"{secrets.token_urlsafe(18)}.{int((now or time.time()) + FORM_LIFETIME_S)}"
    return f"{payload}.{_signature(secret, payload)}"


def double_submitted(expected: str, sent: str) -> bool:
    """Whether ``sent`` (a header or form field) carries the cookie value ``expected``, compared
    in constant time; never with an empty cookie."""
    return bool(expected) and hmac.compare_digest(expected.encode(), sent.encode())


def form_token_ok(secret: str, cookie: str, field: str, now: float | None = None) -> bool:
    """True when the cookie and the field carry the same signed, unexpired token."""
    if not double_submitted(cookie, field):
        return False
    payload, _, signature = cookie.rpartition(".")
    if not hmac.compare_digest(_signature(secret, payload).encode(), signature.encode()):
        return False
    expires = payload.rpartition(".")[2]
    return expires.isdigit() and int(expires) >= (now or time.time())


def set_form_cookie(response: web.StreamResponse, request: web.Request, token: str) -> None:
    response.set_cookie(FORM_COOKIE, token, max_age=FORM_LIFETIME_S, path="/login",
                        httponly=True, samesite="Strict",
                        secure=request.app[CONFIG].gateway.cookie_secure)


async def read_capped(next_chunk: Callable[[], Awaitable[bytes]], limit: int, what: str,
                      **problem: Any) -> bytes:
    """Everything ``next_chunk`` gives until it gives ``b""`` (a body: ``content.readany``; a
    multipart part: its ``read_chunk``), refusing (413, with ``problem``'s fields) as soon as
    it grows past ``limit`` bytes.

    (``StreamReader.read(n)`` alone returns whatever has arrived, not the whole body.)
    """
    chunks, size = [], 0
    while chunk := await next_chunk():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} is larger than {limit} bytes", **problem)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: web.Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body of at most :data:`FORM_BODY_LIMIT` bytes:
    each field's first value. 413 over the cap (checked on Content-Length before reading),
    415 for another content type, 400 for a body that is not UTF-8 or has too many fields."""
    if request.content_length is not None and request.content_length > FORM_BODY_LIMIT:
        raise PayloadTooLarge(f"a form is at most {FORM_BODY_LIMIT} bytes")
    if request.content_type != URLENCODED:
        raise UnsupportedMediaType(f"send the form as {URLENCODED}")
    body = await read_capped(request.content.readany, FORM_BODY_LIMIT, "a form")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20,
                          strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form is not valid UTF-8 form data") from None
    return {name: values[0] for name, values in fields.items()}
