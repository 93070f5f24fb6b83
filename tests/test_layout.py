"""The package is laid out by stage: a module imports only from its own stage or the stages below it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distdiff"
# Lowest first. errors and cli are top-level leaves every stage may use (cli: the scripts' threads and one-line
# errors); jobs are whole script runs and may use everything.
STAGES = ["errors", "utils", "cli", "data", "models", "method", "pipelines", "tiny_sd", "training", "runs", "report",
          "jobs"]


def stage_of(module: str) -> str:
    """'distdiff.runs.manifest' -> 'runs'; 'distdiff.cli' -> 'cli'."""
    return module.split(".")[1]


def imports_of(path: Path) -> set[str]:
    """distdiff modules imported anywhere in `path` (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distdiff"):
            if node.module == "distdiff":
                found |= {f"distdiff.{alias.name}" for alias in node.names}
            else:
                found |= {f"{node.module}.{alias.name}" if node.module.count(".") == 1 and
                          (PACKAGE / node.module.split(".")[1] / f"{alias.name}.py").is_file() else node.module
                          for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("distdiff.")}
    return found


def module_name(path: Path) -> str:
    return ".".join(("distdiff",) + path.relative_to(PACKAGE).with_suffix("").parts)


def test_every_module_belongs_to_a_stage():
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue
        assert stage_of(module_name(path)) in STAGES, f"{path} is in no stage of {STAGES}"


def test_no_module_imports_from_a_higher_stage():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue
        mine = STAGES.index(stage_of(module_name(path)))
        for imported in imports_of(path):
            if STAGES.index(stage_of(imported)) > mine:
                upward.append(f"{module_name(path)} imports {imported}")
    assert upward == []


def test_the_module_import_graph_has_no_cycle():
    graph = {module_name(p): {m for m in imports_of(p) if m != module_name(p)} for p in PACKAGE.rglob("*.py")}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join(trail + [node])}"
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])
