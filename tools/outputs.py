"""What ``python evaluate.py`` writes, beside the mAP it computes. Not a course concept.

- ``report``: the metric tables (per size, per class, localisation), pr.png, the IoU histogram, and on
  request a metrics JSON and drawings of predictions (``evaluate.to_coco_json`` writes the COCO results);
- ``read_images`` and ``save_prediction``: ``--images`` files and folders in, one drawing per image out.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2

from tools.metrics import best_match_ious, format_ious, format_results, metrics_summary
from tools.plots import plot_iou_histogram, plot_pr_curves, plot_predictions, save

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def report(res: dict, dets: list[dict], ds, names: list[str], args) -> None:
    """Print and write what ``evaluate.py``'s flags ask for, from ``evaluate.evaluate``'s results."""
    summary = metrics_summary(res, names)
    print(format_results(summary))
    ious = best_match_ious(dets, len(names), args.show_thresh)
    print(f"localisation: IoU of each GT box with its best detection (score >= {args.show_thresh})")
    print(format_ious(ious, names))
    pr_path = Path(args.pr) if args.pr else Path(args.checkpoint).parent / "pr.png"
    save(plot_pr_curves(res, names), pr_path)
    iou_path = pr_path.with_name(f"iou_{args.split}.png")
    save(plot_iou_histogram(ious, names, args.show_thresh), iou_path)
    print(f"wrote {pr_path}, {iou_path}")
    if args.save_metrics:
        Path(args.save_metrics).write_text(json.dumps(summary, indent=1))
    if args.save_images:
        out_dir = Path(args.save_images)
        out_dir.mkdir(parents=True, exist_ok=True)
        for start in range(0, min(args.num, len(ds)), 6):  # 6 images per picture, in their own pixels
            idx = range(start, min(start + 6, args.num, len(ds)))
            fig = plot_predictions([ds.load(i)["image"] for i in idx], [dets[i] for i in idx], names,
                                   [{"boxes": dets[i]["gt_boxes"], "labels": dets[i]["gt_labels"]} for i in idx],
                                   min_score=args.show_thresh)
            save(fig, out_dir / f"{args.split}_{start:04d}.png", dpi=80)
        print(f"wrote drawings of {min(args.num, len(ds))} {args.split} images to {out_dir}")


def read_images(inputs: list[str]):
    """Files and folders (searched for .jpg/.jpeg/.png/.bmp/.webp) -> (path, (H, W, 3) uint8 RGB) in path
    order; an unreadable file is skipped with a warning, a missing path or no image at all is an error."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            sys.exit(f"error: --images {item}: no such file or folder")
    if not paths:
        sys.exit(f"error: --images {' '.join(inputs)}: no image files found")
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"warning: {path} is not a readable image, skipped", file=sys.stderr)
            continue
        yield path, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def save_prediction(path: Path, rgb, det: dict, names: list[str], args) -> None:
    """One ``--images`` file's detections (in its own pixels) drawn into ``--save-images`` (default:
    predictions/), as ``<name>_pred.png``."""
    out_dir = Path(args.save_images or "predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{path.stem}_pred.png"
    save(plot_predictions([rgb], [det], names, min_score=args.show_thresh, cols=1), out)
    print(f"{path}: {int((det['scores'] >= args.show_thresh).sum())} detections -> {out}")
