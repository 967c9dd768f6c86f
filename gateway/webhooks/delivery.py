"""One webhook delivery attempt (a signed POST), and when to try again.

An attempt succeeds on a 2xx answer. Anything else fails it: another status (a redirect too:
redirects are never followed), no answer within the timeout, a connection, TLS or DNS error.
The answer's body is never read: only its status counts, so a receiver cannot make the gateway
read much of anything. An address the policy refuses (:mod:`.addresses`) is a failure that
trying again cannot mend; :attr:`Attempt.refused` says so.

Nothing said of an attempt (:attr:`Attempt.detail`) holds the URL's path or query, the
secret or the signature.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver

from .addresses import AddressRefused, PolicyResolver, check_literal
from .signing import SIGNATURE_HEADER, signature_header

USER_AGENT = "hpcgw-webhooks"
READ_BUFFER = 4096  # bytes of an answer's body the client buffers before it stops reading


@dataclass(frozen=True)
class Attempt:
    """What one POST came to."""

    delivered: bool  # a 2xx answer
    detail: str  # in words, for the job's events and the log: "HTTP 503", "no answer within 10 s"
    refused: bool = False  # the address policy refused the host: trying again cannot help


def backoff(attempt: int, first: float, cap: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first) before the
    next: ``first``, doubling with each attempt, at most ``cap``."""
    return min(cap, first * 2.0 ** min(max(attempt, 1) - 1, 60))


def make_session(resolver: AbstractResolver, allow_private: bool,
                 limit: int) -> aiohttp.ClientSession:
    """The deliverer's HTTP client (call inside the running loop): names resolved through
    :class:`PolicyResolver` (no DNS cache: every connection is checked), at most ``limit``
    connections, no proxy from the environment, no cookies kept (a receiver's cookie would
    otherwise go along to the next delivery to its domain, whoever's job it is), and a read
    buffer of :data:`READ_BUFFER` bytes (an answer's body is never read; the connection is
    closed instead, so at most a few buffers of it are ever taken in)."""
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(resolver, allow_private),
                                     use_dns_cache=False, limit=limit)
    return aiohttp.ClientSession(connector=connector, trust_env=False,
                                 cookie_jar=aiohttp.DummyCookieJar(), read_bufsize=READ_BUFFER)


async def post_once(
    session: aiohttp.ClientSession, url: str, body: bytes, secret: str, *, timeout: float,
    allow_private: bool, clock: Callable[[], float] = time.time,
) -> Attempt:
    """POST ``body`` to ``url`` once, signed with ``secret`` at ``clock()``'s time; never
    raises for what the receiver or the network does (every outcome is an :class:`Attempt`)."""
    try:
        check_literal(url, allow_private)  # an IP-literal host never reaches the resolver
    except AddressRefused as exc:
        return Attempt(False, f"refused: {exc}", refused=True)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               SIGNATURE_HEADER: signature_header(secret, int(clock()), body)}
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            status = response.status
    except aiohttp.ClientSSLError:
        return Attempt(False, "TLS failed (certificate not accepted, or no TLS there)")
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, AddressRefused):
            return Attempt(False, f"refused: {exc.os_error}", refused=True)
        return Attempt(False, f"cannot connect: {exc.os_error.strerror or 'failed'}")
    except TimeoutError:
        return Attempt(False, f"no answer within {timeout:g} s")
    except aiohttp.ServerDisconnectedError:
        return Attempt(False, "the server closed the connection without an answer")
    except aiohttp.ClientError as exc:
        return Attempt(False, f"failed: {type(exc).__name__}")
    if 200 <= status < 300:
        return Attempt(True, f"HTTP {status}")
    if 300 <= status < 400:
        return Attempt(False, f"HTTP {status} (redirects are not followed)")
    return Attempt(False, f"HTTP {status}")
