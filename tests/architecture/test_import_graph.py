"""The package rules of docs/architecture.md, checked on the source (every import, lazy ones too).

- ``lethe_format`` imports nothing of the project and no third-party numerics (torch, numpy);
- ``ease_engine`` (the library) imports none of service, workers, the CLI, the benchmarks, Flower;
- ``service`` never imports torch, open_clip, the engine, the workers or the CLI;
- ``workers`` never imports the CLI or the benchmarks; nothing below the CLI imports it;
- no import cycles, between modules or between the engine's sub-packages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("lethe_format", "ease_engine", "service", "workers", "lethe_cli", "lethe_bench", "lethe_flower")
FORBIDDEN = {
    "lethe_format": {"ease_engine", "service", "workers", "lethe_cli", "lethe_bench", "lethe_flower", "torch",
                     "numpy", "open_clip"},
    "ease_engine": {"service", "workers", "lethe_cli", "lethe_bench", "lethe_flower", "flwr"},
    "service": {"torch", "open_clip", "ease_engine", "workers", "lethe_cli", "lethe_bench", "lethe_flower"},
    "workers": {"lethe_cli", "lethe_bench", "lethe_flower"},
    "lethe_bench": {"lethe_cli"},
    "lethe_flower": {"lethe_cli", "lethe_bench", "service", "workers"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imported_names(name: str, path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (absolute, relative resolved)."""
    names = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(project module -> project modules it imports, project module -> top-level names it imports)."""
    modules = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    tops: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for imported in _imported_names(name, path):
            tops[name].add(imported.split(".")[0])
            target = imported
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges, tops


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(set(graph) | {n for targets in graph.values() for n in targets}):
        if node not in index:
            visit(node)
    return result


def test_layer_rules():
    _, tops = _graph()
    violations = [
        f"{module} imports {name}"
        for module, names in sorted(tops.items())
        for name in sorted(names & FORBIDDEN.get(module.split(".")[0], set()))
    ]
    assert not violations, "\n".join(violations)


def test_no_module_cycles():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_no_cycles_between_engine_subpackages():
    edges, _ = _graph()

    def group(module: str) -> str:
        return ".".join(module.split(".")[:2])

    groups: dict[str, set[str]] = defaultdict(set)
    for source, targets in edges.items():
        for target in targets:
            if group(source) != group(target):
                groups[group(source)].add(group(target))
    assert _cycles(groups) == []


def test_the_checker_sees_cycles_and_violations():
    """Negative control: the graph helpers flag a planted cycle and a planted forbidden import."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    planted = _imported_names("service.x", REPO / "tests" / "architecture" / "planted_violation.txt")
    assert "torch.nn" in planted and "service.y" in planted


@pytest.mark.parametrize(("module", "heavy"), [("lethe_format", "torch"), ("lethe_format", "numpy"),
                                               ("lethe_cli.admin", "torch")])
def test_light_packages_stay_light_at_run_time(module, heavy):
    code = f"import sys, {module}; assert {heavy!r} not in sys.modules, sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_documented_rules_are_the_checked_rules():
    """docs/architecture.md's package-rules table and FORBIDDEN say the same (a rule changed in one place only
    fails here)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Package rules", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            documented[cells[0].strip("`")] = {name.strip() for name in cells[1].split(",")}
    assert documented == FORBIDDEN
