"""The homework kit: turn a course section into the exercise, and bring the reference back.

    python -m tools.homework blank assign       # assign.py's functions lose their bodies: write them yourself
    pytest tests/test_assign.py                 # the grader: fails, naming what is still missing
    python -m tools.homework restore assign     # the reference, byte for byte
    python -m tools.homework list               # what each section asks you to write

``blank`` keeps every signature, docstring and comment (the step comments say what each part does) and puts
``raise NotImplementedError("assign.select_topk: ...")`` where the code was. The reference goes to
``.homework/<section>.py`` first (git ignores it) with its SHA-256; ``restore`` puts it back and checks the
hash. PITFALLS.md lists the mistakes the section's tests catch.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import io
import re
import shutil
import sys
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What the course asks students to write, per section: functions, or Class.method.
EXERCISES = {
    "data": ["coco_to_xyxy", "parse_row", "boxes_to_image", "collate", "pad_targets"],
    "backbone": ["Backbone.freeze", "Backbone.train", "Backbone.forward"],
    "neck": ["FPN.__init__", "FPN.forward", "PAN.forward"],
    "head": ["DecoupledHead.__init__", "DecoupledHead.forward", "distribution_to_distance", "make_anchor_points",
             "decode", "encode"],
    "assign": ["candidates_inside", "select_topk", "resolve_conflicts", "build_targets",
               "TaskAlignedAssigner.__call__", "SimpleAssigner.prior_boxes", "SimpleAssigner.__call__"],
    "losses": ["box_area", "_inter_union", "paired_iou", "box_iou", "_enclosing_box", "iou_loss", "giou_loss",
               "_diou_terms", "diou_loss", "ciou_loss", "quality_focal_loss", "varifocal_loss",
               "distribution_focal_loss", "DetectionLoss.forward"],
    "train": ["make_optimizer", "lr_at", "train_one_epoch"],
    "evaluate": ["candidates", "soft_nms", "box_voting", "postprocess", "to_coco_json"],
}


class HomeworkError(RuntimeError):
    """A section that is already blanked, not blanked, or changed since."""


def functions(tree: ast.Module, names: list[str]) -> list[tuple[str, ast.FunctionDef]]:
    """The (qualified name, node) of each function ``names`` asks for, top-level or a class's method."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found |= {f"{node.name}.{m.name}": m for m in node.body if isinstance(m, ast.FunctionDef)}
    missing = [n for n in names if n not in found]
    if missing:
        raise HomeworkError(f"no function {', '.join(missing)}")
    return [(n, found[n]) for n in names]


def comments(lines: list[str], first: int, last: int) -> list[str]:
    """The comments on lines ``first``..``last`` (1-based), in order. A comment after code names what that line
    computes, so the shapes stay readable without the code: ``x = f(y)  # (B, A)`` -> ``# x: (B, A)``."""
    source = "".join(lines[first - 1:last])
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        code = tok.line[:tok.start[1]].strip()
        target = re.match(r"([A-Za-z_][\w.\[\], ]*?)\s*[-+*/&|]?=(?!=)", code)
        if target:
            out.append(f"# {target.group(1)}: {tok.string.lstrip('# ')}")
        elif code.startswith("return"):
            out.append(f"# returns: {tok.string.lstrip('# ')}")
        else:
            out.append(tok.string)
    return out


def blank_source(text: str, module: str, names: list[str]) -> str:
    """``text`` with the bodies of ``names`` replaced by their comments and a NotImplementedError."""
    lines = text.splitlines(keepends=True)
    for name, node in sorted(functions(ast.parse(text), names), key=lambda f: -f[1].lineno):
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        first, last = body[0].lineno, node.end_lineno
        indent = " " * body[0].col_offset
        kept = [f"{indent}{c}\n" for c in comments(lines, first, last)]
        todo = f'{indent}raise NotImplementedError("{module}.{name}: not written yet (python -m tools.homework)")\n'
        lines[first - 1:last] = kept + [todo]
    return "".join(lines)


def blank(section: str, root: Path = REPO) -> list[str]:
    """Save ``section``.py's reference under .homework/ and blank its exercises. -> the blanked names."""
    path, saved = root / f"{section}.py", root / ".homework" / f"{section}.py"
    if saved.exists():
        raise HomeworkError(f"{section} is already blanked ({saved} holds the reference): restore it first")
    text = path.read_text()
    blanked = blank_source(text, section, EXERCISES[section])
    saved.parent.mkdir(exist_ok=True)
    shutil.copy(path, saved)
    saved.with_suffix(".sha256").write_text(hashlib.sha256(text.encode()).hexdigest())
    path.write_text(blanked)
    return EXERCISES[section]


def restore(section: str, root: Path = REPO) -> None:
    """Put the saved reference back, checking it is the file that was blanked, byte for byte."""
    path, saved = root / f"{section}.py", root / ".homework" / f"{section}.py"
    if not saved.exists():
        raise HomeworkError(f"{section} is not blanked (no {saved})")
    text = saved.read_bytes()
    if hashlib.sha256(text).hexdigest() != saved.with_suffix(".sha256").read_text():
        raise HomeworkError(f"{saved} changed since it was saved: not restored")
    path.write_bytes(text)
    saved.unlink()
    saved.with_suffix(".sha256").unlink()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Blank a course section into its exercise, or restore the reference.")
    p.add_argument("action", choices=["blank", "restore", "list"])
    p.add_argument("section", nargs="?", choices=sorted(EXERCISES))
    args = p.parse_args(argv)
    if args.action == "list":
        for section, names in EXERCISES.items():
            print(f"{section + '.py':<12} {', '.join(names)}")
        return
    if args.section is None:
        p.error(f"{args.action} needs a section: {', '.join(EXERCISES)}")
    try:
        if args.action == "blank":
            names = blank(args.section)
            print(f"{args.section}.py: {len(names)} functions to write: {', '.join(names)}\n"
                  f"grade with: pytest tests/test_{args.section}.py   (pitfalls: PITFALLS.md)\n"
                  f"the reference back: python -m tools.homework restore {args.section}")
        else:
            restore(args.section)
            print(f"{args.section}.py restored (identical to the reference)")
    except HomeworkError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
