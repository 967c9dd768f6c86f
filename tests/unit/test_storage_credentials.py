"""Storage credentials (gateway.staging, /api/v1/storage) without a storage server: keys sealed
at rest and bound to their row, uploads checked, each user's servers invisible to others, the
admin's pinned host keys, first contact asked of the cluster. First contact with a real sshd:
tests/integration/test_staging.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from aiohttp.test_utils import TestClient

from gateway.config import parse_config
from gateway.errors import ValidationFailed
from gateway.server import STORE, make_app
from gateway.staging.hostkeys import fingerprint, parse_host_key
from gateway.staging.keys import SealedKeyError, check_private_key, generate_key, seal, unseal
from gateway.transport import CommandResult

SECRET = "k" * 40
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
OTHER_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
PROBLEM = "application/problem+json"


def test_a_sealed_key_opens_only_for_its_own_row_and_secret() -> None:
    private, _ = generate_key("test")
    sealed = seal(SECRET, private, owner=1, name="data")
    assert private not in sealed and b"OPENSSH" not in sealed
    assert unseal(SECRET, sealed, owner=1, name="data") == private
    for owner, name, secret in ((2, "data", SECRET), (1, "other", SECRET), (1, "data", "x" * 40)):
        with pytest.raises(SealedKeyError):
            unseal(secret, sealed, owner=owner, name=name)
    with pytest.raises(SealedKeyError):
        unseal(SECRET, sealed[:-1] + bytes([sealed[-1] ^ 1]), owner=1, name="data")


@pytest.mark.parametrize(("key", "message"), [
    (b"hello", "not an SSH private key"),
    (b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
     "not an SSH private key"),
    (asyncssh.generate_private_key("ecdsa-sha2-nistp256").export_private_key(
        "pkcs8-pem", passphrase="pw"), "passphrase"),
    (asyncssh.generate_private_key("ssh-rsa", key_size=1024).export_private_key(),
     "2048 bits"),
    (b"x" * 20000, "over 16384 bytes"),
])
def test_unusable_uploaded_keys_are_refused_without_quoting_them(key: bytes, message: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_private_key(key)
    (error,) = info.value.errors
    assert error["field"] == "private_key" and message in error["message"]
    assert key[:40].decode(errors="replace") not in error["message"]


def test_an_uploaded_key_keeps_its_public_half() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    private, public = check_private_key(key.export_private_key("openssh"))
    assert public == key.export_public_key("openssh").decode().strip()
    assert asyncssh.import_private_key(private).export_public_key() == key.export_public_key()


@pytest.mark.parametrize(("text", "host", "port", "problem"), [
    (f"[127.0.0.1]:2223 {HOST_KEY}", "127.0.0.1", 2223, None),
    (f"storage.example {HOST_KEY} comment", "storage.example", 22, None),
    (HOST_KEY, "anything", 22, None),
    (f"[127.0.0.1]:2224 {HOST_KEY}", "127.0.0.1", 2223, "not '[127.0.0.1]:2223'"),
    (f"@cert-authority * {HOST_KEY}", "h", 22, "markers"),
    (f"|1|c2FsdA==|aGFzaA== {HOST_KEY}", "h", 22, "hashed"),
    ("ssh-ed25519 notbase64", "h", 22, "not an SSH public host key"),
    (f"{HOST_KEY}\n{OTHER_KEY}", "h", 22, "one public key"),
])
def test_host_keys_are_parsed_for_exactly_their_server(
        text: str, host: str, port: int, problem: str | None) -> None:
    if problem is None:
        assert parse_host_key(text, host, port) == HOST_KEY
        return
    with pytest.raises(ValidationFailed) as info:
        parse_host_key(text, host, port)
    assert problem in info.value.errors[0]["message"]


@pytest.fixture
async def gateway(tmp_path: Path, aiohttp_client: Callable[..., Any],
                  fake_clusters: Any, make_raw_config: Callable[..., dict[str, Any]],
                  ) -> tuple[TestClient[Any, Any], dict[str, dict[str, str]], Path]:
    raw = make_raw_config(tmp_path / "data")
    raw["staging"] = {"known_hosts": [f"[pinned.example]:2200 {HOST_KEY}"]}
    app = make_app(parse_config(raw), cluster_factory=fake_clusters)
    client = await aiohttp_client(app)
    store = app[STORE]
    users = store.users
    auth = {name: {"Authorization": f"Bearer {users.issue_token(users.add_user(name, name))}"}
            for name in ("alice", "bob")}
    return client, auth, tmp_path / "data"


def request(name: str = "data", **fields: Any) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "port": 2223, "user": "storage",
            "host_key": f"[127.0.0.1]:2223 {HOST_KEY}", **fields}


async def test_registering_a_server_gives_a_public_key_and_keeps_the_private_one_sealed(
        gateway: tuple[TestClient[Any, Any], dict[str, dict[str, str]], Path]) -> None:
    client, auth, data_dir = gateway
    reply = await client.post("/api/v1/storage", json=request(), headers=auth["alice"])
    assert reply.status == 201, await reply.text()
    added = await reply.json()
    assert reply.headers["Location"] == "/api/v1/storage/data"
    public = added["public_key"]
    assert public.startswith("ssh-ed25519 ") and public.endswith(" hpcgw:alice:data")
    assert (added["host_key"], added["host_key_fingerprint"]) == (HOST_KEY, fingerprint(HOST_KEY))
    assert "private_key" not in added and "sealed_key" not in added
    listed = await (await client.get("/api/v1/storage", headers=auth["alice"])).json()
    assert [s["name"] for s in listed["storage"]] == ["data"]
    # No private key in the clear anywhere in the database files.
    for path in data_dir.glob("hpcgw.db*"):
        assert b"PRIVATE KEY" not in path.read_bytes()


async def test_another_users_server_is_invisible_and_untouchable(
        gateway: tuple[TestClient[Any, Any], dict[str, dict[str, str]], Path]) -> None:
    client, auth, _ = gateway
    assert (await client.post("/api/v1/storage", json=request(),
                              headers=auth["alice"])).status == 201
    for method in ("GET", "DELETE"):
        reply = await client.request(method, "/api/v1/storage/data", headers=auth["bob"])
        assert reply.status == 404 and reply.content_type == PROBLEM
    assert (await (await client.get("/api/v1/storage", headers=auth["bob"])).json()) == {
        "storage": []}
    # Bob may use the same name for a server of his own.
    assert (await client.post("/api/v1/storage", json=request(),
                              headers=auth["bob"])).status == 201
    assert (await client.get("/api/v1/storage/data", headers=auth["alice"])).status == 200
    assert (await client.delete("/api/v1/storage/data", headers=auth["alice"])).status == 204
    assert (await client.get("/api/v1/storage/data", headers=auth["alice"])).status == 404
    assert (await client.get("/api/v1/storage/data", headers=auth["bob"])).status == 200


async def test_bad_requests_name_every_failing_field(
        gateway: tuple[TestClient[Any, Any], dict[str, dict[str, str]], Path]) -> None:
    client, auth, _ = gateway
    reply = await client.post("/api/v1/storage", headers=auth["alice"], json=request(
        name="../x", host="bad host", port=70000, user="Root;id"))
    assert reply.status == 422
    fields = {e["field"] for e in (await reply.json(content_type=PROBLEM))["errors"]}
    assert fields == {"name", "host", "port", "user"}
    reply = await client.post("/api/v1/storage", headers=auth["alice"],
                              json={**request(), "password": "hunter2"})
    assert reply.status == 422  # passwords are not accepted
    assert (await client.post("/api/v1/storage", json=request(),
                              headers=auth["alice"])).status == 201
    again = await client.post("/api/v1/storage", json=request(), headers=auth["alice"])
    assert again.status == 409


async def test_an_uploaded_key_is_used_and_the_admins_pinned_host_key_wins(
        gateway: tuple[TestClient[Any, Any], dict[str, dict[str, str]], Path]) -> None:
    client, auth, _ = gateway
    own = asyncssh.generate_private_key("ssh-ed25519")
    reply = await client.post("/api/v1/storage", headers=auth["alice"], json=request(
        private_key=own.export_private_key("openssh").decode()))
    assert (await reply.json())["public_key"] == own.export_public_key().decode().strip()
    pinned = {"name": "p", "host": "pinned.example", "port": 2200, "user": "storage"}
    reply = await client.post("/api/v1/storage", headers=auth["alice"], json=pinned)
    assert reply.status == 201 and (await reply.json())["host_key"] == HOST_KEY
    reply = await client.post("/api/v1/storage", headers=auth["alice"],
                              json={**pinned, "name": "q", "host_key": OTHER_KEY})
    assert reply.status == 422
    assert "pinned" in (await reply.json(content_type=PROBLEM))["errors"][0]["message"]


async def test_first_contact_asks_the_cluster_as_the_user_and_the_gateway_connects_nowhere(
        gateway: tuple[TestClient[Any, Any], dict[str, dict[str, str]], Path],
        fake_clusters: Any) -> None:
    """Red-team: the gateway's own host used to fetch the offered key itself, so any user
    could tell open, closed and filtered ports on the gateway host's loopback and network
    apart by the 422's words. Now the user's own account on the cluster asks
    (``ssh-keyscan``, where staging connects from); whatever does not answer, the words are
    the same."""
    client, auth, _ = gateway
    transport = fake_clusters.by_name["dev"].transport
    reached: list[int] = []
    service = await asyncio.start_server(lambda _r, w: (reached.append(1), w.close()),
                                         "127.0.0.1", 0)
    listening = service.sockets[0].getsockname()[1]
    answers = {}
    for port in (listening, closed_port()):
        reply = await client.post("/api/v1/storage", headers=auth["bob"], json=request(
            f"p{port}", port=port, host_key=None))
        errors = (await reply.json(content_type=PROBLEM))["errors"]
        answers[port] = (reply.status, errors[0]["message"].replace(str(port), "PORT"))
    service.close()
    assert reached == [] and len(set(answers.values())) == 1, answers
    assert {status for status, _ in answers.values()} == {422}
    scans = [(argv, user) for argv, user in transport.commands if argv[0] == "ssh-keyscan"]
    assert [(argv[-2:], user) for argv, user in scans] == [
        (["--", "127.0.0.1"], "bob"), (["--", "127.0.0.1"], "bob")]

    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=1024).export_public_key()
    offered = (f"[storage.example]:2223 {rsa.decode().strip()}\n"  # as ssh-keyscan writes:
               f"[storage.example]:2223 {HOST_KEY}\n"  # the host in lower case
               f"[elsewhere.example]:2223 {OTHER_KEY}\n"  # (not the host asked about)
               "[storage.example]:2223 ssh-ed25519 AAAAnot-a-key\n")
    run = transport.run

    async def keyscan(argv: list[str], **kwargs: Any) -> CommandResult:
        if argv[0] == "ssh-keyscan":
            return CommandResult(argv, 0, offered.encode(), "")
        return await run(argv, **kwargs)

    transport.run = keyscan
    reply = await client.post("/api/v1/storage", headers=auth["bob"], json=request(
        "first", host="Storage.Example", host_key=None))
    problem = await reply.json(content_type=PROBLEM)
    assert (reply.status, problem["host_key"], problem["host_key_fingerprint"]) == (
        409, HOST_KEY, fingerprint(HOST_KEY))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
