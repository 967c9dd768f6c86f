"""Closing a connection that may still have bytes to send, without letting its peer keep it.

asyncio's ``close()`` sends what is buffered first and has no deadline: a peer that stops
reading (a client that never reads its answer, a lab that never reads its pipe's last bytes)
would keep the socket, and the bytes waiting for it, for as long as it likes. Here the
connection is aborted instead once what it still has to send stops shrinking for
``stalled_after`` seconds (nginx's ``send_timeout``); a slow reader that keeps reading is left
to finish.
"""

from __future__ import annotations

import asyncio


def close_unless_stalled(transport: asyncio.WriteTransport, stalled_after: float) -> None:
    """Close ``transport`` once its buffer is sent; abort it if sending stalls (also one that
    something else began to close, asyncio itself on an end of file, say)."""
    if not transport.is_closing():
        transport.close()
    left = transport.get_write_buffer_size()
    if left:
        asyncio.get_running_loop().call_later(stalled_after, _check, transport, stalled_after,
                                              left)


def _check(transport: asyncio.WriteTransport, stalled_after: float, before: int) -> None:
    left = transport.get_write_buffer_size()
    if not left:
        return  # all sent: asyncio closes it now
    if left >= before:
        transport.abort()
        return
    asyncio.get_running_loop().call_later(stalled_after, _check, transport, stalled_after, left)
