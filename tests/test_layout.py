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
        for path in (REPO / package).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that path imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
    # A module importing its own package (agent.api -> agent) is no circle.
    graph = {
        name: imports_of(path, modules) - {name, name.split(".")[0]}
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
