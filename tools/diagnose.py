"""Where a checkpoint's boxes go wrong: each side's error, and the pyramid level that learns against the one
that answers.

    python -m tools.diagnose --checkpoint weights/detector.pt --split validation --out figures/side_errors.png

1. For every GT box matched at IoU >= 0.5 by a detection of its class scoring >= ``--min-score`` (the best
   such detection), the error of each side in pixels and as a fraction of the box (left / right over its
   width, top / bottom over its height), positive where the prediction reaches *beyond* the GT. By class
   and COCO size (areas in the image's own pixels): a mean far from 0 is a bias, a large spread is noise.
2. For every GT: how many of TAL's positives (the trained model's own assignment) lie on each level
   (stride 8 / 16 / 32), against the level of the anchor whose box survived NMS and matches it best.
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import numpy as np
import torch

from assign import TaskAlignedAssigner
from data import DetectionDataset, boxes_to_image, build_transforms, collate, pad_targets
from evaluate import evaluate, postprocess
from losses import box_iou
from detector import model_from_checkpoint
from tools.checkpoint import read_checkpoint
from tools.plots import plot_side_errors, save
from tools.sources import resolve_data_root

SIZES = (("small", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, float("inf")))  # COCO areas


def size_name(box: torch.Tensor) -> str:
    area = float((box[2] - box[0]) * (box[3] - box[1]))
    return next(name for name, low, high in SIZES if low <= area < high)


def side_errors(detections: list[dict], min_score: float) -> list[dict]:
    """One row per GT matched at IoU >= 0.5: class, size, IoU, and (4,) side errors in pixels and as fractions,
    positive outward, in the order left, top, right, bottom."""
    rows = []
    for d in detections:
        for gt, label in zip(d["gt_boxes"], d["gt_labels"].tolist()):
            mine = (d["labels"] == label) & (d["scores"] >= min_score)
            if not mine.any():
                continue
            iou = box_iou(gt[None], d["boxes"][mine])[0]                          # (K,)
            if iou.max() < 0.5:
                continue
            pred = d["boxes"][mine][iou.argmax()]
            px = torch.stack([gt[0] - pred[0], gt[1] - pred[1], pred[2] - gt[2], pred[3] - gt[3]])  # outward
            wh = (gt[2:] - gt[:2]).repeat(2)                                        # (w, h, w, h)
            rows.append({"label": label, "size": size_name(gt), "iou": float(iou.max()), "px": px.numpy(),
                         "frac": (px / wh).numpy()})
    return rows


def format_side_errors(rows: list[dict], class_names: list[str]) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[(class_names[r["label"]], r["size"])].append(r)
        groups[(class_names[r["label"]], "all")].append(r)
    head = f"{'class':<11}{'size':<8}{'n':>4}{'IoU':>6}   " + "".join(
        f"{s + ' px (frac)':>24}" for s in ("left", "top", "right", "bottom"))
    lines = [head, " " * 32 + "mean ± std of (prediction beyond GT), per side"]
    for (name, size), g in sorted(groups.items()):
        px, frac = np.stack([r["px"] for r in g]), np.stack([r["frac"] for r in g])
        cells = "".join(f"{f'{px[:, k].mean():+.1f}±{px[:, k].std():.1f} ({frac[:, k].mean():+.2f}±{frac[:, k].std():.2f})':>24}"
                        for k in range(4))
        lines.append(f"{name:<11}{size:<8}{len(g):>4}{np.mean([r['iou'] for r in g]):>6.2f}   {cells}")
    return "\n".join(lines)


@torch.no_grad()
def level_counts(model, loader, class_names: list[str], assigner: TaskAlignedAssigner):
    """Per (class, COCO size in image pixels): GTs (Counter), the positives per stride that ``assigner`` (the one the model trained
    with) picks from its predictions (Counter of Counters), and the stride of the surviving detection that
    matches each GT best at IoU >= 0.5 (Counter of Counters)."""
    positives, survivors, counts = defaultdict(Counter), defaultdict(Counter), Counter()
    for images, targets in loader:
        gt_boxes, gt_labels, gt_mask = pad_targets(targets)                     # network frame
        out = model(images.contiguous(memory_format=torch.channels_last))
        scores, boxes = out.cls_logits.float().sigmoid(), out.boxes.float()       # (B, A, C), (B, A, 4)
        a = assigner(scores, boxes, out.points, out.strides, gt_labels, gt_boxes, gt_mask)
        for b, det in enumerate(postprocess(out.cls_logits, out.boxes)):          # as evaluate.py keeps them
            # The kept boxes are rows of the model's boxes: equality finds the anchor each one came from.
            kept_anchor = (det["boxes"][:, None] == boxes[b][None]).all(-1).float().argmax(1)    # (K,)
            kept_label = det["labels"]
            # COCO sizes are areas in the image's own pixels, not the network frame's (at 640 px a 416 px
            # image's boxes grow 2.4x in area).
            gt_image = boxes_to_image(gt_boxes[b], targets[b]["image_size"], images.shape[-1])  # (M, 4)
            for m in range(int(gt_mask[b].sum())):
                key = (class_names[int(gt_labels[b, m])], size_name(gt_image[m]))
                counts[key] += 1
                pos = a.fg_mask[b] & (a.gt_index[b] == m)
                positives[key].update(out.strides[pos].int().tolist())
                mine = kept_label == gt_labels[b, m]
                if mine.any():
                    iou = box_iou(gt_boxes[b, m][None], boxes[b, kept_anchor[mine]])[0]
                    if iou.max() >= 0.5:
                        survivors[key][int(out.strides[kept_anchor[mine][iou.argmax()]])] += 1
    return counts, positives, survivors


def format_levels(counts, positives, survivors) -> str:
    lines = [f"{'class':<11}{'size':<8}{'GTs':>5}   {'TAL positives per GT, stride 8 / 16 / 32':>42}"
             f"   {'matched survivor at stride 8 / 16 / 32':>40}"]
    for key in sorted(counts):
        n = counts[key]
        pos = " / ".join(f"{positives[key][s] / n:.1f}" for s in (8, 16, 32))
        surv = " / ".join(str(survivors[key][s]) for s in (8, 16, 32))
        lines.append(f"{key[0]:<11}{key[1]:<8}{n:>5}   {pos:>42}   {surv:>40}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="weights/detector.pt")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--data", default=None)
    p.add_argument("--min-score", type=float, default=0.3, help="lowest score of a detection that counts as a match")
    p.add_argument("--out", default=None, help="the per-side error figure (PNG)")
    args = p.parse_args(argv)
    ckpt = read_checkpoint(args.checkpoint)
    model, names = model_from_checkpoint(ckpt), ckpt["class_names"]
    size = ckpt["train_args"]["img_size"]
    ds = DetectionDataset(resolve_data_root(args.data), args.split,
                          build_transforms(size, False), names)
    loader = torch.utils.data.DataLoader(ds, 8, collate_fn=collate)
    _, dets = evaluate(model, loader)
    rows = side_errors(dets, args.min_score)
    print(f"{args.checkpoint}, {args.split}: {len(rows)} GT boxes matched at IoU >= 0.5 by a detection scoring "
          f">= {args.min_score}\n{format_side_errors(rows, names)}\n")
    ta = ckpt["train_args"]
    assigner = TaskAlignedAssigner(topk=ta["tal_topk"], alpha=ta["tal_alpha"], beta=ta["tal_beta"])
    print(format_levels(*level_counts(model, loader, names, assigner)))
    if args.out:
        save(plot_side_errors(rows, names), args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
