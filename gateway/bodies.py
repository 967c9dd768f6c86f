"""Reading an HTTP answer's body whole but capped (a leaf module: the SSO client and the lab
proxy's probe both read small JSON answers from servers they do not control)."""

from __future__ import annotations

import aiohttp


async def read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first ``limit + 1`` bytes once it is longer than ``limit`` (the
    caller tells "too large" by the length). ``StreamReader.read(n)`` alone returns whatever
    has arrived so far, which for a body sent in pieces is not the whole of it."""
    chunks, size = [], 0
    while size <= limit and (chunk := await content.read(limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
