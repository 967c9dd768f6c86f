"""Storage credentials (gateway.staging, /api/v1/storage) without a storage server: keys sealed
at rest and bound to their row, uploads checked, each user's servers invisible to others, the
admin's pinned host keys, first contact asked of the cluster, at most MAX_STORAGE_SERVERS per
user, and an uploaded RSA key checked in microseconds (its size bounded, before anything
costly). First contact with a real sshd: tests/integration/test_staging.py."""

from __future__ import annotations

import asyncio
import math
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.api.keys import STORAGE
from gateway.config import parse_config
from gateway.errors import ValidationFailed
from gateway.server import STORE, make_app
from gateway.staging.credentials import MAX_STORAGE_SERVERS
from gateway.staging.hostkeys import fingerprint, parse_host_key
from gateway.staging.keys import (
    MAX_RSA_BITS,
    SealedKeyError,
    check_private_key,
    generate_key,
    seal,
    unseal,
)
from gateway.store.storage import StorageTable
from gateway.transport import CommandResult
from tests.loopwatch import loop_watch

SECRET = "k" * 40
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
OTHER_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
PROBLEM = "application/problem+json"


def unproven_rsa_key(bits: int, damage: int = 0) -> bytes:
    """A PEM RSA key of ``bits`` bits whose numbers agree (n = pq, ed = 1, the CRT values)
    but whose p and q are random odd numbers, not primes: made in milliseconds at any size,
    and refused fast by a check that tests primality. ``damage`` is added to d once the CRT
    values are made from it (2: every number in range, but they no longer agree)."""
    e, half = 65537, bits // 2
    while True:
        p, q = (secrets.randbits(size) | (3 << (size - 2)) | 1 for size in (half, bits - half))
        phi = (p - 1) * (q - 1)
        if math.gcd(e, phi) == 1 and math.gcd(p, q) == 1 and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, phi // math.gcd(p - 1, q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d + damage, d % (p - 1), d % (q - 1),
                                    pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())


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
     "RSA keys need 2048 to 4096 bits (this one has 1024)"),
    (unproven_rsa_key(MAX_RSA_BITS + 8), f"(this one has {MAX_RSA_BITS + 8})"),
    (unproven_rsa_key(20480), "RSA keys need 2048 to 4096 bits (this one has 20480)"),
    (unproven_rsa_key(2048, damage=2), "not an SSH private key"),
    (b"x" * 20000, "over 16384 bytes"),
])
def test_unusable_uploaded_keys_are_refused_without_quoting_them(key: bytes, message: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_private_key(key)
    (error,) = info.value.errors
    assert error["field"] == "private_key" and message in error["message"]
    assert key[:40].decode(errors="replace") not in error["message"]


@pytest.mark.parametrize(("algorithm", "options"), [
    ("ssh-ed25519", {}), ("ecdsa-sha2-nistp256", {}), ("ecdsa-sha2-nistp521", {}),
    ("ssh-rsa", {"key_size": 2048}), ("ssh-rsa", {"key_size": MAX_RSA_BITS}),
])
@pytest.mark.parametrize("form", ["openssh", "pkcs8-pem"])
def test_an_uploaded_key_keeps_its_public_half(
        algorithm: str, options: dict[str, int], form: str) -> None:
    key = asyncssh.generate_private_key(algorithm, **options)
    private, public = check_private_key(key.export_private_key(form))
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


async def test_an_rsa_key_of_the_largest_size_is_taken_while_the_loop_keeps_turning(
        gateway: tuple[TestClient[Any, Any], dict[str, dict[str, str]], Path]) -> None:
    """Red-team: the library's check of an uploaded RSA key (primality tests, which hold the
    interpreter's lock) ran on the event loop, before the name was looked at: 0.28 s here
    for 4096 bits, 4.3 s for 8192, a minute for a 20,480-bit key under the 16 KiB cap, each
    time bob sent it. Now its size is read first and its numbers checked in microseconds; a
    taken name is a 409 before the key is even read."""
    client, auth, _ = gateway
    key = await asyncio.to_thread(asyncssh.generate_private_key, "ssh-rsa",
                                  key_size=MAX_RSA_BITS)
    pem = key.export_private_key("pkcs1-pem")
    started = time.monotonic()
    await asyncio.to_thread(asyncssh.import_private_key, pem)  # the library's check, here
    library_check = time.monotonic() - started
    async with loop_watch() as waits:
        reply = await client.post("/api/v1/storage", headers=auth["bob"],
                                  json=request(private_key=pem.decode()))
    assert reply.status == 201, await reply.text()
    assert (await reply.json())["public_key"] == key.export_public_key().decode().strip()
    assert max(waits) < library_check / 2, (
        f"the loop stood still {max(waits):.3f} s; the library's check takes "
        f"{library_check:.3f} s")
    again = await client.post("/api/v1/storage", headers=auth["bob"],
                              json=request(private_key="not even a key"))
    assert again.status == 409, await again.text()  # the name, before the key
    assert (await again.json(content_type=PROBLEM))["name"] == "data"


async def test_a_user_has_at_most_max_storage_servers(
        gateway: tuple[TestClient[Any, Any], dict[str, dict[str, str]], Path]) -> None:
    """Red-team: nothing limited how many storage servers a user registered (bob: 100,000
    in a couple of minutes), and each listing of them, and each job naming one, went
    through all of them on the event loop."""
    client, auth, _ = gateway
    for number in range(MAX_STORAGE_SERVERS):
        reply = await client.post("/api/v1/storage", headers=auth["bob"],
                                  json=request(f"s{number}"))
        assert reply.status == 201, await reply.text()
    over = await client.post("/api/v1/storage", headers=auth["bob"], json=request("more"))
    assert (over.status, over.content_type) == (429, PROBLEM)
    problem = await over.json(content_type=PROBLEM)
    assert (problem["limit"], problem["value"]) == ("storage_servers", MAX_STORAGE_SERVERS)
    assert f"({MAX_STORAGE_SERVERS})" in problem["detail"] and "Retry-After" not in over.headers
    listed = await (await client.get("/api/v1/storage", headers=auth["bob"])).json()
    assert len(listed["storage"]) == MAX_STORAGE_SERVERS
    # A name bob has is still a 409, as before; alice's servers count for alice only.
    taken = await client.post("/api/v1/storage", headers=auth["bob"], json=request("s0"))
    assert taken.status == 409
    assert (await client.post("/api/v1/storage", headers=auth["alice"],
                              json=request("more"))).status == 201
    assert (await client.delete("/api/v1/storage/s0", headers=auth["bob"])).status == 204
    assert (await client.post("/api/v1/storage", headers=auth["bob"],
                              json=request("more"))).status == 201


async def test_known_looks_one_name_up(
        gateway: tuple[TestClient[Any, Any], dict[str, dict[str, str]], Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's storage names are checked by lookup, never by listing all the user's servers."""
    client, auth, _ = gateway
    assert (await client.post("/api/v1/storage", json=request(),
                              headers=auth["alice"])).status == 201
    credentials = client.app[STORAGE]
    users = client.app[STORE].users
    alice, bob = users.get_user("alice"), users.get_user("bob")

    def no_listing(*_: Any) -> None:
        raise AssertionError("known() listed every storage server")

    monkeypatch.setattr(StorageTable, "list", no_listing)
    assert credentials.known(alice, "data")
    assert not credentials.known(alice, "other") and not credentials.known(bob, "data")
