"""Where a webhook may go: the URL's shape and the address policy.

A webhook URL is ``http`` or ``https``, at most 2048 printable ASCII characters, with a host
(a DNS name or an IP address), no user name or password, no fragment. Unless the admin sets
``[webhooks] allow_private = true`` the gateway delivers only to public addresses: a user must
not make it POST to the gateway host's own services or its network's. The policy is applied
twice:

- at submit time (:func:`literal_refusal`), only to what the URL itself says (an IP address,
  ``localhost``): refused with a 422 so that users learn early; a DNS name is not resolved then;
- at delivery time, on every address the name resolves to, by :class:`PolicyResolver` inside
  the HTTP client's connector: the connection goes to the addresses that were checked, so a DNS
  answer that changes between check and connect (rebinding) cannot reach an internal address.
  An IP-literal host never reaches a resolver (aiohttp connects to it directly), so the
  deliverer checks it with :func:`check_literal` first.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")
# What the OpenAPI document shows; check_url checks more (host, port, no user or fragment).
URL_PATTERN = r"^https?://[^\s#@/?]+([/?][^\s#]*)?$"
_PRINTABLE = re.compile(r"^[\x21-\x7e]+\Z")
# A DNS name: letters, digits and hyphens per label; the last label starts with a letter, so
# that 127.1, 2130706433 or 0x7f.1 (old numeric forms of 127.0.0.1) are no host names.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"^(?:{_LABEL}\.)*[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?\.?\Z")
# The kinds of address refused, in the words a refusal uses (the first that applies).
_KINDS = (("is_loopback", "a loopback address"), ("is_unspecified", "the unspecified address"),
          ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"),
          ("is_reserved", "a reserved address"), ("is_private", "a private address"),
          ("is_site_local", "a site-local address"))

log = logging.getLogger(__name__)


class AddressRefused(OSError):
    """A webhook's host is, or resolves to, an address the policy refuses. An OSError, so
    that aiohttp's connector passes it on from a resolver (as ``ClientConnectorError.os_error``)."""


def check_url(value: str) -> str:
    """``value`` if it is a webhook URL of the accepted shape; ValueError saying what is wrong
    otherwise (pydantic turns it into the field's 422 message). The host and port are read
    from the text itself and must be what the HTTP client (yarl) reads too, so that the host
    checked here is the host connected to."""
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"at most {MAX_URL_LENGTH} characters")
    if not _PRINTABLE.match(value):
        raise ValueError("printable ASCII without spaces (percent-encode the rest)")
    scheme, sep, rest = value.partition("://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if not sep or scheme not in SCHEMES or not authority:
        raise ValueError("an http:// or https:// URL with a host")
    if "@" in authority:
        raise ValueError("no user name or password in the URL (the signature authenticates "
                         "the gateway)")
    if "#" in value:
        raise ValueError("no fragment (#...)")
    host, port = _host_and_port(authority)
    try:
        url = URL(value)
        read = (_ip(url.raw_host or "") or url.raw_host, url.explicit_port)
    except ValueError:
        read = None
    if read != (_ip(host.strip("[]")) or host, port):
        raise ValueError("not a URL (http:// or https://, a host, a path)")
    return value


def _host_and_port(authority: str) -> tuple[str, int | None]:
    """The host (lower case) and port of ``host[:port]``, each checked; ValueError if not."""
    host, colon, port = authority.lower().rpartition(":")
    if not colon or host.endswith(":") or not host:  # no port, or an IPv6 address without one
        host, port = authority.lower(), ""
    if port and (not port.isdigit() or not 0 < int(port) <= 65535):
        raise ValueError("a port from 1 to 65535")
    if host.startswith("["):  # an IPv6 address
        if not host.endswith("]") or "%" in host or _ip(host[1:-1]) is None:
            raise ValueError("not an IPv6 address in [brackets] (and no zone index, %...)")
    elif _ip(host) is None and not _DNS_NAME.match(host):
        raise ValueError("the host is neither a DNS name nor an IP address written in full "
                         "(four decimal numbers)")
    return host, int(port) if port else None


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is no place for a webhook, in words ("a loopback address"); None for a
    public address. An IPv6 address that embeds an IPv4 one (mapped ``::ffff:a.b.c.d``, 6to4,
    Teredo) is refused if the embedded address is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # it is the IPv4 address, on an IPv6 socket
            return refusal(address.ipv4_mapped)
        embedded = [address.sixtofour, *(address.teredo or ())]
        for inner in filter(None, embedded):
            why = refusal(inner)
            if why is not None:
                return f"{why} inside an IPv6 one"
    for attribute, words in _KINDS:
        if getattr(address, attribute, False):
            return words
    return None if address.is_global else "not a public address"


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def literal_refusal(host: str) -> str | None:
    """Why a URL naming ``host`` is refused before any name is resolved: ``localhost`` (and
    names under it, RFC 6761) or an IP address the policy refuses; None otherwise."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "the gateway's own host (localhost)"
    address = _ip(name.strip("[]"))
    return refusal(address) if address is not None else None


def check_literal(url: str, allow_private: bool) -> None:
    """Raise :class:`AddressRefused` if ``url``'s host itself (an IP address, localhost) is
    refused and ``allow_private`` is off; nothing for a name left to the resolver."""
    host = URL(url).raw_host or ""
    why = None if allow_private else literal_refusal(host)
    if why is not None:
        raise AddressRefused(f"{host} is {why}")


class PolicyResolver(AbstractResolver):
    """A resolver for the webhook client's connector: resolves with ``inner`` and, unless
    ``allow_private``, raises :class:`AddressRefused` if ANY address found is refused (one
    good address among bad ones is no reason to try it: the name is someone's trick or
    mistake). The connector then connects only to the addresses returned here."""

    def __init__(self, inner: AbstractResolver, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return found
        for entry in found:
            address = _ip(str(entry["host"]))
            why = "not an IP address" if address is None else refusal(address)
            if why is not None:
                # The address itself goes to the gateway's log only: the refusal is shown to
                # the user (the job's events), who must not map the gateway's network by it.
                log.warning("webhook host %s resolves to %s, %s: refused", host,
                            entry["host"], why)
                raise AddressRefused(f"{host} resolves to an address webhooks may not reach "
                                     "(not a public one)")
        if not found:
            raise AddressRefused(f"{host} resolves to no address")
        return found

    async def close(self) -> None:
        await self._inner.close()


def shown(url: str) -> str:
    """What logs and events say of a webhook URL: its scheme, host and port only. A path or
    query may hold the receiver's own secret (many services put one there)."""
    return str(URL(url).origin())
