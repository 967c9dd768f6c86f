"""The SQLite store: users and hashed tokens, jobs, events, idempotency, schema version."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import Conflict, NotFound
from gateway.states import IllegalTransition, Reason, State
from gateway.store import MIGRATIONS, TOKEN_PREFIX, Store, User, hash_token
from tests.factories import add_job


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "hpcgw.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    store = Store(db_path)
    yield store
    store.close()


def new_job(store: Store, user: User, job_id: str, key: str | None = None) -> dict[str, Any]:
    return add_job(store, user, job_id, workdir=f"/w/{job_id}", idempotency_key=key)


# -- users and tokens ------------------------------------------------------------------------------


def test_user_and_token_round_trip(store: Store) -> None:
    alice = store.users.add_user("alice", "alice_unix")
    assert alice == User(alice.id, "alice", "alice_unix")
    token = store.users.issue_token(alice)
    assert token.startswith(TOKEN_PREFIX) and len(token) > len(TOKEN_PREFIX) + 40
    assert store.users.user_for_token(token) == alice
    assert store.users.get_user("alice") == alice
    assert store.users.user_for_token(token + "x") is None
    assert store.users.user_for_token("") is None


def test_tokens_are_unique_and_per_user(store: Store) -> None:
    # the same unix user is fine
    alice, bob = store.users.add_user("alice", "u1"), store.users.add_user("bob", "u1")
    tokens = {store.users.issue_token(alice) for _ in range(3)} | {store.users.issue_token(bob)}
    assert len(tokens) == 4
    assert {store.users.user_for_token(t) for t in tokens} == {alice, bob}


def test_duplicate_user_is_a_conflict(store: Store) -> None:
    store.users.add_user("alice", "alice")
    with pytest.raises(Conflict):
        store.users.add_user("alice", "other")
    with pytest.raises(NotFound):
        store.users.get_user("nobody")


def test_tokens_are_stored_hashed(store: Store, db_path: Path) -> None:
    alice = store.users.add_user("alice", "alice")
    token = store.users.issue_token(alice)
    hashes = [row["token_hash"] for row in store.db["tokens"].rows]
    assert hashes == [hash_token(token)]

    def assert_plaintext_nowhere() -> None:
        # Neither the database file nor its WAL holds the plaintext token.
        files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
        assert db_path in files
        seen = b"".join(path.read_bytes() for path in files)
        assert hash_token(token).encode() in seen  # the files do hold the token's row
        assert token.removeprefix(TOKEN_PREFIX).encode() not in seen

    assert_plaintext_nowhere()  # while open (the row may still be in the WAL)
    store.close()
    assert_plaintext_nowhere()  # after the checkpoint on close
    reopened = Store(db_path)
    assert reopened.users.user_for_token(token) == alice
    reopened.close()


def test_revoke_one_token(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    first, second = store.users.issue_token(alice), store.users.issue_token(alice)
    assert store.users.revoke_token(first) is True
    assert store.users.revoke_token(first) is False  # already revoked
    assert store.users.user_for_token(first) is None
    assert store.users.user_for_token(second) == alice


def test_revoke_all_tokens_of_a_user(store: Store) -> None:
    alice, bob = store.users.add_user("alice", "alice"), store.users.add_user("bob", "bob")
    alice_tokens = [store.users.issue_token(alice) for _ in range(2)]
    bob_token = store.users.issue_token(bob)
    assert store.users.revoke_tokens(alice) == 2
    assert all(store.users.user_for_token(t) is None for t in alice_tokens)
    assert store.users.user_for_token(bob_token) == bob
    listed = {u["name"]: u["active_tokens"] for u in store.users.list_users()}
    assert listed == {"alice": 0, "bob": 1}


# -- jobs and transitions --------------------------------------------------------------------------


def test_new_job_is_accepted_with_one_event(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    job = new_job(store, alice, "a" * 16)
    assert job["state"] == "accepted"
    assert job["created_at"] and job["ended_at"] is None
    events = store.events(job["id"])
    assert [(e["from_state"], e["to_state"]) for e in events] == [(None, "accepted")]


def test_transitions_write_events_and_fields(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    job_id = new_job(store, alice, "b" * 16)["id"]
    store.transition(job_id, State.STAGING)
    store.transition(job_id, State.PENDING, slurm_job_id="42")
    store.update_job(job_id, pending_reason="Priority")
    running = store.transition(job_id, State.RUNNING, node="vm")
    assert running["started_at"] and running["node"] == "vm"
    assert running["pending_reason"] is None
    store.transition(job_id, State.COLLECTING)
    done = store.transition(job_id, State.SUCCEEDED, reason=Reason.COMPLETED, message="fine")
    assert (done["state"], done["reason"], done["message"]) == ("succeeded", "completed", "fine")
    assert done["ended_at"] is not None and done["slurm_job_id"] == "42"
    events = store.events(job_id)
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        (None, "accepted"), ("accepted", "staging"), ("staging", "pending"),
        ("pending", "running"), ("running", "collecting"), ("collecting", "succeeded")]
    assert events[-1]["reason"] == "completed" and events[-1]["message"] == "fine"
    assert all(e["at"] for e in events)


def test_illegal_transition_changes_nothing(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    job_id = new_job(store, alice, "c" * 16)["id"]
    with pytest.raises(IllegalTransition):
        store.transition(job_id, State.RUNNING, node="evil")
    job = store.get_job(job_id)
    assert job["state"] == "accepted" and job["node"] is None
    assert len(store.events(job_id)) == 1


@pytest.mark.parametrize("terminal", [State.CANCELLED, State.FAILED])
def test_terminal_states_are_sticky(store: Store, terminal: State) -> None:
    alice = store.users.add_user("alice", "alice")
    job_id = new_job(store, alice, "d" * 16)["id"]
    store.transition(job_id, terminal, reason=Reason.USER_CANCELLED)
    for target in State:
        with pytest.raises(IllegalTransition):
            store.transition(job_id, target)
    assert store.get_job(job_id)["state"] == terminal.value
    assert len(store.events(job_id)) == 2


def test_another_users_job_is_not_found(store: Store) -> None:
    alice, bob = store.users.add_user("alice", "alice"), store.users.add_user("bob", "bob")
    job_id = new_job(store, alice, "e" * 16)["id"]
    assert store.get_job(job_id, alice.id)["id"] == job_id
    with pytest.raises(NotFound) as other:
        store.get_job(job_id, bob.id)
    with pytest.raises(NotFound) as missing:
        store.get_job("f" * 16, bob.id)
    assert type(other.value) is type(missing.value)
    assert store.list_jobs(bob.id) == []


def test_list_jobs_newest_first(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    ids = [new_job(store, alice, f"{n:016x}")["id"] for n in range(5)]
    assert [j["id"] for j in store.list_jobs(alice.id)] == ids[::-1]


def test_jobs_in(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    first, second = new_job(store, alice, "1" * 16)["id"], new_job(store, alice, "2" * 16)["id"]
    store.transition(second, State.STAGING)
    assert [j["id"] for j in store.jobs_in({State.ACCEPTED})] == [first]
    assert [j["id"] for j in store.jobs_in({State.ACCEPTED, State.STAGING})] == [first, second]


def test_update_many_in_one_go(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    a, b = new_job(store, alice, "3" * 16)["id"], new_job(store, alice, "4" * 16)["id"]
    store.update_many({a: {"scheduler_reachable": 0}, b: {"pending_reason": "Resources"}})
    assert store.get_job(a)["scheduler_reachable"] == 0
    assert store.get_job(b)["pending_reason"] == "Resources"


# -- idempotency -----------------------------------------------------------------------------------


def test_idempotency_key_is_unique_per_user(store: Store) -> None:
    alice, bob = store.users.add_user("alice", "alice"), store.users.add_user("bob", "bob")
    new_job(store, alice, "5" * 16, key="k1")
    with pytest.raises(Conflict):
        new_job(store, alice, "6" * 16, key="k1")
    assert (store.job_by_idempotency_key(alice.id, "k1") or {}).get("id") == "5" * 16
    # The same key from another user is another job.
    new_job(store, bob, "7" * 16, key="k1")
    assert (store.job_by_idempotency_key(bob.id, "k1") or {}).get("id") == "7" * 16
    assert store.job_by_idempotency_key(alice.id, "k2") is None
    # No key at all never conflicts.
    new_job(store, alice, "8" * 16)
    new_job(store, alice, "9" * 16)
    assert len(store.list_jobs(alice.id)) == 3
    # The refused insert left no half-written job or event behind.
    with pytest.raises(NotFound):
        store.get_job("6" * 16)
    assert store.events("6" * 16) == []


# -- persistence -----------------------------------------------------------------------------------


def test_reopening_keeps_data_and_schema_version(db_path: Path) -> None:
    store = Store(db_path)
    alice = store.users.add_user("alice", "alice")
    token = store.users.issue_token(alice)
    job_id = new_job(store, alice, "a1" * 8, key="k")["id"]
    store.transition(job_id, State.STAGING)
    store.close()

    again = Store(db_path)
    try:
        version = again.db.execute("PRAGMA user_version").fetchone()[0]
        assert version == len(MIGRATIONS)
        assert again.users.user_for_token(token) == alice
        assert again.get_job(job_id)["state"] == "staging"
        assert len(again.events(job_id)) == 2
        assert (again.job_by_idempotency_key(alice.id, "k") or {}).get("id") == job_id
    finally:
        again.close()
    with closing(sqlite3.connect(db_path)) as plain:
        assert plain.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("INSERT INTO tokens (user_id, token_hash, created_at) "
                         "VALUES (999, 'x', 'now')")
