"""Score a COCO results file with pycocotools against a split's own parquet annotations.

    python evaluate.py --checkpoint runs/NAME/best.pt --save-json dets.json
    python -m tools.coco_check dets.json [--data DIR] [--split test]

This is how anyone outside this repo scores a detector: the dataset's ``image_id``, its own
1-based ``category_id`` and COCO [x, y, w, h] boxes in the image's pixels, straight from the
parquet rows, with no code of ours in between. Its mAP@[.5:.95] should match the one
``evaluate.py`` prints (a few thousandths apart at most: ``evaluate.py`` clips boxes that cross the
image border when it reads the data, pycocotools takes them as they are).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys

import pandas as pd
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data import FIRST_CATEGORY_ID
from data import split_files
from tools.sources import DataError, load_class_names, resolve_data_root


def coco_ground_truth(root, split: str = "test") -> COCO:
    """A split's parquet rows as a pycocotools ground truth: raw ids, categories and xywh boxes."""
    df = pd.concat([pd.read_parquet(f) for f in split_files(root, split)])
    names = load_class_names(root)
    images, anns = [], []
    for row in df.itertuples():
        images.append({"id": int(row.image_id), "width": int(row.width), "height": int(row.height)})
        objects = row.objects if row.objects is not None else {"bbox": [], "category": []}
        for box, cat in zip(objects["bbox"], objects["category"]):
            x, y, w, h = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": int(row.image_id), "category_id": int(cat),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k + FIRST_CATEGORY_ID, "name": n} for k, n in enumerate(names)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        gt.createIndex()
    return gt


def pycocotools_stats(gt: COCO, results_file: str) -> list[float]:
    """COCOeval's 12 summary numbers (stats[0] is mAP@[.5:.95], [1] mAP50, [2] mAP75, [3:6] small / medium /
    large) for a COCO results json."""
    e = COCOeval(gt, gt.loadRes(str(results_file)), "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [float(v) for v in e.stats]


def main(argv=None):
    p = argparse.ArgumentParser(description="Score evaluate.py --save-json output with pycocotools.")
    p.add_argument("results", help="COCO results json (evaluate.py --save-json)")
    p.add_argument("--data", default=None, help="dataset root (default: the one auto-resolved, see README)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    args = p.parse_args(argv)
    try:
        gt = coco_ground_truth(resolve_data_root(args.data), args.split)
    except DataError as e:
        sys.exit(f"data error: {e}")
    s = pycocotools_stats(gt, args.results)
    print(f"pycocotools, {args.split} split: mAP@[.5:.95] {s[0]:.4f}   mAP50 {s[1]:.4f}   mAP75 {s[2]:.4f}")
    print(f"AP small {s[3]:.4f}   medium {s[4]:.4f}   large {s[5]:.4f}")
    return s


if __name__ == "__main__":
    main()
