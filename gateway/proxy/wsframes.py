"""Where WebSocket frames begin in a relayed byte stream (RFC 6455 §5.2), without reading them.

The fast path relays an upgraded connection as bytes. When one side drops its connection
without a close frame, the other side should still get a close frame, as the frame relay gave
it (code 1011: the peer went away abnormally); that is only possible at a frame boundary, so a
:class:`FrameTracker` follows each direction's frame headers and skips their payloads.
"""

from __future__ import annotations

import os
import struct

CLOSE_OPCODE = 0x8
ABNORMAL = 1011  # what the gateway says for a side that dropped without a close frame
POLICY_VIOLATION = 1008  # the gateway ended a pipe its credential or lab no longer allows
GOING_AWAY = 1001  # the gateway stops


class FrameTracker:
    """Follows one direction of a WebSocket: are we between frames, was a close frame sent."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._payload_left = 0
        self.closed = False  # a close frame went through

    @property
    def at_boundary(self) -> bool:
        return not self._header and self._payload_left == 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._payload_left:
                step = min(self._payload_left, end - pos)
                self._payload_left -= step
                pos += step
                continue
            need = _header_size(self._header) or 2
            take = min(need - len(self._header), end - pos)
            self._header += data[pos:pos + take]
            pos += take
            size = _header_size(self._header)
            if size is None or len(self._header) < size:
                continue
            opcode, self._payload_left = _parse(bytes(self._header))
            self.closed = self.closed or opcode == CLOSE_OPCODE
            self._header.clear()


def _header_size(header: bytes | bytearray) -> int | None:
    if len(header) < 2:
        return None
    size = 2 + (4 if header[1] & 0x80 else 0)
    code = header[1] & 0x7F
    return size + (2 if code == 126 else 8 if code == 127 else 0)


def _parse(header: bytes) -> tuple[int, int]:
    code = header[1] & 0x7F
    if code == 126:
        length = struct.unpack(">H", header[2:4])[0]
    elif code == 127:
        length = struct.unpack(">Q", header[2:10])[0]
    else:
        length = code
    return header[0] & 0x0F, length


def close_frame(*, masked: bool, code: int = ABNORMAL) -> bytes:
    """A close frame with ``code``; masked as a client's frames must be (to the lab)."""
    payload = struct.pack(">H", code)
    if not masked:
        return bytes([0x80 | CLOSE_OPCODE, len(payload)]) + payload
    mask = os.urandom(4)
    return bytes([0x80 | CLOSE_OPCODE, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))
