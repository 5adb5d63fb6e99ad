"""The package's shape: three parts, entry points at the top, and no import circles."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlp_sweep"
PARTS = ("training", "sweeping", "analysis")
ENTRY_POINTS = {"train", "workers", "compare", "refit"}  # python -m mlp_sweep.NAME


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting, done = [], set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node):] + [node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph[node]):
            if cycle := visit(target):
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return None


def test_no_module_imports_itself_back_through_others():
    graph = import_graph()
    assert "mlp_sweep.analysis.report" in graph and graph["mlp_sweep.analysis.report"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_top_level_holds_only_entry_points_and_the_shared_errors():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == ENTRY_POINTS | {"errors"}
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(PARTS)


def test_training_does_not_depend_on_sweeping_or_analysis():
    # Training is what a trial runs; the sweep and the reading of results build on it.
    graph = import_graph()
    training = {name for name in graph if name.startswith("mlp_sweep.training")}
    leaks = {(name, target) for name in training for target in graph[name]
             if target.startswith(("mlp_sweep.sweeping", "mlp_sweep.analysis"))}
    assert not leaks
