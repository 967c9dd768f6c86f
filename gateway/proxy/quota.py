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
from ..jobs.limits import PerUserCount

RETRY_AFTER = 1  # seconds: held connections are the user's own and end on their own


class LabConnections(PerUserCount):
    """Per-user counts of held lab connections, against ``limit`` each."""

    def refusal(self) -> TooManyRequests:
        return TooManyRequests(
            f"at most {self.limit} connections to labs at once per user (requests being "
            "answered and open WebSockets); close some, such as unused notebook tabs",
            limit="max_lab_connections", value=self.limit, retry_after=RETRY_AFTER)
