"""The docs stay true: every code block WALKTHROUGH.md quotes is a contiguous run of the file its section names
(``...`` on a line of its own marks lines left out), and every link of README, WALKTHROUGH and RESULTS resolves."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def code(line: str) -> str:
    """A line without its comment and with white space folded: the walkthrough re-aligns and re-words
    comments (e.g. adds the function's name), the code itself must be the repo's to the letter."""
    return " ".join(line.split("#", 1)[0].split())


def quoted_blocks():
    """(section's file, [runs of quoted code lines, split at "..."]) for every ```python block."""
    text = (REPO / "WALKTHROUGH.md").read_text()
    blocks, source = [], None
    for part in re.split(r"(^## [^\n]*$|```python\n.*?```)", text, flags=re.M | re.S):
        header = re.match(r"## .*`(\w+\.py)`", part)
        if header:
            source = header.group(1)
        elif part.startswith("```python"):
            runs = [[]]
            for line in map(code, part.splitlines()[1:-1]):
                if line == "...":
                    runs.append([])
                elif line:
                    runs[-1].append(line)
            blocks.append((source, [run for run in runs if run]))
    return blocks


def is_contiguous_run(run: list[str], lines: list[str], start: int = 0) -> int | None:
    """Where ``run`` stands as consecutive code lines of ``lines`` (blank and comment-only lines skipped) at
    or after index ``start``: the index just past it, or None."""
    code_lines = [(i, c) for i, c in ((i, code(line)) for i, line in enumerate(lines)) if c and i >= start]
    texts = [c for _, c in code_lines]
    for k in range(len(texts) - len(run) + 1):
        if texts[k:k + len(run)] == run:
            return code_lines[k + len(run) - 1][0] + 1
    return None


def test_contiguity_check_rejects_a_quote_with_a_silent_gap():
    lines = ["a = 1", "", "# a comment", "b = 2  # note", "c = 3", "d = 4"]
    assert is_contiguous_run(["a = 1", "b = 2"], lines) == 4
    assert is_contiguous_run(["a = 1", "c = 3"], lines) is None       # b = 2 left out without "..."
    assert is_contiguous_run(["c = 3"], lines, start=5) is None         # runs must come in file order


def test_walkthrough_quotes_contiguous_code_that_exists():
    blocks = quoted_blocks()
    assert len(blocks) >= 8, "every course section quotes its code"
    for source, runs in blocks:
        lines = (REPO / source).read_text().splitlines()
        start = 0
        for run in runs:
            end = is_contiguous_run(run, lines, start)
            assert end is not None, f"WALKTHROUGH.md quotes lines that are not a contiguous run of {source}: {run}"
            start = end


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens kept), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_slug_matches_githubs_rule():
    assert slug("2. The headline run and the shipped model") == "2-the-headline-run-and-the-shipped-model"
    assert slug("Which one (simple vs TAL, with warm-up)? Why?") == "which-one-simple-vs-tal-with-warm-up-why"


def test_links_and_pictures_of_the_docs_resolve():
    """Every relative link and picture in README, WALKTHROUGH and RESULTS points at a file of the repo, and
    every #anchor at a heading of the file it names."""
    for doc in ("README.md", "WALKTHROUGH.md", "RESULTS.md"):
        text = re.sub(r"```.*?```", "", (REPO / doc).read_text(), flags=re.S)  # code is not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith("http"):
                continue
            path, _, anchor = target.partition("#")
            file = REPO / (path or doc)
            assert file.exists(), f"{doc} links to {target}: no such file"
            if anchor:
                headings = {slug(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)}
                assert anchor in headings, f"{doc} links to {target}: no such heading"
