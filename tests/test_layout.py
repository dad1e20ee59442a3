"""The repo's shape: the course at the top, the lab in tools/, every import pointing one way.

tools/ holds two kinds of module. Helpers are what the course imports (and what those import): they never
import a course module. Programs (``python -m tools.NAME``) use the course and are never imported by it."""
import ast
from pathlib import Path


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
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        imported |= {name for name in names if name in modules}
    return imported


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


def helpers(graph: dict[str, set[str]]) -> set[str]:
    """The tools modules the course reaches: those it imports, and what those import in turn."""
    reached, todo = set(), [m for c in COURSE for m in graph[c] if m.startswith("tools.")]
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo += [n for n in graph[m] if n.startswith("tools.")]
    return reached


def test_helpers_never_import_the_course():
    graph = import_graph()
    reached = helpers(graph)
    assert {"tools.sources", "tools.checks", "tools.device"} <= reached, "the graph was read"
    for helper in sorted(reached):
        back = graph[helper] & COURSE
        assert not back, f"{helper} is imported by the course and imports the course back ({sorted(back)})"


def test_helpers_and_programs_as_tools_init_lists_them():
    """tools/__init__.py names each module under the kind it is; a module that changes kind must move there."""
    graph = import_graph()
    text = (REPO / "tools" / "__init__.py").read_text()
    listed_helpers = text.split("Programs")[0]
    for name in sorted(m for m in graph if m.startswith("tools.")):
        short = name.split(".")[1]
        assert short in text, f"tools/__init__.py does not list {short}"
        assert (f"{short}.py" in listed_helpers) == (name in helpers(graph)), (
            f"{name} is {'a helper' if name in helpers(graph) else 'a program'}: list it under that heading")
