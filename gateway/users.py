"""Gateway users as the rest of the gateway sees them: who a request is from.

:class:`User` is a plain value: the store creates it, the API and the proxy pass it around,
and the job service checks ownership with it. A leaf module: it imports nothing of the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    id: int
    name: str
    unix_user: str
    admin: bool = False  # may see every user's jobs (``/api/v1/admin/...``)
