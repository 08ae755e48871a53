"""The repository's shape: the seed's files at the top, the agent's insides in `agent/`, and no
module of ours importing another in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("agent", "gcp_emulator", "bench", "tests")


def our_modules() -> dict[str, Path]:
    """Dotted name -> file, for every Python module of the project."""
    modules = {p.stem: p for p in REPO.glob("*.py")}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that path imports, at any depth of its code (but for the imports
    under `if TYPE_CHECKING:`, which are for annotations only and never run)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for block in [n for n in ast.walk(tree) if isinstance(n, ast.If)]:
        if isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING":
            block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return [*stack[stack.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph[node]):
            cycle = visit(nxt, [*stack, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_no_module_imports_another_in_a_circle():
    modules = our_modules()
    # A module importing a package it is in (agent.api -> agent) is no circle.
    graph = {
        name: imports_of(path, modules)
        - {name, *(".".join(name.split(".")[:n]) for n in range(1, name.count(".") + 1))}
        for name, path in modules.items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_top_level_holds_the_seeds_python_files_only():
    top = sorted(p.name for p in REPO.glob("*.py"))
    assert top == ["fastapi_app.py", "main.py"], (
        f"top-level modules {top}: the agent's insides belong in agent/"
    )


def test_the_agent_package_is_what_fastapi_app_builds_on():
    assert imports_of(REPO / "fastapi_app.py", our_modules()) >= {"agent.api", "agent.settings"}
