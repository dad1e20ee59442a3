"""The list of classic mistakes (tools/mistakes.py) stays true to today's code, and its study page is current;
the slow test makes every mistake in a copy of the repo and expects its module's tests to fail."""
from collections import Counter

import pytest

from tools import mistakes
from tools.mistakes import MISTAKES, SECTIONS, REPO, apply


@pytest.mark.parametrize("mistake", MISTAKES, ids=[f"{m.module}-{k}" for k, m in enumerate(MISTAKES)])
def test_each_mistake_applies_to_todays_code(mistake):
    """Its ``right`` piece occurs exactly once in its module, and the mistake changes one line only."""
    text = mistake.path.read_text()
    wrong = apply(mistake, text)
    changed = [(a, b) for a, b in zip(text.splitlines(), wrong.splitlines()) if a != b]
    assert len(changed) == 1 and len(text.splitlines()) == len(wrong.splitlines()), "a mistake is a one-line change"


def test_every_section_has_its_mistakes():
    count = Counter(m.module for m in MISTAKES)
    assert len(MISTAKES) >= 40 and all(count[s] >= 4 for s in SECTIONS), count


def test_pitfalls_page_lists_every_mistake():
    """PITFALLS.md is written by ``python -m tools.mistakes --write``: every mistake is on it, under its section."""
    page = (REPO / "PITFALLS.md").read_text()
    for m in MISTAKES:
        assert m.what.replace("|", "\\|") in page, f"PITFALLS.md lacks '{m.what}': run python -m tools.mistakes --write"
    assert page.count("\n| ") - page.count("\n| mistake |") == len(MISTAKES), "PITFALLS.md lists a mistake no longer made"


def test_a_caught_and_a_missed_mistake_are_told_apart(tmp_path):
    """The checker itself: a harmless change (a comment) is not caught, a real mistake is."""
    root = mistakes.copy_repo(tmp_path)
    harmless = mistakes.Mistake("neck", "a comment", "-", "# L_i: (B, out, h_i, w_i)", "# L_i")
    failed, _ = mistakes.check(harmless, root)
    assert not failed
    failed, said = mistakes.check(next(m for m in MISTAKES if m.module == "neck"), root)
    assert failed and said.startswith("tests/test_neck.py::")


@pytest.mark.slow
def test_every_mistake_fails_its_modules_tests():
    assert mistakes.main([]) == 0, "a mistake on the list passes its module's tests: see the MISSED lines above"
