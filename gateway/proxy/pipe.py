"""An upgraded lab connection (a WebSocket the lab accepted): bytes both ways, as they come.

:class:`.front.FrontProtocol` hands both ends over once the lab's ``101`` went to the client:
the client's transport gets this pipe as its protocol, the lab's connection reports to it
(:meth:`.upstream.UpstreamConnection.pipe_to`). Frames are not read, only followed
(:class:`.wsframes.FrameTracker`), so that a side that drops without a close frame leaves the
other side one (1011), and a pipe the lab proxy no longer admits (token revoked, lab ended:
:mod:`.watch`) ends with 1008 to the client, 1001 when the gateway stops. Flow control both ways:
a side that cannot take more pauses reading the other.
"""

from __future__ import annotations

import asyncio

from .admission import Admission, FastPath
from .closing import close_unless_stalled
from .http1 import RequestHead
from .upstream import UpstreamConnection
from .watch import Watched
from .wsframes import ABNORMAL, GOING_AWAY, FrameTracker, close_frame


class WebSocketPipe(asyncio.Protocol):
    """The client's side of a pipe is this protocol; the lab's side is ``upstream``."""

    def __init__(self, client: asyncio.Transport, upstream: UpstreamConnection,
                 labs: FastPath, admission: Admission, head: RequestHead,
                 stalled_after: float) -> None:
        self._client: asyncio.Transport | None = client
        self._upstream: UpstreamConnection | None = upstream
        self._labs, self._job_id = labs, admission.job_id
        self._stalled_after = stalled_after  # a side that stops reading our last bytes
        self._up_frames = FrameTracker()  # client -> lab
        self._down_frames = FrameTracker()  # lab -> client
        self._handle: Watched | None = labs.pipe_opened(admission, head, self.end)
        self._open = 2  # of the two connections, those not gone yet (both count as held)

    def start(self, from_lab: bytes, from_client: bytes) -> None:
        """Relay what each side sent right after the handshake, before the pipe existed."""
        if from_lab:
            self.upstream_data(from_lab)
        if from_client:
            self.data_received(from_client)

    # -- the client's side (asyncio.Protocol) -------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._upstream is not None:
            self._up_frames.feed(data)
            self._upstream.send(data)
            self._labs.touch(self._job_id)

    def eof_received(self) -> bool | None:
        self._client_left()
        self._close_client()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._client = None
        self._client_left()
        self._gone()

    def pause_writing(self) -> None:
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.resume_reading()

    # -- the lab's side (upstream.PipePeer) ---------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        self._down_frames.feed(data)
        if self._client is not None and not self._client.is_closing():
            self._client.write(data)
        self._labs.touch(self._job_id)

    def upstream_lost(self, exc: Exception | None) -> None:
        """The lab's side ended: the client gets a close frame if the lab sent none (and one
        fits between frames), then the end of the connection."""
        self._upstream = None
        self._gone()
        if self._down_frames.at_boundary and not self._down_frames.closed:
            self._write_client(close_frame(masked=False))
        self._close_client()

    def upstream_eof(self) -> None:
        """The lab shut its sending side: the client gets a close frame if the lab sent none
        (and one fits), then the end; the lab's connection is finished (what it still has to
        read goes out, unless it stalls)."""
        if self._down_frames.at_boundary and not self._down_frames.closed:
            self._write_client(close_frame(masked=False))
        self._close_client()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.finish(self._gone, self._stalled_after)

    def upstream_paused(self, paused: bool) -> None:
        """The lab's connection has too much to send: the client is not read until it
        drains."""
        if self._client is None:
            return
        if paused:
            self._client.pause_reading()
        elif not self._client.is_reading():
            self._client.resume_reading()

    # -- endings ------------------------------------------------------------------------------

    def end(self, code: int) -> None:
        """End the pipe: ``code`` 1008 (policy) when it is no longer admitted (the lab is told
        1011, as for a client that dropped), 1001 (going away) to both sides when the gateway
        stops. Each side gets its close frame where one fits, then the end of its
        connection."""
        if self._down_frames.at_boundary and not self._down_frames.closed:
            self._write_client(close_frame(masked=False, code=code))
        self._client_left(GOING_AWAY if code == GOING_AWAY else ABNORMAL)
        self._close_client()

    def _client_left(self, code: int = ABNORMAL) -> None:
        """The client's side ended: the lab gets a close frame saying ``code`` if the client
        sent none (and one fits between frames), then the end of the connection."""
        upstream, self._upstream = self._upstream, None
        if upstream is None:
            return
        if self._up_frames.at_boundary and not self._up_frames.closed:
            upstream.send(close_frame(masked=True, code=code))
        upstream.finish(self._gone, self._stalled_after)

    def _gone(self) -> None:
        """One of the two connections has ended. The pipe is watched, and held against its
        user's lab connections, until both have: a side that does not read its last bytes
        keeps counting until it is cut off (:mod:`.closing`)."""
        self._open -= 1
        if self._open == 0 and self._handle is not None:
            handle, self._handle = self._handle, None
            self._labs.pipe_closed(handle)

    def _write_client(self, data: bytes) -> None:
        if self._client is not None and not self._client.is_closing():
            self._client.write(data)

    def _close_client(self) -> None:
        if self._client is not None:
            close_unless_stalled(self._client, self._stalled_after)
