"""JSON that comes from where users write: a job's files on the cluster, the stager's answers,
a lab's server.

Python's parser raises RecursionError, not ValueError, for a document nested about a thousand
levels deep (``[[[[...``): a job that leaves such a file must get the answer a malformed one
gets, never a crashed collection. :func:`loads` is ``json.loads`` with that one difference.
"""

from __future__ import annotations

import json
from typing import Any


def loads(data: bytes | bytearray | str) -> Any:
    """``data`` parsed as JSON; ValueError for anything that is not JSON, nested too deeply
    for the parser included."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
