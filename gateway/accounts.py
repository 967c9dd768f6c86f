"""Accounts: the only way the API reaches users and tokens.

It answers "who holds this token", and for single sign-on finds (or, where the config allows,
creates) the user a provider named and starts and ends their sessions, so the store stays out
of the request handlers. Adding, listing and revoking users and tokens otherwise is the admin
CLI's (``hpcgw user|token``), which opens the store itself.
"""

from __future__ import annotations

from .errors import NotFound
from .store import Store
from .users import User


class Accounts:
    """Token lookups for authentication, over the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def counts(self) -> tuple[int, int, int]:
        """(enabled users, API tokens not revoked, live single sign-on sessions), for the
        metrics."""
        return self._store.users.account_counts()

    def user_for_token(self, token: str) -> User | None:
        """The user of a valid (known, unrevoked) API token, else None."""
        return self._store.users.user_for_token(token)

    def authenticate(self, token: str) -> tuple[int, User] | None:
        """``(token id, user)`` for a valid token (a browser session keeps the id), else None."""
        return self._store.users.authenticate(token)

    def user_for_token_id(self, token_id: int) -> User | None:
        """The user of a browser session, while it lasts (:meth:`start_session`)."""
        return self._store.users.user_for_token_id(token_id)

    def user_named(self, name: str) -> User | None:
        """The user called ``name`` if there is one and it is enabled, else None."""
        try:
            user = self._store.users.get_user(name)
        except NotFound:
            return None
        return None if self._store.users.is_disabled(user) else user

    def exists(self, name: str) -> bool:
        try:
            self._store.users.get_user(name)
        except NotFound:
            return False
        return True

    def create_user(self, name: str, unix_user: str) -> User | None:
        """A new (not admin) user, for single sign-on's ``create_users``; None (nothing made)
        when ``unix_user`` is root or already runs another gateway user's jobs."""
        if unix_user == "root" or self._store.users.unix_user_taken(unix_user):
            return None
        return self._store.users.add_user(name, unix_user)

    def signs_on_as(self, user: User, subject: str) -> bool:
        """Whether single sign-on identity ``subject`` ("issuer sub") may log in as ``user``:
        the identity the user is bound to. A user bound to none is bound to it now (its first
        SSO login), except an admin: a stranger who holds the admin's name at the provider
        must not become the admin, so the operator binds an admin's identity
        (``hpcgw user set NAME --sso-subject``)."""
        if user.admin and self._store.users.subject_of(user) is None:
            return False
        return self._store.users.bind_subject(user, subject)

    def start_session(self, user: User, lifetime_s: float, parent_id: int | None = None) -> int:
        """A browser session's token id, for single sign-on or a login with the API token
        ``parent_id`` (see :meth:`UserTable.start_session`)."""
        return self._store.users.start_session(user, lifetime_s, parent_id)

    def end_session(self, token_id: int) -> bool:
        """End a browser session (logout); the API token it was made from stays the user's."""
        return self._store.users.end_session(token_id)
