"""Helpers for the lab tests: asking for labs, waiting for them, and talking to them."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp

from .conftest import Api


async def request_lab(api: Api, **spec: Any) -> dict[str, Any]:
    status, job = await api.call("POST", "/api/v1/jobs", json={"kind": "lab", **spec})
    assert status == 201, job
    return dict(job)


async def wait_ready(api: Api, job_id: str, timeout: float = 120) -> dict[str, Any]:
    job = await api.wait_for(job_id, lambda j: j["state"] in ("ready", "succeeded", "failed",
                                                                 "cancelled", "timed_out"),
                             timeout, "ready")
    assert job["state"] == "ready", job
    return job


async def lab_get(api: Api, job_id: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    return await api.call("GET", f"/labs/{job_id}/{path}", **kwargs)


async def wait_answers(api: Api, job_id: str, timeout: float = 60) -> None:
    """Until the lab's api/status answers 200 through the proxy (after a restart or a cut)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, last = await lab_get(api, job_id, "api/status")
            if status == 200:
                return
        except aiohttp.ClientError as exc:
            last = exc
        await asyncio.sleep(0.5)
    raise AssertionError(f"lab {job_id} did not answer through the proxy: {last!r}")


async def login(session: aiohttp.ClientSession, base: str, token: str, next_path: str = "/"
                ) -> aiohttp.ClientResponse:
    """Log in like the browser's form does (the page's form token, the gateway's Origin); the
    session's cookie jar keeps the cookies."""
    async with session.get(f"{base}/login") as page:
        field = re.search(r'name="xsrf" value="([^"]*)"', await page.text())
        assert field, "the login page has no form token"
    async with session.post(f"{base}/login", data={"token": token, "next": next_path,
                                                   "xsrf": field[1]},
                            headers={"Origin": base}, allow_redirects=False) as response:
        await response.read()
        return response
