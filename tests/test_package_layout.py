"""The package's import graph: no circles, and the baselines stay on top of the runtime and the demo."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lerobot_policy_pi_rl

PACKAGE_DIR = Path(lerobot_policy_pi_rl.__file__).parent
PKG = PACKAGE_DIR.name


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (lazy imports count: they run too)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        # A package's __init__ re-exporting its own children is not a dependency on them in a circle.
        graph[name] = {d for d in deps if not (is_package and d.startswith(name + "."))}
    return graph


def find_cycles(graph: dict[str, set[str]], packages: set[str]) -> list[list[str]]:
    """Circles of imports that do not pass through a package `__init__` (an `__init__` importing a child that
    imports a sibling through the package is how registration works, not a circle between modules)."""
    cycles, stack, state = [], [], {}

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return [c for c in cycles if not packages.intersection(c)]


def test_the_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"q"}, "q": {"p"}}
    assert find_cycles(graph, packages={"p"}) == [["a", "b", "c", "a"]]


def test_no_import_cycles_in_the_package():
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    cycles = find_cycles(import_graph(), packages)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer", ["runtime", "demo", "rl", "envs", "scripts"])
def test_only_the_baselines_import_the_baselines(layer):
    graph = import_graph()
    offenders = {
        module: sorted(d for d in deps if d.startswith(f"{PKG}.baselines"))
        for module, deps in graph.items()
        if module.startswith(f"{PKG}.{layer}")
    }
    assert not {m: d for m, d in offenders.items() if d}


def test_entry_points_find_the_sac_loops_by_algorithm_type():
    from lerobot_policy_pi_rl.baselines.sac import actor, learner
    from lerobot_policy_pi_rl.runtime.cli import baseline_runner

    assert baseline_runner("sac", "learner") is learner.run
    assert baseline_runner("sac", "actor") is actor.run
    with pytest.raises(ValueError, match="algorithm.type='ppo_gauss' has no learner loop"):
        baseline_runner("ppo_gauss", "learner")
    with pytest.raises(ValueError, match="role='critic'"):
        baseline_runner("sac", "critic")
