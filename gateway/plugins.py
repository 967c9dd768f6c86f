"""Plugins: the classes a site can add without touching the core, found by name in entry point
groups (``hpcgw.transports``, ``hpcgw.schedulers``) of the installed packages."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError


def plugin_names(group: str) -> list[str]:
    """The names installed in entry point ``group``, sorted."""
    return sorted(entry.name for entry in entry_points(group=group))


def load_plugin(group: str, name: str, what: str, cluster: str) -> Any:
    """The object entry point ``name`` of ``group`` names (a class, to be instantiated by the
    caller); ConfigError naming ``cluster`` and ``what`` if none is installed under it."""
    for entry in entry_points(group=group):
        if entry.name == name:
            return entry.load()
    raise ConfigError(f"cluster {cluster}: unknown {what} {name!r}")
