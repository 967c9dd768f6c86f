"""Where webhooks may go: the URL's shape (checked strictly, like the rest of the spec) and the
address policy: every loopback, private, link-local, multicast, reserved, unspecified or
otherwise non-public address is refused, in IPv4, IPv6 and IPv6 forms that embed IPv4, both
for a literal host and for every address a name resolves to."""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.webhooks.addresses import (
    URL_PATTERN,
    AddressRefused,
    PolicyResolver,
    check_literal,
    check_url,
    literal_refusal,
    refusal,
    shown,
)

REFUSED = {
    "127.0.0.1": "loopback", "127.255.255.254": "loopback", "::1": "loopback",
    "0.0.0.0": "unspecified", "::": "unspecified",  # noqa: S104 - a test value
    "169.254.169.254": "link-local", "fe80::1": "link-local",  # cloud metadata, link-local
    "10.1.2.3": "private", "172.16.0.1": "private", "172.31.255.255": "private",
    "192.168.1.1": "private", "fc00::1": "private", "fd12:3456::1": "private",
    "224.0.0.1": "multicast", "ff02::1": "multicast", "239.255.255.250": "multicast",
    "240.0.0.1": "reserved", "255.255.255.255": "reserved", "0.1.2.3": "private",
    "100.64.0.1": "not a public", "192.0.2.1": "private", "198.18.0.1": "private",
    "fec0::1": "site-local",
    # IPv6 forms of IPv4 addresses: mapped, compatible, 6to4, NAT64, Teredo
    "::ffff:127.0.0.1": "loopback", "::ffff:169.254.169.254": "link-local",
    "::ffff:10.0.0.1": "private", "::ffff:0.0.0.0": "unspecified",
    "::127.0.0.1": "reserved", "2002:7f00:1::": "loopback", "2002:a00:1::": "private",
    "64:ff9b::7f00:1": "reserved",
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "loopback",  # Teredo, its client is 127.0.0.1
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111",
          "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("address", "words"), REFUSED.items())
def test_non_public_addresses_are_refused(address: str, words: str) -> None:
    why = refusal(ipaddress.ip_address(address))
    assert why is not None and words in why, (address, why)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "hooks.localhost", "127.0.0.1",
                                  "::1", "[::1]", "::ffff:127.0.0.1", "10.0.0.7",
                                  "169.254.169.254"])
def test_a_url_naming_an_internal_host_is_refused_before_any_lookup(host: str) -> None:
    assert literal_refusal(host) is not None


@pytest.mark.parametrize("host", ["hooks.example.org", "8.8.8.8", "2606:4700:4700::1111",
                                  "localhost.example.org", "mylocalhost"])
def test_names_and_public_addresses_pass_the_early_check(host: str) -> None:
    assert literal_refusal(host) is None


def test_check_literal_raises_unless_private_addresses_are_allowed() -> None:
    with pytest.raises(AddressRefused, match=r"127\.0\.0\.1 is a loopback address"):
        check_literal("http://127.0.0.1:8080/hook", allow_private=False)
    with pytest.raises(AddressRefused, match="localhost"):
        check_literal("http://localhost/hook", allow_private=False)
    check_literal("http://127.0.0.1:8080/hook", allow_private=True)
    check_literal("https://hooks.example.org/", allow_private=False)  # left to the resolver


@pytest.mark.parametrize("url", [
    "https://hooks.example.org/in", "http://hooks.example.org", "https://h.example:8443/a?b=c",
    "http://8.8.8.8/x", "http://[2606:4700:4700::1111]:8080/", "https://receiver/",
    "https://xn--bcher-kva.example/", "https://EXAMPLE.org./x", "https://h.example/%20x",
    "http://[::ffff:8.8.8.8]:8080/", "https://h.example:/x", "https://h.example?q=1",
])
def test_good_urls(url: str) -> None:
    assert check_url(url) == url
    assert re.search(URL_PATTERN, url)  # what the OpenAPI document allows: never less


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://hooks.example.org/", "http:// or https://"),
    ("HTTPS://hooks.example.org/", "http:// or https://"),  # as the document's pattern says
    ("hooks.example.org/in", "http:// or https://"),
    ("https://", "http:// or https://"),
    ("https:///in", "http:// or https://"),
    ("https://user:pass@hooks.example.org/", "no user name or password"),
    ("https://user@hooks.example.org/", "no user name or password"),
    ("https://hooks.example.org/#frag", "no fragment"),
    ("https://hooks.example.org:0/", "port"),
    ("https://hooks.example.org:99999/", "port"),
    ("https://hooks.example.org:x/", "port"),
    ("https://@hooks.example.org/", "no user name or password"),
    ("https://@https://_@M]..:-|", "no user name or password"),
    ("https://[::1/", "not an IPv6 address"),
    ("https://h.example:80:80/", "neither a DNS name"),
    ("https://127.1/", "four decimal numbers"),
    ("https://2130706433/", "four decimal numbers"),
    ("https://0x7f.1/", "four decimal numbers"),
    ("https://-bad.example/", "neither a DNS name"),
    ("https://a..b/", "neither a DNS name"),
    ("https://[fe80::1%25eth0]/", "zone"),
    ("https://hooks.example.org/a b", "printable ASCII"),
    ("https://bücher.example/", "printable ASCII"),
    ("https://hooks.example.org/\n", "printable ASCII"),
    ("https://hooks.example.org/" + "a" * 2048, "at most 2048"),
])
def test_bad_urls_say_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_url(url)


def test_logs_and_events_show_only_the_origin() -> None:
    assert shown("https://hooks.slack.example/services/T0/B0/SECRET?token=x") \
        == "https://hooks.slack.example"
    assert shown("http://127.0.0.1:8080/hook") == "http://127.0.0.1:8080"


class FixedResolver(AbstractResolver):
    """Answers every name with ``addresses`` (a DNS server under someone's control)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": address, "port": port,
                 "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                 "proto": 0, "flags": 0} for address in self.addresses]

    async def close(self) -> None:
        self.closed = True


async def test_the_resolver_refuses_a_name_with_any_internal_address() -> None:
    found = await PolicyResolver(FixedResolver("8.8.8.8"), False).resolve("h.example", 443)
    assert [entry["host"] for entry in found] == ["8.8.8.8"]
    for addresses in (("127.0.0.1",), ("8.8.8.8", "10.0.0.1"), ("2606:4700::1", "::1"),
                      ("::ffff:169.254.169.254",), ("fe80::1%2",), ()):
        with pytest.raises(AddressRefused, match=r"h\.example resolves to"):
            await PolicyResolver(FixedResolver(*addresses), False).resolve("h.example", 443)


async def test_with_allow_private_the_resolver_answers_as_it_found() -> None:
    inner = FixedResolver("127.0.0.1", "10.0.0.1")
    resolver = PolicyResolver(inner, True)
    assert [e["host"] for e in await resolver.resolve("h.example")] == ["127.0.0.1", "10.0.0.1"]
    await resolver.close()
    assert inner.closed
