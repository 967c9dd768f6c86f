"""The store's answers to "whose token is this" and "where is this lab" are cached (every lab
request asks), but a change must reach the very next lookup: one made by this process, and one
made by another process (the admin CLI) through its own connection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from gateway.store import Store
from gateway.store.stamped import StampedCache


@pytest.fixture
def other(tmp_path: Path, store: Store) -> Iterator[Store]:
    """A second store on the same file: another process's connection, as the CLI's."""
    second = Store(tmp_path / "hpcgw.db")
    yield second
    second.close()


def test_a_second_lookup_is_answered_from_the_cache(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    token = store.users.issue_token(alice)
    assert store.users.user_for_token(token) == alice
    with mock.patch.object(store.users, "_db") as db:
        assert store.users.user_for_token(token) == alice
    db.execute.assert_not_called()


def test_revoking_in_this_process_stops_the_next_lookup(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    token = store.users.issue_token(alice)
    assert store.users.user_for_token(token) == alice
    assert store.users.revoke_token(token)
    assert store.users.user_for_token(token) is None


def test_disabling_from_another_connection_stops_the_next_lookup(
        store: Store, other: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    token = store.users.issue_token(alice)
    session = store.users.start_session(alice, 3600)
    assert store.users.user_for_token(token) == alice
    assert store.users.user_for_token_id(session) == alice
    other.users.set_user("alice", disabled=True)
    assert store.users.user_for_token(token) is None
    assert store.users.user_for_token_id(session) is None
    other.users.set_user("alice", disabled=False)
    assert store.users.user_for_token(token) == alice


def test_a_cached_session_still_expires_on_time(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    session = store.users.start_session(alice, 60)
    assert store.users.user_for_token_id(session) == alice
    with mock.patch("gateway.store.users.time.time", return_value=10**11):
        assert store.users.user_for_token_id(session) is None


def test_unknown_keys_are_not_kept(store: Store) -> None:
    cache: StampedCache[str, int] = store.stamped_cache()
    loads = []
    for _ in range(3):
        assert cache.lookup("guess", lambda: loads.append(1), 0.0) is None
    assert len(loads) == 3


async def test_an_answer_read_across_a_write_is_not_kept(store: Store) -> None:
    """A loader that awaits (the lab route opens a port forward) while the store changes
    must not leave its possibly stale answer behind."""
    cache: StampedCache[str, str] = store.stamped_cache()

    async def load_while_writing() -> str:
        store.users.add_user("bob", "bob")
        return "stale"

    assert await cache.lookup_async("lab", load_while_writing) == "stale"

    async def load_fresh() -> str:
        return "fresh"

    assert await cache.lookup_async("lab", load_fresh) == "fresh"
    assert await cache.lookup_async("lab", load_while_writing) == "fresh"


def test_a_full_cache_starts_over(store: Store) -> None:
    cache: StampedCache[int, int] = store.stamped_cache(max_entries=2)
    for key in range(3):
        cache.lookup(key, lambda key=key: (key, None), 0.0)  # type: ignore[misc]
    assert len(cache._entries) == 1


async def test_in_a_running_gateway_another_process_is_seen_from_the_next_turn(
        store: Store, other: Store) -> None:
    """With an event loop, other processes' commits are looked for once per turn of it (every
    request of one turn sees the same database); this process's own writes at once."""
    alice = store.users.add_user("alice", "alice")
    token = store.users.issue_token(alice)
    assert store.users.user_for_token(token) == alice
    other.users.set_user("alice", disabled=True)
    await asyncio.sleep(0)  # the next turn of the loop: the next request
    assert store.users.user_for_token(token) is None
    other.users.set_user("alice", disabled=False)
    await asyncio.sleep(0)
    assert store.users.user_for_token(token) == alice
    assert store.users.revoke_token(token)
    assert store.users.user_for_token(token) is None  # the same turn
