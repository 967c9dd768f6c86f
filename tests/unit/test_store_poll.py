"""The store's side of polling: tracked rows changed since a stamp, state changes since an event,
and a cycle's transitions and field changes written in one transaction under the same rules as
single transitions."""

from __future__ import annotations

import time

import pytest

from gateway.states import Reason, State
from gateway.store import Move, Store, User
from gateway.timestamps import utcnow
from tests.factories import add_job


@pytest.fixture
def alice(store: Store) -> User:
    return store.users.add_user("alice", "alice")


def pending_job(store: Store, user: User, n: int, *, cluster: str = "dev") -> str:
    """A job in ``pending`` with Slurm job id ``1000 + n``."""
    job_id = f"{n:016x}"
    add_job(store, user, job_id, state=State.PENDING, cluster=cluster,
            at={State.PENDING: {"slurm_job_id": str(1000 + n)}})
    return job_id


def test_tracked_jobs_changed_since_a_stamp_and_named_ones(store: Store, alice: User) -> None:
    old, other = pending_job(store, alice, 1), pending_job(store, alice, 2)
    pending_job(store, alice, 3, cluster="elsewhere")
    time.sleep(0.002)
    stamp = utcnow()
    store.update_job(other, cancel_requested=1)
    new = pending_job(store, alice, 4)
    assert [j["id"] for j in store.tracked_jobs("dev")] == [old, other, new]
    changed = store.tracked_jobs("dev", changed_since=stamp)
    assert [(j["id"], j["cancel_requested"]) for j in changed] == [(other, 1), (new, 0)]
    also = store.tracked_jobs("dev", changed_since=stamp, also=[old, "f" * 16])
    assert [j["id"] for j in also] == [old, other, new]


def test_states_since_names_each_job_with_its_latest_state(store: Store, alice: User) -> None:
    first = pending_job(store, alice, 1)
    mark = store.last_event_id()
    second = pending_job(store, alice, 2)
    store.transition(first, State.RUNNING)
    store.transition(first, State.COLLECTING)
    newest, moved = store.states_since(mark)
    assert moved == {second: "pending", first: "collecting"}
    assert newest == store.last_event_id() > mark
    assert store.states_since(newest) == (newest, {})


def test_transition_many_follows_the_rules_of_single_transitions(
        store: Store, alice: User) -> None:
    a, b, c = (pending_job(store, alice, n) for n in range(3))
    store.update_job(a, pending_reason="Priority")
    refused = store.transition_many(
        [Move(a, State.RUNNING, {"node": "vm"}),
         Move(b, State.COLLECTING, {"slurm_state": "COMPLETED", "exit_code": 0}),
         Move(b, State.SUCCEEDED, {}, Reason.COMPLETED, "fine"),  # starts from collecting
         Move(c, State.ACCEPTED, {"node": "evil"})],  # not in the table: left out
        {c: {"pending_reason": "Resources"}})
    assert refused == {c}
    running, done, untouched = (store.get_job(j) for j in (a, b, c))
    assert (running["state"], running["node"], running["pending_reason"]) == ("running", "vm", None)
    assert running["started_at"] and running["ended_at"] is None
    assert (done["state"], done["reason"], done["message"]) == ("succeeded", "completed", "fine")
    assert done["ended_at"] and done["slurm_state"] == "COMPLETED"
    assert (untouched["state"], untouched["node"]) == ("pending", None)
    assert untouched["pending_reason"] == "Resources"
    assert [(e["from_state"], e["to_state"]) for e in store.events(b)][-2:] == [
        ("pending", "collecting"), ("collecting", "succeeded")]
    assert store.events(b)[-1]["reason"] == "completed"
    assert [e["to_state"] for e in store.events(c)][-1] == "pending"


def test_transition_many_never_moves_a_terminal_job(store: Store, alice: User) -> None:
    job_id = pending_job(store, alice, 1)
    store.transition(job_id, State.CANCELLED, reason=Reason.USER_CANCELLED)
    events = len(store.events(job_id))
    assert store.transition_many([Move(job_id, State.COLLECTING, {}),
                                  Move("f" * 16, State.RUNNING, {})]) == {job_id, "f" * 16}
    assert store.get_job(job_id)["state"] == "cancelled"
    assert len(store.events(job_id)) == events


def test_transition_many_is_one_transaction(store: Store, alice: User) -> None:
    a, b = pending_job(store, alice, 1), pending_job(store, alice, 2)
    with pytest.raises(Exception, match="no such column"):
        store.transition_many([Move(a, State.RUNNING, {})], {b: {"no_such_column": 1}})
    assert store.get_job(a)["state"] == "pending"  # rolled back with the bad update
    assert [e["to_state"] for e in store.events(a)][-1] == "pending"
