"""The store's side of webhooks: delivery rows sit among a job's events without ever counting as
state changes, and the deliverer reads the state changes of jobs with a webhook only."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.states import State
from gateway.store import MIGRATIONS, Store, User
from tests.factories import add_job

HOOK = json.dumps({"webhook": {"url": "https://hooks.example.org/in"}})


@pytest.fixture
def alice(store: Store) -> User:
    return store.users.add_user("alice", "alice")


def test_the_deliverer_reads_state_changes_of_jobs_with_a_webhook(
    store: Store, alice: User
) -> None:
    mark = store.last_event_id()
    add_job(store, alice, "a" * 16, state=State.STAGING, spec=HOOK)
    add_job(store, alice, "b" * 16, state=State.STAGING)  # no webhook
    watermark, changes = store.webhooks.changes_since(mark)
    assert [(c.job_id, c.from_state, c.to_state) for c in changes] == [
        ("a" * 16, None, "accepted"), ("a" * 16, "accepted", "staging")]
    assert {(c.user_id, c.url) for c in changes} == {(alice.id, "https://hooks.example.org/in")}
    assert watermark == store.last_event_id()  # past the other job's rows too
    assert store.webhooks.changes_since(watermark) == (watermark, [])


def test_a_delivery_row_is_no_state_change(store: Store, alice: User) -> None:
    job_id = add_job(store, alice, "a" * 16, state=State.STAGING, spec=HOOK)["id"]
    mark = store.last_event_id()
    store.webhooks.record(job_id, "staging", "webhook delivery 1/5 of staging: HTTP 503")
    # Neither the poller's view, nor the deliverer's, nor the job's state history changes ...
    assert store.states_since(mark) == (mark, {})
    assert store.webhooks.changes_since(mark)[1] == []
    assert [e["to_state"] for e in store.events(job_id)] == ["accepted", "staging"]
    # ... but the job's whole story shows it, in its place, as a webhook row.
    store.transition(job_id, State.PENDING)
    story = store.events(job_id, deliveries=True)
    assert [(e["kind"], e["from_state"], e["to_state"]) for e in story] == [
        ("state", None, "accepted"), ("state", "accepted", "staging"),
        ("webhook", None, "staging"), ("state", "staging", "pending")]
    assert story[2]["message"] == "webhook delivery 1/5 of staging: HTTP 503"
    assert story[2]["reason"] is None
    newest, moved = store.states_since(mark)
    assert moved == {job_id: "pending"} and newest == store.last_event_id()


def test_a_long_backlog_is_read_in_pages(store: Store, alice: User) -> None:
    mark = store.last_event_id()
    for n in range(3):
        add_job(store, alice, f"{n:016x}", spec=HOOK)
    watermark, first = store.webhooks.changes_since(mark, limit=2)
    assert [c.job_id for c in first] == [f"{0:016x}", f"{1:016x}"]
    assert watermark == first[-1].event_id
    rest = store.webhooks.changes_since(watermark, limit=2)[1]
    assert [c.job_id for c in rest] == [f"{2:016x}"]


def test_upgrading_marks_the_existing_events_as_state_changes(tmp_path: Path) -> None:
    path = tmp_path / "hpcgw.db"
    old = sqlite3.connect(path)
    for script in MIGRATIONS[:-1]:
        old.executescript(script)
    old.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    old.execute("INSERT INTO users (name, unix_user, created_at) VALUES ('a', 'a', 'now')")
    old.execute("INSERT INTO jobs (id, user_id, unix_user, kind, name, cluster, state, spec, "
                "workdir, created_at, updated_at) VALUES ('0011223344556677', 1, 'a', "
                "'notebook', 'nb', 'dev', 'accepted', '{}', '/w', 'now', 'now')")
    old.execute("INSERT INTO events (job_id, at, to_state) VALUES "
                "('0011223344556677', 'now', 'accepted')")
    old.commit()
    old.close()
    store = Store(path)
    try:
        assert [e["kind"] for e in store.events("0011223344556677")] == ["state"]
        assert store.states_since(0)[1] == {"0011223344556677": "accepted"}
    finally:
        store.close()
