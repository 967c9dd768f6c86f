"""What the front (:mod:`.front`) and the lab proxy's checks (:mod:`.fastpath`) say to each
other: a request let through, and the checks as the front sees them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..users import User
from .http1 import RequestHead
from .upstream import UpstreamConnection
from .watch import End, Watched


@dataclass(slots=True)
class Admission:
    """A request the lab proxy lets through: where it goes and how it is rewritten."""

    job_id: str
    user: User
    upstream_head: bytes  # the request head as the lab gets it
    acquire: Callable[[], Awaitable[tuple[UpstreamConnection, bool]]]
    take_idle: Callable[[], UpstreamConnection | None]
    release: Callable[[UpstreamConnection], None]
    # (status, reason, headers, chunked, length) -> the client's response head and framing
    response_head: Callable[..., tuple[bytes, str]]
    websocket: bool
    held: bool = False  # counted against the user's lab connections (FastPath.hold)


class FastPath(Protocol):
    """The lab proxy as the front sees it."""

    async def admit(self, head: RequestHead, remote: str | None) -> Admission | None: ...

    def admit_cached(self, head: RequestHead, remote: str | None) -> Admission | None:
        """:meth:`admit` from cached answers only; None: ask :meth:`admit`."""
        ...

    def touch(self, job_id: str) -> None: ...

    def unreachable(self, admission: Admission) -> None: ...

    def record(self, head: RequestHead, admission: Admission, status: int, sent: int,
               seconds: float, remote: str | None) -> None: ...

    def answer_unavailable(self) -> bytes: ...

    def answer_body_timeout(self) -> bytes: ...

    def hold(self, admission: Admission) -> bool:
        """Count the request against its user's lab connections until :meth:`unhold` (or,
        for a WebSocket, until its pipe closes); False, nothing counted, at the limit: the
        client gets :meth:`answer_too_many`."""
        ...

    def unhold(self, admission: Admission) -> None:
        """The request's answer is complete, or its client left (once per admission)."""
        ...

    def answer_too_many(self) -> bytes: ...

    def pipe_opened(self, admission: Admission, head: RequestHead, end: End) -> Watched: ...

    def pipe_closed(self, handle: Watched) -> None: ...

    def answer_streaming(self, admission: Admission, head: RequestHead, end: End) -> Watched:
        """An answer still streaming: ``end`` cuts it once it is no longer admitted, until
        :meth:`answer_ended`."""
        ...

    def answer_ended(self, handle: Watched) -> None: ...
