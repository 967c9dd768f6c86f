"""A bare asyncio TCP relay: the least any CPython proxy on asyncio can cost (bench/proxy.py).

Every client connection gets its own connection to the upstream, and bytes are passed on both
ways as they come (``data_received`` → ``write``), with the same flow control as hpcgw's relay:
a client that cannot keep up pauses reading from the upstream, and the other way round. No
HTTP parsing, no checks, no logging: what is left is the event loop, the socket calls and the
kernel's copies, which is what hpcgw's fast path cannot go below.

Run: python bench/tcp_relay.py LISTEN_PORT UPSTREAM_PORT (both on 127.0.0.1; stop it by pid).
"""

from __future__ import annotations

import asyncio
import gc
import sys


class Side(asyncio.Protocol):
    """One end of a relayed connection; ``peer`` is the other end, once it is connected."""

    def __init__(self, peer: Side | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self.early: list[bytes] = []  # what a client sent before its upstream was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def serve(listen: int, upstream: int) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()  # held until done (the loop keeps weak refs)

    def client() -> Side:
        side = Side()
        task = loop.create_task(connect(side))
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return side

    async def connect(side: Side) -> None:
        try:
            _, far = await loop.create_connection(lambda: Side(side), "127.0.0.1", upstream)
        except OSError:
            if side.transport is not None:
                side.transport.abort()
            return
        side.peer = far
        assert far.transport is not None
        for data in side.early:
            far.transport.write(data)
        side.early.clear()

    server = await loop.create_server(client, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    gc.freeze()  # as `hpcgw serve` does after start-up
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
