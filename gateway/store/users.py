"""Gateway users and their API tokens (tables ``users`` and ``tokens``).

Tokens are stored as SHA-256 hashes: they are 256-bit random strings, so a fast hash is enough
and lookups stay indexed. A *disabled* user's tokens stay in the table but authenticate nothing
(every lookup checks ``users.disabled_at``), so enabling the user again brings them back; a
revoked token is gone for good.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import sqlite_utils

from ..config import IDENTIFIER, UNIX_USER
from ..errors import BadRequest, Conflict, NotFound
from ..timestamps import format_timestamp, parse_timestamp, utcnow
from ..users import User
from .stamped import ChangeStamp, StampedCache

TOKEN_PREFIX = "hpcgw_"  # noqa: S105 - a recognisable prefix, not a secret
_USER_COLUMNS = "u.id, u.name, u.unix_user, u.is_admin"
_ENABLED = "u.disabled_at IS NULL"
MAX_SESSIONS = 100  # browser sessions one user has at once; a new one ends the oldest
# The f-string queries below only splice in these constants (noqa: S608 there).


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: Any) -> User:
    return User(int(row[0]), row[1], row[2], bool(row[3]))


class UserTable:
    """Users, their admin flag and enabled state, and their tokens."""

    def __init__(self, db: sqlite_utils.Database, stamp: ChangeStamp) -> None:
        self._db = db
        # What the lookups below answered, valid while the database is unchanged (every
        # request asks; see gateway.store.stamped): token hash or session id -> the answer.
        self._tokens: StampedCache[str, tuple[int, User]] = StampedCache(stamp)
        self._sessions: StampedCache[int, User] = StampedCache(stamp)

    def add_user(self, name: str, unix_user: str, *, admin: bool = False) -> User:
        """A new gateway user running jobs as ``unix_user``; Conflict if the name is taken."""
        if not IDENTIFIER.match(name):
            raise BadRequest(f"user name must match {IDENTIFIER.pattern}")
        if not UNIX_USER.match(unix_user):
            raise BadRequest(f"not a valid unix user name: {unix_user!r}")
        if self._db.table("users").count_where("name = ?", [name]):
            raise Conflict(f"user {name!r} already exists")
        row_id = self._db.table("users").insert({
            "name": name, "unix_user": unix_user, "is_admin": int(admin),
            "created_at": utcnow()}).last_pk
        assert row_id is not None
        return User(int(row_id), name, unix_user, admin)

    def get_user(self, name: str) -> User:
        """The user called ``name``, enabled or not; NotFound if there is none."""
        row = self._db.execute(
            f"SELECT {_USER_COLUMNS} FROM users u WHERE u.name = ?",  # noqa: S608 - constants
            [name]).fetchone()
        if row is None:
            raise NotFound(f"no user {name!r}")
        return _user(row)

    def subject_of(self, user: User) -> str | None:
        """The single sign-on identity ("issuer sub") ``user`` is bound to, if any."""
        row = self._db.execute("SELECT sso_subject FROM users WHERE id = ?",
                               [user.id]).fetchone()
        return row[0] if row else None

    def set_subject(self, name: str, subject: str | None) -> None:
        """Bind user ``name`` to ``subject`` (None: to none), whatever it was bound to."""
        user = self.get_user(name)
        self._db.execute("UPDATE users SET sso_subject = ? WHERE id = ?", [subject, user.id])

    def bind_subject(self, user: User, subject: str) -> bool:
        """Bind ``user`` to the single sign-on identity ``subject`` ("issuer sub") unless it
        is bound already; whether ``user`` is (now) bound to exactly that one."""
        self._db.execute("UPDATE users SET sso_subject = ? WHERE id = ? AND sso_subject IS NULL",
                         [subject, user.id])
        row = self._db.execute("SELECT sso_subject FROM users WHERE id = ?",
                               [user.id]).fetchone()
        return row is not None and row[0] == subject

    def unix_user_taken(self, unix_user: str) -> bool:
        """Whether some gateway user already runs jobs as ``unix_user``."""
        return bool(self._db.table("users").count_where("unix_user = ?", [unix_user]))

    def is_disabled(self, user: User) -> bool:
        row = self._db.execute("SELECT disabled_at FROM users WHERE id = ?", [user.id]).fetchone()
        return row is None or row[0] is not None

    def set_user(self, name: str, *, admin: bool | None = None,
                 disabled: bool | None = None) -> User:
        """Change ``name``'s admin flag and/or enabled state (None: leave it); the user as it
        is now. Disabling stops the user's tokens and sessions at their next request (the
        lookups below check it); the caller stops the user's labs."""
        user = self.get_user(name)
        if admin is not None:
            self._db.execute("UPDATE users SET is_admin = ? WHERE id = ?", [int(admin), user.id])
        if disabled is True:
            self._db.execute("UPDATE users SET disabled_at = ? WHERE id = ? "
                             "AND disabled_at IS NULL", [utcnow(), user.id])
        elif disabled is False:
            self._db.execute("UPDATE users SET disabled_at = NULL WHERE id = ?", [user.id])
        return self.get_user(name)

    def list_users(self) -> list[dict[str, Any]]:
        """Every user with ``admin``, ``disabled_at`` and the count of unrevoked tokens."""
        return [{**row, "admin": bool(row["admin"])} for row in self._db.query(
            "SELECT u.name, u.unix_user, u.is_admin AS admin, u.disabled_at, u.created_at, "
            "COUNT(t.id) AS active_tokens FROM users u "
            "LEFT JOIN tokens t ON t.user_id = u.id AND t.revoked_at IS NULL "
            "AND t.session_expires_at IS NULL "
            "GROUP BY u.id ORDER BY u.name"
        )]

    def names(self) -> dict[int, str]:
        """Every user's name by id."""
        return dict(self._db.execute("SELECT id, name FROM users").fetchall())

    def account_counts(self) -> tuple[int, int, int]:
        """(enabled users, their API tokens not revoked, their browser sessions not ended nor
        expired)."""
        live = f"t.revoked_at IS NULL AND {_ENABLED}"
        users, tokens, sessions = self._db.execute(
            f"SELECT (SELECT COUNT(*) FROM users u WHERE {_ENABLED}), "  # noqa: S608
            f"(SELECT COUNT(*) FROM tokens t JOIN users u ON u.id = t.user_id "
            f"WHERE {live} AND t.session_expires_at IS NULL), "
            f"(SELECT COUNT(*) FROM tokens t JOIN users u ON u.id = t.user_id "
            f"LEFT JOIN tokens p ON p.id = t.parent_id "
            f"WHERE {live} AND t.session_expires_at > ? AND p.revoked_at IS NULL)",
            [utcnow()]).fetchone()
        return int(users), int(tokens), int(sessions)

    def issue_token(self, user: User) -> str:
        """A new random token for ``user``; only its hash is stored, so show it once."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._db.table("tokens").insert(
            {"user_id": user.id, "token_hash": hash_token(token), "created_at": utcnow()})
        return token

    def start_session(self, user: User, lifetime_s: float, parent_id: int | None = None) -> int:
        """A browser session for ``user``: a token no one is shown (only its hash is kept),
        valid for ``lifetime_s`` seconds and until :meth:`end_session`, and no longer than
        the API token ``parent_id`` when it was made by logging in with one; its id, which
        the session cookie names. The user's oldest sessions past :data:`MAX_SESSIONS` end,
        and ended or expired ones are deleted, so logins do not grow the table."""
        now = utcnow()
        # Never the newest row: SQLite gives a new row the largest id + 1, and an id used
        # again would let an old session cookie (it names the id) in as someone else.
        self._db.execute("DELETE FROM tokens WHERE session_expires_at IS NOT NULL "
                         "AND (session_expires_at <= ? OR revoked_at IS NOT NULL) "
                         "AND id < (SELECT MAX(id) FROM tokens)", [now])
        row_id = self._db.table("tokens").insert({
            "user_id": user.id, "token_hash": hash_token(secrets.token_urlsafe(32)),
            "created_at": now, "parent_id": parent_id,
            "session_expires_at": format_timestamp(time.time() + lifetime_s)}).last_pk
        assert row_id is not None
        self._db.execute(  # the oldest of a user's sessions past the cap end
            "UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL "
            "AND session_expires_at IS NOT NULL AND id NOT IN (SELECT id FROM tokens "
            "WHERE user_id = ? AND revoked_at IS NULL AND session_expires_at IS NOT NULL "
            "ORDER BY id DESC LIMIT ?)", [now, user.id, user.id, MAX_SESSIONS])
        return int(row_id)

    def end_session(self, token_id: int) -> bool:
        """Revoke session ``token_id`` (an API token is left alone); whether one ended."""
        cursor = self._db.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL "
            "AND session_expires_at IS NOT NULL", [utcnow(), token_id])
        return cursor.rowcount == 1

    def revoke_tokens(self, user: User) -> int:
        cursor = self._db.execute(
            "UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
            [utcnow(), user.id])
        return cursor.rowcount

    def revoke_token(self, token: str) -> bool:
        cursor = self._db.execute(
            "UPDATE tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
            [utcnow(), hash_token(token)])
        return cursor.rowcount == 1

    def user_for_token(self, token: str) -> User | None:
        found = self.authenticate(token)
        return found[1] if found else None

    def authenticate(self, token: str) -> tuple[int, User] | None:
        """``(token id, user)`` for a valid API token (known, unrevoked, its user enabled;
        never a session's)."""
        token_hash = hash_token(token)

        def load() -> tuple[tuple[int, User], None] | None:
            row = self._db.execute(
                f"SELECT t.id, {_USER_COLUMNS} FROM tokens t JOIN users u "  # noqa: S608
                f"ON u.id = t.user_id "
                f"WHERE t.token_hash = ? AND t.revoked_at IS NULL AND {_ENABLED} "
                f"AND t.session_expires_at IS NULL",
                [token_hash]).fetchone()
            return ((int(row[0]), _user(row[1:])), None) if row else None

        return self._tokens.lookup(token_hash, load, time.time())

    def user_for_token_id(self, token_id: int) -> User | None:
        """The user of browser session ``token_id`` (:meth:`start_session`), while it is not
        ended nor expired, the API token it was made from (if any) is not revoked, and the
        user is enabled. An API token's own id names no session."""
        now = time.time()

        def load() -> tuple[User, float | None] | None:
            row = self._db.execute(
                f"SELECT {_USER_COLUMNS}, t.session_expires_at FROM tokens t "  # noqa: S608
                f"JOIN users u ON u.id = t.user_id LEFT JOIN tokens p ON p.id = t.parent_id "
                f"WHERE t.id = ? AND t.revoked_at IS NULL AND {_ENABLED} "
                f"AND t.session_expires_at > ? AND p.revoked_at IS NULL",
                [token_id, format_timestamp(now)]).fetchone()
            if row is None:
                return None
            expires = parse_timestamp(row[4]).timestamp() if row[4] else None
            return _user(row[:4]), expires

        return self._sessions.lookup(token_id, load, now)
