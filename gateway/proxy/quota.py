"""How many lab connections each user holds at once through the proxy (``[limits]``
``max_lab_connections``), on both of its paths: the fast path (:mod:`.front`) and aiohttp's
(:mod:`.labs`).

A connection is held while a request to a user's lab is being answered, and for as long as a
WebSocket to it stays open (a kernel, a terminal, the lab's event stream). Each one holds two of
the gateway's descriptors and some memory, so without a cap one user could take what every
other user's labs need. Over the cap a request gets 429 naming the limit; waiting helps, as
the user's own connections end.
"""

from __future__ import annotations

from ..errors import TooManyRequests

RETRY_AFTER = 1  # seconds: held connections are the user's own and end on their own


class LabConnections:
    """Per-user counts of held lab connections, against ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[int, int] = {}  # user id -> connections held now (absent: none)

    def take(self, user_id: int) -> bool:
        """Hold one more connection for ``user_id``; False (nothing held) at the limit."""
        held = self._held.get(user_id, 0)
        if held >= self.limit:
            return False
        self._held[user_id] = held + 1
        return True

    def give_back(self, user_id: int) -> None:
        """One connection of ``user_id``'s ended: call once per successful :meth:`take`."""
        held = self._held.get(user_id, 0) - 1
        if held > 0:
            self._held[user_id] = held
        else:
            self._held.pop(user_id, None)

    def held(self, user_id: int) -> int:
        return self._held.get(user_id, 0)

    def refusal(self) -> TooManyRequests:
        return TooManyRequests(
            f"at most {self.limit} connections to labs at once per user (requests being "
            "answered and open WebSockets); close some, such as unused notebook tabs",
            limit="max_lab_connections", value=self.limit, retry_after=RETRY_AFTER)
