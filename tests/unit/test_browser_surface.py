"""The unauthenticated surface and the browser pages, against the app served the way
``hpcgw serve`` serves it (``web.AppRunner`` with ``server_options``) on 127.0.0.1:0, with the
fake cluster. The HTTP client keeps no cookies: every cookie a test sends is explicit, as a
forging page would have to make the browser send it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from gateway.api import app as app_module
from gateway.api.forms import make_form_token
from gateway.config import ClusterConfig, parse_config
from gateway.jobs.clusters import ClusterLink
from gateway.server import STORE, make_app, server_options

if TYPE_CHECKING:
    from conftest import FakeClusters

PROBLEM = "application/problem+json"
CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
       "img-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
FIELD = re.compile(r'name="xsrf" value="([^"]*)"')
NOTEBOOK_LIMIT = 4096


@dataclass
class Site:
    base: str
    port: int
    http: aiohttp.ClientSession
    app: web.Application
    alice: str
    cluster_info_calls: list[float]

    @property
    def origin(self) -> str:
        return self.base

    async def form(self) -> tuple[str, str]:
        """GET /login: (the hidden field's value, the form cookie's value)."""
        async with self.http.get(f"{self.base}/login") as page:
            assert page.status == 200
            match = FIELD.search(await page.text())
            assert match, "the login page has no xsrf field"
            return match[1], page.cookies["hpcgw_form"].value

    async def post_login(self, token: str, *, field: str | None, cookie: str | None,
                         headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        data = {"token": token, "next": "/"} | ({"xsrf": field} if field is not None else {})
        sent = dict(headers if headers is not None else {"Origin": self.origin})
        if cookie is not None:
            sent["Cookie"] = f"hpcgw_form={cookie}"
        response = await self.http.post(f"{self.base}/login", data=data, headers=sent,
                                        allow_redirects=False)
        await response.read()
        return response

    async def login(self) -> dict[str, str]:
        """A same-origin login through the form; the cookies it set."""
        field, cookie = await self.form()
        response = await self.post_login(self.alice, field=field, cookie=cookie)
        assert response.status == 303, await response.text()
        return {name: morsel.value for name, morsel in response.cookies.items() if morsel.value}


SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def make_site(
    tmp_path: Path, fake_clusters: FakeClusters, monkeypatch: pytest.MonkeyPatch,
    make_raw_config: Callable[..., dict[str, Any]],
) -> AsyncIterator[SiteFactory]:
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(poll: dict[str, float] | None = None, hang_cluster_info: bool = False,
                   **gateway: Any) -> Site:
        raw = make_raw_config(tmp_path / f"data{len(runners)}",
                              max_notebook_bytes=NOTEBOOK_LIMIT, **gateway)
        raw["poll"].update(poll or {})
        config = parse_config(raw)
        calls: list[float] = []

        def cluster_factory(cluster: ClusterConfig) -> ClusterLink:
            runtime: ClusterLink = fake_clusters(cluster)
            original = runtime.backend.cluster_info

            async def counted() -> dict[str, Any]:
                calls.append(time.monotonic())
                if hang_cluster_info:
                    await asyncio.Event().wait()
                info: dict[str, Any] = await original()
                return info
            monkeypatch.setattr(runtime.backend, "cluster_info", counted)
            return runtime

        app = make_app(config, cluster_factory=cluster_factory)
        app.router.add_get("/labs/plain", _plain_page)  # stands for a relayed lab page
        runner = web.AppRunner(app, **server_options(config))
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        sessions.append(http)
        store = app[STORE]
        alice = store.users.issue_token(store.users.add_user("alice", "alice"))
        return Site(f"http://127.0.0.1:{port}", port, http, app, alice, calls)

    yield make
    for http in sessions:
        await http.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def site(make_site: SiteFactory) -> Site:
    return await make_site()


async def _plain_page(request: web.Request) -> web.Response:
    return web.Response(text="<p>lab</p>", content_type="text/html")


async def assert_problem(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json(content_type=PROBLEM)
    assert body["status"] == status
    return body


def session_cookies_set(response: aiohttp.ClientResponse) -> list[str]:
    return [c for c in response.headers.getall("Set-Cookie", [])
            if c.startswith(("hpcgw_session=", "hpcgw_xsrf=")) and "Max-Age=0" not in c]


# -- login CSRF ------------------------------------------------------------------------------


async def test_login_page_sets_a_matching_short_lived_form_cookie(site: Site) -> None:
    async with site.http.get(f"{site.base}/login") as page:
        text = await page.text()
        cookie = page.cookies["hpcgw_form"]
    match = FIELD.search(text)
    assert match and match[1] == cookie.value
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/login"
    assert 0 < int(cookie["max-age"]) <= 3600
    assert (await site.form())[0] != match[1]  # a fresh value per page


async def test_same_origin_login_with_the_form_token_works(site: Site) -> None:
    field, cookie = await site.form()
    response = await site.post_login(site.alice, field=field, cookie=cookie)
    assert response.status == 303 and response.headers["Location"] == "/"
    assert response.cookies["hpcgw_session"]["httponly"]
    assert response.cookies["hpcgw_form"].value == ""  # used up
    # Neither Origin nor Referer (a non-browser client): the form token alone suffices.
    field, cookie = await site.form()
    response = await site.post_login(site.alice, field=field, cookie=cookie, headers={})
    assert response.status == 303
    field, cookie = await site.form()
    response = await site.post_login(site.alice, field=field, cookie=cookie,
                                     headers={"Referer": f"{site.base}/login?next=/"})
    assert response.status == 303


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"}, {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},  # same host, another port: another origin
    {"Referer": "https://evil.example/page"},
    {"Origin": "https://evil.example", "Referer": "http://127.0.0.1/"},
])
async def test_cross_origin_login_is_refused(site: Site, headers: dict[str, str]) -> None:
    field, cookie = await site.form()  # even with a valid form token
    response = await site.post_login(site.alice, field=field, cookie=cookie, headers=headers)
    body = await assert_problem(response, 403)
    assert "another site" in body["detail"]
    assert not session_cookies_set(response)


async def test_login_without_a_valid_form_token_is_refused(site: Site) -> None:
    field, cookie = await site.form()
    secret = "s" * 40
    genuine = make_form_token(secret)
    forged = genuine[:-1] + ("1" if genuine[-1] == "0" else "0")  # one signature digit off
    attempts = [
        (None, None), (field, None), (None, cookie), (field, cookie + "x"),
        ("abc", "abc"),  # equal, but not a token this gateway made
        (forged, forged),
        (make_form_token(secret, now=time.time() - 7200),) * 2,  # expired
        (make_form_token("x" * 40),) * 2,  # another gateway's secret
        ("é", "é"),
    ]
    for sent_field, sent_cookie in attempts:
        response = await site.post_login(site.alice, field=sent_field, cookie=sent_cookie)
        assert response.status == 403, (sent_field, sent_cookie)
        assert response.content_type == "text/html"
        assert "expired" in await response.text()
        assert not session_cookies_set(response)
        assert response.cookies["hpcgw_form"].value  # a fresh form to try again with


async def test_public_origin_is_the_expected_origin(make_site: SiteFactory) -> None:
    site = await make_site(public_origin="https://gw.example.org")
    field, cookie = await site.form()
    response = await site.post_login(site.alice, field=field, cookie=cookie)  # Origin: own host
    await assert_problem(response, 403)
    response = await site.post_login(site.alice, field=field, cookie=cookie,
                                     headers={"Origin": "https://GW.example.org:443"})
    assert response.status == 303


async def test_login_body_is_capped(site: Site) -> None:
    field, cookie = await site.form()
    big = {"token": site.alice, "xsrf": field, "pad": "x" * 9000}
    headers = {"Origin": site.origin, "Cookie": f"hpcgw_form={cookie}"}
    response = await site.http.post(f"{site.base}/login", data=big, headers=headers)
    await assert_problem(response, 413)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length to check up front
        for _ in range(10):
            yield b"pad=" + b"x" * 1000 + b"&"
    response = await site.http.post(f"{site.base}/login", data=chunked(), headers={
        **headers, "Content-Type": "application/x-www-form-urlencoded"})
    await assert_problem(response, 413)
    form = aiohttp.FormData({"token": site.alice, "xsrf": field})
    form.add_field("file", b"x", filename="x")  # multipart: not what the page sends
    response = await site.http.post(f"{site.base}/login", data=form, headers=headers)
    await assert_problem(response, 415)


# -- logout CSRF -----------------------------------------------------------------------------


async def test_logout_needs_the_portal_forms_token_and_ends_the_session(site: Site) -> None:
    cookies = await site.login()
    jar = "; ".join(f"{k}={v}" for k, v in cookies.items())
    async with site.http.get(f"{site.base}/", headers={"Cookie": jar}) as portal:
        assert portal.status == 200
        match = FIELD.search(await portal.text())
    assert match and match[1] == cookies["hpcgw_xsrf"]
    refused = [
        ({"Origin": "https://evil.example"}, {"xsrf": cookies["hpcgw_xsrf"]}),
        ({"Origin": site.origin}, {}),
        ({"Origin": site.origin}, {"xsrf": "guess"}),
        ({"Referer": "https://evil.example/"}, {"xsrf": cookies["hpcgw_xsrf"]}),
    ]
    for headers, data in refused:
        response = await site.http.post(f"{site.base}/logout", data=data, allow_redirects=False,
                                        headers={**headers, "Cookie": jar})
        await assert_problem(response, 403)
        assert "Set-Cookie" not in response.headers
    async with site.http.get(f"{site.base}/", headers={"Cookie": jar}) as portal:
        assert portal.status == 200  # still logged in
    response = await site.http.post(f"{site.base}/logout", data={"xsrf": match[1]},
                                    allow_redirects=False,
                                    headers={"Origin": site.origin, "Cookie": jar})
    assert response.status == 303 and response.headers["Location"] == "/login"
    assert response.cookies["hpcgw_session"].value == ""
    # The session ended on the server: a copy of the cookie (a shared machine's browser
    # profile, a proxy's log) is worth nothing now, while a new login works.
    async with site.http.get(f"{site.base}/api/v1/jobs", headers={"Cookie": jar}) as copied:
        assert copied.status == 401
    again = "; ".join(f"{k}={v}" for k, v in (await site.login()).items())
    async with site.http.get(f"{site.base}/api/v1/jobs", headers={"Cookie": again}) as fresh:
        assert fresh.status == 200


# -- security headers ------------------------------------------------------------------------


async def test_gateway_pages_carry_a_strict_policy_lab_pages_do_not(site: Site) -> None:
    cookies = await site.login()
    jar = "; ".join(f"{k}={v}" for k, v in cookies.items())
    checks = [("/login", {}, 200), ("/", {"Cookie": jar}, 200), ("/api/v1/jobs", {}, 401),
              ("/api/v1/health", {}, 200), ("/nope", {"Cookie": jar}, 404),
              ("/labs/0123456789abcdef/lab", {"Cookie": jar}, 404)]  # a problem: ours
    for path, headers, status in checks:
        async with site.http.get(site.base + path, headers=headers) as response:
            assert response.status == status, path
            assert response.headers["Content-Security-Policy"] == CSP, path
            assert response.headers["X-Content-Type-Options"] == "nosniff", path
            assert response.headers["Referrer-Policy"] == "same-origin", path
    async with site.http.get(f"{site.base}/labs/plain", headers={"Cookie": jar}) as relayed:
        assert relayed.status == 200
        assert "Content-Security-Policy" not in relayed.headers


# -- bodies before authentication -------------------------------------------------------------


async def test_401_comes_before_any_body_is_read(site: Site) -> None:
    """A 10 MB upload announced but never sent: the answer comes anyway."""
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    writer.write(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 401 ")
    writer.close()


# -- /health and /clusters from the poller's view ----------------------------------------------


async def test_health_and_clusters_start_no_scheduler_query(make_site: SiteFactory) -> None:
    site = await make_site(poll={"old_interval": 3600})
    auth = {"Authorization": f"Bearer {site.alice}"}
    for _ in range(40):
        async with site.http.get(f"{site.base}/api/v1/health") as response:
            assert (await response.json())["clusters"] == {
                "dev": {"reachable": True, "error": None}}
    for _ in range(10):
        async with site.http.get(f"{site.base}/api/v1/clusters", headers=auth) as response:
            (dev,) = (await response.json())["clusters"]
            assert dev["reachable"] is True
            assert dev["partitions"]["gpu"]["scheduler"]["gres"] == "gpu:2"
    assert len(site.cluster_info_calls) == 1  # the poller's first refresh, nothing since


async def test_health_before_the_first_check_says_null(
    make_site: SiteFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "HEALTH_TIMEOUT", 0.3)
    site = await make_site(hang_cluster_info=True)
    started = time.monotonic()
    async with site.http.get(f"{site.base}/api/v1/health") as response:
        assert response.status == 200
        assert (await response.json())["clusters"] == {"dev": {"reachable": None, "error": None}}
    assert time.monotonic() - started > 0.25  # it waited for the first check
    assert len(site.cluster_info_calls) == 1  # the poller's, still hanging; none of ours


# -- slow clients ------------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with Content-Length: (status, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])  # type: ignore[index]
    return status, await asyncio.wait_for(reader.readexactly(length), 10)


async def test_unfinished_request_headers_are_cut_off(make_site: SiteFactory) -> None:
    site = await make_site(header_timeout=0.5)
    for opening in (b"", b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: "):
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        started = time.monotonic()
        writer.write(opening)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        assert time.monotonic() - started > 0.4  # not before the timeout
        writer.close()


async def test_keep_alive_and_slow_but_timely_clients_are_served(
    make_site: SiteFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = await make_site(header_timeout=0.8)
    request = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    for _ in range(3):  # one connection, requests 0.4 s apart
        writer.write(request)
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(0.4)
    for i in range(0, len(request), 8):  # headers in pieces, all within the timeout
        writer.write(request[i:i + 8])
        await asyncio.sleep(0.02)
    assert (await read_response(reader))[0] == 200
    # A request whose headers arrived is not cut, however long it takes (here /health waiting
    # for a first check that never comes, longer than the header timeout).
    monkeypatch.setattr(app_module, "HEALTH_TIMEOUT", 1.2)
    slow = await make_site(header_timeout=0.5, hang_cluster_info=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", slow.port)
    writer.write(request)
    status, body = await read_response(reader)
    assert status == 200 and json.loads(body)["clusters"]["dev"]["reachable"] is None
    writer.close()
