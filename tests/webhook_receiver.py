"""A webhook receiver for the tests (unit and integration): a real aiohttp server that records
what it is sent, answers with scripted statuses, and checks signatures the way a user's
receiver would, following the documented scheme with nothing but :mod:`hmac` (not the
gateway's own code)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Delivery:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def data(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    def signed_by(self, secret: str, tolerance: float = 300.0) -> bool:
        """Whether ``Hpcgw-Signature: t=<t>,v1=<hex>`` is HMAC-SHA256(secret, "<t>.<body>")
        with ``t`` within ``tolerance`` s of when it arrived."""
        fields = dict(part.split("=", 1) for part in
                      self.headers.get("Hpcgw-Signature", "").split(",") if "=" in part)
        if not fields.get("t", "").isdigit() or "v1" not in fields:
            return False
        if abs(self.received_at - int(fields["t"])) > tolerance:
            return False
        expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + self.body,
                            hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, fields["v1"])


@dataclass
class Receiver:
    """Records every POST to ``/hook`` (any path, in fact) and answers ``statuses`` in turn,
    then ``default``. ``hold`` set: requests wait for it to be set before answering."""

    statuses: list[int] = field(default_factory=list)
    default: int = 204
    deliveries: list[Delivery] = field(default_factory=list)
    hold: asyncio.Event | None = None
    url: str = ""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self._changed:
            self.deliveries.append(Delivery(dict(request.headers), body, time.time()))
            self._changed.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        status = self.statuses.pop(0) if self.statuses else self.default
        headers = {"Location": "/elsewhere"} if 300 <= status < 400 else None
        return web.Response(status=status, headers=headers)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """The deliveries, once there are at least ``count``; fails at the deadline."""
        return await self.wait_until(lambda got: len(got) >= count, f"{count} deliveries",
                                     timeout)

    async def wait_until(self, condition: Callable[[list[Delivery]], bool], what: str,
                         timeout: float = 10.0) -> list[Delivery]:
        """The deliveries, once ``condition(deliveries)`` holds; fails at the deadline."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: condition(self.deliveries)), timeout)
            except TimeoutError:
                raise AssertionError(f"no {what} after {timeout} s; got "
                                     f"{[d.body for d in self.deliveries]}") from None
            return list(self.deliveries)


@asynccontextmanager
async def receiving(receiver: Receiver | None = None,
                    host: str = "127.0.0.1") -> AsyncIterator[Receiver]:
    """``receiver`` (a new one if None) listening on ``host``, a free port; its ``url`` is
    ``http://host:port/hook``."""
    receiver = receiver or Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://{host}:{port}/hook"
    try:
        yield receiver
    finally:
        if receiver.hold is not None:
            receiver.hold.set()
        await runner.cleanup()
