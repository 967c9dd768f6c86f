"""``hpcgw storage``: the caller's storage servers for data staging, over the HTTP API.

``add`` registers one and prints, as its last line, the public key to put in the storage
account's ``authorized_keys`` (unless ``--key-file`` gave the gateway a key of the user's own).
The server's host key is pinned: from ``--host-key-file`` (a known_hosts line or a public host
key), or on first contact as ``ssh`` does: the gateway asks the cluster (as the user) for the
key the server offers, and ``add`` asks to confirm its fingerprint on a terminal, or takes
``--accept-host-key SHA256:...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .http import EXIT_USAGE, Client, ClientError

STORAGE = "/api/v1/storage"


def add_parsers(sub: Any) -> None:
    """Add ``storage add|list|remove`` to ``sub`` (the ``_Subcommands`` of ``hpcgw``)."""
    add = sub.add_parser("add", help="register a storage server; prints the public key to "
                         "authorize there as the last line")
    add.add_argument("name", help="your name for it (what job inputs and outputs name)")
    add.add_argument("--host", required=True, help="the storage server's host name or address")
    add.add_argument("--port", type=int, default=22, help="its SSH port (default 22)")
    add.add_argument("--user", required=True, help="the login name on the storage server")
    add.add_argument("--host-key-file", type=Path,
                     help="the server's host key: a known_hosts line or a public host key")
    add.add_argument("--accept-host-key", metavar="SHA256:...",
                     help="pin the key the server offers if it has this fingerprint")
    add.add_argument("--key-file", type=Path,
                     help="use this private key (no passphrase) instead of a new one")
    add.set_defaults(run=cmd_add)
    sub.add_parser("list", help="your storage servers").set_defaults(run=cmd_list)
    remove = sub.add_parser("remove", help="forget a storage server")
    remove.add_argument("name", help="the storage server's name")
    remove.set_defaults(run=cmd_remove)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read the {what} {path}: {exc}", exit=EXIT_USAGE) from None


def _confirmed(offered: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether the user accepts the host key the server offered (as ssh asks)."""
    fingerprint = offered.get("host_key_fingerprint", "")
    if args.accept_host_key is not None:
        if args.accept_host_key != fingerprint:
            raise ClientError(f"the server offered host key {fingerprint}, not "
                              f"{args.accept_host_key}; not pinned", exit=EXIT_USAGE)
        return True
    if not sys.stdin.isatty():
        raise ClientError(f"{args.host}:{args.port} offers host key {fingerprint}; confirm it "
                          "with --accept-host-key or give --host-key-file", exit=EXIT_USAGE)
    print(f"The storage server {args.host}:{args.port} offers host key {fingerprint}.",
          file=sys.stderr)
    answer = input("Are you sure you want to pin it (yes/no)? ").strip().lower()
    return answer == "yes"


async def cmd_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "host": args.host, "port": args.port,
                            "user": args.user}
    if args.host_key_file is not None:
        body["host_key"] = _read(args.host_key_file, "host key file")
    if args.key_file is not None:
        body["private_key"] = _read(args.key_file, "key file")
    client = Client()
    try:
        added = await client.json("POST", STORAGE, json=body)
    except ClientError as exc:
        offered = exc.extra.get("problem", {})
        if exc.extra.get("status") != 409 or "host_key" not in offered:
            raise
        if not _confirmed(offered, args):
            print("hpcgw: host key not pinned; nothing registered", file=sys.stderr)
            return 1
        added = await client.json("POST", STORAGE, json={**body,
                                                         "host_key": offered["host_key"]})
    if args.json:
        print(json.dumps(added, indent=2))
        return 0
    print(f"registered {added['name']}: {added['user']}@{added['host']}:{added['port']}, host "
          f"key {added['host_key_fingerprint']}", file=sys.stderr)
    if args.key_file is None:
        print("add this line to that account's ~/.ssh/authorized_keys:", file=sys.stderr)
    print(added["public_key"])
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    servers = (await Client().json("GET", STORAGE))["storage"]
    if args.json:
        print(json.dumps(servers, indent=2))
        return 0
    print(f"{'NAME':16} {'WHERE':40} HOST KEY")
    for server in servers:
        where = f"{server['user']}@{server['host']}:{server['port']}"
        print(f"{server['name']:16} {where:40} {server['host_key_fingerprint']}")
    return 0


async def cmd_remove(args: argparse.Namespace) -> int:
    await Client().request("DELETE", f"{STORAGE}/{args.name}")
    return 0
