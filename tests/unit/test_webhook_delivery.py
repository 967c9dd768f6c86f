"""One webhook attempt against a real local receiver: a signed JSON POST; 2xx delivers, any
other status, a redirect (never followed), a timeout or a refused connection fails it; the
address policy refuses loopback unless allowed, both for a literal address and for a name whose
DNS answer is internal (and the connection goes to the address that was checked)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from gateway.webhooks.delivery import USER_AGENT, Attempt, backoff, make_session, post_once
from tests.unit.test_webhook_addresses import FixedResolver
from tests.webhook_receiver import Receiver, receiving

SECRET = "hpcgw_whsec_" + "k" * 43
BODY = b'{"event_id":1,"job_id":"00112233aabbccdd","state":"accepted"}'


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as running:
        yield running


async def attempt(url: str, *, allow_private: bool = True, timeout: float = 5.0,
                  resolver: AbstractResolver | None = None) -> Attempt:
    async with make_session(resolver or FixedResolver("127.0.0.1"), allow_private,
                            4) as session:
        return await post_once(session, url, BODY, SECRET, timeout=timeout,
                               allow_private=allow_private)


def test_the_backoff_doubles_from_its_start_up_to_its_cap() -> None:
    assert [backoff(n, 1.0, 60.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff(n, 0.25, 1.0) for n in range(1, 5)] == [0.25, 0.5, 1.0, 1.0]
    assert backoff(10_000, 1.0, 300.0) == 300.0  # no overflow however many attempts


async def test_a_2xx_delivers_a_signed_json_post(receiver: Receiver) -> None:
    result = await attempt(receiver.url)
    assert result == Attempt(True, "HTTP 204")
    [delivery] = await receiver.wait_for(1)
    assert delivery.body == BODY
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.headers["User-Agent"] == USER_AGENT
    assert delivery.signed_by(SECRET) and not delivery.signed_by(SECRET + "x")


@pytest.mark.parametrize(("status", "detail"), [
    (503, "HTTP 503"), (404, "HTTP 404"), (500, "HTTP 500"),
    (302, "HTTP 302 (redirects are not followed)"),
])
async def test_any_other_status_fails_the_attempt(receiver: Receiver, status: int,
                                                  detail: str) -> None:
    receiver.statuses = [status]
    assert await attempt(receiver.url) == Attempt(False, detail)
    assert len(receiver.deliveries) == 1  # the redirect's target was not asked


async def test_no_answer_within_the_timeout_fails_the_attempt(receiver: Receiver) -> None:
    receiver.hold = asyncio.Event()  # answers only when the test ends
    assert await attempt(receiver.url, timeout=0.2) == Attempt(False,
                                                               "no answer within 0.2 s")


async def test_a_refused_connection_fails_the_attempt() -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = await attempt(f"http://127.0.0.1:{port}/hook")
    assert not result.delivered and not result.refused
    assert result.detail.startswith("cannot connect")


async def test_loopback_is_refused_unless_allowed(receiver: Receiver) -> None:
    literal = await attempt(receiver.url, allow_private=False)
    assert literal.refused and "127.0.0.1 is a loopback address" in literal.detail
    port = receiver.url.rsplit(":", 1)[1].split("/")[0]
    named = await attempt(f"http://localhost:{port}/hook", allow_private=False)
    assert named.refused and "localhost" in named.detail
    assert receiver.deliveries == []


async def test_a_name_is_checked_at_connect_and_reached_at_the_checked_address(
    receiver: Receiver
) -> None:
    """A name whose DNS answer is internal is refused where the connection is made; allowed,
    the connection goes to the address the resolver gave (the one that was checked)."""
    url = receiver.url.replace("127.0.0.1", "hooks.example.org")
    refused = await attempt(url, allow_private=False, resolver=FixedResolver("127.0.0.1"))
    assert refused.refused
    # The user reads this in the job's events: no internal address in it.
    assert refused.detail == ("refused: hooks.example.org resolves to an address webhooks may "
                              "not reach (not a public one)")
    mixed = await attempt(url, allow_private=False,
                          resolver=FixedResolver("93.184.215.14", "127.0.0.1"))
    assert mixed.refused
    assert receiver.deliveries == []
    assert await attempt(url, allow_private=True, resolver=FixedResolver("127.0.0.1")) \
        == Attempt(True, "HTTP 204")
    [delivery] = await receiver.wait_for(1)
    assert delivery.headers["Host"].startswith("hooks.example.org:")


async def test_an_endless_answer_body_is_never_read() -> None:
    """A receiver that streams its 200's body for ever: the attempt is delivered at once
    (only the status counts) and the connection is dropped, not read to its end."""
    stopped = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"x" * 65536)
        except (ConnectionError, asyncio.CancelledError):
            stopped.set()
            raise

    app = web.Application()
    app.router.add_post("/hook", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        assert await attempt(url, timeout=5.0) == Attempt(True, "HTTP 200")
        await asyncio.wait_for(stopped.wait(), 5.0)  # the client hung up
    finally:
        await runner.cleanup()
