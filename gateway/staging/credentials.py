"""Users' storage servers: the only way the API and the job lifecycle reach staging credentials.

A storage server is registered per gateway user under a name: host, port, login name, its pinned
host key, and an SSH key (generated here, or uploaded) whose public half the user puts in that
account's ``authorized_keys``. Passwords are not accepted. The host key comes from the admin's
``[staging] known_hosts`` when listed there (a different key from the user is refused), else
from the user; without one the cluster is asked, by the user's own account, for the key the
server offers (:func:`scan_host_key`: where staging connects from; the gateway's host connects
nowhere) and the answer is :class:`HostKeyUnconfirmed` (409, with the key and its
fingerprint) so the user confirms it and asks again with it, as ``ssh`` does on first contact.
A user has at most :data:`MAX_STORAGE_SERVERS`; the name and that cap are checked first, before
the cluster is asked or a key is made or checked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import HOST, IDENTIFIER, UNIX_USER, StagingConfig
from ..errors import Conflict, FieldError, GatewayError, TooManyRequests, ValidationFailed
from ..store.storage import StorageTable
from ..transport import Transport
from ..users import User
from .hostkeys import FETCH_TIMEOUT, MAX_LINE, fingerprint, parse_host_key, pinned_host_keys
from .keys import check_private_key, generate_key, seal, unseal


@dataclass(frozen=True)
class Transfer:
    host: str
    port: int
    user: str
    host_key: str  # the pinned public key line
    private_key: bytes = field(repr=False)


class HostKeyUnconfirmed(Conflict):
    """The storage server's host key is not pinned yet: confirm the offered one."""

    type_slug = "host-key-unconfirmed"
    title = "Confirm the storage server's host key"


def storage_view(row: dict[str, Any]) -> dict[str, Any]:
    """A storage server as the API shows it (never the private key)."""
    return {"name": row["name"], "host": row["host"], "port": row["port"],
            "user": row["username"], "host_key": row["host_key"],
            "host_key_fingerprint": fingerprint(row["host_key"]),
            "public_key": row["public_key"], "created_at": row["created_at"]}


def _check_target(name: str, host: str, port: int, username: str) -> None:
    errors = []
    if not IDENTIFIER.match(name):
        errors.append(FieldError("name", f"must match {IDENTIFIER.pattern}"))
    if not HOST.match(host):
        errors.append(FieldError("host", "not a host name or address"))
    if not 1 <= port <= 65535:
        errors.append(FieldError("port", "must be 1-65535"))
    if not UNIX_USER.match(username):
        errors.append(FieldError("user", f"must match {UNIX_USER.pattern}"))
    if errors:
        raise ValidationFailed(errors)


# The most storage servers one gateway user may register (429 past it, limit
# "storage_servers"): a handful per project is the use; the cap keeps every listing short.
MAX_STORAGE_SERVERS = 50
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-", "ssh-rsa")  # the one pinned: the first offered
# The host key a server offers, as the user sees it from the cluster (scan_host_key).
OfferedKey = Callable[[User, str, int], Awaitable[str]]


