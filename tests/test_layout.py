"""The package's shape: three parts, the commands, a sweep job's side of its trials and three
shared helpers at the top, and no import circles between modules or between parts."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlp_sweep"
PARTS = ("training", "sweeping", "analysis")
ENTRY_POINTS = {"train", "workers", "compare", "refit"}  # python -m mlp_sweep.NAME
SHARED = {"errors", "files", "values"}  # used by every part; they import none of them
JOB = {"job"}  # what `train` runs in a sweep's job: a trial (sweeping) as a run (training)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module name `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports."""
    return imported_names(path) & modules


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


def part_of(module: str) -> str:
    """`training`, `sweeping`, `analysis`, or the top-level module's own name."""
    return module.split(".")[1] if module.count(".") else module


def part_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        graph.setdefault(part_of(name), set()).update(
            part_of(t) for t in targets if part_of(t) != part_of(name))
    return graph


def test_no_part_imports_itself_back_through_others():
    graph = part_graph()
    assert graph["analysis"] >= {"training", "sweeping"}  # the graph is read, not empty
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_shared_helpers_import_no_part():
    graph = part_graph()
    assert all(not graph[name] for name in SHARED), {name: graph[name] for name in SHARED}


def test_no_two_modules_share_a_file_name():
    stems: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.stem != "__init__":
            stems.setdefault(path.stem, []).append(module_name(path))
    assert {stem: names for stem, names in stems.items() if len(names) > 1} == {}


def test_the_sweeper_imports_neither_torch_nor_training_nor_analysis():
    # hydra/sweeper=mlp_optuna is offered to any Hydra app.
    for path in (PACKAGE / "sweeping").glob("*.py"):
        names = imported_names(path)
        assert not {n for n in names if n.split(".")[0] in ("torch", "torchvision")}, path
        assert not {n for n in names if n.startswith(("mlp_sweep.training",
                                                       "mlp_sweep.analysis"))}, path


def test_top_level_holds_only_entry_points_the_job_and_the_shared_helpers():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == ENTRY_POINTS | JOB | SHARED
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(PARTS)


def test_training_does_not_depend_on_sweeping_or_analysis():
    # Training is what a trial runs; the sweep and the reading of results build on it.
    graph = import_graph()
    training = {name for name in graph if name.startswith("mlp_sweep.training")}
    leaks = {(name, target) for name in training for target in graph[name]
             if target.startswith(("mlp_sweep.sweeping", "mlp_sweep.analysis"))}
    assert not leaks
