"""What a training run keeps around its loop. Not a course concept; train.py imports these so that its own
lines are the loop: the run's folder and metrics file, the ``--time`` re-plan, a guard against divergence,
and the final test of ``best.pt``.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch
from tqdm import tqdm

from evaluate import evaluate
from tools.metrics import format_results, metrics_summary
from tools.plots import plot_pr_curves, save
from tools.speed import fuse_conv_bn


def new_run_dir(out: str, name: str, exist_ok: bool = False) -> Path:
    """runs/NAME, or runs/NAME-2, -3 ... so an earlier run is never overwritten (unless ``exist_ok``)."""
    path, k = Path(out) / name, 2
    while path.exists() and not exist_ok:
        path, k = Path(out) / f"{name}-{k}", k + 1
    path.mkdir(parents=True, exist_ok=exist_ok)
    return path


def write_csv(rows: list[dict], path: Path) -> None:
    """Rows as CSV, written to a temp file then renamed: a kill never leaves half a file."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
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
                                "training has diverged. Try a lower --lr, or check the data with "
                                "`python -m tools.datacheck`. Resume from the last good last.pt.")
        return False


def iters_that_fit(seconds: float, done_iters: int, budget_s: float, max_iters: int) -> int:
    """``--time``: how many training iterations in total fit the budget, from the mean time per iteration
    so far (``seconds`` of training for ``done_iters``; validation excluded). Never fewer than already done,
    never more than ``--epochs`` worth. Counted in iterations, not epochs, so the budget is used to the end."""
    return max(done_iters, min(max_iters, int(budget_s * done_iters / seconds)))


def test_best(model, run_dir: Path, rows: list[dict], test_loader, dtype, batch_size: int, iters: int) -> dict:
    """Evaluate best.pt (selected on validation) on the test split; print the numbers, write pr.png and
    test_results.json. BN folded, in inference precision, as evaluate.py loads a checkpoint: the test numbers
    are the deployed model's. ``model`` is the training model, into which best.pt's weights are loaded."""
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(best["model"])  # the EMA weights when --ema
    res, _ = evaluate(fuse_conv_bn(model, dtype), test_loader, desc="test", dtype=dtype)
    print(f"best checkpoint: epoch {best['epoch'] + 1} (val mAP {best['best_map']:.4f}), {run_dir / 'best.pt'}")
    metrics = metrics_summary(res, best["class_names"])
    print(format_results(metrics))
    save(plot_pr_curves(res, best["class_names"]), run_dir / "pr.png")
    train_s, steps = sum(r["train_s"] for r in rows), sum(r["steps"] for r in rows)
    summary = {**metrics, "best_epoch": best["epoch"] + 1, "epochs": round(steps / iters, 1),
               "train_minutes": round(train_s / 60, 1), "train_img_per_s": round(steps * batch_size / train_s, 2)}
    (run_dir / "test_results.json").write_text(json.dumps(summary, indent=1))
    print(f"TEST mAP@[.5:.95] {res['map']:.4f}  mAP50 {res['map_50']:.4f}  mAP75 {res['map_75']:.4f}")
    return res
