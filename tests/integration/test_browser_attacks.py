"""What another site's page, a sloppy or hostile HTTP client, and a flood of health checks can
do to a real `hpcgw serve` (local transport, the real dev cluster behind it).

The gateway is this module's own: ``header_timeout = 2`` (slow clients), ``old_interval``
long (the cluster view is refreshed once, at startup), and ``sinfo``/``squeue``/``sacct`` on its
PATH are wrappers that log each run, so a test can count the scheduler commands it starts.
The HTTP client keeps no cookies: every cookie sent is explicit.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import add_users, start_gateway, stop_gateway, write_config

HEADER_TIMEOUT = 2.0
CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
       "img-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
FIELD = re.compile(r'name="xsrf" value="([^"]*)"')
PROBLEM = "application/problem+json"
EVIL = "https://evil.example"


@dataclass
class Served:
    url: str
    port: int
    tokens: dict[str, str]
    commands: Path  # one line per scheduler query the gateway ran

    def queries(self, tool: str) -> int:
        lines = self.commands.read_text().splitlines() if self.commands.exists() else []
        return sum(1 for line in lines if line.split(" ", 1)[0] == tool)


def _wrap_scheduler_tools(directory: Path, log: Path) -> None:
    directory.mkdir()
    for tool in ("sinfo", "squeue", "sacct"):
        real = shutil.which(tool)
        assert real, f"{tool} is not on PATH"
        wrapper = directory / tool
        wrapper.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexec "{real}" "$@"\n')
        wrapper.chmod(0o755)


@pytest.fixture(scope="module")
def served(dev_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("browser-attacks")
    config = home / "gateway.toml"
    write_config(dev_config, config, home / "data", old_interval=3600)
    text = config.read_text().replace("[gateway]\n", f"[gateway]\nheader_timeout = "
                                      f"{HEADER_TIMEOUT}\n", 1)
    config.write_text(text)
    tokens = add_users(config)
    commands = home / "commands.log"
    _wrap_scheduler_tools(home / "bin", commands)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}")
        process, url = start_gateway(config, home / "gateway.log")
    try:
        yield Served(url, int(url.rsplit(":", 1)[1]), tokens, commands)
    finally:
        stop_gateway(process)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def login_form(http: aiohttp.ClientSession, served: Served) -> tuple[str, str]:
    """(hidden field, form cookie) of a fresh login page."""
    async with http.get(f"{served.url}/login") as page:
        assert page.status == 200
        assert page.headers["Content-Security-Policy"] == CSP
        match = FIELD.search(await page.text())
        assert match
        return match[1], page.cookies["hpcgw_form"].value


async def post_login(http: aiohttp.ClientSession, served: Served, headers: dict[str, str],
                     **data: str) -> tuple[int, list[str], str]:
    """(status, Set-Cookie headers, body) of a login POST."""
    async with http.post(f"{served.url}/login", data=data, headers=headers,
                         allow_redirects=False) as answer:
        return answer.status, answer.headers.getall("Set-Cookie", []), await answer.text()


def sets_session(cookies: list[str]) -> bool:
    return any(c.startswith("hpcgw_session=") and "Max-Age=0" not in c for c in cookies)


async def logged_in(http: aiohttp.ClientSession, served: Served) -> dict[str, str]:
    field, cookie = await login_form(http, served)
    async with http.post(f"{served.url}/login", allow_redirects=False,
                         data={"token": served.tokens["alice"], "next": "/", "xsrf": field},
                         headers={"Origin": served.url, "Cookie": f"hpcgw_form={cookie}"}
                         ) as answer:
        assert answer.status == 303
        return {k: m.value for k, m in answer.cookies.items() if k != "hpcgw_form"}


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


# -- login and logout from another site ---------------------------------------------------------


async def test_cross_origin_login_is_refused(http: aiohttp.ClientSession, served: Served
                                             ) -> None:
    field, cookie = await login_form(http, served)
    for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Referer": f"{EVIL}/attack"}):
        status, cookies, body = await post_login(
            http, served, {**headers, "Cookie": f"hpcgw_form={cookie}"},
            token=served.tokens["alice"], next="/", xsrf=field)
        assert status == 403, (headers, body)
        assert not sets_session(cookies)


async def test_login_without_the_form_token_is_refused(http: aiohttp.ClientSession,
                                                       served: Served) -> None:
    field, cookie = await login_form(http, served)
    for headers, data in [({}, {}), ({"Cookie": f"hpcgw_form={cookie}"}, {}),
                          ({}, {"xsrf": field}), ({"Cookie": "hpcgw_form=abc"}, {"xsrf": "abc"})]:
        status, cookies, body = await post_login(
            http, served, {"Origin": served.url, **headers},
            token=served.tokens["alice"], next="/", **data)
        assert status == 403 and "expired" in body, (headers, data)
        assert not sets_session(cookies)


async def test_same_origin_login_with_the_token_works(http: aiohttp.ClientSession,
                                                      served: Served) -> None:
    cookies = await logged_in(http, served)
    async with http.get(f"{served.url}/", headers={"Cookie": cookie_header(cookies)}) as portal:
        assert portal.status == 200
        page = await portal.text()
        assert "Signed in as <strong>alice</strong>" in page
        assert portal.headers["Content-Security-Policy"] == CSP
        assert portal.headers["X-Content-Type-Options"] == "nosniff"
        assert portal.headers["Referrer-Policy"] == "same-origin"


async def test_logout_from_another_site_is_refused(http: aiohttp.ClientSession, served: Served
                                                   ) -> None:
    cookies = await logged_in(http, served)
    jar = {"Cookie": cookie_header(cookies)}
    for headers, data in [({"Origin": EVIL}, {"xsrf": cookies["hpcgw_xsrf"]}),
                          ({"Origin": served.url}, {})]:
        async with http.post(f"{served.url}/logout", data=data, allow_redirects=False,
                             headers={**jar, **headers}) as answer:
            assert answer.status == 403
            assert "Set-Cookie" not in answer.headers
    async with http.get(f"{served.url}/", headers=jar) as portal:
        assert portal.status == 200  # the session survived
        field = FIELD.search(await portal.text())
    assert field
    async with http.post(f"{served.url}/logout", data={"xsrf": field[1]}, allow_redirects=False,
                         headers={**jar, "Origin": served.url}) as answer:
        assert answer.status == 303 and answer.cookies["hpcgw_session"].value == ""


async def test_problems_carry_the_policy_too(http: aiohttp.ClientSession, served: Served
                                             ) -> None:
    for path in ("/api/v1/jobs", "/labs/0123456789abcdef/lab"):
        async with http.get(served.url + path) as answer:
            assert answer.status == 401 and answer.content_type == PROBLEM
            assert answer.headers["Content-Security-Policy"] == CSP


# -- malformed uploads ----------------------------------------------------------------------------


async def raw_request(served: Served, head: str, body: bytes) -> tuple[int, str]:
    """(status, content type) of exactly these bytes sent as one request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(head.strip().replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        await writer.drain()
        header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()
    match = re.search(rb"(?i)content-type: ([^;\r]+)", header)
    return int(header.split(b" ", 2)[1]), match[1].decode() if match else ""


@pytest.mark.parametrize(("content_type", "body", "status"), [
    ("multipart/form-data", b"--b\r\n\r\nx\r\n--b--\r\n", 400),  # no boundary
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition form-data\r\n\r\nx\r\n"
     b"--b--\r\n", 400),  # a part header without a colon
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="spec"'
     b"\r\n\r\n{}\r\n--b\r\nContent-Disposition: form-data; name=\"notebook\"\r\n\r\n{\"ce",
     400),  # the body ends inside a part
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="spec"'
     b"\r\n\r\n" + b"[" * 60_000 + b"\r\n--b--\r\n", 400),  # JSON deeper than Python recurses
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="spec"'
     b'\r\n\r\n{}\r\n--b\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{}\r\n--b--\r\n',
     422),  # spec twice
    ("application/json", b"[" * 60_000, 400),
    ("application/json", b"[" * 100_000, 413),  # over the 64 KiB a lab request may have
])
async def test_malformed_uploads_are_4xx_problems(served: Served, content_type: str,
                                                  body: bytes, status: int) -> None:
    head = f"""
POST /api/v1/jobs HTTP/1.1
Host: 127.0.0.1
Authorization: Bearer {served.tokens['alice']}
Content-Type: {content_type}
Content-Length: {len(body)}
Connection: close"""
    assert await raw_request(served, head, body) == (status, PROBLEM)


