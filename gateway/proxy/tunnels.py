"""Tunnels: where, on this machine, the gateway reaches a lab's server.

With the local transport the gateway runs inside the cluster's network and connects to the
lab's node directly. With the SSH transport it reaches the node through the pooled SSH
connection of the lab's unix user: one local port forward per lab, on 127.0.0.1 with a port
the kernel picks, re-opened over a fresh connection whenever the old one has closed (so a
dropped SSH link heals on the next request). The forwarded connection is opened *as the lab's
owner*, from the login host: it can reach nothing the owner couldn't.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncssh

from ..errors import ClusterUnavailable
from ..jobs.runtime import ClusterRuntime
from ..transport.ssh import SSHTransport

log = logging.getLogger(__name__)


@dataclass
class _Forward:
    connection: asyncssh.SSHClientConnection
    listener: asyncssh.SSHListener


@dataclass
class Tunnels:
    """Local addresses of lab servers, keyed by (cluster, unix user, host, port)."""

    _forwards: dict[tuple[str, str, str, int], _Forward] = field(default_factory=dict)
    _locks: dict[tuple[str, str, str, int], asyncio.Lock] = field(default_factory=dict)

    async def address(
        self, runtime: ClusterRuntime, host: str, port: int, *, user: str
    ) -> tuple[str, int]:
        """Where ``host:port`` (as the cluster's login side sees it) answers from here.

        Raises ClusterUnavailable when the SSH connection can't be (re)opened.
        """
        transport = runtime.transport
        if not isinstance(transport, SSHTransport):
            return host, port
        key = (runtime.name, user, host, port)
        async with self._locks.setdefault(key, asyncio.Lock()):
            connection = await transport.connection(user)
            forward = self._forwards.get(key)
            if forward is None or forward.connection is not connection:
                if forward is not None:
                    forward.listener.close()
                try:
                    listener = await connection.forward_local_port("127.0.0.1", 0, host, port)
                except (OSError, asyncssh.Error) as exc:
                    raise ClusterUnavailable(f"cannot forward to {host}:{port}: {exc}") from exc
                forward = self._forwards[key] = _Forward(connection, listener)
                log.info("tunnel to %s:%s as %s on 127.0.0.1:%s", host, port, user,
                         listener.get_port())
            return "127.0.0.1", forward.listener.get_port()

    def retain(self, keep: set[tuple[str, str, str, int]]) -> None:
        """Close every forward not in ``keep`` ((cluster, unix user, host, port) of the labs
        that may still be up): an ended lab's local port is not left listening."""
        for key in [k for k in self._forwards if k not in keep]:
            self._forwards.pop(key).listener.close()
            self._locks.pop(key, None)

    def close(self) -> None:
        for forward in self._forwards.values():
            forward.listener.close()
        self._forwards.clear()
