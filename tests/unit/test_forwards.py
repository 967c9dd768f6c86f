"""Port forwards (``Transport.forward``): over SSH one local forward per (user, host, port),
re-opened on a new connection, closed once no lab needs it; locally the address itself. The SSH
connection is a stand-in that records the forwards it was asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.config import ClusterConfig, parse_config
from gateway.errors import ConfigError
from gateway.transport import load_transport
from gateway.transport.local import LocalTransport
from gateway.transport.ssh import SSHTransport


@dataclass
class FakeListener:
    port: int
    closed: bool = False

    def get_port(self) -> int:
        return self.port

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeConnection:
    forwards: list[tuple[str, int, str, int]] = field(default_factory=list)
    listeners: list[FakeListener] = field(default_factory=list)

    async def forward_local_port(self, listen_host: str, listen_port: int, host: str,
                                 port: int) -> FakeListener:
        self.forwards.append((listen_host, listen_port, host, port))
        self.listeners.append(FakeListener(40000 + len(self.listeners)))
        return self.listeners[-1]


def ssh_transport(connections: list[FakeConnection]) -> SSHTransport:
    cluster = ClusterConfig.model_validate({
        "name": "dev", "transport": "ssh", "default_partition": "cpu",
        "partitions": {"cpu": {}},
        "ssh": {"host": "127.0.0.1", "keys": {"alice": "/k"}, "query_user": "alice",
                "known_hosts": "/k.hosts"},
    })
    transport = SSHTransport(cluster)

    async def connection(user: str) -> Any:
        return connections[-1]
    transport.connection = connection  # type: ignore[method-assign]
    return transport


async def test_one_forward_per_lab_reopened_on_a_new_connection_and_closed_when_gone() -> None:
    connections = [FakeConnection()]
    transport = ssh_transport(connections)
    first = await transport.forward("node1", 41000, user="alice")
    assert first == ("127.0.0.1", 40000)
    assert await transport.forward("node1", 41000, user="alice") == first
    assert connections[0].forwards == [("127.0.0.1", 0, "node1", 41000)]  # loopback, port 0
    connections.append(FakeConnection())  # the old link dropped; the pool has a new one
    assert await transport.forward("node1", 41000, user="alice") == ("127.0.0.1", 40000)
    assert connections[0].listeners[0].closed and len(connections[1].forwards) == 1
    await transport.forward("node2", 42000, user="alice")
    transport.retain_forwards({("alice", "node2", 42000)})
    assert connections[1].listeners[0].closed and not connections[1].listeners[1].closed
    await transport.close()
    assert connections[1].listeners[1].closed


async def test_a_local_transport_needs_no_forward(config: Any) -> None:
    transport = LocalTransport(config.clusters[0])
    assert await transport.forward("node1", 41000, user="alice") == ("node1", 41000)


def test_transports_load_by_entry_point_name(make_raw_config: Any, tmp_path: Any) -> None:
    raw = make_raw_config(tmp_path / "data")
    cluster = parse_config(raw).clusters[0]
    assert isinstance(load_transport(cluster), LocalTransport)
    gone = cluster.model_copy(update={"transport": "uninstalled"})  # skips the config check
    with pytest.raises(ConfigError, match="unknown transport 'uninstalled'"):
        load_transport(gone)
