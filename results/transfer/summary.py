"""One line per run for RESULTS.md's "does the recipe transfer?": validation mAP at the best epoch and over the
last 4, each class's AP at the end, and the first epoch at which each class's AP is above 0.

    python results/transfer/summary.py RUN_DIR [RUN_DIR ...]
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
    first = {c: next((r["epoch"] for r in rows if float(r[f"val_ap_{c}"]) > 0), "never") for c in classes}
    last = {c: float(rows[-1][f"val_ap_{c}"]) for c in classes}
    per_class = ", ".join(f"{c} {last[c]:.3f} (>0 from epoch {first[c]})" for c in classes)
    return (f"{run.name}: best {maps[best]:.3f} (epoch {rows[best]['epoch']}), last 4 {sum(maps[-4:]) / len(maps[-4:]):.3f}"
            f", mAP50 at best {float(rows[best]['val_map50']):.3f}, mAP75 at best {float(rows[best]['val_map75']):.3f}"
            f"; AP at the end: {per_class}")


if __name__ == "__main__":
    for run in sys.argv[1:]:
        print(summary(Path(run)))
