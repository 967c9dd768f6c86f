"""The store's files on disk: private to the gateway's account, whoever creates them."""

from __future__ import annotations

import os
from pathlib import Path

DB_SUFFIXES = ("", "-wal", "-shm")  # the database and the files SQLite keeps beside it


def private_dir(path: Path) -> Path:
    """``path`` as a directory of the gateway's alone: created (with parents) mode 0700, or
    tightened to 0700 if it exists with looser modes."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def private_database(path: Path) -> Path:
    """``path`` (a SQLite database) and its directory made the gateway's alone before SQLite
    opens it: the directory as :func:`private_dir`, the file created 0600 if missing (SQLite
    gives its ``-wal`` and ``-shm`` files the database's mode), and any of the three found
    with looser modes tightened to 0600."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for suffix in DB_SUFFIXES:
        sibling = path.with_name(path.name + suffix)
        if sibling.exists() and sibling.stat().st_mode & 0o077:
            sibling.chmod(0o600)
    return path


def loose_modes(data_dir: Path) -> list[str]:
    """The store's files and directories (``data_dir``, the database, its WAL and shared
    memory, ``jobs/``) that other users could read or enter, as ``"path (mode)"``."""
    paths = [data_dir, data_dir / "jobs",
             *(data_dir / f"hpcgw.db{suffix}" for suffix in DB_SUFFIXES)]
    return [f"{path} ({path.stat().st_mode & 0o777:o})" for path in paths
            if path.exists() and path.stat().st_mode & 0o077]
