"""The package shows its architecture: imports point one way between layers, no import circle, small modules.

Layers, lowest first (a module may import its own package and any lower layer, never a higher one or a sibling
of its own layer):

0. the shared top: ``benchmark.{errors,registry,config,precision,checkpoints,method,training}``
1. ``benchmark.store`` (results, integrity, locking, provenance) and ``benchmark.data`` (datasets, streams)
2. ``benchmark.models`` (backbones, heads, classifiers, peft; may read data) and ``benchmark.reporting``
   (metrics, tables, figures; reads the store)
3. ``benchmark.learners`` (method-family skeletons)
4. ``methods`` and ``baselines`` (one file per method)
5. ``benchmark.runs`` (plan, preflight, runner, launchers, evaluation)
6. ``benchmark.cli`` (one module per command)
7. ``benchmark.testing`` (the conformance kit, which drives everything, the CLI included)
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "methods", "baselines")
MAX_LINES = 400
SHARED = {"errors", "registry", "config", "precision", "checkpoints", "method", "training"}
LAYERS = {"store": 1, "data": 1, "models": 2, "reporting": 2, "learners": 3, "runs": 5, "cli": 6, "testing": 7}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def layer(module: str) -> tuple[int, str]:
    """(rank, group) of a module; the group is the unit that may import itself freely."""
    parts = module.split(".")
    if parts[0] in ("methods", "baselines"):
        return 4, parts[0]
    if len(parts) == 1:
        return 0, "benchmark"
    if parts[1] in SHARED:
        return 0, "benchmark"
    assert parts[1] in LAYERS, f"{module}: a module outside the known layers (add it to the architecture)"
    return LAYERS[parts[1]], parts[1]


def imported(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in a file (lazy imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(path, known) - {name} for name, path in found.items()}


def test_every_import_points_down_a_layer():
    upward = []
    for module, targets in graph().items():
        rank, group = layer(module)
        for target in targets:
            target_rank, target_group = layer(target)
            if target_group != group and target_rank >= rank and not (rank == 0 and target_rank == 0):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not point down a layer:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    edges = graph()
    # A package's __init__ importing its own modules is how registration works; not a circle of meaning.
    edges = {m: {t for t in ts if not (m.endswith(t.rpartition(".")[0]) and t.startswith(m + "."))}
             for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [node, target]) if target in stack
                              else f"{node} -> {target}")
            elif target not in state:
                visit(target, stack + [node])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_no_module_over_400_lines():
    long = {name: count for name, path in modules().items()
            if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_subpackage_says_what_it_holds_and_may_import():
    for path in sorted((REPO / "benchmark").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path.relative_to(REPO)} has no docstring"
        if path.parent != REPO / "benchmark" and path.parent.parent == REPO / "benchmark":
            assert "import" in doc, f"{path.relative_to(REPO)}: its docstring does not say what it may import"
