"""Rows of users' storage servers (table ``storage``); the sealing is gateway.staging's."""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlite_utils

from ..errors import Conflict, NotFound
from ..timestamps import utcnow

COLUMNS = ("name", "host", "port", "username", "host_key", "public_key", "created_at")


class StorageTable:
    """One user's storage servers, by name; another user's answer as missing ones do."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self._db = db

    def add(self, user_id: int, row: dict[str, Any]) -> dict[str, Any]:
        """Store ``row`` (the table's columns but id, user_id, created_at) for ``user_id``;
        :class:`Conflict` if the user already has a storage server of that name."""
        try:
            self._db.table("storage").insert(
                {**row, "user_id": user_id, "created_at": utcnow()})
        except sqlite3.IntegrityError:
            raise self.taken(row["name"]) from None
        return self.get(user_id, row["name"])

    @staticmethod
    def taken(name: str) -> Conflict:
        """The 409 for a storage server name the user already has."""
        return Conflict(f"you already have a storage server named {name!r}", name=name)

    def has(self, user_id: int, name: str) -> bool:
        """Whether ``user_id`` has a storage server ``name`` (the unique index's lookup)."""
        return self._db.execute("SELECT 1 FROM storage WHERE user_id = ? AND name = ?",
                                [user_id, name]).fetchone() is not None

    def count(self, user_id: int) -> int:
        """How many storage servers ``user_id`` has."""
        return int(self._db.execute("SELECT COUNT(*) FROM storage WHERE user_id = ?",
                                    [user_id]).fetchone()[0])

    def get(self, user_id: int, name: str, *, sealed: bool = False) -> dict[str, Any]:
        """``user_id``'s storage server ``name`` (with ``sealed_key`` if asked); NotFound."""
        columns = [*COLUMNS, "sealed_key"] if sealed else list(COLUMNS)
        row = self._db.execute(
            f"SELECT {', '.join(columns)} FROM storage "  # noqa: S608 - constant names
            "WHERE user_id = ? AND name = ?", [user_id, name]).fetchone()
        if row is None:
            raise NotFound(f"no storage server {name!r}", name=name)
        return dict(zip(columns, row, strict=True))

    def list(self, user_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM storage "  # noqa: S608 - constant names
            "WHERE user_id = ? ORDER BY name", [user_id]).fetchall()
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]

    def remove(self, user_id: int, name: str) -> None:
        """Forget ``user_id``'s storage server ``name``; NotFound if there is none."""
        cursor = self._db.execute(
            "DELETE FROM storage WHERE user_id = ? AND name = ?", [user_id, name])
        if cursor.rowcount != 1:
            raise NotFound(f"no storage server {name!r}", name=name)
