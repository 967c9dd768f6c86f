"""The admin role and disabled users, through the API and the store (fake cluster).

The real thing, with a real lab on the dev cluster and the CLI, is in
tests/integration/test_admin.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.accounts import Accounts
from gateway.jobs.oversight import set_user
from gateway.store import Store
from gateway.store.users import MAX_SESSIONS

if TYPE_CHECKING:
    from conftest import Site

LAB = {"kind": "lab", "time": "00:10:00"}


async def test_only_an_admin_lists_every_users_jobs(site: Site) -> None:
    mine, theirs = await site.lab("alice"), await site.lab("bob")
    for caller in ("alice", "bob"):
        for query in ("", "?user=alice", "?state=nonsense"):  # 403 before the filters
            answer = await site.client.get(f"/api/v1/admin/jobs{query}", headers=site.auth(caller))
            assert answer.status == 403, await answer.text()
            assert "admin" in (await answer.json(content_type=None))["detail"]
    answer = await site.client.get("/api/v1/admin/jobs", headers=site.auth("root"))
    assert answer.status == 200
    listed = {job["id"]: job["user"] for job in (await answer.json())["jobs"]}
    assert listed == {mine["id"]: "alice", theirs["id"]: "bob"}


async def test_admin_filters_by_owner_and_pages(site: Site) -> None:
    made = [await site.lab("alice") for _ in range(3)] + [await site.lab("bob")]
    root = site.auth("root")
    answer = await (await site.client.get("/api/v1/admin/jobs?user=alice&limit=2",
                                          headers=root)).json()
    assert [job["user"] for job in answer["jobs"]] == ["alice", "alice"]
    rest = await (await site.client.get(answer["next"], headers=root)).json()
    assert [job["id"] for job in answer["jobs"] + rest["jobs"]] == [
        job["id"] for job in reversed(made[:3])]
    assert rest["next"] is None
    nobody = await site.client.get("/api/v1/admin/jobs?user=mallory", headers=root)
    assert (await nobody.json())["jobs"] == []
    wrong = await site.client.get("/api/v1/admin/jobs?owner=alice", headers=root)
    assert wrong.status == 422
    # The user's own listing still refuses the admin-only filter.
    mine = await site.client.get("/api/v1/jobs?user=bob", headers=site.auth("root"))
    assert mine.status == 422


async def test_disabling_stops_tokens_at_once_and_enabling_brings_them_back(site: Site) -> None:
    assert (await site.client.get("/api/v1/jobs", headers=site.auth("alice"))).status == 200
    set_user(site.store, "alice", disabled=True)
    refused = await site.client.get("/api/v1/jobs", headers=site.auth("alice"))
    assert refused.status == 401
    assert (await site.client.get("/api/v1/jobs", headers=site.auth("bob"))).status == 200
    set_user(site.store, "alice", disabled=False)
    assert (await site.client.get("/api/v1/jobs", headers=site.auth("alice"))).status == 200


async def test_disabling_stops_the_users_labs_not_notebooks_nor_others(site: Site) -> None:
    lab = await site.lab("alice")
    bobs = await site.lab("bob")
    await site.wait(lab["id"], "pending")
    await site.wait(bobs["id"], "pending")
    change = set_user(site.store, "alice", disabled=True)
    assert change.disabled and change.stopped_labs == [lab["id"]]
    ended = await site.wait(lab["id"], "cancelled")
    assert ended["reason"] == "user_disabled"
    assert "disabled" in ended["message"]
    assert [user for _, user in site.cluster.backend.cancels] == ["alice"]
    assert site.store.get_job(bobs["id"])["state"] == "pending"


async def test_admin_flag_changes(site: Site) -> None:
    set_user(site.store, "alice", admin=True)
    answer = await site.client.get("/api/v1/admin/jobs", headers=site.auth("alice"))
    assert answer.status == 200
    set_user(site.store, "alice", admin=False)
    answer = await site.client.get("/api/v1/admin/jobs", headers=site.auth("alice"))
    assert answer.status == 403


def test_a_disabled_users_browser_session_ends_too(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    token_id, _ = store.users.authenticate(store.users.issue_token(alice)) or (0, None)
    session = store.users.start_session(alice, 3600, parent_id=token_id)
    assert store.users.user_for_token_id(session) == alice
    store.users.set_user("alice", disabled=True)
    assert store.users.user_for_token_id(session) is None
    assert store.users.account_counts() == (0, 0, 0)  # the metrics count enabled users only
    store.users.set_user("alice", disabled=False)
    assert store.users.user_for_token_id(session) == alice


def test_browser_sessions_end_with_their_token_never_reuse_an_id_and_are_capped(
        store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    token = store.users.issue_token(alice)
    token_id, _ = store.users.authenticate(token) or (0, None)
    first = store.users.start_session(alice, 3600, parent_id=token_id)
    assert store.users.end_session(first) and store.users.user_for_token_id(first) is None
    second = store.users.start_session(alice, 3600, parent_id=token_id)
    assert second > first and store.users.user_for_token_id(first) is None
    store.users.end_session(second)  # the newest row: kept, so no id is given out again
    third = store.users.start_session(alice, 3600, parent_id=token_id)
    assert third > second and store.users.user_for_token_id(second) is None
    assert store.users.account_counts() == (1, 1, 1)
    store.users.revoke_token(token)  # the sessions made with it end with it
    assert store.users.user_for_token_id(third) is None
    assert store.users.account_counts() == (1, 0, 0)
    many = [store.users.start_session(alice, 3600) for _ in range(MAX_SESSIONS + 1)]
    assert store.users.user_for_token_id(many[0]) is None  # the oldest past the cap ended
    assert all(store.users.user_for_token_id(session) == alice for session in many[1:])
    rows = store.db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]
    assert rows <= MAX_SESSIONS + 3  # ended ones are deleted, not kept for ever


def test_user_list_shows_role_and_state(store: Store) -> None:
    store.users.add_user("alice", "alice", admin=True)
    store.users.add_user("bob", "bob")
    store.users.set_user("bob", disabled=True)
    listed = {user["name"]: (user["admin"], bool(user["disabled_at"]))
              for user in store.users.list_users()}
    assert listed == {"alice": (True, False), "bob": (False, True)}


def test_sso_sessions_end_expire_and_are_counted_apart_from_tokens(store: Store) -> None:
    alice = store.users.add_user("alice", "alice")
    store.users.issue_token(alice)
    live, expired = store.users.start_session(alice, 3600), store.users.start_session(alice, -1)
    assert store.users.user_for_token_id(live) == alice
    assert store.users.user_for_token_id(expired) is None
    assert store.users.account_counts() == (1, 1, 1)
    assert [user["active_tokens"] for user in store.users.list_users()] == [1]
    assert store.users.end_session(live) and store.users.user_for_token_id(live) is None
    api_token = store.users.authenticate(store.users.issue_token(alice))
    assert api_token is not None and not store.users.end_session(api_token[0])  # not a session



def test_sign_on_binds_a_user_to_one_identity_an_admin_only_by_the_operator(
        store: Store) -> None:
    accounts = Accounts(store)
    alice = store.users.add_user("alice", "alice")
    assert accounts.signs_on_as(alice, "https://sso alice-sub")
    assert accounts.signs_on_as(alice, "https://sso alice-sub")  # the same again: fine
    assert not accounts.signs_on_as(alice, "https://sso mallory-sub")
    root = store.users.add_user("root", "hpcadmin", admin=True)
    assert not accounts.signs_on_as(root, "https://sso stranger")  # no first-login binding
    store.users.set_subject("root", "https://sso root-sub")  # the operator's
    assert accounts.signs_on_as(root, "https://sso root-sub")
    assert not accounts.signs_on_as(root, "https://sso stranger")
    assert accounts.create_user("mallory", "alice") is None  # alice's unix account
    assert accounts.create_user("mallory", "root") is None
    carol = accounts.create_user("carol", "carol")
    assert carol is not None and not carol.admin


async def test_an_admin_sees_a_webhooks_origin_not_its_secret_path(site: Site) -> None:
    hook = {"url": "https://hooks.example.org/services/T000/B000/secret-part?token=abc"}
    answer = await site.client.post("/api/v1/jobs", json={**LAB, "webhook": hook},
                                    headers=site.auth("alice"))
    assert answer.status == 201, await answer.text()
    job = await answer.json()
    assert job["webhook"]["url"] == hook["url"]  # the owner sees all of it
    listed = await (await site.client.get("/api/v1/admin/jobs", headers=site.auth("root"))).json()
    shown = next(j for j in listed["jobs"] if j["id"] == job["id"])
    assert shown["webhook"]["url"] == "https://hooks.example.org"
