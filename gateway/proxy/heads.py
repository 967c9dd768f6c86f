"""Request and response heads as the fast path rewrites them, bytes in and bytes out.

The rules are :mod:`.rules`' (which :mod:`.relay` follows too, for the requests aiohttp took
over). Framing (``Content-Length``/``Transfer-Encoding``) is the proxy's own.
"""

from __future__ import annotations

from .http1 import RequestHead
from .rules import (
    HOP_BY_HOP,
    NOT_DOWNSTREAM,
    NOT_UPSTREAM,
    Upstream,
    filter_cookies,
    reason_to_pass,
    rewrite_location,
    scope_set_cookie,
)

_FRAMING = frozenset({"content-length", "transfer-encoding"})
# Response headers never passed on as the lab sent them (as bytes, lower case).
_DROPPED_DOWN = frozenset(name.encode() for name in HOP_BY_HOP | NOT_DOWNSTREAM | _FRAMING)
_WS_KEPT = frozenset({b"upgrade", b"connection"})  # a 101's own
_NO_BODY_STATUS = frozenset({204, 304})


def upstream_head(head: RequestHead, upstream: Upstream, gateway_cookies: frozenset[str],
                  remote: str | None, websocket: bool) -> bytes:
    """The request head the lab gets (an upgrade keeps its WebSocket handshake headers)."""
    lines = [f"{head.method} {head.target} HTTP/1.1"]
    cookies: list[str] = []
    origin = False
    for name, value in head.headers:
        lower = name.lower()
        if lower == "cookie":
            cookies.append(value)
        elif lower == "origin":
            origin = True
        elif lower in HOP_BY_HOP or lower in head.connection or lower in NOT_UPSTREAM \
                or lower in _FRAMING or lower == "x-forwarded-for" \
                or lower == "expect":  # one exact 100-continue is sent below, or none
            continue
        else:
            lines.append(f"{name}: {value}")
    kept = filter_cookies(cookies, gateway_cookies)
    if kept:
        lines.append(f"Cookie: {kept}")
    lines.append(f"Authorization: token {upstream.token}")
    lines.append(f"Host: {upstream.host}:{upstream.port}")
    if origin:
        lines.append(f"Origin: {upstream.origin}")
    if remote:
        lines.append(f"X-Forwarded-For: {remote}")
    if head.expect_continue:  # as the lab's server matches it (tornado: exactly this value)
        lines.append("Expect: 100-continue")
    if head.chunked:
        lines.append("Transfer-Encoding: chunked")
    elif head.length is not None:
        lines.append(f"Content-Length: {head.length}")
    if websocket:
        lines += ["Connection: Upgrade", "Upgrade: websocket"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response_head(upstream: Upstream, status: int, reason: bytes,
                  headers: list[tuple[bytes, bytes]], chunked: bool, length: int | None,
                  request: RequestHead) -> tuple[bytes, str]:
    """The client's response head, and its body framing: ``"length"``, ``"chunked"`` (the
    proxy re-chunks), ``"close"`` (the body ends with the connection: an HTTP/1.0 client),
    or ``"none"``. ValueError (:func:`.rules.reason_to_pass`) for a status that cannot be
    passed on. (Bytes throughout: it runs for every answer.)"""
    lines = [b"HTTP/1.1 %d %s" % (status, reason_to_pass(status, reason))]
    named: set[bytes] = set()  # headers the lab's Connection header names: hop-by-hop too
    for raw_name, raw_value in headers:
        lower = raw_name.lower()
        if lower in _DROPPED_DOWN:
            if lower == b"connection":
                named.update(token.strip().lower() for token in raw_value.split(b","))
            if not (status == 101 and lower in _WS_KEPT):
                continue
        elif lower == b"location":
            raw_value = rewrite_location(raw_value.decode("latin-1"), upstream).encode("latin-1")
        elif lower == b"set-cookie":
            raw_value = scope_set_cookie(raw_value.decode("latin-1"),
                                         upstream.prefix).encode("latin-1")
        lines.append(raw_name + b": " + raw_value)
    named -= _DROPPED_DOWN  # (dropped anyway: "Connection: keep-alive" costs no second pass)
    if named and status != 101:
        lines[1:] = [line for line in lines[1:]
                     if line.partition(b":")[0].lower() not in named]
    framing = _framing(status, chunked, length, request)
    if length is not None and (framing == "length" or request.method == "HEAD"
                               or status == 304):
        lines.append(b"Content-Length: %d" % length)
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
    if request.version == (1, 0) and request.keep_alive and framing != "close":
        lines.append(b"Connection: keep-alive")
    return b"\r\n".join(lines) + b"\r\n\r\n", framing


def _framing(status: int, chunked: bool, length: int | None, request: RequestHead) -> str:
    if status == 101 or status in _NO_BODY_STATUS or request.method == "HEAD":
        return "none"
    if length is not None and not chunked:
        return "length"
    return "chunked" if request.version == (1, 1) else "close"
