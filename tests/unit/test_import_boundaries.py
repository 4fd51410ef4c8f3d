"""The package boundaries the design rests on, checked over the whole tree with ``ast``.

- ``scheduler`` and ``rfork_agent`` never import each other: what they share is the
  wire contract in ``rfork_api``.
- ``rfork_api`` imports only the standard library, pydantic, httpx and starlette at
  module level (its ``http`` module, the services' side, also FastAPI; prometheus_client
  only inside functions) and no other rfork package, so every process can depend on it.
- ``testbed`` and ``bench`` use public names only, and no CLI module.
- one client layer: nothing imports ``rfork_agent.clients`` (the old dict-returning
  clients, with their own copy of the exception tree); every caller uses
  ``rfork_api.clients`` and ``rfork_api.errors``.
- no test module imports another test module (shared fixtures live in conftest.py).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = ("rfork_api", "scheduler", "rfork_agent", "throttle", "metrics", "testbed", "bench")
API_THIRD_PARTY = {"pydantic", "httpx", "starlette", "pydantic_core", "typing_extensions"}
API_LAZY_OK = API_THIRD_PARTY | {"fastapi", "prometheus_client"}
CLI_MODULES = {"rfork_agent.cli", "rfork_agent.fork_cli", "rfork_agent.agent_cli", "scheduler.cli"}


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str
    names: tuple[str, ...]
    top_level: bool


def _imports(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    module_level = {id(n) for n in tree.body}
    # An import inside `if TYPE_CHECKING:` or try/except at module level still counts as module level.
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            module_level.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(path, node.lineno, alias.name, (), id(node) in module_level))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(Import(path, node.lineno, node.module, tuple(a.name for a in node.names),
                                id(node) in module_level))
    return found


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _top(module: str) -> str:
    return module.split(".")[0]


def _where(i: Import) -> str:
    return f"{i.path.relative_to(REPO)}:{i.line} imports {i.module}"


@pytest.mark.parametrize("package, forbidden", [("scheduler", "rfork_agent"), ("rfork_agent", "scheduler")])
def test_scheduler_and_agent_never_import_each_other(package, forbidden):
    bad = [_where(i) for f in _files(package) for i in _imports(f) if _top(i.module) == forbidden]
    assert not bad, f"{package} must reach {forbidden} only through rfork_api:\n" + "\n".join(bad)


def test_rfork_api_depends_on_nothing_but_pydantic_httpx_starlette():
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for f in _files("rfork_api"):
        for i in _imports(f):
            top = _top(i.module)
            if top in stdlib or top == "rfork_api" or top == "__future__":
                continue
            allowed = API_THIRD_PARTY if i.top_level else API_LAZY_OK
            if f.name == "http.py":
                allowed = allowed | {"fastapi"}
            if top not in allowed:
                bad.append(_where(i) + ("" if i.top_level else " (inside a function)"))
    assert not bad, "rfork_api must stay importable by every process:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["testbed", "bench"])
def test_testbed_and_bench_use_public_names_only(package):
    bad = []
    for f in _files(package):
        for i in _imports(f):
            if _top(i.module) not in PROJECT:
                continue
            private = [n for n in i.names if n.startswith("_")]
            if private:
                bad.append(f"{_where(i)} (private: {', '.join(private)})")
            if i.module in CLI_MODULES or any(f"{i.module}.{n}" in CLI_MODULES for n in i.names):
                bad.append(f"{_where(i)} (a CLI module: move what it needs into a library module)")
    assert not bad, "\n".join(bad)


def test_no_test_module_imports_another():
    bad = []
    for f in sorted((REPO / "tests").rglob("*.py")):
        for i in _imports(f):
            leaf = (i.module.split(".")[-1], *i.names)
            if _top(i.module) == "tests" and any(part.startswith("test_") for part in leaf):
                bad.append(_where(i))
    assert not bad, "shared fixtures and helpers belong in conftest.py or a helper module:\n" + "\n".join(bad)


def test_one_client_layer_nothing_imports_the_old_agent_clients():
    assert not (REPO / "rfork_agent" / "clients.py").exists(), \
        "rfork_agent/clients.py is back: rfork_api.clients is the one client layer (typed replies, one exception set)"
    bad = []
    for top in (*PROJECT, "tests", "scripts", "sim"):
        for f in _files(top):
            for i in _imports(f):
                if i.module == "rfork_agent.clients" or (i.module == "rfork_agent" and "clients" in i.names):
                    bad.append(_where(i))
    assert not bad, "use rfork_api.clients / rfork_api.errors instead:\n" + "\n".join(bad)
