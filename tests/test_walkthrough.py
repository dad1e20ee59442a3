"""WALKTHROUGH.md stays true: every code line it quotes still appears in the file its section names."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def code(line: str) -> str:
    """A line without its comment and with white space folded: the walkthrough re-aligns and re-words
    comments (e.g. adds the function's name), the code itself must be the repo's to the letter."""
    return " ".join(line.split("#", 1)[0].split())


def quoted_blocks():
    """(section's file, [quoted code lines]) for every ```python block of WALKTHROUGH.md."""
    text = (REPO / "WALKTHROUGH.md").read_text()
    blocks, source = [], None
    for part in re.split(r"(^## [^\n]*$|```python\n.*?```)", text, flags=re.M | re.S):
        header = re.match(r"## .*`(\w+\.py)`", part)
        if header:
            source = header.group(1)
        elif part.startswith("```python"):
            lines = [code(line) for line in part.splitlines()[1:-1]]
            blocks.append((source, [line for line in lines if line and line != "..."]))
    return blocks


def test_walkthrough_quotes_code_that_exists():
    blocks = quoted_blocks()
    assert len(blocks) >= 8, "every course section quotes its code"
    for source, lines in blocks:
        repo_lines = {code(line) for line in (REPO / source).read_text().splitlines()}
        stale = [line for line in lines if line not in repo_lines]
        assert not stale, f"WALKTHROUGH.md quotes lines that {source} no longer has: {stale}"
