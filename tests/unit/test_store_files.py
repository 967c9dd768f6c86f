"""The store's files are the gateway's alone, whoever creates them, and hold no lab token."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COOKIE_SECRET

from gateway.store import MIGRATIONS, Store, loose_modes
from gateway.tokens import lab_token


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)  # what `hpcgw user add` ran under when the hole was found
    try:
        store = Store(tmp_path / "data" / "hpcgw.db")
        store.users.add_user("alice", "alice")  # a write, so the WAL and shared memory exist
    finally:
        os.umask(old)
    data = tmp_path / "data"
    assert _mode(data) == 0o700
    for name in ("hpcgw.db", "hpcgw.db-wal", "hpcgw.db-shm"):
        assert (data / name).exists() and _mode(data / name) == 0o600, name
    assert loose_modes(data) == []
    store.close()


def test_loose_modes_are_reported_then_tightened_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Store(data / "hpcgw.db").close()
    data.chmod(0o755)
    (data / "hpcgw.db").chmod(0o644)
    assert sorted(loose_modes(data)) == [f"{data} (755)", f"{data / 'hpcgw.db'} (644)"]
    Store(data / "hpcgw.db").close()
    assert loose_modes(data) == []
    assert _mode(data) == 0o700 and _mode(data / "hpcgw.db") == 0o600


def _write_config(path: Path, data: Path, cluster_lines: str = "", mode: int = 0o600) -> Path:
    """A minimal config (one cluster ``dev``, partition ``cpu``) at ``path`` with ``mode``."""
    path.write_text(
        f'[gateway]\ndata_dir = "{data}"\ncookie_secret = "{COOKIE_SECRET}"\n'
        f'[[clusters]]\nname = "dev"\ndefault_partition = "cpu"\n{cluster_lines}'
        '[clusters.partitions.cpu]\n')
    path.chmod(mode)
    return path


def _check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", "--config", str(config),
                           "check-config"], capture_output=True, text=True, timeout=60)


def test_check_config_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Store(data / "hpcgw.db").close()
    (data / "hpcgw.db").chmod(0o644)
    config = _write_config(tmp_path / "gateway.toml", data, mode=0o644)
    result = _check_config(config)
    assert result.returncode == 1
    assert f"{data / 'hpcgw.db'} (644) is readable by other users" in result.stdout
    assert f"config file {config} (644) is readable by other users" in result.stdout
    config.chmod(0o600)
    Store(data / "hpcgw.db").close()  # what the gateway does when it starts
    result = _check_config(config)
    assert "readable by other users" not in result.stdout, result.stdout


def test_check_config_names_an_unknown_transport(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "gateway.toml", tmp_path / "data",
                           'transport = "carrier-pigeon"\n')
    result = _check_config(config)
    assert result.returncode == 1
    assert "unknown transport 'carrier-pigeon' (installed: local, ssh" in result.stdout


def test_the_database_holds_nothing_that_opens_a_lab(tmp_path: Path) -> None:
    path = tmp_path / "hpcgw.db"
    store = Store(path)
    columns = {row[1] for row in store.db.execute("PRAGMA table_info(jobs)").fetchall()}
    assert "lab_token" not in columns
    store.close()
    # The token is derived from the config's secret: the job id alone gives nothing.
    assert lab_token(COOKIE_SECRET, "00112233aabbccdd") != lab_token("t" * 40, "00112233aabbccdd")


def test_upgrading_a_store_erases_the_stored_lab_tokens(tmp_path: Path) -> None:
    path = tmp_path / "hpcgw.db"
    old = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        old.executescript(script)
    old.execute("PRAGMA user_version = 2")
    old.execute("INSERT INTO users (name, unix_user, created_at) VALUES ('a', 'a', 'now')")
    old.execute("INSERT INTO jobs (id, user_id, unix_user, kind, name, cluster, state, spec, "
                "workdir, created_at, updated_at, lab_token) VALUES ('0011223344556677', 1, "
                "'a', 'lab', 'lab', 'dev', 'ready', '{}', '/w', 'now', 'now', 'secret-token')")
    old.commit()
    old.close()
    assert b"secret-token" in path.read_bytes()
    store = Store(path)
    assert store.get_job("0011223344556677")["state"] == "ready"
    store.close()
    with pytest.raises(sqlite3.OperationalError):
        sqlite3.connect(path).execute("SELECT lab_token FROM jobs")
    for name in ("hpcgw.db", "hpcgw.db-wal"):  # not in a free page or a WAL frame either
        file = tmp_path / name
        assert not file.exists() or b"secret-token" not in file.read_bytes(), name
