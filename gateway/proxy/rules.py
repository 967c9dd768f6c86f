"""What crosses the lab proxy, and how: the header rules both relays follow.

:mod:`.relay` (aiohttp's requests and WebSockets) and :mod:`.heads` (the fast path's bytes)
apply the same rules: hop-by-hop headers, and those named in ``Connection``, are dropped both
ways; the gateway's cookies, its ``Authorization`` and the browser's ``Host``/``Origin`` never
reach the lab, which gets its own token instead; ``Location`` and ``Set-Cookie`` stay under the
lab's prefix; a lab cannot widen a service worker's scope; the client's status line is well
formed whatever the lab's was. Nothing here knows about jobs or users: the caller hands over
an :class:`Upstream` it chose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from yarl import URL

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Never copied upstream: the gateway sets them itself (or they carry the gateway's secrets).
NOT_UPSTREAM = frozenset({"host", "authorization", "cookie", "origin", "x-xsrftoken"})
# Never passed from a lab to the browser: a lab page must not widen a service worker's scope
# beyond its own prefix (``Service-Worker-Allowed: /`` would give it the gateway's whole origin).
NOT_DOWNSTREAM = frozenset({"service-worker-allowed"})
# The status a request's access record gets when its client left before the lab answered
# (nginx's "client closed request").
CLIENT_CLOSED = 499
# What a reason phrase may hold (RFC 9112 §4: HTAB, SP, VCHAR, obs-text); llhttp lets control
# bytes through, and a lab's status line is not passed on as it came.
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


@dataclass(frozen=True)
class Upstream:
    """Where one lab's server answers, as the gateway reaches it, and how to authenticate."""

    host: str
    port: int
    token: str
    prefix: str  # "/labs/<id>/": the lab's base_url, identical on both sides of the proxy

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, raw_path: str, raw_query: str) -> URL:
        """The upstream URL for a request path. The path must lie under :attr:`prefix`; host
        and port are always the upstream's, whatever the path holds (``@``, ``:``, ``..``)."""
        if not raw_path.startswith(self.prefix):
            raise ValueError(f"{raw_path!r} is not under {self.prefix!r}")
        return URL.build(scheme="http", host=self.host, port=self.port, path=raw_path,
                         query_string=raw_query, encoded=True)


def filter_cookies(cookie_headers: list[str], drop: frozenset[str]) -> str:
    """The ``Cookie`` header without the gateway's cookies (names in ``drop``)."""
    kept = []
    for header in cookie_headers:
        for pair in header.split(";"):
            name = pair.split("=", 1)[0].strip()
            if name and name not in drop:
                kept.append(pair.strip())
    return "; ".join(kept)


def rewrite_location(value: str, upstream: Upstream) -> str:
    """A ``Location`` that stays under the lab's prefix on the gateway.

    An absolute URL on the upstream becomes a path; a path outside the prefix is put under it
    (the prefix without its slash, the lab's own root, counts as inside); relative references
    resolve against the request URL and are left alone.
    """
    url = URL(value)
    if url.is_absolute():
        if (url.host, url.port) != (upstream.host, upstream.port):
            return value
        value = str(url.relative())
    root = upstream.prefix.rstrip("/")
    path = value.split("?", 1)[0].split("#", 1)[0]
    if value.startswith("/") and path != root and not value.startswith(upstream.prefix):
        value = root + value
    return value


def scope_set_cookie(value: str, prefix: str) -> str:
    """An upstream ``Set-Cookie`` limited to the lab's prefix (no Domain, Path under it)."""
    parts = [p.strip() for p in value.split(";")]
    path = prefix
    kept = [parts[0]]
    for attribute in parts[1:]:
        key, _, attr_value = attribute.partition("=")
        if key.strip().lower() == "domain":
            continue
        if key.strip().lower() == "path":
            if attr_value.strip().startswith(prefix):
                path = attr_value.strip()
            continue
        kept.append(attribute)
    return "; ".join([*kept, f"Path={path}"])


def reason_to_pass(status: int, reason: bytes) -> bytes:
    """The reason phrase of a lab's answer to pass on: its own if every byte may be in one,
    else none (a status line may have an empty one). ValueError for a status of fewer than
    three digits (llhttp reads ``099`` as 99), which no answer of the gateway's may carry."""
    if not 100 <= status <= 999:
        raise ValueError(f"the lab's answer has no three-digit status ({status})")
    return reason if _REASON.fullmatch(reason) else b""
