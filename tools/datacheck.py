"""Checking a dataset before training on it: statistics, problem rows, augmented samples.

    python -m tools.datacheck [--data DIR] [--img-size S]          # per split: counts, box sizes, every problem row
    python -m tools.datacheck --show-aug 8 --aug strong --out aug.png   # a grid of augmented training samples
    python -m tools.datacheck --show-aug 8 --aug basic --copy-paste 3 --out paste.png   # copy-paste, no mosaic

The checks themselves (``tools/checks.py``) run whenever data.py reads a split; this script lists them all at
once, without training, and exits with code 1 if a row would lose data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from data import AUG_LEVELS, SPLITS, DetectionDataset, build_transforms, dataset_image_size, letterbox_size, scan_split
from losses import box_iou
from tools.checks import image_header_size
from tools.plots import plot_augmentations, save, to_uint8_image
from tools.sources import DataError, load_class_names, resolve_data_root


def max_same_class_iou(records: list) -> tuple[int, float]:
    """(number of same-class GT pairs inside one image, the largest IoU among them).

    This bounds what NMS can get wrong: class-aware NMS at IoU threshold T can only suppress a true
    positive whose object overlaps another object of its class by about T or more. When no such pair
    exists, Soft-NMS has nothing to rescue."""
    pairs, worst = 0, 0.0
    for r in records:
        boxes, labels = torch.as_tensor(r.boxes, dtype=torch.float32), torch.as_tensor(r.labels)
        iou = box_iou(boxes, boxes)                                              # (N, N)
        pair = (labels[:, None] == labels[None]) & torch.ones_like(iou, dtype=torch.bool).triu(1)
        pairs += int(pair.sum())
        worst = max(worst, float(iou[pair].max()) if pair.any() else 0.0)
    return pairs, worst


def check_dataset(root: Path, class_names: list[str], finest_stride: int = 8, img_size: int | None = None) -> bool:
    """Print per split: images, boxes per class, empty images, box sizes, and every problem row.
    With ``img_size`` the box sizes are those the model sees after the letterbox resize to that size
    (the longer side scaled to ``img_size``), e.g. how many heads stay under the finest stride at 640 px.
    Returns True when nothing had to be thrown away (no fatal problem)."""
    ok = True
    for split in SPLITS:
        try:
            records, problems = scan_split(root, split, len(class_names))
        except DataError as e:
            print(f"{split}: {e}")
            ok = False
            continue
        labels = np.concatenate([r.labels for r in records]) if records else np.zeros(0, int)
        boxes = np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4))
        wh = boxes[:, 2:] - boxes[:, :2]
        if img_size and len(records):
            # letterbox: each image is resized to letterbox_size's (h, w), so its boxes scale by w / W, h / H
            scale = []
            for r in records:
                width, height = image_header_size(r.image_bytes)
                h, w = letterbox_size(height, width, img_size)
                scale.append((w / width, h / height))
            wh = wh * np.repeat(np.asarray(scale), [len(r.labels) for r in records], axis=0)
        side = np.sqrt(wh.prod(1))  # sqrt(area): one number per box for its size
        counts = np.bincount(labels, minlength=len(class_names))
        print(f"\n== {split}: {len(records)} usable images, {sum(len(r.labels) == 0 for r in records)} without boxes, "
              f"{len(labels)} boxes (" + ", ".join(f"{n} {c}" for n, c in zip(class_names, counts)) + ")")
        if len(side):
            q = np.percentile(side, [0, 10, 50, 90, 100]).round(1)
            print(f"   box size sqrt(w*h) px: min {q[0]}  p10 {q[1]}  median {q[2]}  p90 {q[3]}  max {q[4]}")
            small = wh.min(1) < finest_stride
            per_class = ", ".join(f"{n} {int((small & (labels == c)).sum())}" for c, n in enumerate(class_names))
            print(f"   boxes narrower or lower than the finest stride ({finest_stride} px): {int(small.sum())} "
                  f"({per_class})")
            pairs, worst = max_same_class_iou(records)
            print(f"   same-class box pairs in one image: {pairs}, largest IoU between them {worst:.2f}")
        fatal = [p for p in problems if p.fatal]
        print(f"   problems: {len(problems)} ({len(fatal)} drop data, {len(problems) - len(fatal)} repaired)")
        for p in problems:
            print(f"   {'ERROR' if p.fatal else 'warn '} {p}")
        ok &= not fatal
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description="Inspect a parquet detection dataset: statistics and problem rows "
                                            "(default), or a picture of augmented samples (--show-aug).")
    p.add_argument("--data", default=None, help="dataset root (default: auto, see README)")
    p.add_argument("--show-aug", type=int, default=0, metavar="N", help="save a grid of N augmented train samples")
    p.add_argument("--aug", choices=AUG_LEVELS, default="strong", help="augmentation level for --show-aug")
    p.add_argument("--img-size", type=int, default=None, help="--show-aug: sample size; --check: report box sizes "
                                                                 "after resizing to this size (default: native)")
    p.add_argument("--copy-paste", type=int, default=0, metavar="N",
                   help="--show-aug: paste objects of N other images into each sample (as train.py --copy-paste)")
    p.add_argument("--out", default="aug.png")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        root = resolve_data_root(args.data)
        names = load_class_names(root)
        if args.show_aug:
            size = args.img_size or dataset_image_size(root)
            ds = DetectionDataset(root, "train", build_transforms(size, True, args.aug), names,
                                  seed=args.seed, copy_paste=args.copy_paste)
            picks = np.random.default_rng(args.seed).choice(len(ds), min(args.show_aug, len(ds)), replace=False)
            samples = [ds[int(i)] for i in picks]
            fig = plot_augmentations([to_uint8_image(img) for img, _ in samples],
                                     [t for _, t in samples], names)
            save(fig, args.out, dpi=80)
            print(f"wrote {args.out} ({len(samples)} samples, aug={args.aug}, {size} px)")
            return
        print(f"classes: {names}" + (f"; box sizes after resizing to {args.img_size} px" if args.img_size else ""))
        if not check_dataset(root, names, img_size=args.img_size):
            sys.exit(1)
    except DataError as e:
        sys.exit(f"data error: {e}")


if __name__ == "__main__":
    main()