class StorageCredentials:
    def __init__(self, table: StorageTable, secret: str, staging: StagingConfig,
                 offered: OfferedKey) -> None:
        self._table = table
        self._secret = secret
        self._pinned = pinned_host_keys(staging.known_hosts)
        self._offered = offered

    async def add(self, user: User, name: str, host: str, port: int, username: str,
                  host_key: str | None = None, private_key: bytes | None = None
                  ) -> dict[str, Any]:
        """Register a storage server for ``user``; its view, whose ``public_key`` goes into
        the server's ``authorized_keys``. 422 for bad fields or keys, 409 for a name already
        used or (:class:`HostKeyUnconfirmed`) a host key to confirm first, 429 when ``user``
        has :data:`MAX_STORAGE_SERVERS` already. The name and the cap are checked before the
        cluster is asked or a key made or checked, and nothing is awaited between that check
        and the insert once a host key is known (two requests cannot both take the last
        place; two of one name get one 409 from the insert)."""
        _check_target(name, host, port, username)
        self._check_room(user, name)
        if host_key is None and (host, port) not in self._pinned:
            raise await self._offered_host_key(user, host, port)
        pinned = self._host_key(host, port, host_key)
        if private_key is None:
            key, public = generate_key(f"hpcgw:{user.name}:{name}")
        else:
            key, public = check_private_key(private_key)
        row = self._table.add(user.id, {
            "name": name, "host": host, "port": port, "username": username,
            "host_key": pinned, "public_key": public,
            "sealed_key": seal(self._secret, key, owner=user.id, name=name)})
        return storage_view(row)

    def _check_room(self, user: User, name: str) -> None:
        """409 if ``user`` has a storage server ``name``; 429 (``limit`` "storage_servers")
        if ``user`` has :data:`MAX_STORAGE_SERVERS` of them."""
        if self._table.has(user.id, name):
            raise self._table.taken(name)
        count = self._table.count(user.id)
        if count >= MAX_STORAGE_SERVERS:
            raise TooManyRequests(
                f"you have {count} storage servers, the most allowed per user "
                f"({MAX_STORAGE_SERVERS}); remove one first (hpcgw storage remove NAME)",
                limit="storage_servers", value=MAX_STORAGE_SERVERS)

    def _host_key(self, host: str, port: int, given: str | None) -> str:
        """The key to pin: the admin's, or ``given`` (which must then match the admin's)."""
        vouched = self._pinned.get((host, port))
        if given is None:
            assert vouched is not None  # add() asked the user to confirm the offered key
            return vouched
        key = parse_host_key(given, host, port)
        if vouched is not None and key != vouched:
            raise ValidationFailed([FieldError(
                "host_key", "not the key the gateway's admin pinned for this server "
                f"({fingerprint(vouched)})")])
        return key

    async def _offered_host_key(self, user: User, host: str, port: int) -> HostKeyUnconfirmed:
        """The 409 to answer when no host key was given nor pinned: the key the server offers
        now, with its fingerprint, for the user to confirm."""
        offered = await self._offered(user, host, port)
        return HostKeyUnconfirmed(
            f"confirm the host key of {host}:{port} ({fingerprint(offered)}) and send it as "
            "host_key", host_key=offered, host_key_fingerprint=fingerprint(offered))

    def list(self, user: User) -> list[dict[str, Any]]:
        return [storage_view(row) for row in self._table.list(user.id)]

    def get(self, user: User, name: str) -> dict[str, Any]:
        """``user``'s storage server ``name``; 404 for a missing or another user's one."""
        return storage_view(self._table.get(user.id, name))

    def remove(self, user: User, name: str) -> None:
        self._table.remove(user.id, name)

    def known(self, user: User, name: str) -> bool:
        """Whether ``user`` has a storage server ``name`` (one indexed lookup)."""
        return self._table.has(user.id, name)

    def for_transfer(self, user_id: int, name: str) -> Transfer:
        """Everything a transfer needs from ``user_id``'s storage server ``name``, its private
        key unsealed: for staging only, never logged. NotFound if the server was removed."""
        row = self._table.get(user_id, name, sealed=True)
        return Transfer(row["host"], row["port"], row["username"], row["host_key"],
                        unseal(self._secret, row["sealed_key"], owner=user_id, name=name))


async def scan_host_key(transport: Transport, unix_user: str, host: str, port: int) -> str:
    """The host key ``host``:``port`` offers to the cluster, asked by ``unix_user`` there with
    ``ssh-keyscan``: where a job's staging connects from, and with no more reach than the user
    has. The gateway's own host connects nowhere, so naming a host and port tells a user
    nothing new: any failure gives the same 422, whatever was or was not listening."""
    argv = ["ssh-keyscan", "-T", str(int(FETCH_TIMEOUT)), "-p", str(port), "--", host]
    try:
        result = await transport.run(argv, user=unix_user, timeout=FETCH_TIMEOUT + 5,
                                     check=False)
    except GatewayError:
        result = None
    offered: dict[str, str] = {}
    for line in (result.text if result is not None else "").splitlines()[:16]:
        words = line.split()
        if len(words) == 3 and len(line) <= MAX_LINE:
            try:  # (ssh-keyscan writes the host in lower case)
                offered.setdefault(words[1], parse_host_key(line, host.lower(), port))
            except ValidationFailed:
                continue
    if offered:
        return offered[min(offered, key=_preference)]
    raise ValidationFailed([FieldError("host", f"no SSH server at {host}:{port} offered a "
                                               "host key to the cluster")])


def _preference(kind: str) -> int:
    """Where a key type stands in :data:`KEY_TYPES` (a prefix of it), other types last."""
    return next((rank for rank, prefix in enumerate(KEY_TYPES) if kind.startswith(prefix)),
                len(KEY_TYPES))
