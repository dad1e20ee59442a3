"""What a training run keeps around its loop. Not a course concept: the run's folder, its metrics file, and a
guard against divergence.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from tqdm import tqdm



def new_run_dir(out: str, name: str, exist_ok: bool = False) -> Path:
    """runs/NAME, or runs/NAME-2, -3 ... so an earlier run is never overwritten (unless ``exist_ok``)."""
    path, k = Path(out) / name, 2
    while path.exists() and not exist_ok:
        path, k = Path(out) / f"{name}-{k}", k + 1
    path.mkdir(parents=True, exist_ok=exist_ok)
    return path


def write_csv(rows: list[dict], path: Path) -> None:
    """Rows as CSV, written to a temp file then renamed: a kill never leaves half a file. The columns are every
    key of any row (a run resumed from an older version may have gained some)."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class NonFiniteLoss(RuntimeError):
    """Too many consecutive steps with a NaN/inf loss: training has diverged."""


class NonFiniteGuard:
    """Says whether a step's loss is finite. A NaN/inf step is skipped (one bad batch must not poison the
    weights) and reported; ``max_in_a_row`` of them in a row mean training has diverged (LR too high,
    broken data), and going on would only waste hours: ``NonFiniteLoss``."""

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row, self.in_a_row, self.skipped = max_in_a_row, 0, 0

    def finite(self, losses: dict, targets: list[dict]) -> bool:
        if torch.isfinite(losses["total"]):
            self.in_a_row = 0
            return True
        self.in_a_row, self.skipped = self.in_a_row + 1, self.skipped + 1
        ids = [t["image_id"] for t in targets]
        tqdm.write(f"warning: non-finite loss {{{', '.join(f'{k}: {v.item():.3g}' for k, v in losses.items())}}}"
                   f", step skipped (image ids {ids})")
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteLoss(f"{self.in_a_row} consecutive steps had a non-finite loss (last image ids {ids}); "
                                "training has diverged. Try a lower --lr, or --no-amp (fp32) if it trained in fp16 / bf16, or check the data with "
                                "`python -m tools.datacheck`. Resume from the last good last.pt.")
        return False
