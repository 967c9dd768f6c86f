"""The CLI's side of the HTTP API: one client, its errors and the CLI's exit statuses.

Every request goes through :meth:`Client.request` (a timeout, the bearer token, a problem+json
answer turned into :class:`ClientError` with the problem kept for ``--json``)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from ..errors import GatewayError

# Exit statuses (README, `hpcgw --help`): how a job ended, or why the command could not tell.
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_TIMED_OUT = 0, 1, 2, 3, 4
EXIT_HTTP_ERROR, EXIT_UNREACHABLE = 5, 6
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=300, connect=10)


class ClientError(GatewayError):
    """The gateway answered with a problem (``status`` in its extras), or could not be
    reached."""

    @property
    def exit_status(self) -> int:
        if "exit" in self.extra:
            return int(self.extra["exit"])
        return EXIT_HTTP_ERROR if "status" in self.extra else EXIT_UNREACHABLE


class Client:
    """A thin async client of the gateway's HTTP API."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("HPCGW_URL") or "http://127.0.0.1:8000").rstrip("/")
        if not re.match(r"^https?://[^/\s]+", self.url):
            raise ClientError(f"HPCGW_URL must be the gateway's http:// or https:// URL, e.g. "
                              f"http://gateway.example.org:8000, not {self.url!r}",
                              exit=EXIT_USAGE)
        token = token or os.environ.get("HPCGW_TOKEN")
        if not token:
            raise ClientError("set HPCGW_TOKEN to your gateway token", exit=EXIT_USAGE)
        self._headers = {"Authorization": f"Bearer {token}"}

    async def all_jobs(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every job of the caller that matches ``params`` (the list's filters), all pages."""
        jobs: list[dict[str, Any]] = []
        query = "?" + urlencode({**params, "limit": "500"})
        while True:
            page = await self.json("GET", "/api/v1/jobs" + query)
            jobs += page["jobs"]
            if not page.get("next"):
                return jobs
            query = "?" + page["next"].split("?", 1)[1]

    async def log_from(self, job_id: str, offset: int) -> tuple[bytes, int, str]:
        """The job's log from byte ``offset`` (as much as one answer holds): ``(bytes, the
        offset to ask next, the job's state)``."""
        _, body, _, headers = await self._send(
            "GET", f"/api/v1/jobs/{quote(job_id)}/log", params={"offset": str(offset)})
        next_offset = headers.get("Hpcgw-Log-Next", "")
        state = headers.get("Hpcgw-Job-State", "")
        if not next_offset.isdigit() or not state:
            raise ClientError(f"{self.url} did not answer as an hpcgw gateway does (no log "
                              "offset in its answer)")
        return body, int(next_offset), state

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes, str]:
        """``(status, body, content_type)``; a problem answer raises ClientError."""
        status, body, content_type, _ = await self._send(method, path, **kwargs)
        return status, body, content_type

    async def _send(self, method: str, path: str,
                    **kwargs: Any) -> tuple[int, bytes, str, Mapping[str, str]]:
        """:meth:`request`, with the answer's headers too (names case-insensitive)."""
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session, \
                    session.request(method, self.url + path, headers=headers, **kwargs) as reply:
                body = await reply.read()
                if reply.status >= 400:
                    if not _problem(body):
                        raise ClientError(
                            f"{self.url} did not answer as an hpcgw gateway does (HTTP "
                            f"{reply.status} {reply.content_type} for {method} {path}): is "
                            "HPCGW_URL the gateway's address?", status=reply.status)
                    raise ClientError(_problem_text(reply.status, body), status=reply.status,
                                      problem=_problem(body))
                return reply.status, body, reply.content_type, reply.headers.copy()
        except aiohttp.ClientError as exc:
            raise ClientError(f"cannot reach the gateway at {self.url}: {exc}") from exc

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a request; ClientError saying so when the server at HPCGW_URL
        does not answer JSON (it is not an hpcgw gateway)."""
        _, body, content_type = await self.request(method, path, **kwargs)
        try:
            if content_type != "application/json":
                raise ValueError(content_type)
            return json.loads(body)
        except ValueError:
            raise ClientError(f"{self.url} did not answer as an hpcgw gateway does ({method} "
                              f"{path} gave {content_type or 'no content type'}, not JSON): "
                              "is HPCGW_URL the gateway's address?") from None


def _problem(body: bytes) -> dict[str, Any]:
    """The problem+json object of an error answer; empty if it is none."""
    try:
        problem = json.loads(body)
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}


def _problem_text(status: int, body: bytes) -> str:
    problem = _problem(body)
    if not problem:
        return f"HTTP {status}"
    text = f"{problem.get('title', 'error')} ({status}): {problem.get('detail', '')}"
    for error in problem.get("errors", []):
        text += f"\n  {error.get('field')}: {error.get('message')}"
    return text
