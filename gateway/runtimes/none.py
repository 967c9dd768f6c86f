"""The ``none`` runtime: the command runs in the host's own environment, as it is."""

from __future__ import annotations

from collections.abc import Sequence

from ..templates import Word


class HostRuntime:
    """No container: the argv to execute is the command's own argv, unchanged."""

    name = "none"

    def exec_argv(self, argv: Sequence[Word]) -> list[Word]:
        """``argv`` as a new list, word for word."""
        return list(argv)
