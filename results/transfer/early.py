"""What each class is taught in the first steps: a normal training run whose assigner also records, step by
step and class by class, what ``assign.target_stats`` measures.

    python results/transfer/early.py --data data/valorant-rare --epochs 8 --name early-def [train.py flags]

Writes ``RUN/early.csv`` beside the run's own files: one row per (step, class) with

- ``gts``: the class's GTs in the batch; ``positives`` / ``mass``: per GT, the anchors assigned to it and the
  sum of their soft targets t_hat (``assign.target_stats``). TAL scales t_hat so that each GT's best anchor
  targets that GT's best IoU: ``mass`` is small while the predicted boxes are poor, and then the class score
  is pulled toward 0 at its own objects as well as everywhere else;
- ``best_iou``: the mean over the class's GTs of the best IoU among their positives (their largest target);
- ``score``: the mean predicted probability of the GT's class at its positives.

The run's ``metrics.csv`` has AP per class after every epoch (``val_ap_NAME``); ``plot.py`` beside this file
draws both against the step.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train  # noqa: E402
from assign import target_stats  # noqa: E402
from tools.sources import load_class_names, resolve_data_root  # noqa: E402


class Recording:
    """An assigner that assigns as ``inner`` does and appends one row per class to ``rows``."""

    def __init__(self, inner, rows: list[dict], class_names: list[str], step: list[int]):
        self.inner, self.rows, self.class_names, self.step = inner, rows, class_names, step

    def __call__(self, pred_scores, pred_boxes, points, strides, gt_labels, gt_boxes, gt_mask):
        a = self.inner(pred_scores, pred_boxes, points, strides, gt_labels, gt_boxes, gt_mask)
        self.step[0] += 1
        fg = a.fg_mask                                                            # (B, A)
        score = pred_scores.gather(-1, a.target_labels[..., None])[..., 0]        # (B, A) s of the assigned class
        best = a.target_scores.amax(-1)                                           # (B, A) t_hat
        for c, name in enumerate(self.class_names):
            mask = gt_mask & (gt_labels == c)                                     # (B, M) this class's GTs
            stats = target_stats(a, mask)
            if stats["gts"] == 0:
                continue
            at = fg & (a.target_labels == c)                                      # (B, A) its positives
            # best IoU per GT = its largest t_hat (TAL's normalisation): the max over each GT's positives
            per_gt = torch.zeros_like(gt_mask, dtype=torch.float).scatter_reduce(
                1, a.gt_index.where(at, 0), best.where(at, 0), "amax")           # (B, M)
            self.rows.append({"step": self.step[0], "class": name, "gts": stats["gts"],
                              "positives": stats["positives"] / stats["gts"], "mass": stats["mass"] / stats["gts"],
                              "best_iou": float(per_gt[mask].mean()),
                              "score": float(score[at].mean()) if at.any() else 0.0})
        return a


def main(argv: list[str]):
    args = train.parse_args(argv)
    class_names = load_class_names(resolve_data_root(args.data))
    rows, step = [], [0]
    chosen = train.assigner_for_epoch
    train.assigner_for_epoch = lambda epoch, a: Recording(chosen(epoch, a), rows, class_names, step)
    train.main(argv)
    run_dir = max(Path(args.out).glob(f"{args.name}*"), key=lambda p: p.stat().st_mtime)
    with open(run_dir / "early.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"[early] {len(rows)} rows -> {run_dir / 'early.csv'}")


if __name__ == "__main__":
    main(sys.argv[1:])
