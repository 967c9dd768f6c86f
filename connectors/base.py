"""The connector contract, and loading connectors by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.plugins import load_plugin
from gateway.spec import InputSpec


@dataclass(frozen=True)
class StorageTarget:
    """A registered storage server as a transfer needs it (never the key itself: ``key`` is
    the name of the 0600 key file in the job's ``.stage`` directory)."""

    host: str
    port: int
    user: str
    key: str


class Connector(Protocol):
    """Describes one input's transfer for the job-side stager (gateway/jobside/stage.py)."""

    @property
    def mode(self) -> str:
        """The ``mode`` of the inputs this connector moves."""
        ...

    def plan(self, binding: InputSpec, target: StorageTarget) -> dict[str, Any]:
        """The stager's plan entry for ``binding`` (JSON-ready)."""
        ...


def load_connector(mode: str) -> Connector:
    """The connector for ``mode`` from the ``hpcgw.connectors`` entry point group."""
    connector: Connector = load_plugin("hpcgw.connectors", mode, "connector", "staging")()
    return connector
