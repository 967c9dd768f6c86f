"""The store's files on disk: private to the gateway's account, whoever creates them."""

from __future__ import annotations

from pathlib import Path


def private_dir(path: Path) -> Path:
    """``path`` as a directory of the gateway's alone: created (with parents) mode 0700, or
    tightened to 0700 if it exists with looser modes."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def loose_modes(data_dir: Path) -> list[str]:
    """The store's files and directories (``data_dir``, the database, its WAL and shared
    memory, ``jobs/``) that other users could read or enter, as ``"path (mode)"``."""
    paths = [data_dir, data_dir / "jobs", *(data_dir / f"hpcgw.db{suffix}"
                                            for suffix in ("", "-wal", "-shm"))]
    return [f"{path} ({path.stat().st_mode & 0o777:o})" for path in paths
            if path.exists() and path.stat().st_mode & 0o077]
