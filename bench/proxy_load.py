"""Two measurements of bench/proxy.py kept apart: many lab WebSockets at once, and how soon a lab
is reachable through the gateway once its server answers.

- :func:`many_websockets`: ``sockets`` WebSockets open through a target at once, messages sent
  round-robin at ``rate`` per second in all (in 10 ms batches) for ``seconds``; each echo's
  round trip, the errors (a failed connect, a wrong or missing echo, a socket that closed).
- :func:`lab_ready_after_direct`: a lab row in ``running`` whose server is started (a stand-in
  on a free port, answering ``api/status`` and the identity proof) before its ``lab.json`` is
  written, as jupyter_server does; from that moment, the time until the server answers
  directly (no wait: it listens already) and until the gateway answers ``api/status`` through
  its proxy (the lab watcher must read ``lab.json``, prove the server and mark it ready).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

BATCH_SECONDS = 0.01
READY_POLL = 0.005
READY_DEADLINE = 30.0


@dataclass
class LoadResult:
    sent: int = 0
    received: int = 0
    errors: int = 0
    rtts_us: list[float] = field(default_factory=list)

    def percentile(self, share: float) -> float:
        if not self.rtts_us:
            return float("nan")
        ordered = sorted(self.rtts_us)
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))]

    @property
    def median(self) -> float:
        return statistics.median(self.rtts_us) if self.rtts_us else float("nan")


async def _receive(ws: aiohttp.ClientWebSocketResponse, sent_at: dict[bytes, float],
                   result: LoadResult) -> None:
    async for message in ws:
        started = sent_at.pop(message.data, None) if message.type is \
            aiohttp.WSMsgType.BINARY else None
        if started is None:
            result.errors += 1
            continue
        result.received += 1
        result.rtts_us.append((time.perf_counter() - started) * 1e6)


async def many_websockets(url: str, headers: dict[str, str], sockets: int, rate: int,
                          seconds: float) -> LoadResult:
    """Round trips of 32-byte messages over ``sockets`` WebSockets to ``url``."""
    result, sent_at = LoadResult(), dict[bytes, float]()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        opened = await asyncio.gather(*(session.ws_connect(url) for _ in range(sockets)),
                                      return_exceptions=True)
        sockets_open = [ws for ws in opened if isinstance(ws, aiohttp.ClientWebSocketResponse)]
        result.errors += len(opened) - len(sockets_open)
        readers = [asyncio.create_task(_receive(ws, sent_at, result)) for ws in sockets_open]
        per_batch = max(1, round(rate * BATCH_SECONDS))
        loop = asyncio.get_running_loop()
        start = loop.time()
        batch = 0
        while loop.time() - start < seconds and sockets_open:
            for _ in range(per_batch):
                ws = sockets_open[result.sent % len(sockets_open)]
                payload = result.sent.to_bytes(8, "big") * 4
                sent_at[payload] = time.perf_counter()
                await ws.send_bytes(payload)
                result.sent += 1
            batch += 1
            await asyncio.sleep(max(0.0, start + batch * BATCH_SECONDS - loop.time()))
        drain_until = loop.time() + 2.0
        while sent_at and loop.time() < drain_until:
            await asyncio.sleep(0.01)
        result.errors += len(sent_at)  # never echoed
        for ws in sockets_open:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
    return result


def write_lab_json(unix_user: str, workdir: str, port: int) -> None:
    """``lab.json`` in the job's directory, as alice (the lab's launcher writes it)."""
    subprocess.run(["sudo", "-n", "-u", unix_user, "--", "mkdir", "-p", workdir], check=True)
    subprocess.run(["sudo", "-n", "-u", unix_user, "--", "tee", f"{workdir}/lab.json"],
                   input=json.dumps({"port": port}).encode(), stdout=subprocess.DEVNULL,
                   check=True)


async def _first_ok(session: aiohttp.ClientSession, url: str, headers: dict[str, str]
                    ) -> float:
    """Seconds (perf_counter) at which ``url`` first answers 200."""
    deadline = time.perf_counter() + READY_DEADLINE
    while time.perf_counter() < deadline:
        try:
            async with session.get(url, headers=headers) as response:
                if response.status == 200:
                    return time.perf_counter()
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(READY_POLL)
    raise SystemExit(f"{url} did not answer 200 within {READY_DEADLINE} s")


async def lab_ready_after_direct(start_server: Callable[[], Any], publish: Callable[[], None],
                                 direct_url: str, proxy_url: str,
                                 headers: dict[str, str]) -> tuple[float, float]:
    """(seconds until the server answers directly, until it answers through the gateway),
    both from the moment ``lab.json`` is written (``publish``), the server already started."""
    start_server()
    async with aiohttp.ClientSession() as session:
        await _first_ok(session, direct_url, {})  # listening before lab.json exists
        publish()
        published = time.perf_counter()
        direct, proxied = await asyncio.gather(_first_ok(session, direct_url, {}),
                                               _first_ok(session, proxy_url, headers))
    return direct - published, proxied - published
