"""Reading a server's answer whole but capped, when it arrives in pieces (as a sign-on
provider's or a lab's answer may)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.bodies import read_at_most


async def in_pieces(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for piece in (b'{"issuer": ', b'"https://sso"}'):
        await response.write(piece)
        await asyncio.sleep(0.1)  # the second piece arrives later
    await response.write_eof()
    return response


async def test_a_body_in_pieces_is_read_whole_and_a_long_one_is_cut(
        aiohttp_client: Any) -> None:
    app = web.Application()
    app.router.add_get("/", in_pieces)
    client = await aiohttp_client(app)
    async with client.get("/") as answer:
        assert await read_at_most(answer.content, 1024) == b'{"issuer": "https://sso"}'
    async with client.get("/") as answer:
        assert await read_at_most(answer.content, 5) == b'{"issu'  # limit + 1: too large
