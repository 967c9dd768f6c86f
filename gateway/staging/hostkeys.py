"""Storage servers' host keys: parsed from what a user or admin gives, or fetched on first contact.

A host key is kept as one OpenSSH public key line (``ssh-ed25519 AAAA...``) and shown by its
SHA256 fingerprint, as ``ssh`` shows it. Accepted input: a public key line, or a known_hosts
line for the server (``[host]:port ssh-ed25519 AAAA...``; hashed or wildcard host patterns and
markers such as ``@cert-authority`` are refused: the key must be for exactly this server).
"""

from __future__ import annotations

import asyncio

import asyncssh

from ..errors import FieldError, ValidationFailed

FETCH_TIMEOUT = 10.0
MAX_LINE = 16 * 1024


def parse_host_key(text: str, host: str, port: int, field: str = "host_key") -> str:
    """The public key line in ``text`` for ``host``:``port``; 422 naming ``field`` otherwise."""
    line = text.strip()
    if not line or len(line) > MAX_LINE or "\n" in line:
        raise ValidationFailed([FieldError(field, "give one public key or known_hosts line")])
    words = line.split()
    if words[0].startswith("@") or words[0].startswith("|"):
        raise ValidationFailed([FieldError(field, "markers and hashed host names are not "
                                                  "accepted; give the server's own key")])
    if len(words) >= 3 and not words[0].startswith(("ssh-", "ecdsa-", "sk-")):
        names = words[0].split(",")
        wanted = host if port == 22 else f"[{host}]:{port}"
        if wanted not in names:
            raise ValidationFailed([FieldError(
                field, f"the known_hosts line is for {words[0]!r}, not {wanted!r}")])
        words = words[1:]
    try:
        key = asyncssh.import_public_key(" ".join(words[:2]))
    except (asyncssh.KeyImportError, ValueError):
        raise ValidationFailed([FieldError(field, "not an SSH public host key")]) from None
    return key.export_public_key("openssh").decode().strip()


def pinned_host_keys(lines: list[str]) -> dict[tuple[str, int], str]:
    """``(host, port) -> public key line`` from known_hosts lines (``[host]:port key`` or
    ``host key`` for port 22; several comma-separated names share the key). 422 for a line
    that is not one."""
    pinned: dict[tuple[str, int], str] = {}
    for line in lines:
        names = line.strip().split(" ", 1)[0]
        for pattern in names.split(","):
            host, _, port = (pattern[1:].partition("]:") if pattern.startswith("[")
                             else (pattern, "", "22"))
            if not port.isdigit():
                raise ValidationFailed([FieldError("known_hosts", f"bad host {pattern!r}")])
            pinned[(host, int(port))] = parse_host_key(line, host, int(port), "known_hosts")
    return pinned


def fingerprint(public_key_line: str) -> str:
    """``SHA256:...`` of a public key line, as ``ssh-keygen -l`` prints it."""
    return str(asyncssh.import_public_key(public_key_line).get_fingerprint("sha256"))


async def fetch_host_key(host: str, port: int) -> str:
    """The host key ``host``:``port`` offers now (first contact, to be confirmed by the user);
    422 naming ``host`` if no SSH server there answers within :data:`FETCH_TIMEOUT` or offers
    a key: the server the user named cannot be registered (the gateway itself is fine)."""
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(host, port), FETCH_TIMEOUT)
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise ValidationFailed([FieldError("host", f"no SSH server at {host}:{port} answered: "
                                           f"{exc}"[:300])]) from None
    if key is None:
        raise ValidationFailed([FieldError("host", f"the SSH server at {host}:{port} offered "
                                           "no host key")])
    return key.export_public_key("openssh").decode().strip()
