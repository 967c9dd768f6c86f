"""How long the event loop keeps everyone else waiting while a test's work runs.

The gateway serves every user from one event loop, so work that holds it (a big parse, a
slow check) stops everyone. Tests that prove some work runs off the loop measure it with
:func:`loop_watch`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def loop_watch(deadline: float = 60, every: float = 0.01) -> AsyncIterator[list[float]]:
    """How long the event loop kept a task waiting for each turn while the block ran (a task
    asking for it every ``every`` s, as everyone else's requests would; the wait since its last
    turn counts too); the block fails after ``deadline`` seconds."""
    waits: list[float] = []
    last = time.monotonic()

    async def everyone_else() -> None:
        nonlocal last
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            waits.append(now - last)
            last = now

    ticking = asyncio.get_running_loop().create_task(everyone_else())
    await asyncio.sleep(3 * every)  # ticking before the work begins
    try:
        async with asyncio.timeout(deadline):
            yield waits
        waits.append(time.monotonic() - last)
    finally:
        ticking.cancel()
