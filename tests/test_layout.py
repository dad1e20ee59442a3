"""The repo's shape: the course at the top, the lab in tools/, every import pointing one way (no cycle)."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COURSE = {"backbone", "neck", "head", "assign", "losses", "data", "train", "evaluate", "detector"}


def own_modules() -> dict[str, Path]:
    """{dotted module name: file} for the top level and tools/."""
    files = {p.stem: p for p in REPO.glob("*.py")}
    files |= {f"tools.{p.stem}": p for p in (REPO / "tools").glob("*.py") if p.stem != "__init__"}
    return files


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The repo's own modules that ``path`` imports anywhere in it (inside functions too): ``import x``,
    ``from x import y``, ``from tools import y`` (y a module) and ``from tools.x import y``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = own_modules()
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"b2"}, "b2": {"b"}}) == ["b", "b2", "b"]


def test_imports_are_read_from_every_form(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import data\nfrom losses import box_iou\nfrom tools import plots\n"
                   "def f():\n    from tools.checks import split_rows\n")
    assert imports_of(src, {"data", "losses", "tools.plots", "tools.checks", "head"}) == {
        "data", "losses", "tools.plots", "tools.checks"}


def test_no_import_cycle():
    graph = import_graph()
    assert graph["train"] and graph["tools.visualize"], "the graph was read"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_top_level_is_the_course():
    assert {p.stem for p in REPO.glob("*.py")} == COURSE


@pytest.mark.parametrize("module", sorted(COURSE - {"detector"}))
def test_course_modules_fit_one_sitting(module):
    assert len((REPO / f"{module}.py").read_text().splitlines()) <= 250