# -- slow clients ---------------------------------------------------------------------------------


async def test_slowloris_connections_are_closed(served: Served) -> None:
    # Nothing; a head aiohttp serves; a head the lab proxy's fast path holds (gateway/proxy).
    for opening in (b"", b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ",
                    b"GET /labs/0123456789abcdef/lab HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: "):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        started = time.monotonic()
        writer.write(opening)
        await writer.drain()
        leftover = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + 8)
        elapsed = time.monotonic() - started
        writer.close()
        assert leftover == b""  # closed without an answer
        assert elapsed > HEADER_TIMEOUT - 0.5, elapsed  # not before the timeout


async def test_a_keep_alive_client_is_not_affected(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        for _ in range(4):  # one connection, a request every second (under the timeout)
            writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            assert header.startswith(b"HTTP/1.1 200 ")
            length = re.search(rb"(?i)content-length: (\d+)", header)
            assert length
            await reader.readexactly(int(length[1]))
            await asyncio.sleep(HEADER_TIMEOUT / 2)
    finally:
        writer.close()


# -- health from the cached view ------------------------------------------------------------------


async def test_health_starts_no_scheduler_command(http: aiohttp.ClientSession, served: Served
                                                  ) -> None:
    async with http.get(f"{served.url}/api/v1/health") as first:  # waits for the first check
        assert (await first.json())["clusters"]["dev"]["reachable"] is True
    before = served.queries("sinfo")
    assert before >= 1  # the poller's refresh went through the wrapper: counting works
    auth = {"Authorization": f"Bearer {served.tokens['bob']}"}
    answers: list[Any] = []
    for _ in range(50):
        async with http.get(f"{served.url}/api/v1/health") as answer:
            answers.append(await answer.json())
    for _ in range(10):
        async with http.get(f"{served.url}/api/v1/clusters", headers=auth) as answer:
            assert answer.status == 200
            answers.append(await answer.json())
    assert all(a["clusters"]["dev"]["reachable"] is True for a in answers[:50])
    assert all(a["clusters"][0]["partitions"]["gpu"]["scheduler"] for a in answers[50:])
    assert served.queries("sinfo") == before
