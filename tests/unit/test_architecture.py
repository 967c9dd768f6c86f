"""The package structure, checked from the source: who may import whom (README, "Layout").

Every ``import`` in ``gateway/`` counts, also those inside functions or under ``TYPE_CHECKING``:
a circle hidden from the interpreter is still a circle for the reader.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "gateway"

# (importer prefix, imported prefix): an edge from the first to the second is refused.
FORBIDDEN = [
    ("gateway.api", "gateway.store"),  # jobs through the service, users through Accounts
    ("gateway.proxy", "gateway.store"),
    ("gateway.proxy", "gateway.api"),  # the API hands the proxy its caller
    ("gateway.proxy", "gateway.jobs.service"),
    *(("gateway.jobs", outer) for outer in ("gateway.api", "gateway.proxy", "gateway.server",
                                              "gateway.cli")),
    *((inner, outer) for inner in ("gateway.scheduler", "gateway.transport", "gateway.store",
                                   "gateway.runtimes", "gateway.staging")
      for outer in ("gateway.jobs", "gateway.api", "gateway.proxy", "gateway.server")),
    # Workers share the JobContext, never the service nor each other's functions.
    *((f"gateway.jobs.{worker}", "gateway.jobs.service")
      for worker in ("submitter", "stager", "poller", "collector", "lab_watcher", "retention",
                     "webhooks")),
    # Webhook signing and address policy know nothing of jobs, the API or the server.
    *(("gateway.webhooks", outer) for outer in ("gateway.jobs", "gateway.api", "gateway.proxy",
                                                  "gateway.server", "gateway.store")),
    ("gateway.jobs.poller", "gateway.jobs.collector"),
    ("gateway.jobs.submitter", "gateway.jobs.collector"),
    ("gateway.jobside", "gateway"),  # runs on the cluster, where the gateway is not installed
]
ONLY_FROM = {"gateway.server": ("gateway.server", "gateway.cli")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in ROOT.rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The gateway modules that module ``name`` (at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("gateway"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if not base.startswith("gateway"):
                continue
            for alias in node.names:  # ``from . import jobs`` imports a module
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base


@functools.cache
def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: {target for target in imported(name, path, set(found)) if target != name}
            for name, path in found.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_circle_finder_finds_circles_and_only_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_relative_function_level_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "gateway.jobs.context" in graph["gateway.jobs.submitter"]  # from .context import
    assert "gateway.api.jobs" in graph["gateway.api.app"]  # from . import jobs
    assert "gateway.store" in graph["gateway.jobs.context"]  # from ..store import Store


def test_no_import_circle_in_the_gateway() -> None:
    assert circles(import_graph()) == []


@pytest.mark.parametrize(("importer", "imported_prefix"), FORBIDDEN)
def test_data_flows_inward(importer: str, imported_prefix: str) -> None:
    graph = import_graph()
    assert any(within(name, importer) for name in graph), f"no module {importer}"
    wrong = sorted(f"{name} -> {target}" for name, targets in graph.items()
                   if within(name, importer) for target in targets
                   if within(target, imported_prefix))
    assert wrong == []


def test_only_the_cli_builds_the_server() -> None:
    graph = import_graph()
    for target, allowed in ONLY_FROM.items():
        users = {name for name, targets in graph.items() if target in targets}
        assert {name for name in users if not any(within(name, a) for a in allowed)} == set()
