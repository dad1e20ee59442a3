"""One line per run for RESULTS.md's "does the recipe transfer?": validation mAP at the best epoch and over the
last 4, each class's AP at the end, and the first epoch at which each class's AP reaches 0.01; with ``--early N``
instead, what each class's GTs were taught over the first N steps (means of ``early.py``'s columns).

    python results/transfer/summary.py RUN_DIR [RUN_DIR ...]
    python results/transfer/summary.py --early 36 RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path


def summary(run: Path) -> str:
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["val_map"] != ""]
    maps = [float(r["val_map"]) for r in rows]
    best = max(range(len(maps)), key=maps.__getitem__)
    classes = [k[len("val_ap_"):] for k in rows[0] if k.startswith("val_ap_")]
    first = {c: next((r["epoch"] for r in rows if float(r[f"val_ap_{c}"]) >= 0.01), "never") for c in classes}
    last = {c: float(rows[-1][f"val_ap_{c}"]) for c in classes}
    per_class = ", ".join(f"{c} {last[c]:.3f} (>= 0.01 from epoch {first[c]})" for c in classes)
    last4 = sum(maps[-4:]) / len(maps[-4:])
    return (f"{run.name}: best {maps[best]:.3f} (epoch {rows[best]['epoch']}), last 4 {last4:.3f}"
            f", mAP50 at best {float(rows[best]['val_map50']):.3f}, mAP75 at best {float(rows[best]['val_map75']):.3f}"
            f"; AP at the end: {per_class}")


def early(run: Path, steps: int) -> str:
    with open(run / "early.csv") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= steps]
    out = []
    for c in dict.fromkeys(r["class"] for r in rows):
        mine = [r for r in rows if r["class"] == c]
        mean = {k: sum(float(r[k]) for r in mine) / len(mine) for k in ("positives", "mass", "best_iou", "score")}
        out.append(f"{c}: positives/GT {mean['positives']:.1f}, mass/GT {mean['mass']:.3f}, "
                   f"best IoU {mean['best_iou']:.3f}, score {mean['score']:.4f}")
    return f"{run.name}, steps 1-{steps}: " + "; ".join(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--early":
        for run in args[2:]:
            print(early(Path(run), int(args[1])))
    else:
        for run in args:
            print(summary(Path(run)))
