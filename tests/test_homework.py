"""The homework kit (tools/homework.py): a blanked section keeps its signatures and docstrings, raises where its
code was, fails its tests naming what is missing, and comes back byte for byte."""
import ast
import subprocess
import sys

import pytest

from tools import homework, mistakes


@pytest.fixture
def copy(tmp_path):
    return mistakes.copy_repo(tmp_path)


@pytest.mark.parametrize("section", sorted(homework.EXERCISES))
def test_blank_then_restore_gives_the_same_bytes(copy, section):
    path = copy / f"{section}.py"
    reference = path.read_bytes()
    names = homework.blank(section, copy)
    blanked = path.read_text()
    tree = ast.parse(blanked)  # still a module a student can import
    for name, node in homework.functions(tree, names):
        raises = [n for n in ast.walk(node) if isinstance(n, ast.Raise)]
        assert len(raises) == 1 and f"{section}.{name}: not written yet" in ast.unparse(raises[0]), name
        assert ast.get_docstring(node) == ast.get_docstring(
            dict(homework.functions(ast.parse(reference.decode()), [name]))[name]), f"{name} lost its docstring"
    with pytest.raises(homework.HomeworkError, match="already blanked"):
        homework.blank(section, copy)
    homework.restore(section, copy)
    assert path.read_bytes() == reference
    with pytest.raises(homework.HomeworkError, match="not blanked"):
        homework.restore(section, copy)


def test_restore_refuses_a_reference_that_changed(copy):
    homework.blank("neck", copy)
    (copy / ".homework" / "neck.py").write_text("# edited\n")
    with pytest.raises(homework.HomeworkError, match="changed"):
        homework.restore("neck", copy)


def pytest_in(root, test_file):
    proc = subprocess.run([sys.executable, "-m", "pytest", test_file, "-q", "-m", "not slow", "-p", "no:cacheprovider"],
                          cwd=root, capture_output=True, text=True)
    return proc.returncode, proc.stdout


@pytest.mark.slow
def test_a_blanked_section_fails_its_tests_naming_what_is_missing(copy):
    homework.blank("assign", copy)
    code, out = pytest_in(copy, "tests/test_assign.py")
    assert code != 0 and "NotImplementedError: assign.select_topk: not written yet" in out, out[-2000:]
    homework.restore("assign", copy)
    code, out = pytest_in(copy, "tests/test_assign.py")
    assert code == 0, out
