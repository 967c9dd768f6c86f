"""Accounts: the only way the API reaches users and tokens.

It answers "who holds this token" and nothing else, so the store stays out of the request
handlers. Adding, listing and revoking users and tokens is the admin CLI's
(``hpcgw user|token``), which opens the store itself.
"""

from __future__ import annotations

from .store import Store
from .users import User


class Accounts:
    """Token lookups for authentication, over the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def counts(self) -> tuple[int, int]:
        """(users, tokens not revoked), for the metrics."""
        return self._store.users.account_counts()

    def user_for_token(self, token: str) -> User | None:
        """The user of a valid (known, unrevoked) API token, else None."""
        return self._store.users.user_for_token(token)

    def authenticate(self, token: str) -> tuple[int, User] | None:
        """``(token id, user)`` for a valid token (a browser session keeps the id), else None."""
        return self._store.users.authenticate(token)

    def user_for_token_id(self, token_id: int) -> User | None:
        """The user of a browser session's token, while that token is not revoked."""
        return self._store.users.user_for_token_id(token_id)
